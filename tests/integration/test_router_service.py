"""Duplicate suppression of the RouterService (msgin5g.md 8.2) against a real Redis, through
a real gRPC channel: what the store's accept and enqueue scripts add up to."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest_asyncio
from redis.asyncio import Redis

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import router_pb2 as rpb
from msgin5g.v1 import router_pb2_grpc as rgrpc
from msgin5g_common.grpcutil import GrpcServer, channel
from msgin5g_common.keys import Keys
from msgin5g_registry.store import RegistryStore
from msgin5g_router.dispatch import Dispatcher, EdgeClients
from msgin5g_router.grpc_api import RouterServicer
from msgin5g_router.settings import RouterSettings
from msgin5g_router.store import RouterStore

KEYS = Keys("m5g")
SENDER, RECIPIENT = "ue-sender", "ue-recipient"
EDGE = pb.EdgeRef(kind=pb.EDGE_KIND_COAP, edge_id="coap-edge-1")


def ue_addr(addr: str) -> pb.Address:
    return pb.Address(addr_type=pb.ADDR_TYPE_UE, addr=addr)


def submit(msg_id: str) -> rpb.SubmitMessageRequest:
    return rpb.SubmitMessageRequest(
        message=pb.Message(
            msg_id=msg_id,
            ori_addr=ue_addr(SENDER),
            dest_addr=ue_addr(RECIPIENT),
            payload="hello",
            priority=pb.PRIORITY_MIDDLE,
        ),
        edge=EDGE,
    )


def ack(msg_id: str) -> rpb.AcknowledgeRequest:
    return rpb.AcknowledgeRequest(
        ue_svc_id=RECIPIENT,
        msg_id=msg_id,
        ori_addr=ue_addr(SENDER),
        result=pb.MSG_RESULT_DELIVERED,
        edge=EDGE,
    )


@pytest_asyncio.fixture
async def router(redis: Redis) -> AsyncIterator[rgrpc.RouterServiceAsyncStub]:
    """RouterService on a real grpc.aio server, wired as app.py wires it. The sender is
    registered and the recipient only provisioned: with no route lease and no edge alive,
    every message stays stored (nothing is dispatched)."""
    registry = RegistryStore(redis, KEYS)
    await registry.register(SENDER, transport="coap", lifetime=600)
    await registry.provision(RECIPIENT)

    settings = RouterSettings()
    store = RouterStore(redis, KEYS)
    clients = EdgeClients()
    dispatcher = Dispatcher(store, clients, settings.inbox_limit, settings.grpc_timeout)
    reports = dispatcher.reports
    server = GrpcServer(["msgin5g.v1.RouterService"])
    server.add(
        lambda s: rgrpc.add_RouterServiceServicer_to_server(
            RouterServicer(store, dispatcher, settings, reports), s
        )
    )
    port = await server.start("127.0.0.1:0")
    ch = channel(f"127.0.0.1:{port}")
    try:
        yield rgrpc.RouterServiceStub(ch)
    finally:
        await ch.close()
        await server.stop(grace=0)
        await dispatcher.drain()
        await clients.close()
        await store.close()


async def pending(stub: rgrpc.RouterServiceAsyncStub) -> list[str]:
    reply = await stub.GetInbox(rpb.GetInboxRequest(ue_svc_id=RECIPIENT), timeout=5)
    return [doc.msg.msg_id for doc in reply.docs]


async def recipient_state(redis: Redis, msg_id: str) -> str:
    raw = await redis.hget(KEYS.message(f"UE:{SENDER}", msg_id), f"st:UE:{RECIPIENT}")
    assert raw is not None
    state: str = json.loads(raw)["state"]
    return state


async def test_message_to_unreachable_ue_is_stored_until_acknowledged(
    router: rgrpc.RouterServiceAsyncStub, redis: Redis
) -> None:
    """Verifies the store-and-forward path: STORED, in the inbox, DELIVERED on the ack."""
    reply = await router.SubmitMessage(submit("m1"), timeout=5)

    assert reply.result == pb.MSG_RESULT_STORED
    assert reply.failure_cause == ""
    assert await pending(router) == ["m1"]
    assert await recipient_state(redis, "m1") == "STORED"

    assert (await router.Acknowledge(ack("m1"), timeout=5)).matched is True

    assert await pending(router) == []
    assert await recipient_state(redis, "m1") == "DELIVERED"


async def test_duplicate_of_a_pending_message_is_stored_once(
    router: rgrpc.RouterServiceAsyncStub,
) -> None:
    """Verifies that a retransmitted MSG is answered DUPLICATE and queued only once."""
    await router.SubmitMessage(submit("m1"), timeout=5)

    again = await router.SubmitMessage(submit("m1"), timeout=5)

    assert again.failure_cause == "DUPLICATE"
    assert again.result == pb.MSG_RESULT_STORED
    assert await pending(router) == ["m1"]


async def test_duplicate_of_a_delivered_message_is_not_delivered_again(
    router: rgrpc.RouterServiceAsyncStub, redis: Redis
) -> None:
    """Verifies that duplicates are suppressed by (oriAddr, msgId) also after delivery: a
    sender that retransmits a MSG whose MSGRESP it lost does not make the recipient get it
    twice."""
    await router.SubmitMessage(submit("m1"), timeout=5)
    assert (await router.Acknowledge(ack("m1"), timeout=5)).matched is True

    again = await router.SubmitMessage(submit("m1"), timeout=5)

    assert again.failure_cause == "DUPLICATE"
    assert await pending(router) == []
    assert await recipient_state(redis, "m1") == "DELIVERED"


async def test_a_repeated_delivery_report_reaches_the_sender_once(
    router: rgrpc.RouterServiceAsyncStub,
) -> None:
    """Verifies that a recipient's IMDN sent twice (a client retry, possibly after the first
    copy was already delivered and acknowledged) is queued for the sender only once."""
    request = submit("m1")
    request.message.deliv_st_req_ind = True
    await router.SubmitMessage(request, timeout=5)
    assert (await router.Acknowledge(ack("m1"), timeout=5)).matched is True
    report = rpb.SubmitReportRequest(
        imdn=pb.Imdn(
            ori_addr=ue_addr(RECIPIENT),
            dest_addr=ue_addr(SENDER),
            msg_id="m1",
            deliv_st=pb.DELIVERY_STATUS_REPT_DELY_SUCCESS,
        ),
        edge=EDGE,
    )

    assert (await router.SubmitReport(report, timeout=5)).ok is True
    inbox = await router.GetInbox(rpb.GetInboxRequest(ue_svc_id=SENDER), timeout=5)
    assert [doc.imdn.msg_id for doc in inbox.docs] == ["m1"]
    sender_ack = rpb.AcknowledgeRequest(
        ue_svc_id=SENDER, msg_id="m1", ori_addr=ue_addr(RECIPIENT), edge=EDGE
    )
    assert (await router.Acknowledge(sender_ack, timeout=5)).matched is True

    assert (await router.SubmitReport(report, timeout=5)).ok is True
    inbox = await router.GetInbox(rpb.GetInboxRequest(ue_svc_id=SENDER), timeout=5)
    assert list(inbox.docs) == []


async def test_a_batch_of_messages_is_answered_message_by_message(
    router: rgrpc.RouterServiceAsyncStub, redis: Redis
) -> None:
    """Verifies SubmitMessages: each item is handled as SubmitMessage handles it, its answer
    in its position, and one that fails (refused, or invalid as a whole) fails alone."""
    stranger = submit("m3")
    stranger.message.ori_addr.CopyFrom(ue_addr("ue-unregistered"))
    no_edge = submit("m4")
    no_edge.ClearField("edge")
    batch = rpb.SubmitMessagesRequest(requests=[submit("m1"), stranger, no_edge, submit("m2")])

    reply = await router.SubmitMessages(batch, timeout=5)

    first, refused, invalid, last = reply.results
    assert first.response.result == pb.MSG_RESULT_STORED
    assert not first.HasField("error")
    assert refused.response.result == pb.MSG_RESULT_FAILED
    assert refused.response.failure_cause == "NOT_REGISTERED"
    assert invalid.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not invalid.HasField("response")
    assert last.response.result == pb.MSG_RESULT_STORED
    assert sorted(await pending(router)) == ["m1", "m2"]
    assert await recipient_state(redis, "m2") == "STORED"


async def test_a_batch_of_acknowledgements_is_answered_one_by_one(
    router: rgrpc.RouterServiceAsyncStub, redis: Redis
) -> None:
    """Verifies AcknowledgeMany: each acknowledgement matches (or not) on its own."""
    await router.SubmitMessages(
        rpb.SubmitMessagesRequest(requests=[submit("m1"), submit("m2")]), timeout=5
    )
    no_edge = ack("m2")
    no_edge.ClearField("edge")
    batch = rpb.AcknowledgeManyRequest(requests=[ack("m1"), ack("unknown"), no_edge])

    reply = await router.AcknowledgeMany(batch, timeout=5)

    matched, unknown, invalid = reply.results
    assert matched.response.matched is True
    assert unknown.response.matched is False
    assert invalid.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert await pending(router) == ["m2"]
    assert await recipient_state(redis, "m1") == "DELIVERED"
