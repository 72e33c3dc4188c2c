"""``coaps://`` for the coap-edge: DTLS 1.2 with pre-shared keys from the registry.

Built on aiocoap 0.4.17's ``tinydtls_server`` transport (tinydtls through DTLSSocket), as
subclasses pinned to that version (:func:`check_version`), which fix its defects here:

- **The port.** aiocoap binds the configured port + 1 (5683 -> 5684) and cannot bind port 0;
  :class:`DtlsInterface` binds exactly the address it is given (port 0 picks a free one).
- **Keys come from the registry.** tinydtls asks for a PSK synchronously, in the middle of
  the handshake, where nothing can be awaited. :class:`DtlsSocket` reads the PSK identity out
  of the ClientKeyExchange record (RFC 4279 section 2: it travels in clear), loads the keys
  (:class:`~msgin5g_coap_edge.security.DeviceKeys`) and only then hands the record, and
  whatever arrived from that peer meanwhile, to tinydtls. The lookup is a dict, not aiocoap's
  linear scan of its credentials map, and an unknown identity fails its handshake.
- **Key length.** DTLSSocket copies the key into tinydtls's 16-byte buffer without checking
  its length (a longer key overwrites the stack): a key over :data:`MAX_PSK_BYTES` is never
  handed over; the handshake fails and the edge logs why.
- **A new handshake from a known address.** aiocoap keeps one DTLS state per ``ip:port`` for
  ever, so a device that restarts, or a second device that gets the same NAT mapping, could
  not handshake again until the server restarted. A ClientHello in epoch 0 from an address
  whose session is established now starts a new session (the old one ends).
- **State is bounded.** aiocoap never purges its per-address state (its purge method is never
  called). Sessions idle for ``idle_timeout`` seconds end, and beyond ``max_sessions`` the
  least recently used one ends.
- **Revocation and rotation.** :meth:`DtlsSocket.end_sessions` ends a device's live sessions
  (close_notify, then the state goes). A session keyed with a rotated-out PSK ends when its
  grace does; sessions check their keys again every ``refresh`` seconds.
- **Rotation grace.** During a rotation the device may hold either key, but a PSK handshake
  has room for one. The key that last completed a handshake for the identity is offered
  first; after a failed handshake the other one is: a device that switched keys needs at most
  one more handshake.

Known limits (tinydtls): PSK identities of at most 32 bytes (``DTLS_PSK_MAX_CLIENT_
IDENTITY_LEN``), the cipher suite TLS_PSK_WITH_AES_128_CCM_8, no connection ID (RFC 9146):
a device whose NAT mapping changes must handshake again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import aiocoap  # type: ignore[import-untyped, unused-ignore]
from aiocoap import error  # type: ignore[import-untyped, unused-ignore]
from aiocoap.transports import (  # type: ignore[import-untyped, unused-ignore]
    tinydtls_server as _tds,
)
from prometheus_client import Counter, Gauge

from msgin5g_coap_edge.security import DeviceClaim, DeviceKeys, KeysUnavailable

log = logging.getLogger("msgin5g.coap_edge.dtls")

PINNED_AIOCOAP_VERSION: Final = "0.4.17"
MAX_PSK_BYTES: Final = 16  # tinydtls DTLS_PSK_MAX_KEY_LEN
MAX_IDENTITY_BYTES: Final = 32  # tinydtls DTLS_PSK_MAX_CLIENT_IDENTITY_LEN

SESSIONS = Gauge("msgin5g_coap_dtls_sessions", "DTLS peer states held by this replica")
HANDSHAKES = Counter(
    "msgin5g_coap_dtls_handshakes_total", "DTLS handshakes that completed or failed", ["result"]
)
ENDED = Counter("msgin5g_coap_dtls_sessions_ended_total", "DTLS sessions ended", ["reason"])

_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_CLIENT_KEY_EXCHANGE: Final = 16
_RECORD_HEADER: Final = 13  # type, version (2), epoch (2), sequence (6), length (2)
_HANDSHAKE_HEADER: Final = 12  # type, length (3), message_seq (2), offset (3), frag length (3)


def check_version() -> None:
    if aiocoap.meta.version != PINNED_AIOCOAP_VERSION:
        raise RuntimeError(
            f"msgin5g_coap_edge.dtls subclasses aiocoap {PINNED_AIOCOAP_VERSION}'s tinydtls "
            f"server, not {aiocoap.meta.version}: review it against the new version"
        )


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a datagram says about a handshake (epoch 0 records only)."""

    client_hello: bool = False
    identity: bytes | None = None  # from a ClientKeyExchange
    # An encrypted handshake record (the client's Finished): once tinydtls has read it, the
    # handshake is complete, or failed (it drops a Finished it cannot decrypt, silently).
    finished: bool = False


