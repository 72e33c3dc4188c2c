"""End-to-end: overload and abuse protection. A UE over its rate is refused (CoAP 5.03 with
Max-Age, MQTT OVERLOADED) while other UEs are served; a full inbox refuses new messages;
acknowledgements never lock a UE out; an oversize blockwise body is refused early."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiocoap
import httpx
import pytest
import pytest_asyncio
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat
from redis.asyncio import Redis

from msgin5g_client import CoapUe, MqttUe, RequestFailed
from msgin5g_client.common import build_msg, with_retries
from msgin5g_common import aggregate
from msgin5g_common import header as h
from msgin5g_common.keys import Keys
from msgin5g_devstack.stack import Stack
from tests.conftest import message_state, new_ue_id, stack_config

pytestmark = pytest.mark.e2e

RATE = 5  # documents per second per UE, and the burst
MAX_PENDING = 10
FLOOD = 20
Ue = CoapUe | MqttUe
T = TypeVar("T", CoapUe, MqttUe)


@pytest_asyncio.fixture(scope="module")
async def limited(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """A system with small limits: 5 documents/s per UE in bursts of 5, 10 pending per UE."""
    config = stack_config(
        tmp_path_factory.mktemp("limits"),
        MSGIN5G_UE_RATE=str(RATE),
        MSGIN5G_UE_BURST=str(RATE),
        MSGIN5G_MAX_PENDING=str(MAX_PENDING),
    )
    async with Stack(config) as running:
        yield running


def make_ue(stack: Stack, transport: str, label: str) -> Ue:
    ue_id = new_ue_id(f"{transport}-{label}")
    return CoapUe(ue_id, stack.coap_addr) if transport == "coap" else MqttUe(ue_id, stack.mqtt_addr)


async def _open(exits: contextlib.AsyncExitStack, ue: T) -> T:
    """Enters the UE's context in ``exits``, keeping its type."""
    await exits.enter_async_context(ue)
    return ue


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Waits for a condition, retrying with the client library's own back-off."""

    async def attempt() -> None:
        if not await check():
            raise RequestFailed("NOT_YET", what)

    await with_retries(attempt, attempts=12, first_delay=0.05, retryable=None)


async def _senders(
    stack: Stack, exits: contextlib.AsyncExitStack, transport: str, count: int
) -> list[Ue]:
    """Registered UEs (each has spent one document of its burst on its REG)."""
    ues: list[Ue] = []
    for _ in range(count):
        ue = make_ue(stack, transport, "tx")
        await exits.enter_async_context(ue)
        ues.append(ue)
    await asyncio.gather(*(ue.register() for ue in ues))
    return ues


# -- per-UE rate limits -------------------------------------------------------------------------


async def test_a_coap_ue_over_its_rate_gets_503_with_max_age_while_another_is_served(
    limited: Stack,
) -> None:
    stack = limited
    async with (
        CoapUe(new_ue_id("coap-noisy"), stack.coap_addr) as noisy,
        CoapUe(new_ue_id("coap-quiet"), stack.coap_addr) as quiet,
        CoapUe(new_ue_id("coap-rx"), stack.coap_addr) as rx,
        CoapUe(new_ue_id("coap-rx2"), stack.coap_addr) as rx2,
    ):
        for ue in (noisy, quiet, rx, rx2):
            await ue.register()
        flood = [build_msg(noisy.ue_svc_id, rx.ue_svc_id, f"flood {n}") for n in range(FLOOD)]
        calm = [build_msg(quiet.ue_svc_id, rx2.ue_svc_id, f"calm {n}") for n in range(RATE - 1)]
        responses = await asyncio.gather(
            *(noisy.request(Code.POST, "msg", h.encode(m)) for m in flood),
            *(quiet.send_msg(m) for m in calm),
        )
        answers, served = responses[:FLOOD], responses[FLOOD:]

        accepted = {m.msg_id for m, r in zip(flood, answers, strict=True) if r.code == Code.CHANGED}
        refused = [r for r in answers if r.code != Code.CHANGED]
        # The burst left after the REG, and at most what refilled during the flood.
        assert RATE - 1 <= len(accepted) <= RATE + 1, [str(r.code) for r in answers]
        for response in refused:
            assert response.code == Code.SERVICE_UNAVAILABLE
            diagnostic = response.payload.decode()
            assert diagnostic.startswith(
                f"OVERLOADED: {noisy.ue_svc_id} sends more than 5 documents/s"
            )
            assert response.opt.max_age == 1  # a token is free within 0.2 s: the least hint
        # The other UE, at the same time, was served in full.
        assert all(r.result is h.MsgResult.STORED for r in served)
        assert {d.msg_id for d in await rx2.inbox()} == {m.msg_id for m in calm}
        # Refused documents never reached the router: only the accepted ones wait for rx.
        assert {d.msg_id for d in await rx.inbox()} == accepted

        # After waiting out Max-Age (the library's retry honours it) the UE is served again.
        again = await noisy.send_msg(build_msg(noisy.ue_svc_id, rx.ue_svc_id, "later"), attempts=4)
        assert again.result is h.MsgResult.STORED


