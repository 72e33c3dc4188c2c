"""Composition root of coap-edge: the aiocoap server, EdgeService, heartbeat and leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiocoap
import grpc

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import edge_pb2 as epb
from msgin5g.v1 import edge_pb2_grpc as egrpc
from msgin5g_coap_edge import aiocoap_fix
from msgin5g_coap_edge.api import SEP, CoapApi
from msgin5g_coap_edge.settings import CoapEdgeSettings
from msgin5g_common import convert, metrics, redisutil, service
from msgin5g_common.edges import Heartbeat, default_edge_id
from msgin5g_common.grpcutil import Context, GrpcServer, host_of
from msgin5g_common.keys import Keys
from msgin5g_common.ratelimit import UeLimits
from msgin5g_common.uplink import UplinkHandler

log = logging.getLogger("msgin5g.coap_edge")


class EdgeServicer(egrpc.EdgeServiceServicer):
    def __init__(self, api: CoapApi, edge_id: str) -> None:
        self.api = api
        self.edge_id = edge_id

    async def Deliver(  # noqa: N802 - gRPC method names are the proto's
        self, request: epb.DeliverRequest, context: Context
    ) -> epb.DeliverResponse:
        if request.edge_id and request.edge_id != self.edge_id:
            log.warning(
                "delivery meant for another replica refused",
                extra={"ueSvcId": request.ue_svc_id, "meant": request.edge_id},
            )
            return epb.DeliverResponse(forwarded=False)
        docs = [convert.downlink_from_pb(d) for d in request.docs]
        return epb.DeliverResponse(forwarded=self.api.notify(request.ue_svc_id, docs))


async def _renew_leases(api: CoapApi, handler: UplinkHandler, interval: float) -> None:
    """Keeps the route leases of observed UEs alive, in batches."""
    while True:
        await asyncio.sleep(interval)
        topic_ues = {key.split(SEP, 1)[0] for key in api.topic_observers.ues()}
        ues = sorted(set(api.observers.ues()) | topic_ues | set(api.pusher.ues()))
        for start in range(0, len(ues), 1000):
            try:
                await handler.renew(ues[start : start + 1000])
            except grpc.aio.AioRpcError as exc:
                log.warning("lease renewal failed", extra={"code": exc.code().name})


async def serve(settings: CoapEdgeSettings, stop: asyncio.Event) -> None:
    aiocoap_fix.apply()
    edge_id = settings.edge_id or default_edge_id("coap")
    edge = pb.EdgeRef(kind=pb.EDGE_KIND_COAP, edge_id=edge_id)
    handler = UplinkHandler(
        settings.registry_addr,
        settings.router_addr,
        edge,
        settings.grpc_timeout,
        limits=UeLimits(settings.ue_rate, settings.ue_burst),
    )
    api = CoapApi(
        handler, settings.max_payload, settings.coap_notification_bytes, settings.push_timeout
    )
    handler.observed = lambda ue: api.observers.holds(ue) or api.pusher.holds(ue)

    redis = redisutil.connect(settings.redis_url)
    if not await redisutil.wait_until_up(redis, stop):
        await redis.aclose()
        await handler.close()
        return

    grpc_server = GrpcServer(["msgin5g.v1.EdgeService"])
    grpc_server.add(
        lambda s: egrpc.add_EdgeServiceServicer_to_server(EdgeServicer(api, edge_id), s)
    )
    grpc_port = await grpc_server.start(settings.edge_grpc_bind)
    advertise = settings.edge_advertise_addr or f"{host_of(settings.edge_grpc_bind)}:{grpc_port}"

    context = await aiocoap.Context.create_server_context(
        api, bind=(settings.coap_host, settings.coap_port), transports=["udp6"]
    )
    coap_port = _bound_port(context, settings.coap_port)
    api.pusher.context = context

    heartbeat = Heartbeat(
        redis,
        Keys(settings.redis_prefix),
        "coap",
        edge_id,
        advertise,
        settings.edge_heartbeat_interval,
    )
    await heartbeat.start()
    renew = asyncio.create_task(_renew_leases(api, handler, settings.lease_renew_interval))
    await grpc_server.serving()
    metrics_port = metrics.serve(settings.metrics_host, settings.metrics_port)
    service.ready(
        metrics=f"http://{settings.metrics_host}:{metrics_port}/metrics",
        coap=f"udp://{settings.coap_host}:{coap_port}",
        grpc=advertise,
        edge_id=edge_id,
    )

    await stop.wait()
    renew.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await renew
    await heartbeat.stop()
    await api.pusher.close()
    await context.shutdown()
    await grpc_server.stop()
    await handler.close()
    await redis.aclose()


def _bound_port(context: aiocoap.Context, configured: int) -> int:
    """The UDP port the server really listens on (differs from the setting when it is 0)."""
    if configured:
        return configured
    for interface in context.request_interfaces:
        message_interface = interface.token_interface.message_interface
        transport = getattr(message_interface, "transport", None)
        if transport is not None:
            return int(transport.get_extra_info("socket").getsockname()[1])
    raise RuntimeError("cannot tell the CoAP port")