def inspect(datagram: bytes) -> Handshake:
    """Finds a ClientHello or a ClientKeyExchange (and its PSK identity) among the datagram's
    DTLS records, and whether an encrypted handshake record (Finished) follows."""
    hello = finished = False
    identity = None
    offset = 0
    while offset + _RECORD_HEADER <= len(datagram):
        kind = datagram[offset]
        epoch = int.from_bytes(datagram[offset + 3 : offset + 5], "big")
        length = int.from_bytes(datagram[offset + 11 : offset + 13], "big")
        body = datagram[offset + _RECORD_HEADER : offset + _RECORD_HEADER + length]
        offset += _RECORD_HEADER + length
        if kind != _HANDSHAKE:
            continue
        if epoch != 0:
            finished = True
            continue
        if len(body) < _HANDSHAKE_HEADER:
            continue
        if body[0] == _CLIENT_HELLO:
            hello = True
        elif body[0] == _CLIENT_KEY_EXCHANGE and len(body) >= _HANDSHAKE_HEADER + 2:
            size = int.from_bytes(body[_HANDSHAKE_HEADER : _HANDSHAKE_HEADER + 2], "big")
            start = _HANDSHAKE_HEADER + 2
            if len(body) >= start + size:
                identity = body[start : start + size]
    return Handshake(hello, identity, finished)


class _PskStore:
    """The dict-like ``pskStore`` DTLSSocket reads (``keys()``, ``in``, ``[]``), for one
    connection: it remembers which key it handed out."""

    def __init__(self, connection: DtlsConnection) -> None:
        self._connection = connection
        self._claims: DeviceClaim | None = None

    def keys(self) -> _PskStore:
        return self

    def __contains__(self, identity: object) -> bool:
        return isinstance(identity, bytes) and self._connection.choose_key(identity) is not None

    def __getitem__(self, identity: bytes) -> bytes:
        key = self._connection.choose_key(identity)
        if key is None:
            raise KeyError(identity)
        return key


class DtlsConnection(_tds._AddressDTLS):  # type: ignore[misc]
    """One peer address's DTLS state, with its device identity (see the module docstring)."""

    def __init__(self, protocol: DtlsSocket, underlying_address: Any) -> None:
        # aiocoap's __init__ builds its SecurityStore from protocol._server_credentials;
        # ours replaces it before the DTLS object is made (it reads pskStore at each lookup).
        super().__init__(protocol, underlying_address)
        self._psk_store = _PskStore(self)
        self._dtls_socket.pskStore = self._psk_store
        self.sockets: DtlsSocket = protocol
        self.connected = False
        self.last_seen = time.monotonic()
        self.waiting: list[bytes] | None = None  # datagrams held while keys load
        self.identity: str | None = None
        self.key: bytes | None = None
        self.valid_until_ms: int | None = None
        self.closed = False
        self.handshake_counted = False
        self.muted = False  # revoked: what the peer sends is dropped until the session ends

    # The authenticated identity: the claim is set when tinydtls takes a key, and counts
    # only once the handshake has completed.
    authenticated_claims = property(
        lambda self: (
            [self._psk_store._claims]
            if self.connected and self._psk_store._claims is not None
            else []
        )
    )

    @property
    def blockwise_key(self) -> Any:
        return (self._underlying_address.blockwise_key, self._psk_store._claims)

    def choose_key(self, identity: bytes) -> bytes | None:
        """The key tinydtls gets for ``identity`` (called synchronously by the handshake)."""
        try:
            name = identity.decode()
        except UnicodeDecodeError:
            return None
        entry = self.sockets.keys.psk_entry(name)
        if entry is None:
            return None
        chosen = entry.choose(int(time.time() * 1000))
        if chosen is None:
            return None
        key, until = chosen
        if len(key) > MAX_PSK_BYTES:
            log.error(
                "PSK too long for tinydtls: handshake refused",
                extra={"ueSvcId": name, "bytes": len(key), "max": MAX_PSK_BYTES},
            )
            return None
        self.identity, self.key, self.valid_until_ms = name, key, until
        self._psk_store._claims = DeviceClaim(entry.ue_svc_id, "dtls-psk", entry.generation)
        return key

    def _read(self, sender: Any, data: bytes) -> int:
        if self.muted:
            return len(data)
        return int(super()._read(sender, data))

    def _event(self, level: int, code: int) -> None:
        if (level, code) == (_tds.LEVEL_NOALERT, _tds.DTLS_EVENT_CONNECTED):
            self.connected = True
            self.sockets.handshake_done(self, ok=True)
            return
        if code == _tds.CODE_CLOSE_NOTIFY:
            # The peer ends the session (coap-client does at exit, as a warning-level alert,
            # which aiocoap only logs): its state goes now, not after the idle timeout.
            self._inject_error(_tds.CloseNotifyReceived())
            return
        if level == _tds.LEVEL_FATAL and not self.connected:
            self.sockets.handshake_done(self, ok=False)
        super()._event(level, code)

    def _inject_error(self, e: Exception) -> None:
        # aiocoap's version pops the address from the table even when a newer connection of
        # the same address is there now (and raises when it is already gone).
        if self.closed:
            return
        self.closed = True
        self._protocol._message_interface._received_exception(self, e)
        self._retransmission_task.cancel()
        address = self._underlying_address.address
        if self._protocol._connections.get(address) is self:
            del self._protocol._connections[address]
        SESSIONS.dec()

    def end(self, reason: str) -> None:
        """Ends the session: a close_notify alert to the peer, then the state goes. ``reason``
        is a metric label (new-handshake, evicted, idle, grace-over, key-invalid, revoked,
        handshake-failed)."""
        if self.closed:
            return
        ENDED.labels("revoked" if self.muted else reason).inc()
        if self.connected:
            with contextlib.suppress(Exception):
                self._dtls_socket.close(self._dtls_session)
        self._inject_error(error.LibraryShutdown(reason))


