"""What both edges do with an uplink document, whatever transport carried it.

An edge decodes the document, checks that the identity it names is the identity the
transport vouches for, and hands it here; this module turns it into gRPC calls to the
registry and router and returns the response document. Protocol specifics (CoAP codes,
MQTT topics) stay in the edges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import grpc

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import registry_pb2 as regpb
from msgin5g.v1 import registry_pb2_grpc as reggrpc
from msgin5g.v1 import router_pb2 as rpb
from msgin5g.v1 import router_pb2_grpc as rgrpc
from msgin5g_common import convert, metrics
from msgin5g_common import header as h
from msgin5g_common.batch import BatchedCall, closed_channel, outcomes
from msgin5g_common.errors import Cause, InvalidDocument, Msgin5gError, Overloaded, error_for
from msgin5g_common.grpcutil import channel
from msgin5g_common.ratelimit import RateLimited, UeLimits

log = logging.getLogger("msgin5g.uplink")

# Retry hints (seconds) of OVERLOADED replies that are not a rate limit's: a backend that did
# not answer, and a refusal by the router (a recipient's inbox full, too many reassemblies),
# which only clears once someone else acts (the recipient acknowledges).
BACKEND_RETRY = 1
ROUTER_RETRY = 10
# MSGs and acknowledgements sent to the router in one batched call at most, and batched
# calls of each kind on their way at once (batch.py: calls made meanwhile wait and go together).
BATCH_ITEMS = 100
BATCHES_IN_FLIGHT = 1


@dataclass(frozen=True, slots=True)
class Reply:
    """The response document, and the failure cause when the request failed;
    ``retry_after``: seconds the client should wait before sending again (a rate limit)."""

    doc: h.Document | None
    cause: Cause | None = None
    detail: str = ""
    retry_after: int = 0


class UplinkHandler:
    def __init__(
        self,
        registry_addr: str,
        router_addr: str,
        edge: pb.EdgeRef,
        timeout: float,
        observed: Callable[[str], bool] = lambda ue: False,
        limits: UeLimits | None = None,
    ) -> None:
        """``observed(ue)`` tells whether the UE holds an Observe relation on this replica;
        ``limits`` are the per-UE rate limits (none when not given)."""
        self.observed = observed
        self.limits = limits or UeLimits.unlimited()
        self._registry_channel = channel(registry_addr)
        self._router_channel = channel(router_addr)
        self.registry: reggrpc.RegistryServiceAsyncStub = reggrpc.RegistryServiceStub(
            self._registry_channel
        )
        self.router: rgrpc.RouterServiceAsyncStub = rgrpc.RouterServiceStub(self._router_channel)
        self.edge = edge
        self.timeout = timeout
        # The MSGs and acknowledgements of all UEs go to the router in batches (batch.py);
        # each keeps its own answer, and an older router gets them one call each.
        self._submits: BatchedCall[rpb.SubmitMessageRequest, rpb.SubmitMessageResponse] = (
            BatchedCall(
                self._submit_many,
                self._submit_one,
                "SubmitMessages",
                max_items=BATCH_ITEMS,
                max_in_flight=BATCHES_IN_FLIGHT,
            )
        )
        self._acks: BatchedCall[rpb.AcknowledgeRequest, rpb.AcknowledgeResponse] = BatchedCall(
            self._ack_many,
            self._ack_one,
            "AcknowledgeMany",
            max_items=BATCH_ITEMS,
            max_in_flight=BATCHES_IN_FLIGHT,
        )

    async def close(self) -> None:
        self._submits.close(closed_channel())
        self._acks.close(closed_channel())
        await self._registry_channel.close()
        await self._router_channel.close()
        await self._submits.drain()
        await self._acks.drain()

    async def _submit_one(self, request: rpb.SubmitMessageRequest) -> rpb.SubmitMessageResponse:
        return await self.router.SubmitMessage(request, timeout=self.timeout)

    async def _submit_many(
        self, requests: list[rpb.SubmitMessageRequest]
    ) -> list[rpb.SubmitMessageResponse | BaseException]:
        reply = await self.router.SubmitMessages(
            rpb.SubmitMessagesRequest(requests=requests), timeout=self.timeout
        )
        return outcomes(reply.results)

    async def _ack_one(self, request: rpb.AcknowledgeRequest) -> rpb.AcknowledgeResponse:
        return await self.router.Acknowledge(request, timeout=self.timeout)

    async def _ack_many(
        self, requests: list[rpb.AcknowledgeRequest]
    ) -> list[rpb.AcknowledgeResponse | BaseException]:
        reply = await self.router.AcknowledgeMany(
            rpb.AcknowledgeManyRequest(requests=requests), timeout=self.timeout
        )
        return outcomes(reply.results)

    async def handle(self, doc: h.Uplink) -> Reply:
        """Serves one uplink document; infrastructure failures become OVERLOADED replies,
        and so does a document over its sender's rate (it goes no further)."""
        try:
            self.limits.admit(h.sender_of(doc), doc)
        except RateLimited as limited:
            metrics.ERRORS.labels(limited.cause.value).inc()
            return Reply(refusal(doc, limited), limited.cause, limited.detail, limited.retry_after)
        kind = type(doc).__name__.upper()
        metrics.MESSAGES.labels("in", kind, self.transport).inc()
        try:
            with metrics.timed("core", kind):
                reply = await self._handle(doc)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "backend call failed", extra={"code": exc.code().name, "detail": exc.details()}
            )
            err = Overloaded(f"backend unavailable: {exc.code().name}")
            reply = Reply(None, err.cause, err.detail, BACKEND_RETRY)
        if reply.cause is not None:
            metrics.ERRORS.labels(reply.cause.value).inc()
        if reply.cause is Cause.OVERLOADED and not reply.retry_after:
            reply = replace(reply, retry_after=ROUTER_RETRY)
        return reply

    @property
    def transport(self) -> str:
        return "coap" if self.edge.kind == pb.EDGE_KIND_COAP else "mqtt"

    async def _handle(self, doc: h.Uplink) -> Reply:
        match doc:
            case h.Reg():
                return await self.register(doc)
            case h.Dereg():
                return await self.deregister(doc.ue_svc_id)
            case h.Msg():
                return await self.submit(doc)
            case h.MsgResp():
                return await self.acknowledge(doc)
            case h.Imdn():
                return await self.report(doc)
            case h.MsgUpd():
                return await self.update(doc)
            case h.Sub():
                return await self.subscribe(doc.ue_svc_id, list(doc.msg_topics), doc.expr_time)
            case h.Unsub():
                return await self.unsubscribe(doc.ue_svc_id, list(doc.msg_topics))
        raise InvalidDocument("msgType: not an uplink document")

    async def register(self, doc: h.Reg) -> Reply:
        request = regpb.RegisterRequest(
            ue_svc_id=doc.ue_svc_id,
            lifetime=doc.lifetime,
            bc_area=doc.bc_area or "",
            delivery_mode=convert.MODE_TO_PB[doc.delivery_mode],
            edge=self.edge,
        )
        if doc.max_seg_size is not None:
            request.max_seg_size = doc.max_seg_size
        reply = await self.registry.Register(request, timeout=self.timeout)
        if self.edge.kind == pb.EDGE_KIND_MQTT or self.observed(doc.ue_svc_id):
            # The UE can take its downlink through this replica right away: send it
            # what it has not acknowledged.
            await self.attach(doc.ue_svc_id, flush=True)
        return Reply(h.RegResp(doc.ue_svc_id, h.Result.SUCCESS, lifetime=reply.lifetime))

    async def deregister(self, ue: str) -> Reply:
        await self.registry.Deregister(regpb.DeregisterRequest(ue_svc_id=ue), timeout=self.timeout)
        await self.detach(ue)
        return Reply(h.DeregResp(ue, h.Result.SUCCESS))

    async def attach(self, ue: str, *, flush: bool) -> None:
        await self.router.Attach(
            rpb.AttachRequest(ue_svc_id=ue, edge=self.edge, flush=flush), timeout=self.timeout
        )

    async def detach(self, ue: str) -> None:
        await self.router.Detach(
            rpb.DetachRequest(ue_svc_id=ue, edge=self.edge), timeout=self.timeout
        )

    async def submit(self, doc: h.Msg) -> Reply:
        reply = await self._submits(
            rpb.SubmitMessageRequest(message=convert.msg_to_pb(doc), edge=self.edge)
        )
        if reply.result == pb.MSG_RESULT_FAILED:
            err = error_for(reply.failure_cause, reply.failure_detail)
            resp = h.MsgResp(
                doc.msg_id, h.MsgResult.FAILED, err.cause.value, failure_detail=err.detail
            )
            return Reply(resp, err.cause, err.detail)
        result = convert.RESULT_FROM_PB.get(reply.result, h.MsgResult.ACCEPTED)
        return Reply(h.MsgResp(doc.msg_id, result, reply.failure_cause or None))

    async def acknowledge(self, doc: h.MsgResp) -> Reply:
        request = rpb.AcknowledgeRequest(
            ue_svc_id=h.sender_of(doc),
            msg_id=doc.msg_id,
            result=convert.RESULT_TO_PB[doc.result],
            failure_cause=doc.failure_cause or "",
            edge=self.edge,
        )
        if doc.ori_addr is not None:
            request.ori_addr.CopyFrom(convert.address_to_pb(doc.ori_addr))
        await self._acks(request)
        return Reply(None)

    async def subscribe(self, ue: str, topics: list[str], until: datetime | None) -> Reply:
        request = regpb.SubscribeRequest(ue_svc_id=ue, topics=topics)
        if until is not None:
            request.expr_time.CopyFrom(convert.timestamp(until))
        await self.registry.Subscribe(request, timeout=self.timeout)
        return Reply(h.SubResp(ue, h.Result.SUCCESS))

    async def unsubscribe(self, ue: str, topics: list[str]) -> Reply:
        request = regpb.SubscribeRequest(ue_svc_id=ue, topics=topics)
        await self.registry.Unsubscribe(request, timeout=self.timeout)
        return Reply(h.SubResp(ue, h.Result.SUCCESS, unsub=True))

    async def report(self, doc: h.Imdn) -> Reply:
        reply = await self.router.SubmitReport(
            rpb.SubmitReportRequest(imdn=convert.imdn_to_pb(doc), edge=self.edge),
            timeout=self.timeout,
        )
        if reply.ok:
            return Reply(None)
        err = error_for(reply.failure_cause, reply.failure_detail)
        resp = h.MsgResp(doc.msg_id, h.MsgResult.FAILED, err.cause.value, failure_detail=err.detail)
        return Reply(resp, err.cause, err.detail)

    async def update(self, doc: h.MsgUpd) -> Reply:
        request = rpb.UpdateMessageRequest(
            ori_addr=convert.address_to_pb(doc.ori_addr),
            msg_id=doc.msg_id,
            action=(
                rpb.UPDATE_ACTION_DISCARD
                if doc.action is h.UpdAction.DISCARD
                else rpb.UPDATE_ACTION_UPDATE
            ),
            edge=self.edge,
        )
        if doc.expr_time is not None:
            request.expr_time.CopyFrom(convert.timestamp(doc.expr_time))
        reply = await self.router.UpdateMessage(request, timeout=self.timeout)
        if reply.ok:
            return Reply(h.MsgUpdResp(doc.msg_id, h.Result.SUCCESS))
        err = error_for(reply.failure_cause, reply.failure_detail)
        resp = h.MsgUpdResp(doc.msg_id, h.Result.FAILURE, err.cause.value, err.detail)
        return Reply(resp, err.cause, err.detail)

    async def inbox(self, ue: str, limit: int = 0) -> list[h.Downlink]:
        reply = await self.router.GetInbox(
            rpb.GetInboxRequest(ue_svc_id=ue, limit=limit), timeout=self.timeout
        )
        return [convert.downlink_from_pb(d) for d in reply.docs]

    async def renew(self, ues: list[str]) -> None:
        await self.router.RenewLeases(
            rpb.RenewLeasesRequest(edge=self.edge, ue_svc_ids=ues), timeout=self.timeout
        )


