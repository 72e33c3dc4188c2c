"""The liveness of edge replicas: a heartbeat key per replica, read by the router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from redis.asyncio import Redis

from msgin5g_common.keys import Keys

log = logging.getLogger("msgin5g.edge")


def default_edge_id(kind: str) -> str:
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"


class Heartbeat:
    """Keeps ``<p>:edge:<kind>:<id>`` = gRPC address alive while the replica runs."""

    def __init__(
        self, redis: Redis, keys: Keys, kind: str, edge_id: str, address: str, interval: float
    ) -> None:
        self.redis = redis
        self.key = keys.edge(kind, edge_id)
        self.index = keys.edges(kind)
        self.edge_id = edge_id
        self.address = address
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._beat()
        self._task = asyncio.create_task(self._loop())

    async def _beat(self) -> None:
        ttl_ms = int(self.interval * 3000)
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.key, self.address, px=ttl_ms)
            pipe.zadd(self.index, {self.edge_id: now_ms + ttl_ms})
            # Replicas that died without saying so leave their entry behind: prune it.
            pipe.zremrangebyscore(self.index, 0, now_ms - 60_000)
            await pipe.execute()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._beat()
            except Exception:
                log.exception("heartbeat failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.redis.delete(self.key)
            await self.redis.zrem(self.index, self.edge_id)
