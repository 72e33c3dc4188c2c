"""Make aiocoap 0.4.17 immune to observers that vanish without deregistering.

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
"""

from __future__ import annotations

import errno
import logging
from typing import Any, Final

# aiocoap ships no type information (no py.typed); everything from it is Any here.
# unused-ignore: the workspace mypy configuration already sets ignore_missing_imports.
from aiocoap import meta as _aiocoap_meta  # type: ignore[import-untyped, unused-ignore]
from aiocoap import pipe as _aiocoap_pipe  # type: ignore[import-untyped, unused-ignore]
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
    for function in (_sendmsg, _add_event):
        setattr(function, _MARKER, True)
    _aiocoap_recvmsg.RecvmsgSelectorDatagramTransport.sendmsg = _sendmsg
    _aiocoap_pipe.Pipe._add_event = _add_event
    _LOG.debug("Patched aiocoap %s against vanished observers", installed)
