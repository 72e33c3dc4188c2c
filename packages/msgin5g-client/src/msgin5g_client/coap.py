"""A UE speaking MSGin5G-1 over CoAP (msgin5g.md section 5), on aiocoap.

async with CoapUe("ue-1", ("127.0.0.1", 5683)) as ue:
    await ue.register()
    await ue.send("ue-2", "hello")
    async for doc in ue.observe():     # acknowledges each document it yields
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat

from msgin5g_client.common import (
    DownlinkDoc,
    RequestFailed,
    Seen,
    ack_for,
    build_msg,
    doc_key,
    report_for,
    update_for,
    with_retries,
)
from msgin5g_common import header as h

JSON = ContentFormat.JSON
# Seconds after which a document still shown is acknowledged again (the first
# acknowledgement was lost); well below the server's shortest retry delay.
REACK_AFTER = 2.0


def write_oscore_context(folder: str | Path, oscore: dict[str, str]) -> str:
    """Writes the ``oscore`` member of the registry's credentials as an aiocoap security
    context folder (for ``CoapUe(oscore_dir=...)``); its secret file is readable by the owner
    only. Returns the folder."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    settings = {
        "sender-id_hex": oscore["senderId"],
        "recipient-id_hex": oscore["recipientId"],
        "algorithm": "AES-CCM-16-64-128",
        "kdf-hashfun": "sha256",
    }
    (path / "settings.json").write_text(json.dumps(settings))
    secret = path / "secret.json"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"secret_hex": oscore["masterSecret"], "salt_hex": oscore["masterSalt"]}, f)
    return str(path)


