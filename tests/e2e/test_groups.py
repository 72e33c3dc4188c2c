"""End-to-end: group profiles and group messaging with per-member state (TS 23.554 8.7.4)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from msgin5g_client import CoapUe, MqttUe, RequestFailed
from msgin5g_common import header as h
from msgin5g_common.keys import Keys
from msgin5g_devstack.stack import Stack
from tests.conftest import message_state, new_ue_id, stack_config

pytestmark = pytest.mark.e2e

BIG = 10_000
PAGE = 500  # the router's default fan-out page


async def _put_group(stack: Stack, group: str, members: list[str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http:
        return await http.put(f"/api/v1/groups/{group}", json={"members": members})


def _pages_done(stack: Stack, msg_id: str, pages: int) -> asyncio.Future[str]:
    """Resolves once routers have logged ``pages`` distinct fan-out pages of the message
    (a page handled again after a crash counts once)."""
    seen: set[str] = set()

    def covers(line: str) -> bool:
        try:
            entry = json.loads(line)
        except ValueError:
            return False
        if entry.get("event") == "fan-out page delivered" and entry.get("msgId") == msg_id:
            seen.add(str(entry["page"]))
        return len(seen) >= pages

    return stack.expect("router", covers)


async def test_group_message_reaches_every_other_member_on_both_transports(stack: Stack) -> None:
    group = new_ue_id("grp")
    coap = [CoapUe(new_ue_id("gc"), stack.coap_addr) for _ in range(2)]
    mqtt = [MqttUe(new_ue_id("gm"), stack.mqtt_addr) for _ in range(2)]
    members: list[CoapUe | MqttUe] = [*coap, *mqtt]
    response = await _put_group(stack, group, [m.ue_svc_id for m in members])
    assert response.status_code == 201
    assert response.json()["memberCount"] == 4
    for ue in members:
        await ue.__aenter__()
    try:
        for ue in members:
            await ue.register()
            await ue.start_observing()
        for sender in (coap[0], mqtt[0]):
            sent = await sender.send(group, f"to all from {sender.ue_svc_id}",
                                     dest_type=h.AddrType.GROUP)  # fmt: skip
            assert sent.result is h.MsgResult.ACCEPTED
            others = [m for m in members if m is not sender]
            got = await asyncio.gather(*(m.receive() for m in others))
            for member, doc in zip(others, got, strict=True):
                assert isinstance(doc, h.Msg)
                assert doc.msg_id == sent.msg_id
                assert doc.dest_addr == h.Address(h.AddrType.GROUP, group)
                assert doc.rcpt_addr == h.Address(h.AddrType.UE, member.ue_svc_id)
        state = await message_state(stack.http_url, sent.msg_id, f"UE:{mqtt[0].ue_svc_id}")
        assert state["destAddr"] == {"addrType": "GROUP", "addr": group}
        assert state["summary"] == {"DELIVERED": 3}
        assert {r["rcptAddr"]["addr"] for r in state["recipients"]} == {
            m.ue_svc_id for m in members if m is not mqtt[0]
        }
        # The sender got nothing of its own.
        if isinstance(coap[0], CoapUe):
            assert await coap[0].inbox() == []
    finally:
        for ue in members:
            await ue.__aexit__(None, None, None)


async def test_mqtt_group_topic_takes_a_msg_without_destination(stack: Stack) -> None:
    group = new_ue_id("grp")
    async with (
        MqttUe(new_ue_id("gm"), stack.mqtt_addr) as a,
        CoapUe(new_ue_id("gc"), stack.coap_addr) as b,
    ):
        await _put_group(stack, group, [a.ue_svc_id, b.ue_svc_id])
        await a.register()
        await b.register()
        await b.start_observing()
        doc = {"msgType": "MSG", "msgId": "via-topic", "payload": "seed topic",
               "oriAddr": {"addrType": "UE", "addr": a.ue_svc_id}}  # fmt: skip
        await a.publish(json.dumps(doc).encode(), topic=f"msgin5g/group/{group}")
        answer = await a.next_answer()
        assert isinstance(answer, h.MsgResp)
        assert (answer.msg_id, answer.result) == ("via-topic", h.MsgResult.ACCEPTED)
        got = await b.receive()
        assert isinstance(got, h.Msg)
        assert (got.msg_id, got.rcpt_addr) == ("via-topic", h.Address(h.AddrType.UE, b.ue_svc_id))


async def test_group_profile_api_pages_members_and_refuses_bad_input(stack: Stack) -> None:
    group = new_ue_id("grp")
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        members = [f"m{i:03d}" for i in range(250)]
        assert (
            await http.put(f"/api/v1/groups/{group}", json={"members": members})
        ).status_code == 201
        first = (await http.get(f"/api/v1/groups/{group}", params={"limit": 100})).json()
        assert (first["memberCount"], first["members"][0], first["next"]) == (250, "m000", "m099")
        rest = (await http.get(f"/api/v1/groups/{group}",
                               params={"limit": 200, "after": first["next"]})).json()  # fmt: skip
        assert rest["members"][0] == "m100"
        assert rest["next"] is None
        added = await http.post(f"/api/v1/groups/{group}/members", json={"members": ["zz"]})
        assert added.json()["memberCount"] == 251
        assert (await http.delete(f"/api/v1/groups/{group}/members/zz")).status_code == 204
        assert (await http.delete(f"/api/v1/groups/{group}/members/zz")).status_code == 404
        bad = [
            await http.put(f"/api/v1/groups/{group}", json={"members": []}),
            await http.put(f"/api/v1/groups/{group}", json={"members": ["ok", "not/ok"]}),
            await http.put(f"/api/v1/groups/{group}", json={"members": ["a+b", "#"]}),
            await http.put(f"/api/v1/groups/{group}", json={"members": "m1"}),
            await http.put("/api/v1/groups/bad%20id", json={"members": ["m1"]}),
        ]
        for response in bad:
            assert response.status_code == 400, response.text
            assert response.headers["content-type"] == "application/problem+json"
        # Nothing of that changed the group.
        assert (await http.get(f"/api/v1/groups/{group}")).json()["memberCount"] == 250
        assert (await http.delete(f"/api/v1/groups/{group}")).status_code == 204
        assert (await http.get(f"/api/v1/groups/{group}")).status_code == 404


async def test_unknown_group_and_non_member_are_refused(stack: Stack) -> None:
    group = new_ue_id("grp")
    async with (
        CoapUe(new_ue_id("gc"), stack.coap_addr) as member,
        MqttUe(new_ue_id("gm"), stack.mqtt_addr) as outsider,
    ):
        await _put_group(stack, group, [member.ue_svc_id, "someone-else"])
        await member.register()
        await outsider.register()
        with pytest.raises(RequestFailed) as unknown:
            await member.send(new_ue_id("no-group"), "x", dest_type=h.AddrType.GROUP)
        assert unknown.value.cause == "UNKNOWN_RECIPIENT"
        with pytest.raises(RequestFailed) as outside:
            await outsider.send(group, "let me in", dest_type=h.AddrType.GROUP)
        assert outside.value.cause == "NOT_AUTHORIZED"
        # The member still can.
        assert (await member.send(group, "hi", dest_type=h.AddrType.GROUP)).result is (
            h.MsgResult.ACCEPTED
        )


@pytest_asyncio.fixture
async def fanout_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A system whose fan-out is paced (so that a router can be killed in the middle of
    one) and resumes a dead replica's page after 1 s."""
    config = stack_config(tmp_path, MSGIN5G_FANOUT_RATE="3000", MSGIN5G_FANOUT_CLAIM_AFTER="1")
    async with Stack(config) as running:
        yield running


