"""Batched calls between the services over real gRPC channels, against peers of this version
and of the version before it (a rolling upgrade): the edges' UplinkHandler towards the
router, the router's EdgeClients towards an edge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest_asyncio

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import edge_pb2 as epb
from msgin5g.v1 import edge_pb2_grpc as egrpc
from msgin5g.v1 import router_pb2 as rpb
from msgin5g.v1 import router_pb2_grpc as rgrpc
from msgin5g_common import header as h
from msgin5g_common.batch import ItemFailed
from msgin5g_common.edgeservice import BatchedDeliveries
from msgin5g_common.errors import Cause
from msgin5g_common.grpcutil import Context, GrpcServer
from msgin5g_common.uplink import UplinkHandler
from msgin5g_router.dispatch import EdgeClients

EDGE = pb.EdgeRef(kind=pb.EDGE_KIND_MQTT, edge_id="mqtt-edge-1")
WAIT = 5.0


class OldRouter(rgrpc.RouterServiceServicer):
    """A router of the version before batching: SubmitMessage and Acknowledge only."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def SubmitMessage(  # noqa: N802 - gRPC method names are the proto's
        self, request: rpb.SubmitMessageRequest, context: Context
    ) -> rpb.SubmitMessageResponse:
        self.calls.append(request.message.msg_id)
        if request.message.payload == "refuse":
            return rpb.SubmitMessageResponse(
                msg_id=request.message.msg_id,
                result=pb.MSG_RESULT_FAILED,
                failure_cause="UNKNOWN_RECIPIENT",
            )
        return rpb.SubmitMessageResponse(
            msg_id=request.message.msg_id, result=pb.MSG_RESULT_ACCEPTED
        )

    async def Acknowledge(  # noqa: N802
        self, request: rpb.AcknowledgeRequest, context: Context
    ) -> rpb.AcknowledgeResponse:
        self.calls.append(f"ack {request.msg_id}")
        return rpb.AcknowledgeResponse(matched=True)


