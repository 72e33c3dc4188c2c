"""gRPC plumbing every service shares: servers with ``grpc.health.v1``, and client channels."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# The context every servicer method receives.
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Re-resolve quickly when a peer restarts (a service in Kubernetes, a process locally).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # Clients behind a Kubernetes Service keep one HTTP/2 connection to one pod; closing it
    # now and then lets them spread over replicas added since (HPA).
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
]


class GrpcServer:
    """A grpc.aio server with the health service; ``start`` returns the bound port."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)

    def add(self, register: Callable[[grpc.aio.Server], None]) -> None:
        register(self.server)

    async def start(self, bind: str) -> int:
        port = self.server.add_insecure_port(bind)
        if port == 0:
            raise OSError(f"cannot bind gRPC on {bind}")
        await self.server.start()
        # NOT_SERVING until the service says it is ready (its dependencies answer).
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        return port

    async def serving(self) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)


def channel(target: str, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS + (options or []))


def host_of(bind: str) -> str:
    host = bind.rsplit(":", 1)[0]
    return host.strip("[]")
