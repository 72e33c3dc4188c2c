"""Make aiocoap 0.4.17 immune to observers that vanish without deregistering, and keep its
CON exchanges per peer without scans.

The defect
----------
aiocoap's ``udp6`` transport uses one unconnected UDP socket for all peers and turns on
``IP_RECVERR``/``IPV6_RECVERR`` so that ICMP errors reach it through the socket's error
queue, where each error carries the address of the peer that caused it
(``MessageInterfaceUDP6.datagram_errqueue_received``: correct).

On Linux, an ICMP error on such a socket does a second thing: it sets the socket's pending
error (``sk_err``), and the *next* socket call fails with it, whatever that call is about.
When a notification goes to an observer whose socket is gone, the "port unreachable" comes
back at once, and the next ``sendmsg`` - typically the notification to another, live
observer - fails with ``ECONNREFUSED`` and its datagram is not sent.
``RecvmsgSelectorDatagramTransport.sendmsg`` (``aiocoap/util/asyncio/recvmsg.py``) hands
that error to ``MessageInterfaceUDP6.error_received`` (``aiocoap/transports/udp6.py``), which
blames the peer currently being sent to (its ``_remote_being_sent_to`` context variable) and
dispatches the error to that live peer: the server drops the live observation.

That error is dispatched synchronously, from inside the live observation's own
``Pipe._add_event`` (``aiocoap/pipe.py``), whose callback is still sending. The dispatch ends
the pipe (``_event_callbacks = False``) while the callback returns "keep calling", so
``_add_event`` goes on to ``_any_interest()`` and raises ``TypeError: 'bool' object is not
iterable``. The error path that reports this passes ``exception=`` to ``Logger.error`` and
raises ``TypeError`` a second time, so the render task dies with "Task exception was never
retrieved".

The fix
-------
1. At the point of the defect, ``RecvmsgSelectorDatagramTransport.sendmsg``: a ``sendmsg``
   that fails with an errno that an ICMP error produces is sent again, up to
   ``_MAX_SEND_ATTEMPTS`` times in all. The failed call has consumed the stale pending
   error, so the retry sends the datagram; the error itself is still in the error queue and
   reaches the right peer through ``datagram_errqueue_received``. An error that really
   belongs to this send (no route, datagram too large) comes back on every attempt and is
   then reported as before.
2. ``Pipe._add_event`` stops delivering an event once a callback has ended the pipe, skips
   callbacks that were unregistered during delivery, and logs a discarded exception with
   ``exc_info``. An error that really does belong to the peer being sent to then ends that
   one observation cleanly, without an exception escaping the task.

The patch replaces those two methods with copies of their 0.4.17 code plus the
corrections. :func:`apply` therefore refuses to patch any other aiocoap version.

Exchanges per peer
------------------
``MessageManager`` finds out whether a peer still has an unacknowledged CON message by
scanning all of the server's active exchanges, on every ACK and RST and on every
transmission error. Each CON notification to an observer is such an exchange until it is
acknowledged (up to ~93 s for a sleeping or vanished device), so a fan-out to thousands of
observers cost a scan of thousands of entries per acknowledgement. :class:`_ActiveExchanges`
keeps an index of the message IDs per peer next to the dict, and ``_continue_backlog`` and
``dispatch_error`` (copies of their 0.4.17 code) look there. Measured with 6,000 raw UDP
observers acknowledging their CON notifications after all were sent (``python -m
bench.coap_acks``): the server took 20.6-20.8 s and 8.0-8.1 s of CPU to get through the
acknowledgements (its socket buffer overflowed meanwhile, so some came again only after a
retransmission), 0.77 s and 0.16-0.18 s with the index. tests/integration/
test_aiocoap_exchanges.py counts the address comparisons: 83,000 for 400 observers without
the index, under 4,000 with it.

Task names
----------
``Context.render_to_pipe`` names the task of every incoming request ``"Rendering for %r" %
request``: a full ``repr`` of the message and its peer address, built for every request and
read only by debuggers. The copy here uses a fixed name; measured with a trivial resource
(3,000 GETs, 20 at a time, from another process): 245-269 -> 218-248 us of server CPU per
request.
"""

from __future__ import annotations

import errno
import logging
from typing import Any, Final

from aiocoap import messagemanager as _aiocoap_mm  # type: ignore[import-untyped, unused-ignore]