class NewRouter(OldRouter):
    """A router with the batched calls; an item whose payload is "fail" fails as a whole."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    async def SubmitMessages(  # noqa: N802
        self, request: rpb.SubmitMessagesRequest, context: Context
    ) -> rpb.SubmitMessagesResponse:
        self.batches.append([r.message.msg_id for r in request.requests])
        results = []
        for item in request.requests:
            if item.message.payload == "fail":
                error = rpb.ItemError(code=grpc.StatusCode.INTERNAL.value[0], details="boom")
                results.append(rpb.SubmitMessageResult(error=error))
            else:
                response = await OldRouter.SubmitMessage(self, item, context)
                results.append(rpb.SubmitMessageResult(response=response))
        return rpb.SubmitMessagesResponse(results=results)

    async def AcknowledgeMany(  # noqa: N802
        self, request: rpb.AcknowledgeManyRequest, context: Context
    ) -> rpb.AcknowledgeManyResponse:
        self.batches.append([f"ack {r.msg_id}" for r in request.requests])
        return rpb.AcknowledgeManyResponse(
            results=[
                rpb.AcknowledgeResult(response=rpb.AcknowledgeResponse(matched=True))
                for _ in request.requests
            ]
        )


async def serve(*registers: Callable[[grpc.aio.Server], None]) -> tuple[GrpcServer, str]:
    server = GrpcServer([])
    for register in registers:
        server.add(register)
    port = await server.start("127.0.0.1:0")
    return server, f"127.0.0.1:{port}"


@pytest_asyncio.fixture
async def new_router() -> AsyncIterator[tuple[NewRouter, UplinkHandler]]:
    servicer = NewRouter()  # type: ignore[abstract] # what the test needs of a router
    server, address = await serve(lambda s: rgrpc.add_RouterServiceServicer_to_server(servicer, s))
    handler = UplinkHandler(address, address, EDGE, WAIT)
    try:
        yield servicer, handler
    finally:
        await handler.close()
        await server.stop(grace=0)


@pytest_asyncio.fixture
async def old_router() -> AsyncIterator[tuple[OldRouter, UplinkHandler]]:
    servicer = OldRouter()  # type: ignore[abstract] # what the test needs of a router
    server, address = await serve(lambda s: rgrpc.add_RouterServiceServicer_to_server(servicer, s))
    handler = UplinkHandler(address, address, EDGE, WAIT)
    try:
        yield servicer, handler
    finally:
        await handler.close()
        await server.stop(grace=0)


def msg(msg_id: str, payload: str = "hi") -> h.Msg:
    return h.Msg(
        msg_id, h.Address(h.AddrType.UE, "ue-a"), h.Address(h.AddrType.UE, "ue-b"), payload
    )


def ack(msg_id: str) -> h.MsgResp:
    return h.MsgResp(
        msg_id, h.MsgResult.DELIVERED, ue_svc_id="ue-b", ori_addr=h.Address(h.AddrType.UE, "ue-a")
    )


async def test_concurrent_uplink_goes_to_the_router_in_one_call_answered_per_document(
    new_router: tuple[NewRouter, UplinkHandler],
) -> None:
    router, handler = new_router
    docs = [msg("m1"), msg("m2", "refuse"), msg("m3", "fail"), msg("m4")]
    async with asyncio.timeout(WAIT):
        replies = await asyncio.gather(*(handler.handle(doc) for doc in docs))
        acks = await asyncio.gather(handler.handle(ack("m1")), handler.handle(ack("m4")))

    assert router.batches == [["m1", "m2", "m3", "m4"], ["ack m1", "ack m4"]]
    accepted, refused, failed, last = replies
    assert isinstance(accepted.doc, h.MsgResp)
    assert accepted.doc.result is h.MsgResult.ACCEPTED
    assert accepted.cause is None
    assert refused.cause is Cause.UNKNOWN_RECIPIENT
    # The item that failed as a whole is answered as a failed unary call is: OVERLOADED.
    assert failed.doc is None
    assert failed.cause is Cause.OVERLOADED
    assert isinstance(last.doc, h.MsgResp)
    assert last.doc.result is h.MsgResult.ACCEPTED
    assert [a.cause for a in acks] == [None, None]


async def test_an_older_router_gets_one_call_per_document(
    old_router: tuple[OldRouter, UplinkHandler],
) -> None:
    router, handler = old_router
    async with asyncio.timeout(WAIT):
        replies = await asyncio.gather(handler.handle(msg("m1")), handler.handle(msg("m2")))
        acked = await handler.handle(ack("m1"))

    assert sorted(router.calls) == ["ack m1", "m1", "m2"]
    assert [r.cause for r in replies] == [None, None]
    assert [r.doc.result for r in replies if isinstance(r.doc, h.MsgResp)] == [
        h.MsgResult.ACCEPTED,
        h.MsgResult.ACCEPTED,
    ]
    assert acked.cause is None


class Edge(egrpc.EdgeServiceServicer):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Deliver(  # noqa: N802
        self, request: epb.DeliverRequest, context: Context
    ) -> epb.DeliverResponse:
        self.calls.append(request.ue_svc_id)
        if request.ue_svc_id == "ue-broken":
            raise RuntimeError("broken")
        return epb.DeliverResponse(forwarded=request.ue_svc_id != "ue-elsewhere")


class NewEdge(BatchedDeliveries):
    """An edge of this version: EdgeBatchService next to EdgeService."""

    def __init__(self, edge: Edge) -> None:
        super().__init__(edge)
        self.batches: list[list[str]] = []

    async def DeliverMany(  # noqa: N802
        self, request: epb.DeliverManyRequest, context: Context
    ) -> epb.DeliverManyResponse:
        self.batches.append([r.ue_svc_id for r in request.requests])
        return await super().DeliverMany(request, context)


async def test_deliveries_to_one_edge_go_in_one_call_answered_per_ue() -> None:
    edge = Edge()
    batches = NewEdge(edge)
    server, address = await serve(
        lambda s: egrpc.add_EdgeServiceServicer_to_server(edge, s),
        lambda s: egrpc.add_EdgeBatchServiceServicer_to_server(batches, s),
    )
    clients = EdgeClients(WAIT)
    try:
        ues = ["ue-1", "ue-elsewhere", "ue-broken", "ue-2"]
        async with asyncio.timeout(WAIT):
            outcomes = await asyncio.gather(
                *(clients.deliver(address, epb.DeliverRequest(ue_svc_id=ue)) for ue in ues),
                return_exceptions=True,
            )
    finally:
        await clients.close()
        await server.stop(grace=0)
    assert batches.batches == [ues]
    assert sorted(edge.calls) == sorted(ues)
    first, elsewhere, broken, last = outcomes
    assert isinstance(first, epb.DeliverResponse)
    assert first.forwarded is True
    assert isinstance(elsewhere, epb.DeliverResponse)
    assert elsewhere.forwarded is False
    assert isinstance(broken, ItemFailed)
    assert broken.code() == grpc.StatusCode.UNKNOWN
    assert isinstance(last, epb.DeliverResponse)
    assert last.forwarded is True


async def test_an_older_edge_gets_one_deliver_call_per_ue() -> None:
    edge = Edge()  # EdgeService only
    server, address = await serve(lambda s: egrpc.add_EdgeServiceServicer_to_server(edge, s))
    clients = EdgeClients(WAIT)
    try:
        async with asyncio.timeout(WAIT):
            outcomes = await asyncio.gather(
                *(clients.deliver(address, epb.DeliverRequest(ue_svc_id=ue)) for ue in "abc")
            )
            again = await clients.deliver(address, epb.DeliverRequest(ue_svc_id="d"))
    finally:
        await clients.close()
        await server.stop(grace=0)
    assert [o.forwarded for o in outcomes] == [True, True, True]  # one call each
    assert again.forwarded is True
    assert sorted(edge.calls) == ["a", "b", "c", "d"]
