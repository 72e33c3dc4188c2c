"""RouterService over gRPC: acceptance, acknowledgement, attach/detach and inbox reads."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import router_pb2 as rpb
from msgin5g.v1 import router_pb2_grpc as rgrpc
from msgin5g_common import convert, metrics
from msgin5g_common import header as h
from msgin5g_common.errors import Cause
from msgin5g_common.grpcutil import Context
from msgin5g_common.keys import as_of, as_recipient
from msgin5g_router import domain
from msgin5g_router.dispatch import COAP, MQTT, Dispatcher
from msgin5g_router.fanout import Fanout
from msgin5g_router.reports import Reports
from msgin5g_router.settings import RouterSettings
from msgin5g_router.store import RouterStore, StateChange, text_or_none

log = logging.getLogger("msgin5g.router")

# The registry's AS API submits on behalf of application servers.
AS_API = "as-api"
KIND_NAME = {pb.EDGE_KIND_COAP: COAP, pb.EDGE_KIND_MQTT: MQTT, pb.EDGE_KIND_AS_API: AS_API}
RESULT = {
    "ACCEPTED": pb.MSG_RESULT_ACCEPTED,
    "STORED": pb.MSG_RESULT_STORED,
    "DELIVERED": pb.MSG_RESULT_DELIVERED,
    "FAILED": pb.MSG_RESULT_FAILED,
}


class Refused(Exception):
    """A request the gRPC status ``code`` refuses as a whole (a unary call aborts with it; an
    item of a batched call gets it as its error)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Res = TypeVar("Res")


def _item_error(outcome: BaseException) -> rpb.ItemError:
    """How an item of a batched call that raised is answered: as its unary call would have
    been (an unexpected exception: UNKNOWN, and logged)."""
    if isinstance(outcome, Refused):
        return rpb.ItemError(code=outcome.code.value[0], details=outcome.details)
    if isinstance(outcome, asyncio.CancelledError):
        return rpb.ItemError(code=grpc.StatusCode.CANCELLED.value[0], details="cancelled")
    log.error("item of a batched call failed", exc_info=outcome)
    return rpb.ItemError(
        code=grpc.StatusCode.UNKNOWN.value[0],
        details=f"Unexpected {type(outcome).__name__}: {outcome}",
    )


async def _each(
    items: Iterable[Req], handle: Callable[[Req], Awaitable[Resp]], result: Callable[..., Res]
) -> list[Res]:
    """The items of a batched call, each handled as its unary call, all at once; one
    ``result`` (a ``*Result`` message) per item: its response or its ItemError."""
    outcomes = await asyncio.gather(*(handle(item) for item in items), return_exceptions=True)
    return [
        result(error=_item_error(outcome))
        if isinstance(outcome, BaseException)
        else result(response=outcome)
        for outcome in outcomes
    ]


def _failed(msg_id: str, cause: Cause, detail: str) -> rpb.SubmitMessageResponse:
    metrics.ERRORS.labels(cause.value).inc()
    return rpb.SubmitMessageResponse(
        msg_id=msg_id, result=pb.MSG_RESULT_FAILED, failure_cause=cause.value, failure_detail=detail
    )