async def test_an_mqtt_ue_over_its_rate_gets_overloaded_documents_while_another_is_served(
    limited: Stack,
) -> None:
    stack = limited
    async with (
        MqttUe(new_ue_id("mqtt-noisy"), stack.mqtt_addr) as noisy,
        MqttUe(new_ue_id("mqtt-quiet"), stack.mqtt_addr) as quiet,
        MqttUe(new_ue_id("mqtt-rx"), stack.mqtt_addr) as rx,
        MqttUe(new_ue_id("mqtt-rx2"), stack.mqtt_addr) as rx2,
    ):
        for ue in (noisy, quiet, rx, rx2):
            await ue.register()
        flood = [build_msg(noisy.ue_svc_id, rx.ue_svc_id, f"flood {n}") for n in range(FLOOD)]
        calm = [build_msg(quiet.ue_svc_id, rx2.ue_svc_id, f"calm {n}") for n in range(RATE - 1)]
        results = await asyncio.gather(
            *(noisy.send_msg(m) for m in flood),
            *(quiet.send_msg(m) for m in calm),
            return_exceptions=True,
        )
        answers, served = results[:FLOOD], results[FLOOD:]

        accepted = {
            m.msg_id for m, r in zip(flood, answers, strict=True) if isinstance(r, h.MsgResp)
        }
        refused = [r for r in answers if not isinstance(r, h.MsgResp)]
        assert RATE - 1 <= len(accepted) <= RATE + 1, answers
        for failure in refused:
            # The MSGRESP of each refused MSG, on the UE's downlink topic.
            assert isinstance(failure, RequestFailed), failure
            assert failure.cause == "OVERLOADED"
            assert failure.detail.startswith(f"{noisy.ue_svc_id} sends more than 5 documents/s")
        assert all(isinstance(r, h.MsgResp) and r.result is h.MsgResult.ACCEPTED for r in served)
        got = await asyncio.gather(*(rx2.receive() for _ in calm))
        assert {d.msg_id for d in got} == {m.msg_id for m in calm}

        # Only the accepted ones reach rx: it takes them, and once its acknowledgements are
        # through (its own MSG after them is answered in order) its inbox is empty.
        got = await asyncio.gather(*(rx.receive() for _ in accepted))
        assert {d.msg_id for d in got} == accepted
        await rx.send(quiet.ue_svc_id, "acks are through")
        async with CoapUe(rx.ue_svc_id, stack.coap_addr) as check:
            assert await check.inbox() == []

        again = await noisy.send_msg(build_msg(noisy.ue_svc_id, rx.ue_svc_id, "later"), attempts=6)
        assert again.result is h.MsgResult.ACCEPTED


