"""Device identity on the coap-edge: who is speaking, by DTLS-PSK or OSCORE.

The registry is the single source of truth for device credentials (its ``credentials``
module); the edge asks it for a device's keys over gRPC (``RegistryService.GetDeviceKeys``)
when the device shows up, and keeps them in memory for a short while (:class:`DeviceKeys`):

- **DTLS-PSK** (``coaps://``, :mod:`msgin5g_coap_edge.dtls`): the PSK identity is the
  ueSvcId. tinydtls asks for the key synchronously, in the middle of the handshake, so the
  transport fetches it *before* it hands the ClientKeyExchange record to tinydtls.
- **OSCORE** (RFC 8613) on the plain CoAP port (:class:`OscoreSite`): the request's ``kid``
  (the device's sender id) finds the context. The context lives only in memory
  (:class:`DeviceOscoreContext`): its replay window starts unknown, so the first request a
  replica sees from a device is answered 4.01 with an Echo option (RFC 8613 Appendix B.1.2)
  and the client repeats it; the edge's own sender sequence numbers come in blocks reserved in
  the registry (Appendix B.1.1), so that no replica and no restart ever reuses a nonce.

Either way the request's ``remote.authenticated_claims`` then holds a :class:`DeviceClaim`:
:func:`claimed_ue` reads it, and the resources (``api.py``) check that every document and
path names that UE: 4.03 when it names another, 4.01 without credentials.

Revocation (the registry publishes the ueSvcId on ``<prefix>:credentials:revoked``) drops the
cached keys at once and ends the device's live sessions (:class:`Revocations`); the cached keys
of live DTLS sessions are fetched again every ``refresh`` seconds, so that a rotation's grace
ends sessions that still use the previous key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiocoap import error, oscore  # type: ignore[import-untyped, unused-ignore]
from aiocoap.oscore_sitewrapper import (  # type: ignore[import-untyped, unused-ignore]
    OscoreSiteWrapper,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgin5g.v1 import registry_pb2 as rpb
from msgin5g.v1 import registry_pb2_grpc as reggrpc

log = logging.getLogger("msgin5g.coap_edge.security")

OSCORE_AEAD = "AES-CCM-16-64-128"
OSCORE_HKDF = "sha256"
OSCORE_REPLAY_WINDOW = 32
# Sender sequence numbers reserved at a time; a new block is asked for when 3/4 are used.
OSCORE_SEQUENCE_BLOCK = 4096


@dataclass(frozen=True, slots=True)
class DeviceClaim:
    """What ``remote.authenticated_claims`` holds for an authenticated device."""

    ue_svc_id: str
    method: str  # "dtls-psk" or "oscore"
    generation: int


def _oscore_request(kid: bytes) -> rpb.GetDeviceKeysRequest:
    """The registry call for an OSCORE context: its keys and a block of sequence numbers."""
    return rpb.GetDeviceKeysRequest(oscore_kid=kid, oscore_sequence_block=OSCORE_SEQUENCE_BLOCK)


def claimed_ue(remote: Any) -> str | None:
    """The UE a request's sender proved to be, None for an unauthenticated request."""
    for claim in getattr(remote, "authenticated_claims", None) or ():
        if isinstance(claim, DeviceClaim):
            return claim.ue_svc_id
    return None


@dataclass(slots=True)
class PskEntry:
    """A device's PSKs as the registry gave them: current first, then the previous one with
    the end of its grace (ms)."""

    ue_svc_id: str
    generation: int
    keys: list[tuple[bytes, int | None]]
    fetched: float
    # The key that last completed a handshake, and the one that last failed one (during a
    # rotation's grace the device may hold either; a handshake has room for one).
    last_good: bytes | None = None
    last_bad: bytes | None = None

    def choose(self, now_ms: int) -> tuple[bytes, int | None] | None:
        """The key to offer: not the one that just failed if there is another, else the one
        that worked last, else the current one."""
        valid = [(k, u) for k, u in self.keys if u is None or u > now_ms]
        if not valid:
            return None
        others = [(k, u) for k, u in valid if k != self.last_bad]
        if self.last_bad is not None and others:
            return others[0]
        for key, until in valid:
            if key == self.last_good:
                return key, until
        return valid[0]


