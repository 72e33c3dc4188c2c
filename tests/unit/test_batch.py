"""Batching of concurrent calls (msgin5g_common.batch): when calls go, how many together, and
that each caller gets its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import pytest

from msgin5g_common.batch import (
    UNBATCHED_FOR,
    BatchedCall,
    Batcher,
    ItemFailed,
    item_failed,
    status_of,
)

WAIT = 5.0


class Peer:
    """A batched call that records its batches and answers each when the test says so."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.arrived = asyncio.Event()
        self.answers: asyncio.Queue[Sequence[int | BaseException] | Exception] = asyncio.Queue()

    async def send(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(items)
        self.arrived.set()
        answer = await self.answers.get()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def next_batch(self) -> list[int]:
        async with asyncio.timeout(WAIT):
            while not self.arrived.is_set():
                await self.arrived.wait()
        self.arrived.clear()
        return self.batches[-1]


def doubled(items: list[int]) -> list[int | BaseException]:
    return [2 * i for i in items]


async def test_calls_made_together_while_idle_go_at_once_in_one_batch() -> None:
    peer = Peer()
    batcher: Batcher[int, int] = Batcher(peer.send)
    calls = [asyncio.create_task(batcher.call(i)) for i in range(3)]
    assert await peer.next_batch() == [0, 1, 2]
    await peer.answers.put(doubled([0, 1, 2]))
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(*calls) == [0, 2, 4]


async def test_calls_made_while_a_batch_is_in_flight_go_together_when_it_returns() -> None:
    peer = Peer()
    batcher: Batcher[int, int] = Batcher(peer.send, max_items=3, max_in_flight=1)
    first = asyncio.create_task(batcher.call(0))
    assert await peer.next_batch() == [0]
    later = [asyncio.create_task(batcher.call(i)) for i in range(1, 6)]
    await asyncio.sleep(0)  # the waiting calls had every chance to go: none did
    assert len(peer.batches) == 1
    assert batcher.in_flight == 1

    await peer.answers.put(doubled([0]))
    assert await peer.next_batch() == [1, 2, 3]  # at most max_items
    await peer.answers.put(doubled([1, 2, 3]))
    assert await peer.next_batch() == [4, 5]
    await peer.answers.put(doubled([4, 5]))
    async with asyncio.timeout(WAIT):
        assert await first == 0
        assert await asyncio.gather(*later) == [2, 4, 6, 8, 10]


async def test_a_second_batch_goes_while_the_first_is_in_flight_when_allowed() -> None:
    peer = Peer()
    batcher: Batcher[int, int] = Batcher(peer.send, max_in_flight=2)
    first = asyncio.create_task(batcher.call(0))
    assert await peer.next_batch() == [0]
    second = asyncio.create_task(batcher.call(1))
    assert await peer.next_batch() == [1]
    await peer.answers.put(doubled([0]))
    await peer.answers.put(doubled([1]))
    async with asyncio.timeout(WAIT):
        assert (await first, await second) == (0, 2)


async def test_each_caller_gets_its_own_outcome() -> None:
    peer = Peer()
    batcher: Batcher[int, int] = Batcher(peer.send)
    calls = [asyncio.create_task(batcher.call(i)) for i in range(3)]
    await peer.next_batch()
    await peer.answers.put([10, ValueError("item 1"), 12])
    async with asyncio.timeout(WAIT):
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[0] == 10
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[2] == 12


async def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_still_goes() -> None:
    peer = Peer()
    batcher: Batcher[int, int] = Batcher(peer.send)
    calls = [asyncio.create_task(batcher.call(i)) for i in range(2)]
    await peer.next_batch()
    await peer.answers.put(ConnectionError("down"))
    async with asyncio.timeout(WAIT):
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)

    again = asyncio.create_task(batcher.call(7))
    assert await peer.next_batch() == [7]
    await peer.answers.put([14])
    async with asyncio.timeout(WAIT):
        assert await again == 14


async def test_a_batch_answered_with_the_wrong_count_fails_its_calls() -> None:
    peer = Peer()
    batcher: Batcher[int, int] = Batcher(peer.send)
    calls = [asyncio.create_task(batcher.call(i)) for i in range(2)]
    await peer.next_batch()
    await peer.answers.put([1])
    async with asyncio.timeout(WAIT):
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)