class DtlsSocket(_tds._DatagramServerSocketSimpleDTLS):  # type: ignore[misc]
    _Address = DtlsConnection

    keys: DeviceKeys
    max_sessions: int
    idle_timeout: float
    refresh: float

    def datagram_received(self, data: bytes, sockaddr: Any) -> None:
        connection: DtlsConnection | None = self._connections.get(sockaddr)
        if connection is not None and connection.waiting is not None:
            connection.waiting.append(data)
            return
        handshake = inspect(data)
        if connection is not None and handshake.client_hello and connection.connected:
            # The peer starts over (it restarted, or another device got the same address).
            connection.end("new-handshake")
            connection = None
        if connection is None:
            while len(self._connections) >= self.max_sessions:
                _, oldest = next(iter(self._connections.items()))
                oldest.end("evicted")
            connection = DtlsConnection(self, sockaddr)
            self._connections[sockaddr] = connection
            SESSIONS.inc()
        else:
            self._connections.move_to_end(sockaddr)
        connection.last_seen = time.monotonic()
        identity = handshake.identity
        if identity is not None and len(identity) <= MAX_IDENTITY_BYTES:
            name = identity.decode(errors="replace")
            if not self.keys.psk_fresh(name):
                connection.waiting = [data]
                self._spawn(self._load_then_feed(connection, name))
                return
        self._feed(connection, data, handshake)

    def _feed(
        self, connection: DtlsConnection, data: bytes, handshake: Handshake | None = None
    ) -> None:
        """Hands a datagram to the connection's tinydtls (what aiocoap's
        GoingThroughMessageDecryption does), and notices a handshake that failed: tinydtls
        reports it by the return value only, not by an event."""
        connection._retransmission_task.cancel()
        result = connection._dtls_socket.handleMessage(connection._dtls_session, data)
        if connection.closed:
            return
        if handshake is None:
            handshake = inspect(data)
        if not connection.connected and (result < 0 or handshake.finished):
            self.handshake_done(connection, ok=False)
            connection.end("handshake-failed")
            return
        connection._retransmission_task = asyncio.create_task(
            connection._run_retransmissions(), name="DTLS server handshake retransmissions"
        )

    async def _load_then_feed(self, connection: DtlsConnection, identity: str) -> None:
        try:
            await self.keys.load_psk(identity)
        except KeysUnavailable:
            pass  # no key: the handshake fails (the device tries again later)
        except Exception:
            log.exception("loading a PSK failed", extra={"ueSvcId": identity})
        waiting, connection.waiting = connection.waiting or [], None
        for datagram in waiting:
            if connection.closed:
                return
            self._feed(connection, datagram)

    def handshake_done(self, connection: DtlsConnection, *, ok: bool) -> None:
        if connection.handshake_counted:
            return
        connection.handshake_counted = True
        HANDSHAKES.labels("ok" if ok else "failed").inc()
        if connection.identity is None:
            log.info("DTLS handshake failed: unknown PSK identity", extra=self._who(connection))
            return
        if ok:
            log.info("DTLS session established", extra=self._who(connection))
            self.keys.psk_worked(connection.identity, connection.key)
        else:
            log.info("DTLS handshake failed", extra=self._who(connection))
            self.keys.psk_failed(connection.identity, connection.key)

    def end_sessions(self, ue: str, reason: str, *, linger: float = 0.0) -> int:
        """Ends every session authenticated as ``ue``; how many there were. Nothing the peer
        sends is served from now on; with ``linger`` the sessions close that many seconds
        later, so that what is being sent to the peer (a last 4.01 notification) leaves."""
        ended = 0
        for connection in list(self._connections.values()):
            claim = connection._psk_store._claims
            if claim is not None and claim.ue_svc_id == ue:
                connection.muted = True
                if linger > 0:
                    asyncio.get_running_loop().call_later(linger, connection.end, reason)
                else:
                    connection.end(reason)
                ended += 1
        return ended

    async def maintain(self) -> None:
        """Ends idle sessions, sessions past their key's grace, and sessions whose key the
        registry no longer accepts (checked every ``refresh`` seconds)."""
        period = max(0.5, min(self.refresh, self.idle_timeout) / 4)
        while True:
            await asyncio.sleep(period)
            await self.check_sessions()

    async def check_sessions(self) -> None:
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        for connection in list(self._connections.values()):
            if now - connection.last_seen > self.idle_timeout:
                connection.end("idle")
            elif connection.valid_until_ms is not None and connection.valid_until_ms <= now_ms:
                log.info("DTLS session ended: key past its grace", extra=self._who(connection))
                connection.end("grace-over")
        identities = {c.identity for c in self._connections.values() if c.connected and c.identity}
        for identity in identities:
            if self.keys.psk_fresh(identity):
                continue
            try:
                entry = await self.keys.load_psk(identity)
            except KeysUnavailable:
                continue  # the registry is away: sessions stay until it answers again
            for connection in list(self._connections.values()):
                if connection.identity != identity or not connection.connected:
                    continue
                keys = dict(entry.keys) if entry is not None else {}
                if connection.key not in keys:
                    log.info("DTLS session ended: key no longer valid", extra=self._who(connection))
                    connection.end("key-invalid")
                else:
                    connection.valid_until_ms = keys[connection.key]

    @staticmethod
    def _who(connection: DtlsConnection) -> dict[str, Any]:
        return {"ueSvcId": connection.identity, "peer": str(connection.hostinfo)}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks: set[asyncio.Task[Any]] = self.__dict__.setdefault("_tasks", set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)


