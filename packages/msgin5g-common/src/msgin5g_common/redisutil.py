"""The Redis client every service uses: it retries a command on a connection error.

redis-py 8 does not retry by default: after a Redis restart the first command on each pooled
connection failed ("Connection closed by server"), and a device's request failed with it
although Redis was back with its data (append-only file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis._parsers.base import BaseParser
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency; without it redis-py sends
    _hiredis = None

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


Build = Callable[[Any], None]
Queued = list[tuple[Build, "asyncio.Future[list[Any]]"]]
Command = tuple[tuple[Any, ...], dict[str, Any]]

# A pipeline that failed on a broken connection is sent again on a new one, this many times
# (as the clients of ``connect`` retry a command), after a doubling pause.
RETRIES = 5
RETRY_PAUSE = 0.05
RETRY_PAUSE_MAX = 1.0


class AutoPipeline:
    """Pipelines built at the same time go to Redis as one (field notes: a round trip of
    redis-py costs about as much CPU as dozens of commands in one).

    ``execute(build)`` queues what ``build`` puts on a pipeline; at the end of the current
    event-loop step everything queued meanwhile is sent together, non-transactionally, each
    caller's commands in its order and the callers in theirs, so the outcome is what the
    callers' own pipelines, sent one after the other, would have done. Each caller gets its
    own replies (as redis-py's pipeline returns them), or the first error among them: one
    caller's failing command does not fail the others. A reply NOSCRIPT (Redis restarted
    and lost its script cache) makes ``load_scripts`` run and that caller's commands run once
    more, so they must be idempotent or only count (as those of a redis-py pipeline retried
    after a connection error must).

    The commands are collected by a redis-py pipeline and their replies pass through the
    client's own response callbacks, but with ``hiredis`` installed they travel over a
    connection of their own (``_Link``), packed and parsed by hiredis: redis-py spends about
    12 us of CPU per pipelined command, this about 1 (measured on the build machine).
    """

    def __init__(
        self, redis: Redis, load_scripts: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.redis = redis
        self.load_scripts = load_scripts
        self._queued: Queued = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._link = _Link(redis) if _hiredis is not None else None

    async def execute(self, build: Build) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued.append((build, future))
        return await future

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        task = asyncio.create_task(self._run(queued, retry=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, queued: Queued, retry: bool) -> None:
        pipe = self.redis.pipeline(transaction=False)
        parts: list[tuple[Build, asyncio.Future[list[Any]], int, int]] = []
        for build, future in queued:
            start = len(pipe.command_stack)
            try:
                build(pipe)
            except Exception as exc:
                del pipe.command_stack[start:]
                future.set_exception(exc)
                continue
            parts.append((build, future, start, len(pipe.command_stack)))
        try:
            replies = await self._send(pipe) if parts else []
        except BaseException as exc:
            for _, future, _, _ in parts:
                if not future.done():
                    if isinstance(exc, Exception):
                        future.set_exception(exc)
                    else:
                        future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        again: Queued = []
        for build, future, start, end in parts:
            if future.done():
                continue
            mine = replies[start:end]
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if isinstance(error, NoScriptError) and retry and self.load_scripts is not None:
                again.append((build, future))
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(mine)
        if again:
            assert self.load_scripts is not None
            try:
                await self.load_scripts()
            except Exception as exc:
                for _, future in again:
                    future.set_exception(exc)
                return
            await self._run(again, retry=False)

    async def _send(self, pipe: Any) -> list[Any]:
        """The replies to the commands on ``pipe`` (errors in place, not raised)."""
        if self._link is None:
            try:
                replies: list[Any] = await pipe.execute(raise_on_error=False)
            finally:
                await pipe.reset()
            return replies
        commands: list[Command] = pipe.command_stack
        if not commands:
            return []
        raw = await self._link.execute([args for args, _ in commands])
        return [
            self._parsed(reply, args, options)
            for reply, (args, options) in zip(raw, commands, strict=True)
        ]

    def _parsed(self, reply: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """A reply as redis-py's pipeline returns it (``Redis.parse_response``)."""
        if isinstance(reply, ResponseError):
            return options.get(EMPTY_RESPONSE, reply)
        callback = self.redis.response_callbacks.get(args[0])
        if callback is None:
            return reply
        options = {k: v for k, v in options.items() if k not in _NOT_CALLBACK_OPTIONS}
        return callback(reply, **options)

    async def close(self) -> None:
        """Waits for the pipelines on their way, then closes the connection."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._link is not None:
            await self._link.close()


# Options of a queued command that are not for its response callback (redis-py's names).
EMPTY_RESPONSE, NEVER_DECODE = "EMPTY_RESPONSE", "NEVER_DECODE"
_NOT_CALLBACK_OPTIONS = (EMPTY_RESPONSE, NEVER_DECODE, "keys")
# hiredis says "no complete reply yet" with this.
_INCOMPLETE = object()


class _Link:
    """One connection to Redis, made by the client's pool (its handshake: TLS, AUTH, HELLO,
    SELECT, as configured by the URL) and then read and written directly: pipelines go out
    back to back, their replies come back in order and are parsed by hiredis."""

    def __init__(self, redis: Redis) -> None:
        self.pool = redis.connection_pool
        self._conn: Any = None
        self._writer: Any = None
        self._waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self._reading: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._connecting = asyncio.Lock()

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The raw replies (an error reply as a redis-py exception, in place)."""
        data = b"".join([_hiredis.pack_command(args) for args in commands])
        pause = RETRY_PAUSE
        for attempt in range(RETRIES + 1):
            try:
                return await self._exchange(data, len(commands))
            except (RedisConnectionError, OSError) as exc:
                if attempt == RETRIES:
                    raise RedisConnectionError(f"redis: {exc}") from exc
                log.warning("redis connection lost", extra={"error": str(exc), "retryIn": pause})
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_PAUSE_MAX)
        raise AssertionError("unreachable")

    async def _exchange(self, data: bytes, count: int) -> list[Any]:
        writer = self._writer
        if writer is None:
            await self._connect()
            writer = self._writer
            if writer is None:  # broken again while this waited for it
                raise RedisConnectionError("redis: the new connection was lost")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((future, count, []))
        writer.write(data)
        if writer.transport.get_write_buffer_size() > 1 << 20:
            await writer.drain()
        return await future

    async def _connect(self) -> Any:
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            conn: Any = self.pool.make_connection()  # type: ignore[no-untyped-call]
            await conn.connect()
            reader, writer = conn._reader, conn._writer  # private: see the class
            if not isinstance(reader, asyncio.StreamReader) or writer is None:
                await conn.disconnect()
                raise RedisConnectionError("redis: the connection has no stream to use")
            parser = _hiredis.Reader(
                protocolError=InvalidResponse,
                replyError=BaseParser.parse_error,
                notEnoughData=_INCOMPLETE,
            )
            self._conn, self._writer = conn, writer
            self._reading = asyncio.create_task(self._read(conn, reader, parser))
            return self._writer

    async def _read(self, conn: Any, reader: asyncio.StreamReader, parser: Any) -> None:
        error: Exception
        try:
            while data := await reader.read(1 << 16):
                parser.feed(data)
                self._hand_out(parser)
            error = RedisConnectionError("Connection closed by server.")
        except asyncio.CancelledError:
            self._broken(conn, RedisConnectionError("redis: connection closed"))
            raise
        except (RedisConnectionError, OSError) as exc:
            error = exc
        except Exception as exc:  # a protocol error: the stream cannot be trusted any more
            error = RedisConnectionError(f"redis: {exc}")
        self._broken(conn, error)

    def _hand_out(self, parser: Any) -> None:
        """Gives the complete replies parsed so far to the pipelines they answer."""
        push = getattr(_hiredis, "PushNotification", ())
        while (reply := parser.gets()) is not _INCOMPLETE:
            if push and isinstance(reply, push):
                continue  # a server push (RESP3): nobody here asked for it
            if not self._waiting:
                raise RedisConnectionError("redis: a reply nobody asked for")
            future, count, replies = self._waiting[0]
            replies.append(reply)
            if len(replies) == count:
                self._waiting.popleft()
                if not future.done():
                    future.set_result(replies)

    def _broken(self, conn: Any, error: Exception) -> None:
        """The connection is unusable: what waits on it fails (and is sent again on a new
        one by ``execute``)."""
        if self._conn is conn:
            self._conn = self._writer = None
            waiting, self._waiting = self._waiting, deque()
            for future, _, _ in waiting:
                if not future.done():
                    future.set_exception(error)
        closing = asyncio.get_running_loop().create_task(conn.disconnect())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        if self._closing:
            await asyncio.wait(list(self._closing))