async def test_a_caller_that_gave_up_before_its_batch_went_is_not_sent() -> None:
    peer = Peer()
    batcher: Batcher[int, int] = Batcher(peer.send, max_in_flight=1)
    first = asyncio.create_task(batcher.call(0))
    await peer.next_batch()
    gone = asyncio.create_task(batcher.call(1))
    kept = asyncio.create_task(batcher.call(2))
    await asyncio.sleep(0)
    gone.cancel()
    await peer.answers.put([0])
    assert await peer.next_batch() == [2]
    await peer.answers.put([4])
    async with asyncio.timeout(WAIT):
        assert (await first, await kept) == (0, 4)
    assert gone.cancelled()


async def test_close_fails_what_waits_and_what_comes() -> None:
    peer = Peer()
    batcher: Batcher[int, int] = Batcher(peer.send, max_in_flight=1)
    first = asyncio.create_task(batcher.call(0))
    await peer.next_batch()
    waiting = asyncio.create_task(batcher.call(1))
    await asyncio.sleep(0)
    batcher.close(ConnectionAbortedError("closed"))
    with pytest.raises(ConnectionAbortedError):
        await batcher.call(2)
    await peer.answers.put([0])
    async with asyncio.timeout(WAIT):
        await batcher.drain()
        assert await first == 0
        with pytest.raises(ConnectionAbortedError):
            await waiting
    assert peer.batches == [[0]]


class Unimplemented(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "no"
        )


class OlderPeer:
    """A peer without the batched call; ``upgraded`` gives it one."""

    def __init__(self) -> None:
        self.upgraded = False
        self.batched_calls = 0
        self.unary_calls: list[int] = []

    async def batched(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batched_calls += 1
        if not self.upgraded:
            raise Unimplemented()
        return doubled(items)

    async def unary(self, item: int) -> int:
        self.unary_calls.append(item)
        if item < 0:
            raise ValueError("negative")
        return 2 * item


async def test_a_peer_without_the_batched_call_gets_unary_calls_for_a_while() -> None:
    peer = OlderPeer()
    now = [100.0]
    call: BatchedCall[int, int] = BatchedCall(
        peer.batched, peer.unary, "Test", clock=lambda: now[0]
    )

    async with asyncio.timeout(WAIT):
        outcomes = await asyncio.gather(call(1), call(-1), call(3), return_exceptions=True)
    assert outcomes[0] == 2
    assert outcomes[2] == 6
    assert isinstance(outcomes[1], ValueError)
    assert peer.batched_calls == 1
    assert peer.unary_calls == [1, -1, 3]

    # Meanwhile each call is a unary call of its own, not held back by a batch.
    assert call.batcher.in_flight == 0
    assert await call(4) == 8
    assert peer.batched_calls == 1
    assert call.batcher.in_flight == 0

    peer.upgraded = True
    now[0] += UNBATCHED_FOR
    async with asyncio.timeout(WAIT):
        assert list(await asyncio.gather(call(5), call(6))) == [10, 12]
    assert peer.batched_calls == 2
    assert peer.unary_calls == [1, -1, 3, 4]


async def test_other_failures_of_the_batched_call_are_each_call_s() -> None:
    async def down(items: list[int]) -> Sequence[int | BaseException]:
        raise ItemFailed(grpc.StatusCode.UNAVAILABLE, "down")

    async def unary(item: int) -> int:
        raise AssertionError("must not be called")

    call: BatchedCall[int, int] = BatchedCall(down, unary, "Test")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async with asyncio.timeout(WAIT):
            await call(1)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_item_errors_carry_the_status_a_unary_call_would_have_had() -> None:
    failed = item_failed(grpc.StatusCode.INVALID_ARGUMENT.value[0], "edge kind and id")
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.details() == "edge kind and id"
    assert isinstance(failed, grpc.aio.AioRpcError)
    assert item_failed(999, "?").code() == grpc.StatusCode.UNKNOWN
    assert status_of(failed) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "edge kind and id")
    code, details = status_of(KeyError("x"))
    assert code == grpc.StatusCode.UNKNOWN.value[0]
    assert "KeyError" in details