class RouterServicer(rgrpc.RouterServiceServicer):
    def __init__(
        self,
        store: RouterStore,
        dispatcher: Dispatcher,
        settings: RouterSettings,
        reports: Reports,
        fanout: Fanout | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self.reports = reports
        self.fanout = fanout
        self.lease_ms = settings.route_lease_ttl * 1000

    @staticmethod
    def _kind(edge: pb.EdgeRef) -> str:
        kind = KIND_NAME.get(edge.kind)
        if kind is None or not edge.edge_id:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "edge kind and id are required")
        return kind

    async def _edge_kind(self, edge: pb.EdgeRef, context: Context) -> str:
        try:
            return self._kind(edge)
        except Refused as refused:
            await context.abort(refused.code, refused.details)
            raise AssertionError("unreachable") from refused

    async def _speaks_for(self, party: pb.Address, edge: pb.EdgeRef, context: Context) -> bool:
        """UEs speak through the edges, application servers through the AS API; a request
        without an edge (the management API, acting for the operator) may name either."""
        if edge.kind == pb.EDGE_KIND_UNSPECIFIED:
            return True
        kind = await self._edge_kind(edge, context)
        wanted = pb.ADDR_TYPE_AS if kind == AS_API else pb.ADDR_TYPE_UE
        return party.addr_type == wanted

    async def _touch(self, ue: str, kind: str, edge_id: str, flush: bool) -> None:
        """Refreshes the UE's lease on this replica; re-sends its pending documents when the
        lease moved (or on an explicit wake-up)."""
        changed = await self.store.touch_route(ue, kind, edge_id, self.lease_ms)
        if changed or flush:
            await self._came_back(ue)

    async def _came_back(self, ue: str) -> None:
        """The UE is back: its retries start over from the shortest delay, and what waits
        for it goes out now."""
        await self.store.clear_retry(ue)
        self.dispatcher.spawn(ue)

    async def _seen(self, ue: str, kind: str, edge_id: str) -> None:
        """An uplink shows the UE is around. Over MQTT that makes it reachable through this
        replica. Over CoAP only an Observe relation does (the edge attaches it), and a UE
        may send through another replica than the one holding its observation: the lease
        stays where the observation is."""
        if kind == MQTT:
            await self._touch(ue, kind, edge_id, flush=False)

    async def SubmitMessage(  # noqa: N802 - gRPC method names are the proto's
        self, request: rpb.SubmitMessageRequest, context: Context
    ) -> rpb.SubmitMessageResponse:
        try:
            return await self.submit_message(request)
        except Refused as refused:
            await context.abort(refused.code, refused.details)
            raise AssertionError("unreachable") from refused

    async def SubmitMessages(  # noqa: N802
        self, request: rpb.SubmitMessagesRequest, context: Context
    ) -> rpb.SubmitMessagesResponse:
        """Every item as SubmitMessage, all at once: their Redis work goes in shared round
        trips (RouterStore's AutoPipeline); each answer only once its item is stored."""
        results = await _each(request.requests, self.submit_message, rpb.SubmitMessageResult)
        return rpb.SubmitMessagesResponse(results=results)

    async def submit_message(self, request: rpb.SubmitMessageRequest) -> rpb.SubmitMessageResponse:
        """SubmitMessage; raises Refused for a request to refuse as a whole."""
        msg = request.message
        kind = self._kind(request.edge)
        from_as = kind == AS_API
        wanted = pb.ADDR_TYPE_AS if from_as else pb.ADDR_TYPE_UE
        if msg.ori_addr.addr_type != wanted:
            where = "the AS API" if from_as else "MSGin5G-1"
            return _failed(msg.msg_id, Cause.INVALID_REQUEST, f"oriAddr: not a sender over {where}")
        if msg.seg_ind:
            return await self._submit_segment(msg, kind, request.edge.edge_id)
        return await self._submit(msg, kind, request.edge.edge_id)

    async def _submit_segment(
        self, msg: pb.Message, kind: str, edge_id: str
    ) -> rpb.SubmitMessageResponse:
        """One segment of a message sent in segments (TS 23.554 8.5): held in Redis (any
        router replica may get any segment) until all have arrived, then the whole message
        is routed with the segId as its msgId. The last segment's answer is the message's."""
        sp = msg.seg_params
        if not h.valid_msg_id(sp.seg_id):
            # It becomes the whole message's msgId, so it follows the msgId rule.
            return _failed(
                msg.msg_id,
                Cause.INVALID_REQUEST,
                "segParams.segId: must be 1-128 printable ASCII characters",
            )
        top = domain.MAX_SEGMENTS
        declared = sp.total_seg_count or (sp.seg_numb if sp.last_seg_flag else 0)
        if not 1 <= sp.seg_numb <= top or declared > top:
            return _failed(msg.msg_id, Cause.INVALID_REQUEST, f"segParams: at most {top} segments")
        if declared and sp.seg_numb > declared:
            return _failed(
                msg.msg_id,
                Cause.INVALID_REQUEST,
                f"segParams.segNumb: {sp.seg_numb} is beyond the total of {declared}",
            )
        ori = domain.recipient_of(msg.ori_addr) or ""
        if not await self.store.is_registered(ori):
            return _failed(
                msg.msg_id, Cause.NOT_REGISTERED, f"{msg.ori_addr.addr} is not registered"
            )
        ori_key = domain.address_key(msg.ori_addr)
        timeout_ms = int(self.settings.reassembly_timeout * 1000)
        status, held, total = await self.store.add_segment(
            ori_key,
            sp.seg_id,
            sp.seg_numb,
            msg.SerializeToString(),
            declared,
            max_open=self.settings.max_reassemblies,
            ttl_ms=2 * timeout_ms,
            deadline_ms=int(time.time() * 1000) + timeout_ms,
        )
        if status == -1:
            return _failed(
                msg.msg_id,
                Cause.INVALID_REQUEST,
                f"segParams: the total differs from an earlier segment's ({total})",
            )
        if status == -2:
            return _failed(
                msg.msg_id,
                Cause.INVALID_REQUEST,
                f"segParams.segNumb: {sp.seg_numb} is beyond the total of {total}",
            )
        if status == -3:
            return _failed(
                msg.msg_id,
                Cause.OVERLOADED,
                f"{ori_key} has {self.settings.max_reassemblies} messages being reassembled",
            )
        duplicate = Cause.DUPLICATE.value if status == 0 else ""
        if not total or held < total:
            return rpb.SubmitMessageResponse(
                msg_id=msg.msg_id, result=pb.MSG_RESULT_ACCEPTED, failure_cause=duplicate
            )
        stored = await self.store.segments(ori_key, sp.seg_id)
        if sorted(stored) != list(range(1, total + 1)):
            return rpb.SubmitMessageResponse(msg_id=msg.msg_id, result=pb.MSG_RESULT_ACCEPTED)
        whole = domain.reassemble([pb.Message.FromString(stored[n]) for n in range(1, total + 1)])
        reply = await self._submit(whole, kind, edge_id)
        retry_later = (Cause.EXPIRED.value, Cause.OVERLOADED.value)
        if reply.result != pb.MSG_RESULT_FAILED or reply.failure_cause not in retry_later:
            # Routed (or refused for good): the parts are no longer needed. The whole message
            # is durable before they go, so a crash in between repeats, never loses. Refused
            # for now (the recipient's inbox is full): a segment sent again routes it then.
            await self.store.drop_reassembly(ori_key, sp.seg_id)
        log.info(
            "reassembled",
            extra={"segId": sp.seg_id, "ori": ori_key, "segments": total},
        )
        return rpb.SubmitMessageResponse(
            msg_id=msg.msg_id,
            result=reply.result,
            failure_cause=reply.failure_cause,
            failure_detail=reply.failure_detail,
        )

    async def _submit(self, msg: pb.Message, kind: str, edge_id: str) -> rpb.SubmitMessageResponse:
        """A whole message: to a group, topic or area, or to one UE or AS."""
        from_as = kind == AS_API
        many = (pb.ADDR_TYPE_GROUP, pb.ADDR_TYPE_TOPIC, pb.ADDR_TYPE_BC)
        if msg.dest_addr.addr_type in many and self.fanout is not None:
            return await self._submit_fanout(msg, kind, edge_id, self.fanout)
        ori = domain.recipient_of(msg.ori_addr)
        rcpt = domain.recipient_of(msg.dest_addr)
        if ori is None or rcpt is None or (from_as and as_of(rcpt) is not None):
            name = domain.ADDR_TYPE_NAME.get(msg.dest_addr.addr_type, "?")
            return _failed(
                msg.msg_id, Cause.INVALID_REQUEST, f"destAddr.addrType {name} is not served here"
            )
        # One round trip: both parties, the recipient's route and (MQTT) the sender's lease.
        touch = (kind, edge_id, self.lease_ms) if kind == MQTT else None
        parties = await self.store.parties(ori, rcpt, touch)
        if not parties.ori_registered:
            party = "AS" if from_as else "UE"
            return _failed(
                msg.msg_id, Cause.NOT_REGISTERED, f"{party} {msg.ori_addr.addr} is not registered"
            )
        if parties.route_changed:
            await self._came_back(ori)
        if not parties.rcpt_known:
            return _failed(
                msg.msg_id,
                Cause.UNKNOWN_RECIPIENT,
                f"{domain.address_key(msg.dest_addr)} is not known",
            )
        limit = self.settings.max_pending
        if limit and as_of(rcpt) is None and parties.pending >= limit:
            # A retransmission of a message accepted earlier is answered as the duplicate it
            # is (below), not refused: only new messages are kept out of a full inbox.
            ori_key = domain.address_key(msg.ori_addr)
            if not await self.store.has_message(ori_key, msg.msg_id):
                metrics.LIMITED.labels("inbox").inc()
                return _failed(
                    msg.msg_id,
                    Cause.OVERLOADED,
                    f"inbox of {domain.address_key(msg.dest_addr)} is full "
                    f"({parties.pending} pending)",
                )

        expiry = self._expiry(msg)
        if expiry is None:
            return _failed(msg.msg_id, Cause.EXPIRED, "stoAndFwParams.exprTime is in the past")
        expires_ms, ttl_ms = expiry
        target = None
        if as_of(rcpt) is None:
            target = await self.dispatcher.resolve(
                rcpt, parties.route, parties.transport, known=True
            )
            reachable = target is not None
        else:
            reachable = bool(parties.as_target)
        sto_and_fw = msg.sto_and_fw_ind if msg.HasField("sto_and_fw_ind") else True
        if not reachable and not sto_and_fw:
            return _failed(
                msg.msg_id,
                Cause.RECIPIENT_UNREACHABLE,
                f"{domain.address_key(msg.dest_addr)} is not reachable now, stoAndFwInd is false",
            )

        ori_key = domain.address_key(msg.ori_addr)
        rcpt_key = domain.address_key(msg.dest_addr)
        doc = pb.Downlink(msg=msg).SerializeToString()
        created, earlier, finished = await self.store.accept(
            ori_key, msg.msg_id, doc, rcpt_key, ttl_ms, expires_ms
        )
        outcome = "ACCEPTED" if reachable else "STORED"
        limit = parties.max_seg_size or self.settings.max_payload
        pieces = [msg]
        if as_of(rcpt) is None and len(msg.payload.encode()) > limit:
            # Over the recipient's maximum: it gets the message in segments, each
            # acknowledged on its own; the message is delivered when every one is.
            pieces = domain.segment(msg, limit)
            if created:
                await self.store.expect_segments(ori_key, msg.msg_id, rcpt_key, len(pieces))
        docs = [pb.Downlink(msg=piece) for piece in pieces]
        refs = [domain.msg_ref(msg.ori_addr, piece.msg_id) for piece in pieces]
        recorded = None
        if created and target is not None and target[0].kind == MQTT and len(pieces) == 1:
            # It goes to the UE right after this (MQTT sends exactly the new document): the
            # forward is recorded with the document, one round trip fewer on its way.
            forward = StateChange(ori_key, msg.msg_id, rcpt_key, "FORWARDED")
            recorded = ([forward], self.dispatcher.retry_due(parties.unacknowledged + 1))
        if not finished and (created or len(pieces) == 1):
            # Also on a duplicate that is still under way: it repairs a record whose enqueue
            # a crash interrupted (the enqueue and the schedule are idempotent). Not for
            # segments: one already acknowledged would be queued again.
            for number, (piece_ref, piece) in enumerate(zip(refs, docs, strict=True)):
                first = created and number == 0
                await self.store.store_pending(
                    rcpt,
                    piece_ref,
                    piece.SerializeToString() if len(pieces) > 1 else doc,
                    domain.priority_rank(msg.priority),
                    expires_ms,
                    outcome=(ori_key, msg.msg_id, outcome) if first else None,
                    state=(
                        recorded[0][0]
                        if recorded is not None
                        else StateChange(ori_key, msg.msg_id, rcpt_key, "STORED")
                        if first and not reachable
                        else None
                    ),
                    forward_retry=recorded[1] if recorded is not None else None,
                )
        if not created:
            log.debug("duplicate", extra={"msgId": msg.msg_id, "ori": ori_key, "outcome": earlier})
            return rpb.SubmitMessageResponse(
                msg_id=msg.msg_id,
                result=RESULT.get(earlier, pb.MSG_RESULT_ACCEPTED),
                failure_cause=Cause.DUPLICATE.value,
            )
        # Per message: DEBUG (the state API and the metrics tell what happened to each one).
        log.debug(
            "accepted",
            extra={"msgId": msg.msg_id, "ori": ori_key, "rcpt": rcpt_key, "outcome": outcome},
        )
        if reachable:
            self.dispatcher.spawn(rcpt, refs, target=target, docs=docs, recorded=recorded)
        return rpb.SubmitMessageResponse(msg_id=msg.msg_id, result=RESULT[outcome])

    def _expiry(self, msg: pb.Message) -> tuple[int, int] | None:
        """(expiry, record TTL) in ms for a message, or None when exprTime is past."""
        now = time.time()
        expires = now + self.settings.default_expiry
        if msg.sto_and_fw_params.HasField("expr_time"):
            expires = msg.sto_and_fw_params.expr_time.ToMilliseconds() / 1000
            if expires <= now:
                return None
        if msg.latency:
            # An AS's latency requirement: not delivered by then is not delivered at all.
            expires = min(expires, now + msg.latency)
        return int(expires * 1000), int((expires - now + self.settings.state_retention) * 1000)

    async def _submit_fanout(
        self, msg: pb.Message, kind: str, edge_id: str, fanout: Fanout
    ) -> rpb.SubmitMessageResponse:
        """A group, topic or broadcast message: accepted once, then fanned out to every
        recipient but the sender, each by its own UE Service ID."""
        ori = domain.recipient_of(msg.ori_addr) or ""
        ori_ue, target = msg.ori_addr.addr, msg.dest_addr.addr
        if not await self.store.is_registered(ori):
            return _failed(
                msg.msg_id, Cause.NOT_REGISTERED, f"{msg.ori_addr.addr} is not registered"
            )
        await self._seen(ori, kind, edge_id)
        keys = self.store.keys
        if msg.dest_addr.addr_type == pb.ADDR_TYPE_GROUP:
            size, member = await self.store.group_membership(target, ori_ue)
            if size == 0:
                return _failed(
                    msg.msg_id, Cause.UNKNOWN_RECIPIENT, f"group {target} does not exist"
                )
            # An application server addresses any group; a UE only a group it belongs to.
            if not member and kind != AS_API:
                return _failed(
                    msg.msg_id, Cause.NOT_AUTHORIZED, f"{ori_ue} is not a member of group {target}"
                )
        expiry = self._expiry(msg)
        if expiry is None:
            return _failed(msg.msg_id, Cause.EXPIRED, "stoAndFwParams.exprTime is in the past")
        expires_ms, ttl_ms = expiry
        ori_key = domain.address_key(msg.ori_addr)
        doc = pb.Downlink(msg=msg).SerializeToString()
        dest_key = domain.address_key(msg.dest_addr)
        created, earlier, _ = await self.store.accept(
            ori_key, msg.msg_id, doc, dest_key, ttl_ms, expires_ms
        )
        if not created:
            return rpb.SubmitMessageResponse(
                msg_id=msg.msg_id,
                result=RESULT.get(earlier, pb.MSG_RESULT_ACCEPTED),
                failure_cause=Cause.DUPLICATE.value,
            )
        if msg.dest_addr.addr_type == pb.ADDR_TYPE_GROUP:
            source = keys.group_members(target)
        else:
            # Topic subscribers and the UEs of an area change: take them as they are now.
            scored = (
                keys.topic_subs(target)
                if msg.dest_addr.addr_type == pb.ADDR_TYPE_TOPIC
                else keys.bc_area(target)
            )
            source = await fanout.snapshot(ori_key, msg.msg_id, scored, ttl_ms)
        recipients = await fanout.split(ori_key, msg.msg_id, source)
        await self.store.set_outcome(ori_key, msg.msg_id, "ACCEPTED")
        log.info(
            "accepted",
            extra={"msgId": msg.msg_id, "ori": ori_key, "dest": dest_key, "recipients": recipients},
        )
        return rpb.SubmitMessageResponse(msg_id=msg.msg_id, result=pb.MSG_RESULT_ACCEPTED)

    async def Acknowledge(  # noqa: N802
        self, request: rpb.AcknowledgeRequest, context: Context
    ) -> rpb.AcknowledgeResponse:
        try:
            return await self.acknowledge(request)
        except Refused as refused:
            await context.abort(refused.code, refused.details)
            raise AssertionError("unreachable") from refused

    async def AcknowledgeMany(  # noqa: N802
        self, request: rpb.AcknowledgeManyRequest, context: Context
    ) -> rpb.AcknowledgeManyResponse:
        """Every item as Acknowledge, all at once (as SubmitMessages)."""
        results = await _each(request.requests, self.acknowledge, rpb.AcknowledgeResult)
        return rpb.AcknowledgeManyResponse(results=results)

    async def acknowledge(self, request: rpb.AcknowledgeRequest) -> rpb.AcknowledgeResponse:
        """Acknowledge; raises Refused for a request to refuse as a whole."""
        ue = request.ue_svc_id
        kind = self._kind(request.edge)
        if request.ori_addr.addr:
            refs = [
                domain.msg_ref(request.ori_addr, request.msg_id),
                domain.imdn_ref(request.ori_addr, request.msg_id),
                domain.segrec_ref(request.ori_addr, request.msg_id),
            ]
            exact = True
        else:
            refs, exact = [domain.ack_refs(request.msg_id, None)], False
        # One round trip takes the document and (MQTT) refreshes the UE's lease.
        touch = (kind, request.edge.edge_id, self.lease_ms) if kind == MQTT else None
        acked, moved = await self.store.take_pending(ue, refs, exact, touch)
        if moved:
            await self._came_back(ue)
        await self.dispatcher.settled(
            ue, acked, failed=request.result == pb.MSG_RESULT_FAILED, cause=request.failure_cause
        )
        if not acked.matched:
            return rpb.AcknowledgeResponse(matched=False)
        log.debug("delivered", extra={"msgId": request.msg_id, "ueSvcId": ue, "ref": acked.ref})
        if kind == COAP and acked.remaining > 0:
            # A notification shows only the first pending documents (bounded by count and by
            # size): each acknowledgement lets the observer see what comes next.
            self.dispatcher.spawn(ue)
        return rpb.AcknowledgeResponse(matched=True)

    async def WakeAs(  # noqa: N802
        self, request: rpb.WakeAsRequest, context: Context
    ) -> rpb.WakeAsResponse:
        rcpt = as_recipient(request.as_svc_id)
        await self.store.clear_retry(rcpt)
        self.dispatcher.spawn(rcpt)
        return rpb.WakeAsResponse()

    async def Attach(  # noqa: N802
        self, request: rpb.AttachRequest, context: Context
    ) -> rpb.AttachResponse:
        kind = await self._edge_kind(request.edge, context)
        await self._touch(request.ue_svc_id, kind, request.edge.edge_id, flush=request.flush)
        return rpb.AttachResponse()

    async def Detach(  # noqa: N802
        self, request: rpb.DetachRequest, context: Context
    ) -> rpb.DetachResponse:
        await self.store.detach_route(request.ue_svc_id, request.edge.edge_id)
        return rpb.DetachResponse()

    async def RenewLeases(  # noqa: N802
        self, request: rpb.RenewLeasesRequest, context: Context
    ) -> rpb.RenewLeasesResponse:
        await self.store.renew_routes(list(request.ue_svc_ids), request.edge.edge_id, self.lease_ms)
        return rpb.RenewLeasesResponse()

    async def GetInbox(  # noqa: N802
        self, request: rpb.GetInboxRequest, context: Context
    ) -> rpb.GetInboxResponse:
        limit = min(request.limit or self.settings.inbox_limit, self.settings.inbox_limit)
        pairs, pending = await self.store.inbox(request.ue_svc_id, limit)
        return rpb.GetInboxResponse(
            docs=[pb.Downlink.FromString(d) for _, d in pairs], pending=pending
        )

    async def SubmitReport(  # noqa: N802
        self, request: rpb.SubmitReportRequest, context: Context
    ) -> rpb.SubmitReportResponse:
        imdn = request.imdn
        if not await self._speaks_for(imdn.ori_addr, request.edge, context):
            return _report_failed(Cause.NOT_AUTHORIZED, "oriAddr: not a sender over this API")
        reporter = domain.address_key(imdn.ori_addr)
        sender = domain.address_key(imdn.dest_addr)
        record = await self.store.record(sender, imdn.msg_id)
        if "doc" not in record:
            return _report_failed(Cause.UNKNOWN_MESSAGE, f"no message {imdn.msg_id} from {sender}")
        if text_or_none(record.get("rcpt")) != reporter:
            return _report_failed(
                Cause.NOT_AUTHORIZED, f"{reporter} is not a recipient of {imdn.msg_id}"
            )
        msg = pb.Downlink.FromString(record["doc"]).msg
        if not msg.deliv_st_req_ind:
            return _report_failed(
                Cause.INVALID_REQUEST, f"the sender of {imdn.msg_id} asked for no delivery report"
            )
        if text_or_none(record.get(f"rep:{reporter}")):
            # The same report again (a client's retry): the sender has it, or will, once.
            log.debug("duplicate report", extra={"msgId": imdn.msg_id, "reporter": reporter})
            return rpb.SubmitReportResponse(ok=True)
        # Queued before it is noted: a crash in between repeats a report, never loses one.
        await self.reports.deliver(imdn)
        await self.store.set_report(sender, imdn.msg_id, reporter, imdn.deliv_st)
        log.info("report", extra={"msgId": imdn.msg_id, "reporter": reporter, "ori": sender})
        return rpb.SubmitReportResponse(ok=True)

    async def GetMessageState(  # noqa: N802
        self, request: rpb.GetMessageStateRequest, context: Context
    ) -> rpb.MessageState:
        record = await self.store.record(domain.address_key(request.ori_addr), request.msg_id)
        if "doc" not in record:
            return rpb.MessageState(found=False, msg_id=request.msg_id)
        return message_state(request.msg_id, record, request.limit or 100, request.after)

    async def UpdateMessage(  # noqa: N802
        self, request: rpb.UpdateMessageRequest, context: Context
    ) -> rpb.UpdateMessageResponse:
        if not await self._speaks_for(request.ori_addr, request.edge, context):
            return _update_failed(Cause.NOT_AUTHORIZED, "oriAddr: not a sender over this API")
        ori = domain.address_key(request.ori_addr)
        record = await self.store.record(ori, request.msg_id)
        if "doc" not in record:
            return _update_failed(Cause.UNKNOWN_MESSAGE, f"no message {request.msg_id} from {ori}")
        rcpt = text_or_none(record.get("rcpt")) or ""
        state = json.loads(record.get(f"st:{rcpt}", b"{}")).get("state", "")
        if state in domain.FINAL_STATES:
            return _update_failed(
                Cause.INVALID_REQUEST, f"message {request.msg_id} is already {state}"
            )
        doc = pb.Downlink.FromString(record["doc"])
        rcpt_ue = doc.msg.dest_addr.addr
        ref = domain.msg_ref(request.ori_addr, request.msg_id)
        if request.action == rpb.UPDATE_ACTION_DISCARD:
            await self.store.remove_pending(rcpt_ue, ref)
            await self.store.unschedule_expiry(rcpt_ue, ref)
            await self.store.set_state(ori, request.msg_id, rcpt, "FAILED", "DISCARDED")
            log.info("discarded", extra={"msgId": request.msg_id, "ori": ori})
            return rpb.UpdateMessageResponse(ok=True)
        if request.action != rpb.UPDATE_ACTION_UPDATE or not request.HasField("expr_time"):
            return _update_failed(Cause.INVALID_REQUEST, "action UPDATE needs exprTime")
        now = int(time.time() * 1000)
        expires_ms = request.expr_time.ToMilliseconds()
        if expires_ms <= now:
            return _update_failed(Cause.EXPIRED, "exprTime is in the past")
        doc.msg.sto_and_fw_params.expr_time.CopyFrom(request.expr_time)
        if await self.store.replace_pending(rcpt_ue, ref, doc.SerializeToString()):
            await self.store.schedule_expiry(rcpt_ue, ref, expires_ms)
        ttl_ms = expires_ms - now + self.settings.state_retention * 1000
        await self.store.set_record_expiry(ori, request.msg_id, expires_ms, ttl_ms)
        log.info("updated", extra={"msgId": request.msg_id, "ori": ori, "expiresAt": expires_ms})
        return rpb.UpdateMessageResponse(ok=True)


