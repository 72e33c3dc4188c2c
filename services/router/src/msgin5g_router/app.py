"""Composition root of the router: Redis, edge clients, dispatcher and RouterService."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from msgin5g.v1 import router_pb2_grpc as rgrpc
from msgin5g_common import service
from msgin5g_common.grpcutil import GrpcServer, host_of
from msgin5g_common.keys import Keys
from msgin5g_router.dispatch import Dispatcher, EdgeClients
from msgin5g_router.grpc_api import RouterServicer
from msgin5g_router.settings import RouterSettings
from msgin5g_router.store import RouterStore


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    redis = Redis.from_url(settings.redis_url)
    await redis.ping()
    store = RouterStore(redis, Keys(settings.redis_prefix))
    clients = EdgeClients()
    dispatcher = Dispatcher(store, clients, settings.inbox_limit, settings.grpc_timeout)

    server = GrpcServer(["msgin5g.v1.RouterService"])
    server.add(
        lambda s: rgrpc.add_RouterServiceServicer_to_server(
            RouterServicer(store, dispatcher, settings), s
        )
    )
    port = await server.start(settings.grpc_bind)
    service.ready(grpc=f"{host_of(settings.grpc_bind)}:{port}")
    await stop.wait()
    await server.stop()
    await dispatcher.drain()
    await clients.close()
    await redis.aclose()