def refusal(doc: h.Uplink, err: Msgin5gError) -> h.Document:
    """The ``*RESP`` refusing a decoded uplink document (h.failure_response without parsing)."""
    cause, detail = err.cause.value, err.detail
    match doc:
        case h.Reg():
            return h.RegResp(doc.ue_svc_id, h.Result.FAILURE, cause, failure_detail=detail)
        case h.Dereg():
            return h.DeregResp(doc.ue_svc_id, h.Result.FAILURE, cause, failure_detail=detail)
        case h.Sub() | h.Unsub():
            unsub = isinstance(doc, h.Unsub)
            return h.SubResp(
                doc.ue_svc_id, h.Result.FAILURE, cause, unsub=unsub, failure_detail=detail
            )
        case h.MsgUpd():
            return h.MsgUpdResp(doc.msg_id, h.Result.FAILURE, cause, detail)
    return h.MsgResp(doc.msg_id, h.MsgResult.FAILED, cause, failure_detail=detail)


def failure_reply(raw: bytes | str, err: Msgin5gError, sender: str = "") -> Reply:
    """The reply to a document that failed before reaching a backend."""
    metrics.ERRORS.labels(err.cause.value).inc()
    doc = h.failure_response(raw, err.cause.value, err.detail, sender)
    return Reply(doc, err.cause, err.detail)
