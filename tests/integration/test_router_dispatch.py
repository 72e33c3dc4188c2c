"""The router's dispatch against a real Redis, with the edge faked: what a message's state says
when the recipient's acknowledgement overtakes the edge's answer to Deliver (a CoAP push
edge answers Deliver and pushes in the background; any edge's answer can be slower than the
UE), and when the edge does not take the documents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import edge_pb2 as epb
from msgin5g.v1 import router_pb2 as rpb
from msgin5g_common.grpcutil import Context
from msgin5g_common.keys import Keys
from msgin5g_registry.store import RegistryStore
from msgin5g_router.dispatch import Dispatcher, EdgeClients
from msgin5g_router.grpc_api import RouterServicer
from msgin5g_router.settings import RouterSettings
from msgin5g_router.store import RouterStore

KEYS = Keys("m5g")
SENDER, RECIPIENT = "ue-sender", "ue-recipient"
EDGE = pb.EdgeRef(kind=pb.EDGE_KIND_COAP, edge_id="coap-edge-1")
WAIT = 5.0

# What the fake edge does with a DeliverRequest; it returns the edge's answer.
Behaviour = Callable[[epb.DeliverRequest], Awaitable[epb.DeliverResponse]]


class FakeEdge:
    """Stands in for every edge replica the dispatcher calls (``EdgeClients``)."""

    def __init__(self) -> None:
        self.behaviour: Behaviour | None = None
        self.calls: list[epb.DeliverRequest] = []

    async def deliver(self, address: str, request: epb.DeliverRequest) -> epb.DeliverResponse:
        self.calls.append(request)
        assert self.behaviour is not None
        return await self.behaviour(request)

    async def forget(self, address: str) -> None:
        pass

    async def close(self) -> None:
        pass


class Router:
    def __init__(self, redis: Redis, edge: FakeEdge) -> None:
        self.redis = redis
        self.edge = edge
        self.settings = RouterSettings()
        self.store = RouterStore(redis, KEYS)
        self.dispatcher = Dispatcher(
            self.store,
            cast(EdgeClients, edge),
            self.settings.inbox_limit,
            self.settings.grpc_timeout,
        )
        self.servicer = RouterServicer(
            self.store, self.dispatcher, self.settings, self.dispatcher.reports
        )
        self.context = cast(Context, None)

    async def submit(self, msg_id: str) -> rpb.SubmitMessageResponse:
        request = rpb.SubmitMessageRequest(
            message=pb.Message(
                msg_id=msg_id,
                ori_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr=SENDER),
                dest_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr=RECIPIENT),
                payload="hello",
            ),
            edge=EDGE,
        )
        return await self.servicer.SubmitMessage(request, self.context)

    async def acknowledge(self, msg_id: str) -> rpb.AcknowledgeResponse:
        request = rpb.AcknowledgeRequest(
            ue_svc_id=RECIPIENT,
            msg_id=msg_id,
            ori_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr=SENDER),
            result=pb.MSG_RESULT_DELIVERED,
            edge=EDGE,
        )
        return await self.servicer.Acknowledge(request, self.context)

    async def settle(self) -> None:
        """Waits for every dispatch under way (and those they start) to finish."""
        async with asyncio.timeout(WAIT):
            while self.dispatcher._tasks:
                await asyncio.wait(list(self.dispatcher._tasks))

    async def state(self, msg_id: str) -> dict[str, Any]:
        raw = await self.redis.hget(KEYS.message(f"UE:{SENDER}", msg_id), f"st:UE:{RECIPIENT}")
        assert raw is not None
        state: dict[str, Any] = json.loads(raw)
        return state

    async def retry_scheduled(self) -> bool:
        return await self.redis.zscore(KEYS.retry(), RECIPIENT) is not None

    async def retry_count(self) -> int:
        return int(await self.redis.get(KEYS.retry_count(RECIPIENT)) or 0)


@pytest_asyncio.fixture(params=["coap", "mqtt"])
async def router(redis: Redis, request: pytest.FixtureRequest) -> AsyncIterator[Router]:
    """The recipient is registered over CoAP (the edge is sent its inbox) or MQTT (the edge
    is sent each new document; the router records the forward as it stores the document)
    and its route lease names a live edge replica (the fake), so every accepted message is
    dispatched at once."""
    kind: str = request.param
    registry = RegistryStore(redis, KEYS)
    await registry.register(SENDER, transport="coap", lifetime=600)
    await registry.register(RECIPIENT, transport=kind, lifetime=600)
    edge = FakeEdge()
    running = Router(redis, edge)
    await running.store.touch_route(RECIPIENT, kind, f"{kind}-edge-1", 600_000)
    await redis.set(KEYS.edge(kind, f"{kind}-edge-1"), "127.0.0.1:1")
    try:
        yield running
    finally:
        await running.dispatcher.drain()
        await running.store.close()


async def test_an_acknowledgement_before_the_edge_answers_deliver_ends_delivered_after_forwarded(
    router: Router,
) -> None:
    """Verifies the race of a push UE (coap-edge answers Deliver and pushes in the background):
    the recipient's acknowledgement is handled before the edge's answer reaches the router.
    The record still says the message was forwarded once, then delivered, and no re-send is
    left scheduled for the acknowledged document."""

    async def ack_first(request: epb.DeliverRequest) -> epb.DeliverResponse:
        for doc in request.docs:
            assert (await router.acknowledge(doc.msg.msg_id)).matched
        return epb.DeliverResponse(forwarded=True)

    router.edge.behaviour = ack_first
    assert (await router.submit("m1")).result == pb.MSG_RESULT_ACCEPTED
    await router.settle()

    state = await router.state("m1")
    assert state["state"] == "DELIVERED"
    assert state["attempts"] == 1
    assert state["times"]["ACCEPTED"] <= state["times"]["FORWARDED"]
    assert state["times"]["FORWARDED"] <= state["times"]["DELIVERED"]
    assert not await router.retry_scheduled()
    assert await router.retry_count() == 0


async def test_a_forward_the_edge_answers_first_schedules_the_re_send(router: Router) -> None:
    """Verifies the ordinary order: forwarded, a re-send scheduled; then the acknowledgement
    makes it DELIVERED and takes the re-send off the schedule."""
    answered = asyncio.Event()

    async def forward(request: epb.DeliverRequest) -> epb.DeliverResponse:
        answered.set()
        return epb.DeliverResponse(forwarded=True)

    router.edge.behaviour = forward
    await router.submit("m1")
    await router.settle()
    assert answered.is_set()
    state = await router.state("m1")
    assert (state["state"], state["attempts"]) == ("FORWARDED", 1)
    assert await router.retry_scheduled()
    assert await router.retry_count() == 1

    assert (await router.acknowledge("m1")).matched
    state = await router.state("m1")
    assert (state["state"], state["attempts"]) == ("DELIVERED", 1)
    assert not await router.retry_scheduled()
    assert await router.retry_count() == 0


async def refuse(request: epb.DeliverRequest) -> epb.DeliverResponse:
    return epb.DeliverResponse(forwarded=False)


class Unreachable(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
        )


async def unreachable(request: epb.DeliverRequest) -> epb.DeliverResponse:
    raise Unreachable()


async def test_documents_the_edge_does_not_take_stay_stored_without_a_re_send(
    router: Router,
) -> None:
    """Verifies that a forward recorded before Deliver is taken back when the edge refuses
    the documents or cannot be reached: STORED, no attempt counted, nothing scheduled (they
    wait for the UE to show up), as if the forward had never been tried."""
    for number, behaviour in enumerate([refuse, unreachable]):
        msg_id = f"m{number}"
        router.edge.behaviour = behaviour
        await router.submit(msg_id)
        await router.settle()
        state = await router.state(msg_id)
        assert state["state"] == "STORED"
        assert state.get("attempts", 0) == 0
        assert "FORWARDED" not in state["times"]
        assert not await router.retry_scheduled()
        assert await router.retry_count() == 0


async def test_a_failed_re_send_keeps_the_earlier_forward(router: Router) -> None:
    """Verifies that taking back a failed forward takes back only that one: a document
    forwarded before stays FORWARDED with its one attempt."""

    async def forward(request: epb.DeliverRequest) -> epb.DeliverResponse:
        return epb.DeliverResponse(forwarded=True)

    router.edge.behaviour = forward
    await router.submit("m1")
    await router.settle()
    router.edge.behaviour = refuse
    await router.store.clear_retry(RECIPIENT)  # as the sweeper claims a due re-send
    assert await router.dispatcher.dispatch(RECIPIENT) is False

    state = await router.state("m1")
    assert (state["state"], state["attempts"]) == ("FORWARDED", 1)
    assert not await router.retry_scheduled()
    assert len(router.edge.calls) == 2
