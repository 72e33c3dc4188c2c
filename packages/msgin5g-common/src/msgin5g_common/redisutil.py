"""The Redis client every service uses: it retries a command on a connection error.

redis-py 8 does not retry by default: after a Redis restart the first command on each pooled
connection failed ("Connection closed by server"), and a device's request failed with it
although Redis was back with its data (append-only file).
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("msgin5g.redis")


def connect(url: str, max_connections: int = 64) -> Redis:
    """A client whose pool waits for a free connection instead of failing ("Too many
    connections" lost thousands of dispatches of a 10,000-member fan-out)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)


async def wait_until_up(redis: Redis, stop: asyncio.Event, give_up: float = 300.0) -> bool:
    """Waits for Redis to answer (it may start after us, as in Kubernetes); False when the
    service is asked to stop first. Gives up (raises) after ``give_up`` seconds."""
    delay = 0.2
    deadline = asyncio.get_running_loop().time() + give_up
    while True:
        try:
            await redis.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("waiting for redis", extra={"error": str(exc), "retryIn": delay})
        else:
            return True
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            delay = min(delay * 2, 5.0)
            continue
        return False
