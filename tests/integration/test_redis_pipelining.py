"""AutoPipeline (msgin5g_common.redisutil) against a real Redis: commands of concurrent
callers go in one round trip, each caller gets what a redis-py pipeline of its own returns,
and a failure stays the failing caller's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from msgin5g_common import redisutil
from msgin5g_common.redisutil import AutoPipeline

WAIT = 5.0
SCRIPT = "return redis.call('INCR', KEYS[1])"


@pytest_asyncio.fixture
async def auto(redis: Redis) -> AsyncIterator[AutoPipeline]:
    loaded: list[str] = []

    async def load() -> None:
        loaded.append(await redis.script_load(SCRIPT))

    pipeline = AutoPipeline(redis, load)
    yield pipeline
    await pipeline.close()


def counting(auto: AutoPipeline) -> list[int]:
    """Counts the round trips ``auto`` makes (commands in each)."""
    trips: list[int] = []
    link = auto._link
    if link is None:
        pytest.skip("the direct connection needs hiredis")
    execute = link.execute

    async def counted(commands: list[tuple[Any, ...]]) -> list[Any]:
        trips.append(len(commands))
        return await execute(commands)

    link.execute = counted  # type: ignore[method-assign]
    return trips


async def test_concurrent_callers_share_one_round_trip(auto: AutoPipeline) -> None:
    trips = counting(auto)

    def build(n: int) -> redisutil.Build:
        def fill(pipe: Any) -> None:
            pipe.set(f"k{n}", n)
            pipe.incr(f"k{n}")

        return fill

    async with asyncio.timeout(WAIT):
        replies = await asyncio.gather(*(auto.execute(build(n)) for n in range(10)))
    assert replies == [[True, n + 1] for n in range(10)]
    assert trips == [20]


async def test_replies_are_those_of_redis_py_s_own_pipeline(
    auto: AutoPipeline, redis: Redis
) -> None:
    await redis.hset("h", mapping={"a": "1", "b": "2"})
    await redis.zadd("z", {"m": 1.5})

    def build(pipe: Any) -> None:
        pipe.exists("h", "nope")
        pipe.hgetall("h")
        pipe.hmget("h", ["a", "zz"])
        pipe.zscore("z", "m")
        pipe.zrange("z", 0, -1, withscores=True)
        pipe.get("missing")
        pipe.zadd("z", {"m": 1.5})
        pipe.set("s", "v", px=100_000, nx=True)

    async with asyncio.timeout(WAIT):
        fast = await auto.execute(build)
    await redis.delete("s")
    async with redis.pipeline(transaction=False) as pipe:
        build(pipe)
        plain = await pipe.execute()
    assert fast == plain


async def test_a_failing_command_fails_only_its_caller(auto: AutoPipeline, redis: Redis) -> None:
    await redis.set("text", "x")

    def bad(pipe: Any) -> None:
        pipe.set("before", 1)
        pipe.incr("text")  # not an integer

    def good(pipe: Any) -> None:
        pipe.set("other", 2)

    async with asyncio.timeout(WAIT):
        outcomes = await asyncio.gather(
            auto.execute(bad), auto.execute(good), return_exceptions=True
        )
    assert isinstance(outcomes[0], ResponseError)
    assert outcomes[1] == [True]
    # Non-transactional, as a redis-py pipeline: what came before the error happened.
    assert await redis.get("before") == b"1"


async def test_a_build_that_raises_fails_only_its_caller(auto: AutoPipeline) -> None:
    def broken(pipe: Any) -> None:
        pipe.set("half", 1)
        raise ValueError("bad build")

    def good(pipe: Any) -> None:
        pipe.get("half")

    async with asyncio.timeout(WAIT):
        outcomes = await asyncio.gather(
            auto.execute(broken), auto.execute(good), return_exceptions=True
        )
    assert isinstance(outcomes[0], ValueError)
    assert outcomes[1] == [None]  # the broken build's commands were not sent


async def test_a_script_redis_forgot_is_loaded_and_the_commands_run_again(
    auto: AutoPipeline, redis: Redis
) -> None:
    sha = await redis.script_load(SCRIPT)
    await redis.script_flush()

    def build(pipe: Any) -> None:
        pipe.evalsha(sha, 1, "counter")

    async with asyncio.timeout(WAIT):
        assert await auto.execute(build) == [1]
    assert await redis.get("counter") == b"1"


async def test_no_commands_is_no_round_trip(auto: AutoPipeline) -> None:
    trips = counting(auto)
    async with asyncio.timeout(WAIT):
        assert await auto.execute(lambda pipe: None) == []
    assert trips == []


@pytest.mark.skipif(redisutil._hiredis is None, reason="the direct connection needs hiredis")
async def test_a_lost_connection_is_made_again_and_the_commands_sent_again(
    auto: AutoPipeline, redis: Redis
) -> None:
    async with asyncio.timeout(WAIT):
        assert await auto.execute(lambda pipe: pipe.incr("n")) == [1]
        own = await redis.client_id()
        for client in await redis.client_list():
            if int(client["id"]) != own:
                await redis.client_kill_filter(_id=client["id"])
        assert await auto.execute(lambda pipe: pipe.incr("n")) == [2]
