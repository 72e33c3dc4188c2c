"""The CoAP resources of MSGin5G-1 (msgin5g.md section 5).

One path-capable root resource serves ``/reg``, ``/reg/{ueSvcId}``, ``/msg`` and
``/inbox/{ueSvcId}`` (with Observe). Errors are 4.xx/5.xx responses whose diagnostic payload
is ``CAUSE: detail`` (text, RFC 7252 section 5.5.2).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from aiocoap import Message, error, interfaces, resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat

from msgin5g_coap_edge.push import Pusher
from msgin5g_coap_edge.security import claimed_ue
from msgin5g_common import aggregate, metrics
from msgin5g_common import header as h
from msgin5g_common.errors import (
    COAP_CODE,
    Cause,
    InvalidDocument,
    Msgin5gError,
    NotAuthorized,
    PayloadTooLarge,
    UnsupportedContentFormat,
)
from msgin5g_common.ratelimit import RateLimited
from msgin5g_common.uplink import Reply, UplinkHandler, failure_reply

log = logging.getLogger("msgin5g.coap_edge")

JSON = ContentFormat.JSON


class NotFound(Msgin5gError):
    cause = Cause.UNKNOWN_RECIPIENT


class MethodNotAllowed(Exception):
    pass


class NotAuthenticated(Msgin5gError):
    """A request without credentials where they are required: 4.01 (RFC 7252 5.9.2.2)."""

    cause = Cause.NOT_AUTHORIZED


def coap_code(cause: Cause) -> Code:
    cls, detail = COAP_CODE[cause]
    return Code(cls << 5 | detail)


def error_message(cause: Cause, detail: str) -> Message:
    return Message(code=coap_code(cause), payload=f"{cause.value}: {detail}".encode())


def json_message(code: Code, payload: bytes) -> Message:
    return Message(code=code, payload=payload, content_format=JSON)


class BodyTooLarge(error.RenderableError):  # type: ignore[misc]
    """A blockwise (Block1) request body over the limit, refused at the block that crosses
    it (or at the first, from the Size1 the client announced): 4.13 with the limit in Size1
    (RFC 7959 section 2.9.3)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__()
        self.size = size
        self.limit = limit

    def to_message(self) -> Message:
        detail = f"request body of {self.size} bytes or more, maximum {self.limit}"
        response = error_message(Cause.PAYLOAD_TOO_LARGE, detail)
        response.opt.size1 = self.limit
        return response


class Observers:
    """The live Observe relations on ``/inbox/{ueSvcId}`` of this replica, per UE."""

    def __init__(self, on_last_gone: Callable[[str], None]) -> None:
        self._by_ue: dict[str, set[object]] = {}
        self._on_last_gone = on_last_gone

    def add(self, ue: str, observation: object) -> Callable[[], None]:
        self._by_ue.setdefault(ue, set()).add(observation)
        metrics.OBSERVERS.inc()

        def cancel() -> None:
            group = self._by_ue.get(ue)
            if group is None or observation not in group:
                return
            group.discard(observation)
            metrics.OBSERVERS.dec()
            if not group:
                del self._by_ue[ue]
                self._on_last_gone(ue)

        return cancel

    def keys_of(self, prefix: str) -> list[str]:
        """Keys "<prefix>\x1f..." (topic observations of one UE)."""
        head = f"{prefix}{SEP}"
        return [key for key in self._by_ue if key.startswith(head)]

    def holds(self, ue: str) -> bool:
        return ue in self._by_ue

    def of(self, ue: str) -> list[object]:
        return list(self._by_ue.get(ue, ()))

    def ues(self) -> list[str]:
        return list(self._by_ue)

    def count(self) -> int:
        return sum(len(v) for v in self._by_ue.values())


