"""A UE speaking MSGin5G-1 over MQTT 5 (msgin5g.md section 6), on aiomqtt.

    async with MqttUe("ue-1", ("127.0.0.1", 1883)) as ue:
        await ue.register()
        await ue.send("ue-2", "hello")
        async for doc in ue.messages():    # acknowledges each document it yields
            ...

The client subscribes to its downlink topic before it sends anything, so no answer and no
stored message published right after registration can be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import aiomqtt

from msgin5g_client.common import (
    DownlinkDoc,
    RequestFailed,
    Seen,
    ack_for,
    build_msg,
    report_for,
    update_for,
    with_retries,
)
from msgin5g_common import header as h
from msgin5g_common.errors import InvalidDocument


class MqttUe:
    def __init__(
        self,
        ue_svc_id: str,
        broker: tuple[str, int],
        *,
        prefix: str = "msgin5g",
        timeout: float = 10.0,
        username: str | None = None,
        password: str | None = None,
        clean_start: bool = True,
        client_id: str | None = None,
    ) -> None:
        """``client_id`` is the MQTT client identifier, the UE Service ID by default; a tool
        that acts for a UE next to its own connection (the ``msgin5g`` CLI) takes another one,
        or the broker would drop the UE's connection for the newer one."""
        self.ue_svc_id = ue_svc_id
        self.prefix = prefix.rstrip("/")
        self.timeout = timeout
        self.seen = Seen()
        host, port = broker
        self._client = aiomqtt.Client(
            host,
            port,
            identifier=client_id or ue_svc_id,
            username=username,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=clean_start,
            # paho leaves Nagle on: every small publish would wait ~40 ms for an ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self._reader: asyncio.Task[None] | None = None
        # Answers (REGRESP, DEREGRESP, MSGRESP for our MSGs, ...) and downlink documents.
        self._answers: asyncio.Queue[h.Document] = asyncio.Queue()
        self._downlink: asyncio.Queue[DownlinkDoc] = asyncio.Queue()
        self._waiters: dict[tuple[str, str], asyncio.Future[h.Document]] = {}

    @property
    def uplink_topic(self) -> str:
        return f"{self.prefix}/up/{self.ue_svc_id}"

    @property
    def downlink_topic(self) -> str:
        return f"{self.prefix}/ue/{self.ue_svc_id}"

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        await self._client.subscribe(self.downlink_topic, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        async for message in self._client.messages:
            raw = message.payload
            data = raw if isinstance(raw, bytes | bytearray) else str(raw).encode()
            try:
                docs = _documents(bytes(data))
            except InvalidDocument:
                continue
            for doc in docs:
                await self._sort(doc)

    async def _sort(self, doc: h.Document) -> None:
        """A downlink document goes to the receive queue, an answer to whoever waits for it."""
        if isinstance(doc, h.Msg | h.Imdn | h.SegRec):
            await self._downlink.put(doc)
            return
        waiter = self._waiters.pop(_answer_key(doc), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(doc)
        else:
            await self._answers.put(doc)

    # -- raw access -------------------------------------------------------------------------------

    async def publish(self, payload: bytes, topic: str | None = None) -> None:
        """Publishes raw bytes on the uplink topic (or another one), QoS 1."""
        await self._client.publish(topic or self.uplink_topic, payload, qos=1, timeout=self.timeout)

    async def next_answer(self) -> h.Document:
        """The next answer nobody was waiting for (e.g. the refusal of a raw publish)."""
        return await asyncio.wait_for(self._answers.get(), self.timeout)

    async def _exchange(self, doc: h.Uplink, key: tuple[str, str]) -> h.Document:
        future: asyncio.Future[h.Document] = asyncio.get_running_loop().create_future()
        self._waiters[key] = future
        try:
            await self.publish(h.encode(doc))
            return await asyncio.wait_for(future, self.timeout)
        finally:
            self._waiters.pop(key, None)

    # -- MSGin5G-1 ---------------------------------------------------------------------------------

    async def register(self, lifetime: int = h.DEFAULT_LIFETIME, **options: Any) -> h.RegResp:
        reply = await self._exchange(
            h.Reg(self.ue_svc_id, lifetime=lifetime, **options), ("REGRESP", self.ue_svc_id)
        )
        assert isinstance(reply, h.RegResp)
        if reply.result is not h.Result.SUCCESS:
            raise RequestFailed(reply.failure_cause or "UNKNOWN", reply.failure_detail or "")
        return reply

    async def deregister(self) -> h.DeregResp:
        reply = await self._exchange(h.Dereg(self.ue_svc_id), ("DEREGRESP", self.ue_svc_id))
        assert isinstance(reply, h.DeregResp)
        return reply

    async def send(self, dest: str, payload: str | None, **options: Any) -> h.MsgResp:
        """Sends a MSG; returns the server's MSGRESP (ACCEPTED or STORED), raises on failure."""
        return await self.send_msg(build_msg(self.ue_svc_id, dest, payload, **options))

    async def send_msg(self, msg: h.Msg, *, attempts: int = 1) -> h.MsgResp:
        """Sends a MSG and waits for its MSGRESP; with ``attempts`` > 1 a timeout or an
        OVERLOADED answer is retried with the same msgId (see :func:`with_retries`)."""

        async def once() -> h.MsgResp:
            reply = await self._exchange(msg, ("MSGRESP", msg.msg_id))
            assert isinstance(reply, h.MsgResp)
            if reply.result is h.MsgResult.FAILED:
                raise RequestFailed(reply.failure_cause or "UNKNOWN", reply.failure_detail or "")
            return reply

        return await with_retries(once, attempts)

    async def ack(self, doc: DownlinkDoc) -> None:
        await self.publish(h.encode(ack_for(self.ue_svc_id, doc)))

    async def report(self, doc: h.Msg, *, ok: bool = True, cause: str | None = None) -> None:
        """Sends the IMDN its sender asked for (``delivStReqInd``); a refusal arrives as an
        answer (:meth:`next_answer`)."""
        await self.publish(h.encode(report_for(self.ue_svc_id, doc, ok=ok, cause=cause)))

    async def subscribe(self, topics: list[str], until: datetime | None = None) -> h.SubResp:
        """Subscribes to messaging topics (until ``until``, or until unsubscribed)."""
        doc = h.Sub(self.ue_svc_id, tuple(topics), until)
        reply = await self._exchange(doc, ("SUBRESP", self.ue_svc_id))
        assert isinstance(reply, h.SubResp)
        return reply

    async def unsubscribe(self, topics: list[str]) -> h.SubResp:
        doc = h.Unsub(self.ue_svc_id, tuple(topics))
        reply = await self._exchange(doc, ("UNSUBRESP", self.ue_svc_id))
        assert isinstance(reply, h.SubResp)
        return reply

    async def update_message(self, msg_id: str, expr_time: datetime | None) -> h.MsgUpdResp:
        """Changes the expiry of one's own stored message, or discards it (``expr_time`` None)."""
        doc = update_for(self.ue_svc_id, msg_id, expr_time)
        reply = await self._exchange(doc, ("MSGUPDRESP", msg_id))
        assert isinstance(reply, h.MsgUpdResp)
        if reply.result is not h.Result.SUCCESS:
            raise RequestFailed(reply.failure_cause or "UNKNOWN", reply.failure_detail or "")
        return reply

    async def start_observing(self) -> None:
        """Nothing to do: the downlink topic is subscribed from the start (CoapUe's shape)."""

    async def receive(self, *, auto_ack: bool = True) -> DownlinkDoc:
        """The next document the application has not seen (redeliveries are acknowledged
        again and dropped); a MSG that asks for a delivery report gets its IMDN."""
        while True:
            doc = await asyncio.wait_for(self._downlink.get(), self.timeout)
            if await self._take(doc, auto_ack):
                return doc

    async def messages(self, *, auto_ack: bool = True) -> AsyncIterator[DownlinkDoc]:
        while True:
            doc = await self._downlink.get()
            if await self._take(doc, auto_ack):
                yield doc

    async def _take(self, doc: DownlinkDoc, auto_ack: bool) -> bool:
        """Acknowledges, then tells whether the application has not seen the document; it
        counts as seen only once acknowledged (a failed acknowledgement means it comes again)."""
        if auto_ack:
            await self.ack(doc)
        first = self.seen.first_time(doc)
        if first and auto_ack and isinstance(doc, h.Msg) and doc.deliv_st_req_ind:
            await self.report(doc)
        return first


def _answer_key(doc: h.Document) -> tuple[str, str]:
    match doc:
        case h.RegResp():
            return "REGRESP", doc.ue_svc_id
        case h.DeregResp():
            return "DEREGRESP", doc.ue_svc_id
        case h.MsgResp():
            return "MSGRESP", doc.msg_id
        case h.MsgUpdResp():
            return "MSGUPDRESP", doc.msg_id
        case h.SubResp():
            return "UNSUBRESP" if doc.unsub else "SUBRESP", doc.ue_svc_id
    return type(doc).__name__, ""


def _documents(data: bytes) -> list[h.Document]:
    """A downlink publish: one document, or an aggregated one (a JSON array of them)."""
    if data.lstrip()[:1] == b"[":
        return h.decode_downlink_list(data)
    return [h.decode_any(data)]