@pytest.mark.parametrize("transport", ["coap", "mqtt"])
async def test_acknowledgements_of_a_burst_of_downlink_never_lock_a_ue_out(
    limited: Stack, transport: str
) -> None:
    """A UE that receives 30 documents in quick succession acknowledges every one (six times
    its burst of documents) and can still send its own messages."""
    stack = limited
    rounds = 3
    async with contextlib.AsyncExitStack() as exits:
        rx = make_ue(stack, transport, "rx")
        await exits.enter_async_context(rx)
        await rx.register()
        await rx.start_observing()
        senders = await _senders(stack, exits, transport, MAX_PENDING)
        received: set[str] = set()
        for n in range(rounds):
            # One round fills the inbox up to its limit at most; the next starts once rx's
            # acknowledgements are through (its own MSG after them is answered in order).
            sent = await asyncio.gather(*(s.send(rx.ue_svc_id, f"round {n}") for s in senders))
            got = await asyncio.gather(*(rx.receive() for _ in sent))
            assert {d.msg_id for d in got} == {s.msg_id for s in sent}
            received |= {d.msg_id for d in got}
            if isinstance(rx, MqttUe):
                await rx.send(senders[0].ue_svc_id, f"my own message {n}")
        assert len(received) == rounds * MAX_PENDING
        if isinstance(rx, CoapUe):
            # Each acknowledgement was answered before its document was handed over; the
            # UE's own allowance is untouched.
            await rx.send(senders[0].ue_svc_id, "my own message")
        async with CoapUe(rx.ue_svc_id, stack.coap_addr) as check:
            assert await check.inbox() == []


# -- inbox size limit -----------------------------------------------------------------------


async def test_a_full_inbox_refuses_new_messages_while_others_flow(limited: Stack) -> None:
    stack = limited
    async with contextlib.AsyncExitStack() as exits:
        full = await _open(exits, CoapUe(new_ue_id("coap-full"), stack.coap_addr))
        other = await _open(exits, CoapUe(new_ue_id("coap-other"), stack.coap_addr))
        late = await _open(exits, MqttUe(new_ue_id("mqtt-late"), stack.mqtt_addr))
        for ue in (full, other, late):
            await ue.register()
        # Ten stored documents (the recipient does not observe), from four senders.
        fillers = await _senders(stack, exits, "coap", 4)
        stored = await asyncio.gather(
            *(fillers[n % 4].send(full.ue_svc_id, f"fill {n}") for n in range(MAX_PENDING))
        )
        assert all(s.result is h.MsgResult.STORED for s in stored)

        # The 11th is refused, on both transports, with a detail naming the inbox.
        eleventh = build_msg(late.ue_svc_id, full.ue_svc_id, "one too many")
        with pytest.raises(RequestFailed) as over_mqtt:
            await late.send_msg(eleventh)
        expected = f"inbox of UE:{full.ue_svc_id} is full ({MAX_PENDING} pending)"
        assert (over_mqtt.value.cause, over_mqtt.value.detail) == ("OVERLOADED", expected)
        coap_try = build_msg(other.ue_svc_id, full.ue_svc_id, "also too many")
        response = await other.request(Code.POST, "msg", h.encode(coap_try))
        assert response.code == Code.SERVICE_UNAVAILABLE
        assert response.payload.decode() == f"OVERLOADED: {expected}"
        assert response.opt.max_age == 10  # the inbox empties only when its UE acknowledges
        # A retransmission of an accepted message is still answered as the duplicate it is.
        first = stored[0].msg_id
        again = await fillers[0].send_msg(
            build_msg(fillers[0].ue_svc_id, full.ue_svc_id, "fill 0", msg_id=first)
        )
        assert (again.result, again.failure_cause) == (h.MsgResult.STORED, "DUPLICATE")
        # Messages to other UEs flow.
        flows = await late.send(other.ue_svc_id, "to a roomy inbox")
        assert flows.result is h.MsgResult.STORED
        assert [d.msg_id for d in await other.inbox()] == [flows.msg_id]

        # The recipient takes one document: there is room for the refused one again.
        pending = await full.inbox()  # the first of them (a GET carries about 1 KB)
        await full.ack(pending[0])
        taken = await late.send_msg(eleventh, attempts=3)
        assert taken.result is h.MsgResult.STORED