class CoapApi(resource.Resource, interfaces.ObservableResource, resource.PathCapable):  # type: ignore[misc]
    def __init__(
        self,
        handler: UplinkHandler,
        max_payload: int,
        notification_bytes: int,
        push_timeout: float = 10.0,
        *,
        require_auth: bool = False,
    ) -> None:
        """``require_auth``: every request must come over DTLS or OSCORE (else 4.01); an
        authenticated request may only name its own UE (else 4.03), in either mode."""
        super().__init__()
        self.require_auth = require_auth
        self.handler = handler
        self.pusher = Pusher(handler, push_timeout)
        self.max_payload = max_payload
        self.notification_bytes = notification_bytes
        self._tasks: set[asyncio.Task[None]] = set()
        self.observers = Observers(self._detach_later)
        # Observations of /topic/{topic}?ue={ueSvcId}, keyed "<ue>\x1f<topic>": each holds the
        # UE's subscription to the topic for as long as it lives.
        self.topic_observers = Observers(self._unsubscribe_later)

    # -- aiocoap entry points ------------------------------------------------------------------

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        """aiocoap calls this for every block before adding it to its assembly (Block1Spool),
        which neither bounds the size of a body nor reads Size1: a body over the limit is
        refused here, at the first block that announces (Size1) or reaches a size over it."""
        block1 = request.opt.block1
        if block1 is not None:
            limit = self.body_limit(request.opt.uri_path)
            size = max(request.opt.size1 or 0, block1.start + len(request.payload))
            if size > limit:
                metrics.ERRORS.labels(Cause.PAYLOAD_TOO_LARGE.value).inc()
                raise BodyTooLarge(size, limit)
        return True

    def body_limit(self, path: tuple[str, ...]) -> int:
        """The largest request body worth assembling: an aggregated document on /msg, one
        document anywhere else."""
        one = h.document_limit(self.max_payload)
        return aggregate.MAX_UPLINK_ITEMS * one if tuple(path) == ("msg",) else one

    async def add_observation(self, request: Message, serverobservation: object) -> None:
        path = request.opt.uri_path
        if not self._allowed(request, path[1] if len(path) == 2 else "", "topic" in path[:1]):
            return  # not accepted: render answers 4.01/4.03 and the relation never starts
        if len(path) == 2 and path[0] == "inbox" and h.valid_id(path[1]):
            cancel = self.observers.add(path[1], serverobservation)
            serverobservation.accept(cancel)  # type: ignore[attr-defined]
        elif len(path) == 2 and path[0] == "topic" and h.valid_id(path[1]):
            ue = _query(request, "ue")
            if ue is not None and h.valid_id(ue):
                cancel = self.topic_observers.add(f"{ue}{SEP}{path[1]}", serverobservation)
                serverobservation.accept(cancel)  # type: ignore[attr-defined]

    async def render(self, request: Message) -> Message:
        try:
            return await self._route(request)
        except MethodNotAllowed:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        except NotAuthenticated as err:
            return Message(
                code=Code.UNAUTHORIZED, payload=f"{err.cause.value}: {err.detail}".encode()
            )
        except RateLimited as err:
            return _retry_later(error_message(err.cause, err.detail), err.retry_after)
        except Msgin5gError as err:
            return error_message(err.cause, err.detail)
        except grpc.aio.AioRpcError as exc:
            # The router or registry did not answer (restarting, overloaded): retry later.
            log.warning("backend call failed", extra={"code": exc.code().name})
            response = error_message(Cause.OVERLOADED, f"backend unavailable: {exc.code().name}")
            return _retry_later(response, 1)
        except Exception:
            log.exception("request failed", extra={"path": "/".join(request.opt.uri_path)})
            return error_message(Cause.INTERNAL_ERROR, "internal error")

    # -- routing -------------------------------------------------------------------------------

    def _allowed(self, request: Message, path_ue: str, topic: bool) -> bool:
        try:
            self._authorize(request, (_query(request, "ue") or "") if topic else path_ue)
        except Msgin5gError:
            return False
        return True

    def _authorize(self, request: Message, ue: str) -> None:
        """The request may act as ``ue``: its sender proved to be that UE, or (open mode) did
        not authenticate at all."""
        claimed = claimed_ue(request.remote)
        if claimed is None:
            if self.require_auth:
                metrics.ERRORS.labels(Cause.NOT_AUTHORIZED.value).inc()
                raise NotAuthenticated(
                    "use coaps:// (DTLS-PSK) or OSCORE with the UE's credentials"
                )
            return
        if claimed != ue:
            metrics.ERRORS.labels(Cause.NOT_AUTHORIZED.value).inc()
            log.warning("document names another UE", extra={"ueSvcId": claimed, "named": ue})
            raise NotAuthorized(f"authenticated as {claimed}, not {ue or 'nobody'}")

    async def _route(self, request: Message) -> Message:
        path = request.opt.uri_path
        code = request.code
        if claimed_ue(request.remote) is None:
            self._authorize(request, "")  # where credentials are required: 4.01 before parsing
        match path:
            case ("reg",):
                _expect(code, Code.POST)
                return await self._register(request)
            case ("reg", ue):
                _expect(code, Code.DELETE)
                self._authorize(request, _path_id(ue))
                return await self._deregister(_path_id(ue))
            case ("msg",):
                _expect(code, Code.POST)
                return await self._uplink(request)
            case ("inbox", ue):
                _expect(code, Code.GET)
                self._authorize(request, _path_id(ue))
                return await self._inbox(_path_id(ue), request.opt.observe == 0)
            case ("topic", topic):
                _expect(code, Code.GET)
                return await self._topic(_path_id(topic), request)
        raise NotFound(f"no resource /{'/'.join(path)}")

    def _decode(self, request: Message) -> h.Uplink:
        fmt = request.opt.content_format
        if fmt is not None and fmt != JSON:
            raise UnsupportedContentFormat(f"Content-Format {int(fmt)}: only 50 (application/json)")
        if len(request.payload) > h.document_limit(self.max_payload):
            raise PayloadTooLarge(f"document of {len(request.payload)} bytes")
        return h.decode_uplink(request.payload, max_payload=self.max_payload)

    async def _register(self, request: Message) -> Message:
        doc = self._decode(request)
        if not isinstance(doc, h.Reg):
            raise InvalidDocument("msgType: /reg takes REG")
        self._authorize(request, doc.ue_svc_id)
        push = doc.delivery_mode is h.DeliveryMode.PUSH
        if push:
            # Known before the registry answers: the registration attaches the UE to this
            # replica and its waiting documents come right away, by push.
            self.pusher.remember(doc.ue_svc_id, request.remote)
        else:
            self.pusher.forget(doc.ue_svc_id)
        reply = await self.handler.handle(doc)
        response = self._reply_message(reply, Code.CREATED)
        if reply.cause is None:
            response.opt.location_path = ("reg", doc.ue_svc_id)
        elif push:
            self.pusher.forget(doc.ue_svc_id)
        return response

    async def _deregister(self, ue: str) -> Message:
        self.pusher.forget(ue)
        return self._reply_message(await self.handler.handle(h.Dereg(ue)), Code.DELETED)

    async def _uplink(self, request: Message) -> Message:
        limit = aggregate.MAX_UPLINK_ITEMS * h.document_limit(self.max_payload)
        items = aggregate.split_uplink(request.payload, limit)
        if items is not None:
            return await self._aggregated(request, items)
        doc = self._decode(request)
        if isinstance(doc, h.Reg | h.Dereg):
            raise InvalidDocument(f"msgType: {type(doc).__name__.upper()} goes to /reg")
        self._authorize(request, h.sender_of(doc))
        self.pusher.refresh(h.sender_of(doc), request.remote)
        return self._reply_message(await self.handler.handle(doc), Code.CHANGED)

    async def _aggregated(self, request: Message, items: list[bytes]) -> Message:
        """An aggregated uplink document: each document as if POSTed alone, in order; the
        answer is 2.04 with the JSON array of their answers (failures included)."""
        fmt = request.opt.content_format
        if fmt is not None and fmt != JSON:
            raise UnsupportedContentFormat(f"Content-Format {int(fmt)}: only 50 (application/json)")
        answers = []
        for item in items:
            try:
                doc = h.decode_uplink(item, max_payload=self.max_payload)
                if isinstance(doc, h.Reg | h.Dereg):
                    raise InvalidDocument(f"msgType: {type(doc).__name__.upper()} goes to /reg")
                self._authorize(request, h.sender_of(doc))
                self.pusher.refresh(h.sender_of(doc), request.remote)
                reply = await self.handler.handle(doc)
            except Msgin5gError as err:
                reply = failure_reply(item, err)
            if reply.doc is not None:
                answers.append(h.encode(reply.doc))
        return json_message(Code.CHANGED, aggregate.join(answers))

    async def _inbox(self, ue: str, observe: bool) -> Message:
        self.handler.limits.admit(ue)
        if observe:
            # Observing is showing up: this replica now serves the UE's downlink.
            await self.handler.attach(ue, flush=False)
        docs = await self.handler.inbox(ue)
        return json_message(Code.CONTENT, self.render_inbox(docs))

    async def _topic(self, topic: str, request: Message) -> Message:
        """GET /topic/{topic}?ue={ueSvcId}: the UE's pending messages on the topic; observing
        it subscribes the UE for as long as the observation lives."""
        ue = _query(request, "ue")
        if ue is None:
            raise InvalidDocument("query: ?ue={ueSvcId} is required (the subscriber)")
        ue = _path_id(ue)
        self._authorize(request, ue)
        self.handler.limits.admit(ue)
        if request.opt.observe == 0:
            await self.handler.subscribe(ue, [topic], None)
            await self.handler.attach(ue, flush=False)
        docs = await self.handler.inbox(ue)
        return json_message(Code.CONTENT, self.render_inbox(_on_topic(docs, topic)))

    def render_inbox(self, docs: list[h.Downlink]) -> bytes:
        """A JSON array of documents, cut to what fits one notification (at least one)."""
        items: list[bytes] = []
        size = 2
        for doc in docs:
            item = h.encode(doc)
            if items and size + len(item) + 1 > self.notification_bytes:
                break
            items.append(item)
            size += len(item) + 1
        return b"[" + b",".join(items) + b"]"

    def _reply_message(self, reply: Reply, success: Code) -> Message:
        if reply.cause is not None:
            response = error_message(reply.cause, reply.detail)
            # Every 5.03 carries its retry hint (msgin5g.md section 5).
            return _retry_later(response, reply.retry_after) if reply.retry_after else response
        if reply.doc is None:
            return Message(code=success)
        return json_message(success, h.encode(reply.doc))

    # -- downlink ------------------------------------------------------------------------------

    def notify(self, ue: str, docs: list[h.Downlink]) -> bool:
        """Sends the UE's inbox to each of its inbox observers, and its topic messages to its
        topic observers; False when it has no observer here."""
        notified = False
        observations = self.observers.of(ue)
        if observations:
            payload = self.render_inbox(docs)
            for observation in observations:
                observation.trigger(json_message(Code.CONTENT, payload))  # type: ignore[attr-defined]
            notified = True
        for key in self.topic_observers.keys_of(ue):
            on_topic = _on_topic(docs, key.split(SEP, 1)[1])
            if on_topic:
                payload = self.render_inbox(on_topic)
                for observation in self.topic_observers.of(key):
                    observation.trigger(json_message(Code.CONTENT, payload))  # type: ignore[attr-defined]
                notified = True
        if notified:
            for doc in docs:
                metrics.MESSAGES.labels("out", type(doc).__name__.upper(), "coap").inc()
            return True
        # No observation here: a push UE gets its documents by CoAP POST.
        return self.pusher.push(ue, docs)

    def end_sessions(self, ue: str) -> int:
        """Ends the UE's Observe relations (a 4.01 notification is the last one) and forgets
        its push address: its credentials were revoked. How many relations ended."""
        ended = 0
        gone = Message(code=Code.UNAUTHORIZED, payload=b"NOT_AUTHORIZED: credentials revoked")
        observations = self.observers.of(ue)
        for key in self.topic_observers.keys_of(ue):
            observations.extend(self.topic_observers.of(key))
        for observation in observations:
            observation.trigger(gone)  # type: ignore[attr-defined]
            ended += 1
        self.pusher.forget(ue)
        return ended

    def _unsubscribe_later(self, key: str) -> None:
        ue, topic = key.split(SEP, 1)
        task = asyncio.get_running_loop().create_task(self._unsubscribe(ue, topic))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unsubscribe(self, ue: str, topic: str) -> None:
        try:
            await self.handler.unsubscribe(ue, [topic])
        except Exception:
            log.warning("unsubscribe failed", extra={"ueSvcId": ue, "topic": topic}, exc_info=True)

    def _detach_later(self, ue: str) -> None:
        task = asyncio.get_running_loop().create_task(self._detach(ue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _detach(self, ue: str) -> None:
        try:
            await self.handler.detach(ue)
        except Exception:
            log.warning("detach failed", extra={"ueSvcId": ue}, exc_info=True)


SEP = "\x1f"


def _retry_later(response: Message, seconds: int) -> Message:
    """A 5.03 with its retry hint: Max-Age, the seconds before the client should try again
    (RFC 7252 section 5.9.3.4)."""
    response.opt.max_age = seconds
    return response


def _query(request: Message, name: str) -> str | None:
    for item in request.opt.uri_query:
        key, _, value = item.partition("=")
        if key == name:
            return str(value)
    return None


def _on_topic(docs: list[h.Downlink], topic: str) -> list[h.Downlink]:
    wanted = h.Address(h.AddrType.TOPIC, topic)
    return [d for d in docs if isinstance(d, h.Msg) and d.dest_addr == wanted]


def _expect(code: Code, method: Code) -> None:
    if code != method:
        raise MethodNotAllowed


def _path_id(value: str) -> str:
    if not h.valid_id(value):
        raise InvalidDocument("path: ueSvcId must be 1-128 characters of [A-Za-z0-9._~@:+-]")
    return value
