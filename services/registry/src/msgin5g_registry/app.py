"""Composition root of the registry: Redis, the gRPC RegistryService and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn

from msgin5g.v1 import registry_pb2_grpc as rgrpc
from msgin5g.v1 import router_pb2_grpc as rgrpc_router
from msgin5g_common import metrics, redisutil, service
from msgin5g_common.grpcutil import GrpcServer, channel, host_of
from msgin5g_common.keys import Keys
from msgin5g_registry.grpc_api import RegistryServicer
from msgin5g_registry.http_api import create_app
from msgin5g_registry.settings import RegistrySettings
from msgin5g_registry.store import RegistryStore

log = logging.getLogger("msgin5g.registry")


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service's lifecycle owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(settings: RegistrySettings, stop: asyncio.Event) -> None:
    redis = redisutil.connect(settings.redis_url)
    if not await redisutil.wait_until_up(redis, stop):
        await redis.aclose()
        return
    store = RegistryStore(redis, Keys(settings.redis_prefix))

    # Bind the HTTP socket ourselves so that port 0 works and the real port can be reported.
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.http_host, settings.http_port))
    http_port = sock.getsockname()[1]
    router_channel = channel(settings.router_addr)
    router: rgrpc_router.RouterServiceAsyncStub = rgrpc_router.RouterServiceStub(router_channel)
    app = create_app(store, redis, router, settings)
    # The device credentials (None without a KEK) also serve the coap-edge's GetDeviceKeys.
    servicer = RegistryServicer(store, settings, app.state.credentials)
    grpc_server = GrpcServer(["msgin5g.v1.RegistryService"])
    grpc_server.add(lambda s: rgrpc.add_RegistryServiceServicer_to_server(servicer, s))
    grpc_port = await grpc_server.start(settings.grpc_bind)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    if not settings.auth_enabled:
        log.warning(
            "auth disabled: the AS API and the management API take requests without tokens",
            extra={"setting": "MSGIN5G_AUTH_ENABLED"},
        )
    http = _HttpServer(config)
    http_task = asyncio.create_task(http.serve(sockets=[sock]))

    await grpc_server.serving()

    metrics_port = metrics.serve(settings.metrics_host, settings.metrics_port)
    service.ready(
        metrics=f"http://{settings.metrics_host}:{metrics_port}/metrics",
        grpc=f"{host_of(settings.grpc_bind)}:{grpc_port}",
        http=f"http://{settings.http_host}:{http_port}",
    )
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait([stop_task, http_task], return_when=asyncio.FIRST_COMPLETED)
    http.should_exit = True
    await http_task
    await grpc_server.stop()
    await router_channel.close()
    await redis.aclose()