class DeviceOscoreContext(oscore.CanProtect, oscore.CanUnprotect, oscore.SecurityContextUtils):  # type: ignore[misc]
    """One device's OSCORE security context, held in memory only (see the module docstring
    for replay protection and sequence numbers). The edge is the server: its sender id is the
    registry's server id, its recipient id the device's."""

    def __init__(
        self,
        ue: str,
        generation: int,
        key: rpb.OscoreKey,
        reserve: Callable[[DeviceOscoreContext], None],
    ) -> None:
        self.alg_aead = oscore.algorithms[OSCORE_AEAD]
        self.hashfun = oscore.hashfunctions[OSCORE_HKDF]
        self.sender_id = bytes(key.server_id)
        self.recipient_id = bytes(key.device_id)
        self.id_context = None
        self.derive_keys(bytes(key.master_salt), bytes(key.master_secret))
        # Left uninitialized: the first request is answered 4.01 + Echo (Appendix B.1.2).
        self.recipient_replay_window = oscore.ReplayWindow(OSCORE_REPLAY_WINDOW, lambda: None)
        self.echo_recovery = secrets.token_bytes(8)
        self.sender_sequence_number = int(key.sequence_start)
        self.sequence_end = int(key.sequence_end)
        self.valid_until_ms = int(key.valid_until_ms) or None
        self.ue_svc_id = ue
        self.generation = generation
        self.authenticated_claims = [DeviceClaim(ue, "oscore", generation)]
        self._reserve = reserve
        self.reserving = False

    def new_sequence_number(self) -> int:
        if self.sender_sequence_number >= self.sequence_end:
            self._reserve(self)
            raise oscore.ContextUnavailable("sender sequence numbers used up; reserving more")
        return int(super().new_sequence_number())

    def post_seqnoincrease(self) -> None:
        left = self.sequence_end - self.sender_sequence_number
        if left * 4 <= OSCORE_SEQUENCE_BLOCK:
            self._reserve(self)

    def take_block(self, start: int, end: int) -> None:
        """A newly reserved block [start, end): the rest of the old one is left unused (the
        numbers between the two blocks are other replicas')."""
        if start >= self.sender_sequence_number:
            self.sender_sequence_number = start
            self.sequence_end = end


