"""MSGin5G-1 over MQTT (msgin5g.md section 6): the uplink subscription and the downlink publisher.

Uplink arrives on ``<prefix>/up/<ueSvcId>`` through a shared subscription, so that every
document is handled by exactly one replica. The topic names the sender (the broker's ACLs
make it trustworthy), and the document must name the same UE. Documents of one UE are handled
in order by one worker; different UEs in parallel. Every answer and every downlink document
goes to ``<prefix>/ue/<ueSvcId>`` with QoS 1.

Memory is bounded: the reader never waits, it offers each publish to a bounded per-UE
backlog (backlog.py) and a publish that does not fit is answered with OVERLOADED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from msgin5g_common import aggregate, metrics
from msgin5g_common import header as h
from msgin5g_common.errors import (
    Cause,
    InvalidDocument,
    Msgin5gError,
    NotAuthorized,
    PayloadTooLarge,
)
from msgin5g_common.uplink import Reply, UplinkHandler, failure_reply
from msgin5g_mqtt_edge.backlog import Backlog
from msgin5g_mqtt_edge.settings import MqttEdgeSettings

log = logging.getLogger("msgin5g.mqtt_edge")

RECONNECT_MIN, RECONNECT_MAX = 0.2, 10.0
# One UE may hold this share of the replica's uplink backlog bytes.
UE_SHARE = 16
# Answers to shed publishes waiting to be published, at most (beyond that a flood gets no
# answer: its sender is not reading them anyway). Each holds at most one document.
REFUSALS = 1024
# Publishes awaiting their PUBACK beyond which aiomqtt warns (a broker that falls behind).
PENDING_PUBLISHES_WARN = 2000


class MqttBridge:
    def __init__(self, settings: MqttEdgeSettings, handler: UplinkHandler, edge_id: str) -> None:
        self.settings = settings
        self.handler = handler
        self.prefix = settings.mqtt_prefix.rstrip("/")
        self.client_id = f"msgin5g-edge-{edge_id}"
        self.uplink = f"$share/{settings.mqtt_share_group}/{self.prefix}/up/#"
        # The seed's group topic: a MSG published on <prefix>/group/<groupSvcId>.
        self.group_uplink = f"$share/{settings.mqtt_share_group}/{self.prefix}/group/#"
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self._backlog: Backlog[tuple[str, bytes]] = Backlog(
            settings.mqtt_ue_backlog,
            settings.mqtt_backlog_bytes // UE_SHARE,
            settings.mqtt_backlog_bytes,
        )
        self._refusals: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue(REFUSALS)
        self._workers = max(1, settings.mqtt_workers)
        self._tasks: list[asyncio.Task[None]] = []

    def downlink_topic(self, ue: str) -> str:
        return f"{self.prefix}/ue/{ue}"

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._refuse()))
        self._tasks.append(asyncio.create_task(self._run()))

    async def stop(self, grace: float = 5.0) -> None:
        """Leaves the shared subscription (so that the broker stops handing this replica's
        share of the uplink to a session nobody reads), finishes what is queued, stops."""
        client = self.client
        if client is not None:
            try:
                await client.unsubscribe(self.uplink, timeout=grace)
                await client.unsubscribe(self.group_uplink, timeout=grace)
            except aiomqtt.MqttError as exc:
                log.warning("could not leave the shared subscription", extra={"error": str(exc)})
        try:
            await asyncio.wait_for(self._backlog.drained(), grace)
        except TimeoutError:
            log.warning("stopping with uplink still queued")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- connection ----------------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.mqtt_session_expiry
        s = self.settings
        client = aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            username=s.mqtt_username or None,
            password=s.mqtt_password or None,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=s.mqtt_keepalive,
            # Resume the session after a reconnect: uplink queued meanwhile is not lost.
            clean_start=False,
            properties=props,
            logger=logging.getLogger("msgin5g.mqtt_edge.client"),
            # paho leaves Nagle on: every small publish would wait ~40 ms for an ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        # aiomqtt logs a warning on every publish made while more than this many wait for
        # their PUBACK (default 10): at a few hundred messages a second that was one warning
        # per message, and the logging cost more CPU than the publishing.
        client.pending_calls_threshold = PENDING_PUBLISHES_WARN
        return client

    async def _run(self) -> None:
        """Connects, subscribes and reads uplink; reconnects with back-off, forever."""
        delay = RECONNECT_MIN
        uplink = self.uplink
        while True:
            try:
                async with self._new_client() as client:
                    await client.subscribe(uplink, qos=1)
                    await client.subscribe(self.group_uplink, qos=1)
                    self.client = client
                    self.connected.set()
                    log.info("broker connected", extra={"subscription": uplink})
                    delay = RECONNECT_MIN
                    async for message in client.messages:
                        self.admit(message.topic.value, _payload_bytes(message.payload))
            except aiomqtt.MqttError as exc:
                log.warning("broker connection lost", extra={"error": str(exc), "retryIn": delay})
            finally:
                self.client = None
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    # -- uplink --------------------------------------------------------------------------------

    def admit(self, topic: str, payload: bytes) -> bool:
        """Queues an uplink publish for the workers, in its UE's turn; a publish over the
        backlog bounds is shed and answered with OVERLOADED. Never waits."""
        # The UE the topic names; a group topic (its sender is only known once parsed), or an
        # unusable one, is a backlog of its own.
        key = self.topic_identity(topic) or topic
        refused = self._backlog.offer(key, (topic, payload), len(payload))
        if refused is None:
            return True
        metrics.LIMITED.labels("mqtt_backlog").inc()
        metrics.ERRORS.labels(Cause.OVERLOADED.value).inc()
        log.debug("uplink shed", extra={"topic": topic, "detail": refused})
        # The answer needs the document's msgType and msgId: kept when it is worth parsing.
        keep = payload if len(payload) <= h.document_limit(self.settings.max_payload) else b""
        try:
            self._refusals.put_nowait((topic, keep, refused))
        except asyncio.QueueFull:
            log.debug("uplink shed without an answer", extra={"topic": topic})
        return False

    async def _worker(self) -> None:
        while True:
            key, (topic, payload) = await self._backlog.take()
            try:
                await self.handle(topic, payload)
            except Exception:
                log.exception("uplink failed", extra={"topic": topic})
            finally:
                self._backlog.done(key)

    async def _refuse(self) -> None:
        """Answers shed publishes: the ``*RESP`` of each with OVERLOADED, to its sender."""
        group_head = f"{self.prefix}/group/"
        while True:
            topic, payload, refused = await self._refusals.get()
            try:
                ue = _ori_of(payload) if topic.startswith(group_head) else None
                ue = ue or self.topic_identity(topic)
                if ue is None:
                    continue
                detail = f"uplink backlog full ({refused}); retry later"
                answer = h.failure_response(payload, Cause.OVERLOADED.value, detail, ue)
                await self.publish(ue, h.encode(answer))
            except Exception:
                log.exception("answering a shed publish failed", extra={"topic": topic})
            finally:
                self._refusals.task_done()

    def topic_identity(self, topic: str) -> str | None:
        """The UE an uplink topic names (``<prefix>/up/<ueSvcId>[/...]``), or None."""
        head = f"{self.prefix}/up/"
        if not topic.startswith(head):
            return None
        ue = topic[len(head) :].split("/", 1)[0]
        return ue if h.valid_id(ue) else None

    async def handle(self, topic: str, payload: bytes) -> None:
        group_head = f"{self.prefix}/group/"
        if topic.startswith(group_head):
            await self._serve_group(topic[len(group_head) :], payload)
            return
        ue = self.topic_identity(topic)
        if ue is None:
            log.warning("uplink on an unusable topic", extra={"topic": topic})
            return
        refused: Reply | None = None
        try:
            limit = aggregate.MAX_UPLINK_ITEMS * h.document_limit(self.settings.max_payload)
            items = aggregate.split_uplink(payload, limit)
        except Msgin5gError as err:
            items, refused = None, failure_reply(payload, err, ue)
        if items is None:
            reply = refused or await self._serve(ue, payload)
            if reply.doc is not None:
                await self.publish(ue, h.encode(reply.doc))
            return
        # An aggregated uplink document: each as if sent alone, the answers in one array.
        answers = []
        for item in items:
            reply = await self._serve(ue, item)
            if reply.doc is not None:
                answers.append(h.encode(reply.doc))
        if answers:
            await self.publish(ue, aggregate.join(answers))

    async def _serve_group(self, group: str, payload: bytes) -> None:
        """A MSG on the group topic: ``destAddr`` may be left out (the topic names the group);
        the sender is named by ``oriAddr`` alone, and the router checks it is a member."""
        try:
            if not h.valid_id(group):
                raise InvalidDocument(f"topic: {group!r} is not a Group Service ID")
            if len(payload) > h.document_limit(self.settings.max_payload):
                raise PayloadTooLarge(f"document of {len(payload)} bytes")
            doc = h.decode_uplink(
                with_group_destination(payload, group), max_payload=self.settings.max_payload
            )
            if not isinstance(doc, h.Msg):
                raise InvalidDocument("msgType: the group topic takes MSG only")
            if doc.dest_addr != h.Address(h.AddrType.GROUP, group):
                raise InvalidDocument("destAddr: must be the group the topic names")
        except Msgin5gError as err:
            sender = h.failure_response(payload, err.cause.value, err.detail)
            log.info("group uplink refused", extra={"group": group, "detail": err.detail})
            ori = _ori_of(payload)
            if ori is not None:
                await self.publish(ori, h.encode(sender))
            return
        reply = await self.handler.handle(doc)
        if reply.doc is not None:
            await self.publish(doc.ori_addr.addr, h.encode(reply.doc))

    async def _serve(self, ue: str, payload: bytes) -> Reply:
        try:
            if len(payload) > h.document_limit(self.settings.max_payload):
                raise PayloadTooLarge(f"document of {len(payload)} bytes")
            doc = h.decode_uplink(payload, max_payload=self.settings.max_payload)
            named = h.sender_of(doc)
            if named != ue:
                raise NotAuthorized(f"the document names {named}, the topic {ue}")
        except Msgin5gError as err:
            log.info(
                "uplink refused",
                extra={"ueSvcId": ue, "cause": err.cause.value, "detail": err.detail},
            )
            return failure_reply(payload, err, ue)
        try:
            return await self.handler.handle(doc)
        except InvalidDocument as err:
            return failure_reply(payload, err, ue)

    # -- downlink ------------------------------------------------------------------------------

    async def publish(self, ue: str, payload: bytes) -> bool:
        client = self.client
        if client is None:
            return False
        try:
            await client.publish(self.downlink_topic(ue), payload, qos=1, timeout=10)
        except aiomqtt.MqttError as exc:
            log.warning("downlink publish failed", extra={"ueSvcId": ue, "error": str(exc)})
            return False
        return True


def with_group_destination(payload: bytes, group: str) -> bytes:
    """The document with ``destAddr`` set to the group when it leaves it out."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return payload  # the decoder reports it
    if isinstance(obj, dict) and "destAddr" not in obj:
        obj["destAddr"] = {"addrType": "GROUP", "addr": group}
        return json.dumps(obj).encode()
    return payload


def _ori_of(payload: bytes) -> str | None:
    """The UE a refused group document names, to send it the refusal (if any can be read)."""
    try:
        obj = json.loads(payload)
        addr = obj["oriAddr"]["addr"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return None
    return addr if isinstance(addr, str) and h.valid_id(addr) else None


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return str(payload).encode()