def _report_failed(cause: Cause, detail: str) -> rpb.SubmitReportResponse:
    return rpb.SubmitReportResponse(ok=False, failure_cause=cause.value, failure_detail=detail)


def _update_failed(cause: Cause, detail: str) -> rpb.UpdateMessageResponse:
    return rpb.UpdateMessageResponse(ok=False, failure_cause=cause.value, failure_detail=detail)


def message_state(
    msg_id: str, record: dict[str, Any], limit: int = 100, after: str = ""
) -> rpb.MessageState:
    """The state API's view of a message record."""
    msg = pb.Downlink.FromString(record["doc"]).msg
    state = rpb.MessageState(
        found=True,
        msg_id=msg_id,
        ori_addr=msg.ori_addr,
        dest_addr=msg.dest_addr,
        result=RESULT.get(text_or_none(record.get("outcome")) or "", pb.MSG_RESULT_ACCEPTED),
        accepted_at=convert.timestamp_ms(int(record.get("acceptedAt", 0))),
    )
    if int(record.get("expiresAt", 0) or 0):
        state.expires_at.CopyFrom(convert.timestamp_ms(int(record["expiresAt"])))
    listed = 0
    last = ""
    for field, raw in sorted(record.items()):
        if not field.startswith("st:"):
            continue
        rcpt = field[3:]
        st = json.loads(raw)
        name = st.get("state", "")
        state.summary[name] = state.summary.get(name, 0) + 1
        if rcpt <= after:
            continue
        if listed == limit:
            state.next = last
            continue
        listed += 1
        last = rcpt
        times = sorted(st.get("times", {}).items(), key=lambda kv: kv[1])
        state.recipients.append(
            rpb.RecipientState(
                rcpt_addr=convert.address_key_to_pb(rcpt),
                state=st.get("state", ""),
                failure_cause=st.get("cause", ""),
                history=[
                    rpb.StateTime(state=name, at=convert.timestamp_ms(int(at)))
                    for name, at in times
                ],
                attempts=int(st.get("attempts", 0)),
                report=text_or_none(record.get(f"rep:{rcpt}")) or "",
            )
        )
    return state
