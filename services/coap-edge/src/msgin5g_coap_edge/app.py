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
from msgin5g_coap_edge.dtls import DtlsInterface, add_dtls
from msgin5g_coap_edge.security import DeviceKeys, OscoreSite, Revocations
from msgin5g_coap_edge.settings import CoapEdgeSettings
from msgin5g_common import convert, edgeservice, metrics, redisutil, service
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
        handler,
        settings.max_payload,
        settings.coap_notification_bytes,
        settings.push_timeout,
        require_auth=not settings.coap_insecure,
    )
    handler.observed = lambda ue: api.observers.holds(ue) or api.pusher.holds(ue)

    redis = redisutil.connect(settings.redis_url)
    if not await redisutil.wait_until_up(redis, stop):
        await redis.aclose()
        await handler.close()
        return

    grpc_server = GrpcServer(["msgin5g.v1.EdgeService", edgeservice.SERVICE_NAME])
    servicer = EdgeServicer(api, edge_id)
    grpc_server.add(lambda s: egrpc.add_EdgeServiceServicer_to_server(servicer, s))
    # The router's deliveries in batches (DeliverMany), each as Deliver (which never waits:
    # notify hands the documents to the observation or the push queue).
    grpc_server.add(
        lambda s: egrpc.add_EdgeBatchServiceServicer_to_server(
            edgeservice.BatchedDeliveries(servicer), s
        )
    )
    grpc_port = await grpc_server.start(settings.edge_grpc_bind)
    advertise = settings.edge_advertise_addr or f"{host_of(settings.edge_grpc_bind)}:{grpc_port}"

    keys = DeviceKeys(handler.registry, timeout=settings.grpc_timeout, ttl=settings.coap_keys_ttl)
    site: object = OscoreSite(api, keys) if settings.coap_oscore else api
    context = await aiocoap.Context.create_server_context(
        site, bind=(settings.coap_host, settings.coap_port), transports=["udp6"]
    )
    coap_port = _bound_port(context, settings.coap_port)
    api.pusher.context = context
    dtls: DtlsInterface | None = None
    if settings.coap_dtls:
        dtls = await add_dtls(
            context,
            (settings.coap_dtls_host or settings.coap_host, settings.coap_dtls_port),
            keys,
            max_sessions=settings.coap_dtls_max_sessions,
            idle_timeout=settings.coap_dtls_idle_timeout,
            refresh=settings.coap_keys_ttl,
        )

    def revoked(ue: str) -> None:
        # The observations' last notification (4.01) goes out before the DTLS sessions close.
        observations = api.end_sessions(ue)
        sessions = dtls.sockets.end_sessions(ue, "revoked", linger=0.5) if dtls else 0
        log.info(
            "sessions of a revoked UE ended",
            extra={"ueSvcId": ue, "dtlsSessions": sessions, "observations": observations},
        )

    revocations = Revocations(
        redis, Keys(settings.redis_prefix).credentials_revoked(), keys, revoked
    )
    await revocations.start()
    maintain = asyncio.create_task(dtls.sockets.maintain()) if dtls else None
    if settings.coap_insecure:
        log.warning(
            "plain CoAP is open: any client may act as any UE (MSGIN5G_COAP_INSECURE)",
            extra={"port": coap_port},
        )

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
    listen = {
        "metrics": f"http://{settings.metrics_host}:{metrics_port}/metrics",
        "coap": f"udp://{settings.coap_host}:{coap_port}",
        "grpc": advertise,
        "edge_id": edge_id,
    }
    if dtls is not None:
        listen["coaps"] = f"udp://{settings.coap_dtls_host or settings.coap_host}:{dtls.port()}"
    service.ready(**listen)

    await stop.wait()
    for task in (renew, maintain):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await revocations.stop()
    await keys.close()
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
