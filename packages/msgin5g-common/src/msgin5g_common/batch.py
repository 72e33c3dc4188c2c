"""Concurrent unary calls, sent as batched calls (field notes: one gRPC call costs about as
much CPU as a batch of dozens, on both sides).

A ``Batcher`` takes single calls and sends them in batches, adding no wait of its own: a call
made while nothing is in flight goes out at the end of the current event-loop step (with the
calls made in that same step); calls made while ``max_in_flight`` batches are on their way
wait for one of them to return and then go together, at most ``max_items`` per batch. So an
idle caller sees its call sent at once, and a busy one sends fewer, larger batches.

Each call gets its own result or its own exception: ``send`` returns one outcome per item,
in order, and an exception of the whole batch (the channel is down) becomes every item's.

``batched_grpc`` builds the ``send`` of a batched RPC that also talks to a peer without it
(a rolling upgrade: an older router or edge answers UNIMPLEMENTED): that batch, and every
call for a while after it, goes by the unary RPC instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import grpc

log = logging.getLogger("msgin5g.batch")

T = TypeVar("T")
R = TypeVar("R")

# Seconds a peer that answered UNIMPLEMENTED to a batched RPC is called unary only.
UNBATCHED_FOR = 60.0


class Batcher(Generic[T, R]):
    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_items: int = 100,
        max_in_flight: int = 1,
    ) -> None:
        if max_items < 1 or max_in_flight < 1:
            raise ValueError("max_items and max_in_flight must be at least 1")
        self._send = send
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self._waiting: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._in_flight = 0
        self._scheduled = False
        self._closed: Exception | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, item: T) -> R:
        if self._closed is not None:
            raise self._closed
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._kick()
        return await future

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _kick(self) -> None:
        if self._scheduled or self._in_flight >= self.max_in_flight or not self._waiting:
            return
        if self._closed is not None:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._waiting and self._in_flight < self.max_in_flight and self._closed is None:
            batch: list[tuple[T, asyncio.Future[R]]] = []
            while self._waiting and len(batch) < self.max_items:
                item, future = self._waiting.popleft()
                if not future.done():  # a caller that gave up (cancelled) is not sent
                    batch.append((item, future))
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.create_task(self._deliver(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            outcomes: Sequence[R | BaseException] = await self._send([i for i, _ in batch])
        except Exception as exc:  # the whole batch failed: so did each of its calls
            outcomes = [exc] * len(batch)
        except BaseException:  # cancelled (shutdown): the callers must not hang
            for _, future in batch:
                future.cancel()
            raise
        finally:
            self._in_flight -= 1
            self._kick()
        if len(outcomes) != len(batch):
            lost = RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
            outcomes = [lost] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller gave up meanwhile
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def close(self, error: Exception) -> None:
        """Takes no more calls: those not sent yet, and any made from now on, fail with
        ``error``. The batches in flight finish as their ``send`` does (``drain``)."""
        self._closed = error
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    async def drain(self) -> None:
        """Waits for the batches in flight (each ends by its call's deadline)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))


def closed_channel() -> grpc.aio.AioRpcError:
    """What a call to a closed channel's batcher fails with (as a unary call on a channel
    closed under it fails)."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), "channel closed"
    )


class ItemFailed(grpc.aio.AioRpcError):
    """One item of a batched call failed as its unary call would have (its status code and
    details); the batch itself and the channel are fine."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def item_failed(code: int, details: str) -> ItemFailed:
    return ItemFailed(_CODES.get(code, grpc.StatusCode.UNKNOWN), details)


def outcomes(results: Iterable[Any]) -> list[Any]:
    """The items of a batched answer (``*Result`` messages: a ``response`` or an ``error``
    with a status code and details) as BatchedCall's ``batched`` returns them: each item's
    response, or the ItemFailed its error stands for."""
    return [
        item_failed(r.error.code, r.error.details) if r.HasField("error") else r.response
        for r in results
    ]


def status_of(exc: BaseException) -> tuple[int, str]:
    """The (status code value, details) an item's exception stands for in a batched answer,
    as gRPC would have answered the unary call that raised it."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().value[0], exc.details() or ""
    return grpc.StatusCode.UNKNOWN.value[0], f"Unexpected {type(exc).__name__}: {exc}"


class BatchedCall(Generic[T, R]):
    """A unary RPC whose concurrent calls go as a batched RPC (``batched``: the items in,
    one outcome per item out) through a Batcher. A peer that does not implement the batched
    RPC (an older version during a rolling upgrade: UNIMPLEMENTED) gets the waiting calls,
    and every call for UNBATCHED_FOR seconds after, as ``unary`` calls, each on its own as
    before batching; then the batched RPC is tried again."""

    def __init__(
        self,
        batched: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        unary: Callable[[T], Awaitable[R]],
        what: str,
        *,
        max_items: int = 100,
        max_in_flight: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._batched = batched
        self._unary = unary
        self.what = what
        self._clock = clock
        self._unbatched_until = 0.0
        self.batcher: Batcher[T, R] = Batcher(
            self._send, max_items=max_items, max_in_flight=max_in_flight
        )

    async def __call__(self, item: T) -> R:
        if self._clock() < self._unbatched_until:
            return await self._unary(item)
        return await self.batcher.call(item)

    async def _send(self, items: list[T]) -> Sequence[R | BaseException]:
        if self._clock() >= self._unbatched_until:
            try:
                return await self._batched(items)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
            log.debug("peer without batched calls: one call each", extra={"rpc": self.what})
            self._unbatched_until = self._clock() + UNBATCHED_FOR
        return await asyncio.gather(*(self._unary(item) for item in items), return_exceptions=True)

    def close(self, error: Exception) -> None:
        self.batcher.close(error)

    async def drain(self) -> None:
        await self.batcher.drain()