class CoapUe:
    def __init__(
        self,
        ue_svc_id: str,
        server: tuple[str, int],
        *,
        timeout: float = 10.0,
        psk: str | None = None,
        oscore_dir: str | None = None,
    ) -> None:
        """``psk``: talk ``coaps://`` (DTLS-PSK, identity = the UE Service ID) to ``server``,
        the server's DTLS port. ``oscore_dir``: protect every request with OSCORE, from a
        security context folder as aiocoap keeps them (``settings.json`` with ``sender-id_hex``
        and ``recipient-id_hex``, ``secret.json`` with ``secret_hex`` and ``salt_hex``; aiocoap
        stores its sequence numbers there). Both from the registry's credentials."""
        if psk is not None and oscore_dir is not None:
            raise ValueError("DTLS or OSCORE, not both")
        self.ue_svc_id = ue_svc_id
        host, port = server
        self.base = f"{'coaps' if psk is not None else 'coap'}://{host}:{port}"
        self._psk = psk
        self._oscore_dir = oscore_dir
        self.timeout = timeout
        self.seen = Seen()
        self._acked: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._context: Any = None
        self._received: asyncio.Queue[DownlinkDoc] = asyncio.Queue()
        self._observer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        transports = ["udp6"]
        if self._psk is not None:
            transports = ["tinydtls"]
        elif self._oscore_dir is not None:
            transports = ["oscore", "udp6"]
        self._context = await aiocoap.Context.create_client_context(transports=transports)
        if self._psk is not None:
            self._context.client_credentials.load_from_dict(
                {
                    f"{self.base}/*": {
                        "dtls": {
                            "psk": self._psk.encode(),
                            "client-identity": self.ue_svc_id.encode(),
                        }
                    }
                }
            )
        elif self._oscore_dir is not None:
            self._context.client_credentials.load_from_dict(
                {f"{self.base}/*": {"oscore": {"basedir": self._oscore_dir}}}
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def vanish(self) -> None:
        """Drops the UDP socket without a word to the server, as a device that loses power or
        its NAT binding does (for tests and simulations); the client is unusable afterwards."""
        if self._context is None:
            return
        for interface in self._context.request_interfaces:
            interface.token_interface.message_interface.transport.close()

    async def close(self) -> None:
        await self.stop_observing()
        if self._context is not None:
            await self._context.shutdown()
            self._context = None

    # -- raw access (also for tests of the server's error handling) -------------------------

    async def request(
        self,
        method: Code,
        path: str,
        payload: bytes = b"",
        *,
        content_format: int | None = JSON,
    ) -> Any:
        """Sends one request and returns the aiocoap response (any code)."""
        if self._context is None:
            raise RuntimeError("use CoapUe in 'async with'")
        message = aiocoap.Message(code=method, uri=f"{self.base}/{path}", payload=payload)
        if payload and content_format is not None:
            message.opt.content_format = content_format
        return await asyncio.wait_for(self._context.request(message).response, self.timeout)

    async def _exchange(self, method: Code, path: str, doc: h.Document | None) -> h.Document | None:
        response = await self.request(method, path, h.encode(doc) if doc else b"")
        if not response.code.is_successful():
            raise _failure(response)
        if not response.payload:
            return None
        return h.decode_any(response.payload)

    # -- MSGin5G-1 -------------------------------------------------------------------------------

    async def register(self, lifetime: int = h.DEFAULT_LIFETIME, **options: Any) -> h.RegResp:
        reg = h.Reg(self.ue_svc_id, lifetime=lifetime, **options)
        reply = await self._exchange(Code.POST, "reg", reg)
        assert isinstance(reply, h.RegResp)
        return reply

    async def deregister(self) -> h.DeregResp:
        reply = await self._exchange(Code.DELETE, f"reg/{self.ue_svc_id}", None)
        assert isinstance(reply, h.DeregResp)
        return reply

    async def send(self, dest: str, payload: str | None, **options: Any) -> h.MsgResp:
        """Sends a MSG; returns the server's MSGRESP (ACCEPTED or STORED), raises on failure."""
        return await self.send_msg(build_msg(self.ue_svc_id, dest, payload, **options))

    async def send_msg(self, msg: h.Msg, *, attempts: int = 1) -> h.MsgResp:
        """Sends a MSG and returns the MSGRESP; with ``attempts`` > 1 a timeout or a 5.03
        (OVERLOADED) is retried with the same msgId (see :func:`with_retries`)."""

        async def once() -> h.MsgResp:
            reply = await self._exchange(Code.POST, "msg", msg)
            assert isinstance(reply, h.MsgResp)
            return reply

        return await with_retries(once, attempts)

    async def ack(self, doc: DownlinkDoc) -> None:
        await self._exchange(Code.POST, "msg", ack_for(self.ue_svc_id, doc))

    async def report(self, doc: h.Msg, *, ok: bool = True, cause: str | None = None) -> None:
        """Sends the IMDN its sender asked for (``delivStReqInd``)."""
        await self._exchange(Code.POST, "msg", report_for(self.ue_svc_id, doc, ok=ok, cause=cause))

    async def subscribe(self, topics: list[str], until: datetime | None = None) -> h.SubResp:
        """Subscribes to messaging topics (until ``until``, or until unsubscribed)."""
        reply = await self._exchange(Code.POST, "msg", h.Sub(self.ue_svc_id, tuple(topics), until))
        assert isinstance(reply, h.SubResp)
        return reply

    async def unsubscribe(self, topics: list[str]) -> h.SubResp:
        reply = await self._exchange(Code.POST, "msg", h.Unsub(self.ue_svc_id, tuple(topics)))
        assert isinstance(reply, h.SubResp)
        return reply

    async def update_message(self, msg_id: str, expr_time: datetime | None) -> h.MsgUpdResp:
        """Changes the expiry of one's own stored message, or discards it (``expr_time`` None)."""
        reply = await self._exchange(
            Code.POST, "msg", update_for(self.ue_svc_id, msg_id, expr_time)
        )
        assert isinstance(reply, h.MsgUpdResp)
        return reply

    async def inbox(self) -> list[DownlinkDoc]:
        """The pending documents (acknowledged ones disappear), as the server orders them."""
        response = await self.request(Code.GET, f"inbox/{self.ue_svc_id}")
        if not response.code.is_successful():
            raise _failure(response)
        return _downlink(response.payload)

    async def _take(self, doc: DownlinkDoc, auto_ack: bool) -> bool:
        """Acknowledges a document (a redelivery too: the server waits for it), then tells
        whether the application has not seen it yet. A document counts as seen only once it
        is acknowledged: if the acknowledgement fails it comes again, and is taken then."""
        if auto_ack and self._ack_due(doc):
            await self.ack(doc)
        first = self.seen.first_time(doc)
        if first and auto_ack and isinstance(doc, h.Msg) and doc.deliv_st_req_ind:
            await self.report(doc)
        return first

    def _ack_due(self, doc: DownlinkDoc) -> bool:
        """Whether to acknowledge a document now: the first time, or again when it is still
        shown a while after the last acknowledgement (that one was lost). A notification
        that shows a just-acknowledged document again (it was sent before the
        acknowledgement arrived) is not answered once more."""
        key = doc_key(doc)
        now = time.monotonic()
        last = self._acked.get(key)
        if last is not None and now - last < REACK_AFTER:
            return False
        self._acked[key] = now
        self._acked.move_to_end(key)
        if len(self._acked) > self.seen.capacity:
            self._acked.popitem(last=False)
        return True

    async def observe(
        self, *, auto_ack: bool = True, on_established: asyncio.Future[None] | None = None
    ) -> AsyncIterator[DownlinkDoc]:
        """Observes the inbox; yields each document once (redeliveries are dropped), and
        acknowledges each one as it arrives unless ``auto_ack`` is False."""
        if self._context is None:
            raise RuntimeError("use CoapUe in 'async with'")
        message = aiocoap.Message(
            code=Code.GET, uri=f"{self.base}/inbox/{self.ue_svc_id}", observe=0
        )
        request = self._context.request(message)
        try:
            first = await asyncio.wait_for(request.response, self.timeout)
            if not first.code.is_successful():
                raise _failure(first)
            if on_established is not None and not on_established.done():
                on_established.set_result(None)
            for doc in _downlink(first.payload):
                if await self._take(doc, auto_ack):
                    yield doc
            async for notification in request.observation:
                for doc in _downlink(notification.payload):
                    if await self._take(doc, auto_ack):
                        yield doc
        finally:
            if not request.observation.cancelled:
                request.observation.cancel()

    # -- a queue on top of the observation (the same shape as MqttUe) --------------------------

    async def start_observing(self, *, auto_ack: bool = True) -> None:
        """Observes the inbox in the background; documents arrive through :meth:`receive`.
        Returns once the server has answered the Observe registration."""
        if self._observer is not None:
            return
        established: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                async for doc in self.observe(auto_ack=auto_ack, on_established=established):
                    await self._received.put(doc)
            except Exception as exc:
                if not established.done():
                    established.set_exception(exc)
                raise

        self._observer = asyncio.create_task(run())
        await asyncio.wait_for(asyncio.shield(established), self.timeout)

    async def stop_observing(self) -> None:
        """Ends the background observation (documents already received stay queued)."""
        if self._observer is not None:
            self._observer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._observer
            self._observer = None

    async def receive(self) -> DownlinkDoc:
        """The next document the application has not seen (needs :meth:`start_observing`)."""
        if self._observer is None:
            raise RuntimeError("call start_observing() first")
        return await asyncio.wait_for(self._received.get(), self.timeout)


def _downlink(payload: bytes) -> list[DownlinkDoc]:
    docs = h.decode_downlink_list(payload)
    return [d for d in docs if isinstance(d, h.Msg | h.Imdn | h.SegRec)]


def _failure(response: Any) -> RequestFailed:
    text = response.payload.decode(errors="replace")
    cause, _, detail = text.partition(": ")
    # Max-Age on a 5.03 is the server's hint when to try again (its default, 60, is not one).
    hint = response.opt.max_age if response.code == Code.SERVICE_UNAVAILABLE else None
    return RequestFailed(cause or "UNKNOWN", detail, str(response.code), float(hint or 0))