class DeviceKeys:
    """Device keys from the registry, cached in memory (LRU, ``max_entries``) for ``ttl``
    seconds, and unknown devices for ``negative_ttl`` (a flood of handshakes for an unknown
    identity costs the registry one call per ``negative_ttl``)."""

    def __init__(
        self,
        registry: reggrpc.RegistryServiceAsyncStub,
        *,
        timeout: float,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.timeout = timeout
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._psks: OrderedDict[str, PskEntry | float] = OrderedDict()
        self._oscore: OrderedDict[bytes, DeviceOscoreContext | float] = OrderedDict()
        self._loading: dict[object, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- DTLS-PSK ------------------------------------------------------------------------------

    def psk_entry(self, identity: str) -> PskEntry | None:
        """What is cached for a PSK identity (fresh or not), without asking anyone."""
        entry = self._psks.get(identity)
        return entry if isinstance(entry, PskEntry) else None

    def psk_failed(self, identity: str, key: bytes | None) -> None:
        """A handshake with ``key`` failed: the device may hold a key we have not seen yet (a
        rotation elsewhere), so the next handshake asks the registry again."""
        entry = self.psk_entry(identity)
        if entry is not None:
            entry.last_bad = key
            entry.fetched = -math.inf

    def psk_worked(self, identity: str, key: bytes | None) -> None:
        entry = self.psk_entry(identity)
        if entry is not None:
            entry.last_good, entry.last_bad = key, None

    def psk_fresh(self, identity: str) -> bool:
        entry = self._psks.get(identity)
        if entry is None:
            return False
        now = self._clock()
        if isinstance(entry, PskEntry):
            return now - entry.fetched < self.ttl
        return now - entry < self.negative_ttl

    async def load_psk(self, identity: str) -> PskEntry | None:
        """The identity's keys, from the cache when fresh, else from the registry (one call
        at a time per identity)."""
        if self.psk_fresh(identity):
            return self.psk_entry(identity)
        return await self._once(("psk", identity), lambda: self._fetch_psk(identity))  # type: ignore[no-any-return]

    async def _fetch_psk(self, identity: str) -> PskEntry | None:
        reply = await self._ask(rpb.GetDeviceKeysRequest(psk_identity=identity), identity)
        old = self.psk_entry(identity)
        if reply is None or not reply.psks:
            self._store(self._psks, identity, self._clock())
            return None
        entry = PskEntry(
            ue_svc_id=reply.ue_svc_id,
            generation=reply.generation,
            keys=[(bytes(p.key), p.valid_until_ms or None) for p in reply.psks],
            fetched=self._clock(),
        )
        if old is not None:
            entry.last_good, entry.last_bad = old.last_good, old.last_bad
        self._store(self._psks, identity, entry)
        return entry

    # -- OSCORE --------------------------------------------------------------------------------

    def oscore_context(self, kid: bytes) -> DeviceOscoreContext | None:
        entry = self._oscore.get(kid)
        if isinstance(entry, DeviceOscoreContext):
            if entry.valid_until_ms is not None and entry.valid_until_ms <= time.time() * 1000:
                return None
            return entry
        return None

    def oscore_fresh(self, kid: bytes) -> bool:
        entry = self._oscore.get(kid)
        if entry is None:
            return False
        if isinstance(entry, DeviceOscoreContext):
            # A context keeps its replay window and sequence numbers: it is not fetched again
            # (revocation drops it; a rotated-out one ends at its grace, see oscore_context).
            return True
        return self._clock() - entry < self.negative_ttl

    async def load_oscore(self, kid: bytes) -> DeviceOscoreContext | None:
        if self.oscore_fresh(kid):
            return self.oscore_context(kid)
        return await self._once(("oscore", kid), lambda: self._fetch_oscore(kid))  # type: ignore[no-any-return]

    async def _fetch_oscore(self, kid: bytes) -> DeviceOscoreContext | None:
        reply = await self._ask(_oscore_request(kid), kid.hex())
        if reply is None or not reply.HasField("oscore"):
            self._store(self._oscore, kid, self._clock())
            return None
        context = DeviceOscoreContext(
            reply.ue_svc_id, reply.generation, reply.oscore, self._reserve_sequence
        )
        self._store(self._oscore, kid, context)
        return context

    def _reserve_sequence(self, context: DeviceOscoreContext) -> None:
        if context.reserving:
            return
        context.reserving = True
        self._spawn(self._reserve(context))

    async def _reserve(self, context: DeviceOscoreContext) -> None:
        try:
            reply = await self._ask(_oscore_request(context.recipient_id), context.ue_svc_id)
            if reply is not None and reply.HasField("oscore"):
                context.take_block(reply.oscore.sequence_start, reply.oscore.sequence_end)
        finally:
            context.reserving = False

    # -- revocation ----------------------------------------------------------------------------

    def forget(self, ue: str) -> None:
        """Drops everything cached for the UE (its credentials were revoked or rotated)."""
        self._psks.pop(ue, None)
        for kid, entry in list(self._oscore.items()):
            if isinstance(entry, DeviceOscoreContext) and entry.ue_svc_id == ue:
                del self._oscore[kid]

    def forget_all(self) -> None:
        self._psks.clear()
        self._oscore.clear()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- plumbing ------------------------------------------------------------------------------

    async def _ask(self, request: rpb.GetDeviceKeysRequest, who: str) -> rpb.DeviceKeys | None:
        try:
            return await self.registry.GetDeviceKeys(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            # The registry is down or has no KEK: refuse now, ask again next time.
            log.warning(
                "device keys unavailable",
                extra={"device": who, "code": exc.code().name, "detail": exc.details()},
            )
            raise KeysUnavailable(exc.code().name) from None

    async def _once(self, key: object, fetch: Callable[[], Awaitable[Any]]) -> Any:
        running = self._loading.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            result = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else has to
            raise
        else:
            future.set_result(result)
            return result
        finally:
            self._loading.pop(key, None)

    def _store(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class KeysUnavailable(Exception):
    """The registry could not tell a device's keys (down, or credentials not configured)."""


class OscoreSite(OscoreSiteWrapper):  # type: ignore[misc]
    """aiocoap's OSCORE server wrapper, with the context looked up (asynchronously, in the
    registry) before aiocoap's synchronous ``find_oscore`` asks for it. Unprotected requests
    go to the inner site as they are; the inner site decides what they may do."""

    def __init__(self, inner: Any, keys: DeviceKeys) -> None:
        super().__init__(inner, _OscoreLookup(keys))
        self.keys = keys

    async def render_to_pipe(self, pipe: Any) -> None:
        try:
            unprotected = oscore.verify_start(pipe.request)
        except oscore.NotAProtectedMessage:
            await self._inner_site.render_to_pipe(pipe)
            return
        except oscore.DecodeError:
            unprotected = None
        kid = None if unprotected is None else unprotected.get(oscore.COSE_KID)
        if isinstance(kid, bytes):
            try:
                await self.keys.load_oscore(kid)
            except KeysUnavailable:
                raise error.ServiceUnavailable("device keys unavailable") from None
        await super().render_to_pipe(pipe)


class _OscoreLookup:
    """The ``server_credentials`` aiocoap's OSCORE wrapper asks (synchronously)."""

    def __init__(self, keys: DeviceKeys) -> None:
        self.keys = keys

    def find_oscore(self, unprotected: dict[int, Any]) -> DeviceOscoreContext:
        kid = unprotected.get(oscore.COSE_KID)
        if unprotected.get(oscore.COSE_KID_CONTEXT) is not None or not isinstance(kid, bytes):
            raise KeyError(kid)
        context = self.keys.oscore_context(kid)
        if context is None:
            raise KeyError(kid)
        return context

    def find_all_used_contextless_oscore_kid(self) -> set[bytes]:
        return set()


@dataclass
class Revocations:
    """Follows the registry's revocation channel: each ueSvcId on it has its cached keys
    dropped and ``on_revoked(ue)`` called (which ends its live sessions)."""

    redis: Redis
    channel: str
    keys: DeviceKeys
    on_revoked: Callable[[str], None]
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                # Whatever was revoked while we were not listening: drop every cached key.
                self.keys.forget_all()
                self._ready.set()
                async for message in pubsub.listen():
                    data = message.get("data")
                    ue = data.decode() if isinstance(data, bytes) else str(data)
                    log.info("credentials revoked: ending sessions", extra={"ueSvcId": ue})
                    self.keys.forget(ue)
                    self.on_revoked(ue)
            except (RedisError, OSError) as exc:
                log.warning("revocation channel lost", extra={"error": str(exc)})
                self._ready.set()
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