class DtlsInterface(_tds.MessageInterfaceTinyDTLSServer):  # type: ignore[misc]
    _serversocket = DtlsSocket

    @classmethod
    async def create_server(
        cls,
        bind: tuple[str, int],
        ctx: Any,
        log: logging.Logger,
        loop: asyncio.AbstractEventLoop,
        *,
        keys: DeviceKeys,
        max_sessions: int,
        idle_timeout: float,
        refresh: float,
    ) -> DtlsInterface:
        self = cls(ctx, log, loop)
        # Exactly the given address (aiocoap would add 1 to the port).
        self._pool = await self._serversocket.create(bind, log, self._loop, self)
        self._pool.keys = keys
        self._pool.max_sessions = max_sessions
        self._pool.idle_timeout = idle_timeout
        self._pool.refresh = refresh
        self._pool._server_credentials = None
        return self

    async def shutdown(self) -> None:
        # aiocoap reports LibraryShutdown for every session through a message manager that
        # has already shut down (and logs a warning for each): the sessions just go.
        for connection in list(self._pool._connections.values()):
            connection.closed = True
            connection._retransmission_task.cancel()
            SESSIONS.dec()
        self._pool._connections.clear()
        for task in list(self._pool.__dict__.get("_tasks", ())):
            task.cancel()
        self._mman = None
        await self._pool.shutdown()

    @property
    def sockets(self) -> DtlsSocket:
        return self._pool  # type: ignore[no-any-return]

    def port(self) -> int:
        return int(self._pool._transport.get_extra_info("socket").getsockname()[1])


async def add_dtls(
    context: Any,
    bind: tuple[str, int],
    keys: DeviceKeys,
    *,
    max_sessions: int,
    idle_timeout: float,
    refresh: float,
) -> DtlsInterface:
    """Adds a ``coaps://`` server transport to an aiocoap server context."""
    check_version()
    created: list[DtlsInterface] = []

    async def make(mman: Any) -> DtlsInterface:
        interface = await DtlsInterface.create_server(
            bind,
            mman,
            context.log,
            asyncio.get_running_loop(),
            keys=keys,
            max_sessions=max_sessions,
            idle_timeout=idle_timeout,
            refresh=refresh,
        )
        created.append(interface)
        return interface

    await context._append_tokenmanaged_messagemanaged_transport(make)
    return created[0]