async def test_a_group_member_with_a_full_inbox_is_skipped_with_overloaded(
    limited: Stack,
) -> None:
    stack = limited
    group = new_ue_id("grp")
    async with contextlib.AsyncExitStack() as exits:
        sender = await _open(exits, MqttUe(new_ue_id("mqtt-gs"), stack.mqtt_addr))
        full = await _open(exits, CoapUe(new_ue_id("coap-gfull"), stack.coap_addr))
        roomy = await _open(exits, MqttUe(new_ue_id("mqtt-groomy"), stack.mqtt_addr))
        members = [sender.ue_svc_id, full.ue_svc_id, roomy.ue_svc_id]
        async with httpx.AsyncClient(base_url=stack.http_url) as http:
            put = await http.put(f"/api/v1/groups/{group}", json={"members": members})
            assert put.status_code == 201, put.text
        for ue in (sender, full, roomy):
            await ue.register()
        fillers = await _senders(stack, exits, "coap", 4)
        await asyncio.gather(
            *(fillers[n % 4].send(full.ue_svc_id, f"fill {n}") for n in range(MAX_PENDING))
        )

        sent = await sender.send(group, "to the group", dest_type=h.AddrType.GROUP)
        got = await roomy.receive()
        assert got.msg_id == sent.msg_id

        async def settled() -> bool:
            state = await message_state(stack.http_url, sent.msg_id, f"UE:{sender.ue_svc_id}")
            return bool(state["summary"] == {"DELIVERED": 1, "FAILED": 1})

        await eventually(settled, "the group message settles")
        state = await message_state(stack.http_url, sent.msg_id, f"UE:{sender.ue_svc_id}")
        by_member = {r["rcptAddr"]["addr"]: r for r in state["recipients"]}
        assert by_member[full.ue_svc_id]["state"] == "FAILED"
        assert by_member[full.ue_svc_id]["failureCause"] == "OVERLOADED"
        assert by_member[roomy.ue_svc_id]["state"] == "DELIVERED"
        # The member's inbox was left as it was.
        redis = Redis.from_url(stack.redis_url)
        try:
            assert await redis.zcard(Keys().inbox(full.ue_svc_id)) == MAX_PENDING
        finally:
            await redis.aclose()


# -- oversize bodies through blockwise -------------------------------------------------------


async def test_an_oversize_blockwise_body_is_refused_at_its_first_block(limited: Stack) -> None:
    """aiocoap's client announces the total in Size1 on the first block: the server refuses
    there, with 4.13 and its limit in Size1, instead of taking in half a megabyte first."""
    stack = limited
    limit = aggregate.MAX_UPLINK_ITEMS * h.document_limit(h.DEFAULT_MAX_PAYLOAD)
    async with CoapUe(new_ue_id("coap-big"), stack.coap_addr) as ue:
        response = await ue.request(Code.POST, "msg", b"[" + b" " * limit + b"]")
        assert response.code == Code.REQUEST_ENTITY_TOO_LARGE
        assert response.opt.size1 == limit
        assert response.payload.decode() == (
            f"PAYLOAD_TOO_LARGE: request body of {limit + 2} bytes or more, maximum {limit}"
        )
        # A body within the limit still goes blockwise (a MSG of a full payload is > 1 KB).
        await ue.register()
        sent = await ue.send(ue.ue_svc_id, "x" * h.DEFAULT_MAX_PAYLOAD)
        assert sent.result is h.MsgResult.STORED


async def test_a_blockwise_body_without_size1_is_refused_at_the_block_crossing_the_limit(
    limited: Stack,
) -> None:
    stack = limited
    limit = h.document_limit(h.DEFAULT_MAX_PAYLOAD)  # of /reg: one document
    block = 1024
    host, port = stack.coap_addr
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        codes = []
        for number in range(limit // block + 2):
            request = aiocoap.Message(
                code=Code.POST,
                uri=f"coap://{host}:{port}/reg",
                payload=b" " * block,
                content_format=ContentFormat.JSON,
            )
            request.opt.block1 = (number, True, 6)  # 2 ** (6 + 4) = 1024 bytes per block
            response = await asyncio.wait_for(
                context.request(request, handle_blockwise=False).response, 10
            )
            codes.append(response.code)
            if response.code != Code.CONTINUE:
                break
    finally:
        await context.shutdown()
    # Every block up to the limit is taken; the one that crosses it is refused.
    assert codes == [Code.CONTINUE] * (limit // block) + [Code.REQUEST_ENTITY_TOO_LARGE]
    assert response.opt.size1 == limit