# aiocoap ships no type information (no py.typed); everything from it is Any here.
# unused-ignore: the workspace mypy configuration already sets ignore_missing_imports.
from aiocoap import meta as _aiocoap_meta  # type: ignore[import-untyped, unused-ignore]
from aiocoap import pipe as _aiocoap_pipe  # type: ignore[import-untyped, unused-ignore]
from aiocoap import protocol as _aiocoap_protocol  # type: ignore[import-untyped, unused-ignore]
from aiocoap.util.asyncio import (  # type: ignore[import-untyped, unused-ignore]
    recvmsg as _aiocoap_recvmsg,
)

__all__ = ["PINNED_AIOCOAP_VERSION", "apply", "is_applied"]

_LOG: Final = logging.getLogger(__name__)

PINNED_AIOCOAP_VERSION: Final = "0.4.17"
"""The only aiocoap version whose code the replaced methods were copied from."""

_MAX_SEND_ATTEMPTS: Final = 4
"""Sends per datagram. Each failed attempt consumes one pending error; an error that belongs
to this send recurs on every attempt."""

# The errnos Linux turns ICMP/ICMPv6 errors into (icmp_err_convert, icmpv6_err_convert,
# PMTU): the only ones that can be a pending error left by an earlier datagram.
_ICMP_ERRNOS: Final[frozenset[int]] = frozenset(
    code
    for code in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        getattr(errno, "ENONET", None),
        errno.ENOPROTOOPT,
        errno.EPROTO,
        errno.EOPNOTSUPP,
        errno.EACCES,
        errno.EMSGSIZE,
    )
    if code is not None
)

_MARKER: Final = "_msgin5g_vanished_observer_fix"


def _sendmsg(
    self: Any,
    data: bytes,
    ancdata: list[tuple[int, int, bytes]],
    flags: int,
    address: tuple[Any, ...],
) -> None:
    """``RecvmsgSelectorDatagramTransport.sendmsg`` that skips pending errors of earlier
    datagrams instead of reporting them as the result of this one."""
    protocol = self._protocol
    sock = self.get_extra_info("socket")
    if protocol is None or sock is None:
        # Closed transport (0.4.17 raised AttributeError from a missing _fatal_error here).
        _LOG.debug("Dropping datagram to %r: the transport is closed", address)
        return
    for attempt in range(1, _MAX_SEND_ATTEMPTS + 1):
        try:
            sock.sendmsg((data,), ancdata, flags, address)
        except OSError as exc:
            if exc.errno in _ICMP_ERRNOS and attempt < _MAX_SEND_ATTEMPTS:
                _LOG.debug(
                    "sendmsg to %r failed with %s (attempt %d); sending again, as this can "
                    "be the pending ICMP error of an earlier datagram to another peer",
                    address,
                    exc,
                    attempt,
                )
                continue
            protocol.error_received(exc)
        return


def _add_event(self: Any, event: Any) -> None:
    """``Pipe._add_event`` that tolerates callbacks ending the pipe while it delivers."""
    if self._event_callbacks is False:
        if event.exception is not None:
            self.log.error(
                "Discarded exception in %r added after %r has ended",
                event,
                self,
                exc_info=event.exception,
            )
        else:
            # Happens, for example, when a proxy receives multiple requests on a single token
            self.log.warning("Response %r added after %r has already ended", event, self)
        return

    for entry in list(self._event_callbacks):
        if entry not in self._event_callbacks:
            # Unregistered by an earlier callback of this same event.
            continue
        callback, _is_interest = entry
        keep_calling = callback(event)
        if self._event_callbacks is False:
            # The pipe ended inside the callback (for example, an error was dispatched
            # synchronously from the send the callback made); every callback has already
            # received the final event.
            return
        if not keep_calling and entry in self._event_callbacks:
            self._event_callbacks.remove(entry)

    if not self._any_interest():
        self._end()


class _ActiveExchanges(dict[Any, Any]):
    """``MessageManager._active_exchanges`` ({(remote, message ID): (monitor, timeout)}) with
    an index of the message IDs per remote kept alongside, so that "which exchanges does this
    remote have" is a lookup. aiocoap 0.4.17 answers it by scanning every active exchange of
    the server: once for every ACK or RST of a CON message (``_continue_backlog``) and for
    every transmission error (``dispatch_error``). A CON notification stays active until the
    observer acknowledges it, up to ~93 s for one that sleeps or vanished, so with thousands
    of observers each ACK cost a scan of thousands of entries: a fan-out to N observers was
    quadratic in N. The dict is only written through ``d[key] = value`` and ``d.pop(key)`` by
    MessageManager 0.4.17, and those keep the index."""

    def __init__(self) -> None:
        super().__init__()
        self.by_remote: dict[Any, set[int]] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.by_remote.setdefault(key[0], set()).add(key[1])

    def pop(self, key: Any, *default: Any) -> Any:
        if key not in self:
            return super().pop(key, *default)
        value = super().pop(key)
        self._unindex(key)
        return value

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._unindex(key)

    def _unindex(self, key: Any) -> None:
        remote, mid = key
        mids = self.by_remote.get(remote)
        if mids is not None:
            mids.discard(mid)
            if not mids:
                del self.by_remote[remote]

    def clear(self) -> None:
        super().clear()
        self.by_remote.clear()