async def test_ten_thousand_member_group_survives_a_router_killed_mid_fan_out(
    fanout_stack: Stack,
) -> None:
    stack = fanout_stack
    group = new_ue_id("big")
    sender_id = new_ue_id("sender")
    members = [f"{group}-m{i:05d}" for i in range(BIG - 1)] + [sender_id]
    assert (await _put_group(stack, group, members)).status_code == 201
    async with CoapUe(sender_id, stack.coap_addr) as sender:
        await sender.register()
        # Kill the router while it is in the middle of a page: the second one.
        starts = 0

        def second_page_started(line: str) -> bool:
            nonlocal starts
            starts += '"fan-out page started"' in line
            return starts == 2

        in_a_page = stack.expect("router", second_page_started)
        resumed = stack.expect_event("router", "resuming a fan-out page")
        msg = h.Msg("to-10k", h.Address(h.AddrType.UE, sender_id),
                    h.Address(h.AddrType.GROUP, group), payload="to ten thousand")  # fmt: skip
        done = _pages_done(stack, msg.msg_id, BIG // PAGE)
        sent = await sender.send_msg(msg)
        assert sent.result is h.MsgResult.ACCEPTED
        await asyncio.wait_for(in_a_page, 30)
        await stack.stop_process("router", signal.SIGKILL)
        await stack.start_service("router")
        # The restarted router takes over the page the dead one held, and finishes the rest.
        await asyncio.wait_for(resumed, 30)
        await asyncio.wait_for(done, 60)

        state = await message_state(stack.http_url, sent.msg_id, f"UE:{sender_id}", limit="10")
        # Nobody is connected: every member but the sender has it stored, once.
        assert state["summary"] == {"STORED": BIG - 1}
        assert len(state["recipients"]) == 10
        assert state["next"] is not None
    redis = Redis.from_url(stack.redis_url)
    try:
        keys = Keys()
        async with redis.pipeline(transaction=False) as pipe:
            for member in members[:-1]:
                pipe.zcard(keys.inbox(member))
            counts = await pipe.execute()
        assert set(counts) == {1}, "every member holds the message exactly once"
        assert await redis.zcard(keys.inbox(sender_id)) == 0
    finally:
        await redis.aclose()
