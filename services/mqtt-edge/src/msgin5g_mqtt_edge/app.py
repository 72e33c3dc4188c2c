"""Composition root of mqtt-edge: the broker bridge, EdgeService and heartbeat."""

from __future__ import annotations

import asyncio
import logging

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import edge_pb2 as epb
from msgin5g.v1 import edge_pb2_grpc as egrpc
from msgin5g_common import aggregate, convert, edgeservice, metrics, redisutil, service
from msgin5g_common.edges import Heartbeat, default_edge_id
from msgin5g_common.grpcutil import Context, GrpcServer, host_of
from msgin5g_common.keys import Keys
from msgin5g_common.ratelimit import UeLimits
from msgin5g_common.uplink import UplinkHandler
from msgin5g_mqtt_edge.bridge import MqttBridge
from msgin5g_mqtt_edge.settings import MqttEdgeSettings

log = logging.getLogger("msgin5g.mqtt_edge")


class EdgeServicer(egrpc.EdgeServiceServicer):
    def __init__(self, bridge: MqttBridge, edge_id: str, aggregate_bytes: int) -> None:
        self.bridge = bridge
        self.edge_id = edge_id
        self.aggregate_bytes = aggregate_bytes

    async def Deliver(  # noqa: N802 - gRPC method names are the proto's
        self, request: epb.DeliverRequest, context: Context
    ) -> epb.DeliverResponse:
        if request.edge_id and request.edge_id != self.edge_id:
            log.warning(
                "delivery meant for another replica refused",
                extra={"ueSvcId": request.ue_svc_id, "meant": request.edge_id},
            )
            return epb.DeliverResponse(forwarded=False)
        docs = [convert.downlink_from_pb(doc) for doc in request.docs]
        # Several pending documents (a UE coming back) leave as few aggregated ones.
        for payload in aggregate.pack(docs, self.aggregate_bytes):
            if not await self.bridge.publish(request.ue_svc_id, payload):
                return epb.DeliverResponse(forwarded=False)
        for doc in request.docs:
            metrics.MESSAGES.labels("out", doc.WhichOneof("doc") or "", "mqtt").inc()
        return epb.DeliverResponse(forwarded=True)


async def serve(settings: MqttEdgeSettings, stop: asyncio.Event) -> None:
    edge_id = settings.edge_id or default_edge_id("mqtt")
    edge = pb.EdgeRef(kind=pb.EDGE_KIND_MQTT, edge_id=edge_id)
    handler = UplinkHandler(
        settings.registry_addr,
        settings.router_addr,
        edge,
        settings.grpc_timeout,
        limits=UeLimits(settings.ue_rate, settings.ue_burst),
    )
    bridge = MqttBridge(settings, handler, edge_id)

    redis = redisutil.connect(settings.redis_url)
    if not await redisutil.wait_until_up(redis, stop):
        await redis.aclose()
        await handler.close()
        return
    grpc_server = GrpcServer(["msgin5g.v1.EdgeService", edgeservice.SERVICE_NAME])
    servicer = EdgeServicer(bridge, edge_id, settings.mqtt_aggregate_bytes)
    grpc_server.add(lambda s: egrpc.add_EdgeServiceServicer_to_server(servicer, s))
    # The router's deliveries in batches (DeliverMany), each as Deliver.
    grpc_server.add(
        lambda s: egrpc.add_EdgeBatchServiceServicer_to_server(
            edgeservice.BatchedDeliveries(servicer), s
        )
    )
    grpc_port = await grpc_server.start(settings.edge_grpc_bind)
    advertise = settings.edge_advertise_addr or f"{host_of(settings.edge_grpc_bind)}:{grpc_port}"

    await bridge.start()
    # Ready means the broker subscription is in place; until then stop still works.
    connected = asyncio.create_task(bridge.connected.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([connected, stopping], return_when=asyncio.FIRST_COMPLETED)
    heartbeat = Heartbeat(
        redis,
        Keys(settings.redis_prefix),
        "mqtt",
        edge_id,
        advertise,
        settings.edge_heartbeat_interval,
    )
    if not stop.is_set():
        await heartbeat.start()
        await grpc_server.serving()
        metrics_port = metrics.serve(settings.metrics_host, settings.metrics_port)
        service.ready(
            metrics=f"http://{settings.metrics_host}:{metrics_port}/metrics",
            mqtt=f"mqtt://{settings.mqtt_host}:{settings.mqtt_port}",
            grpc=advertise,
            edge_id=edge_id,
        )
        await stop.wait()
    connected.cancel()
    await heartbeat.stop()
    await bridge.stop()
    await grpc_server.stop()
    await handler.close()
    await redis.aclose()