_original_mm_init = _aiocoap_mm.MessageManager.__init__


def _mm_init(self: Any, *args: Any, **kwargs: Any) -> None:
    """``MessageManager.__init__``, then the indexed dict of active exchanges."""
    _original_mm_init(self, *args, **kwargs)
    assert not self._active_exchanges
    self._active_exchanges = _ActiveExchanges()


def _continue_backlog(self: Any, remote: Any) -> None:
    """``MessageManager._continue_backlog`` of aiocoap 0.4.17 with the scan for an active
    exchange of ``remote`` replaced by a lookup in the index."""
    if remote not in self._backlogs:
        raise AssertionError("backlogs/active_exchange relation violated (implementation error)")
    # The first iteration always happens; further ones only if the queued messages were NONs.
    while remote not in self._active_exchanges.by_remote:
        if self._backlogs[remote] != []:
            next_message, messageerror_monitor = self._backlogs[remote].pop(0)
            self._send_initially(next_message, messageerror_monitor)
        else:
            del self._backlogs[remote]
            break


def _dispatch_error(self: Any, error: Any, remote: Any) -> None:
    """``MessageManager.dispatch_error`` of aiocoap 0.4.17 with the exchanges of ``remote``
    taken from the index instead of a scan of all of them."""
    if self._active_exchanges is None:
        self.log.warning(
            "Internal shutdown sequence mismatch: error dispatched through messagemanager "
            "after shutown"
        )
        return
    self.log.debug("Incoming error %s from %r", error, remote)
    # Requests first, then exchanges: cancelling an exchange would send what waits for it.
    self.token_manager.dispatch_error(error, remote)
    for mid in list(self._active_exchanges.by_remote.get(remote, ())):
        _monitor, cancellable_timeout = self._active_exchanges.pop((remote, mid))
        cancellable_timeout.cancel()
        # The monitor is not called: the token manager has been told already.
    self._backlogs.pop(remote, ())


def _render_to_pipe(self: Any, pipe: Any) -> None:
    """``Context.render_to_pipe`` of aiocoap 0.4.17 with a fixed task name."""
    _aiocoap_pipe.run_driving_pipe(
        _aiocoap_pipe.error_to_message(pipe, self.log),
        self._render_to_pipe(pipe),
        name="Rendering a request",
    )


def is_applied() -> bool:
    """Whether :func:`apply` has patched the loaded aiocoap."""
    transport_cls = _aiocoap_recvmsg.RecvmsgSelectorDatagramTransport
    return bool(getattr(transport_cls.sendmsg, _MARKER, False))


def apply() -> None:
    """Patch aiocoap in place; idempotent. Call it before creating any aiocoap context.

    Does nothing but log a warning if the installed aiocoap is not the pinned version,
    because the replaced methods are copies of that version's code.
    """
    installed = _aiocoap_meta.version
    if installed != PINNED_AIOCOAP_VERSION:
        _LOG.warning(
            "Not patching aiocoap %s: the vanished-observer fix is written for aiocoap %s "
            "only; check whether the defect is still present and update the fix.",
            installed,
            PINNED_AIOCOAP_VERSION,
        )
        return
    if is_applied():
        return
    patches = (_sendmsg, _add_event, _mm_init, _continue_backlog, _dispatch_error, _render_to_pipe)
    for function in patches:
        setattr(function, _MARKER, True)
    _aiocoap_recvmsg.RecvmsgSelectorDatagramTransport.sendmsg = _sendmsg
    _aiocoap_pipe.Pipe._add_event = _add_event
    manager = _aiocoap_mm.MessageManager
    manager.__init__ = _mm_init
    manager._continue_backlog = _continue_backlog
    manager.dispatch_error = _dispatch_error
    _aiocoap_protocol.Context.render_to_pipe = _render_to_pipe
    _LOG.debug("Patched aiocoap %s (vanished observers, exchange index, task names)", installed)
