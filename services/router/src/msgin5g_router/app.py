"""Composition root of the router: Redis, edge clients, dispatcher and RouterService."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from msgin5g.v1 import router_pb2_grpc as rgrpc
from msgin5g_common import metrics, redisutil, service
from msgin5g_common.grpcutil import GrpcServer, host_of
from msgin5g_common.keys import Keys
from msgin5g_router.appservers import AppServers
from msgin5g_router.dispatch import Dispatcher, EdgeClients, RetryPolicy
from msgin5g_router.fanout import Fanout
from msgin5g_router.grpc_api import RouterServicer
from msgin5g_router.settings import RouterSettings
from msgin5g_router.store import RouterStore
from msgin5g_router.sweeper import Sweeper


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    redis = redisutil.connect(settings.redis_url)
    if not await redisutil.wait_until_up(redis, stop):
        await redis.aclose()
        return
    store = RouterStore(redis, Keys(settings.redis_prefix))
    clients = EdgeClients(settings.grpc_timeout)
    retry = RetryPolicy(
        base_ms=int(settings.retry_base * 1000),
        max_ms=int(settings.retry_max * 1000),
        limit=settings.retry_limit,
    )
    appservers = AppServers(settings.as_timeout, settings.as_tls_ca_file)
    dispatcher = Dispatcher(
        store,
        clients,
        settings.inbox_limit,
        settings.grpc_timeout,
        retry,
        appservers=appservers,
        default_expiry=settings.default_expiry,
    )
    reports = dispatcher.reports
    holder = settings.router_id or f"router-{socket.gethostname()}-{os.getpid()}"
    sweeper = Sweeper(
        store,
        dispatcher,
        reports,
        holder,
        settings.sweep_interval,
        reassembly_timeout=settings.reassembly_timeout,
    )
    fanout = Fanout(
        redis,
        Keys(settings.redis_prefix),
        store,
        dispatcher,
        consumer=holder,
        page=settings.fanout_page,
        rate=settings.fanout_rate,
        claim_after=settings.fanout_claim_after,
        max_payload=settings.max_payload,
        max_pending=settings.max_pending,
    )

    server = GrpcServer(["msgin5g.v1.RouterService"])
    server.add(
        lambda s: rgrpc.add_RouterServiceServicer_to_server(
            RouterServicer(store, dispatcher, settings, reports, fanout), s
        )
    )
    port = await server.start(settings.grpc_bind)
    sweeping = asyncio.create_task(sweeper.run())
    fanning = asyncio.create_task(fanout.run())
    await server.serving()
    metrics_port = metrics.serve(settings.metrics_host, settings.metrics_port)
    service.ready(
        metrics=f"http://{settings.metrics_host}:{metrics_port}/metrics",
        grpc=f"{host_of(settings.grpc_bind)}:{port}",
    )
    await stop.wait()
    for task in (sweeping, fanning):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await server.stop()
    await dispatcher.drain()
    await clients.close()
    await appservers.close()
    await store.close()
    await redis.aclose()
