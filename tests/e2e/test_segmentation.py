"""End-to-end: segmentation and reassembly (TS 23.554 8.5).

A UE sends a 10 KiB message as 2 KiB segments; the server reassembles it, routes the whole
message, and delivers it to the recipient in segments no larger than the recipient takes
(its maxSegSize, else 2048 bytes), each acknowledged on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from msgin5g_client import CoapUe, MqttUe, RequestFailed
from msgin5g_client.common import build_msg
from msgin5g_client.segments import Outbox, Reassembler, split
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id, stack_config, until_state

pytestmark = pytest.mark.e2e

WAIT = 15.0
# 10 KiB, and not one repeated character: a misplaced segment shows.
LONG = "".join(f"{n:05d}|" for n in range(1707))[:10240]

Ue = CoapUe | MqttUe


async def _receive_whole(ue: Ue, reassembler: Reassembler) -> tuple[h.Msg, list[h.Msg]]:
    """Receives (and, through the client library, acknowledges) segments until a message
    is whole: the message and the segments it came in."""
    segments = []
    while True:
        doc = await asyncio.wait_for(ue.receive(), WAIT)
        assert isinstance(doc, h.Msg)
        segments.append(doc)
        whole = reassembler.add(doc)
        if whole is not None:
            return whole, segments


@pytest.mark.parametrize("direction", ["coap->mqtt", "mqtt->coap"])
async def test_a_10_kib_message_is_reassembled_and_delivered_in_segments(
    stack: Stack, direction: str
) -> None:
    coap = CoapUe(new_ue_id("coap"), stack.coap_addr)
    mqtt = MqttUe(new_ue_id("mqtt"), stack.mqtt_addr)
    async with coap, mqtt:
        await coap.register()
        await mqtt.register()
        await coap.start_observing()
        sender, receiver = (coap, mqtt) if direction == "coap->mqtt" else (mqtt, coap)
        msg = build_msg(sender.ue_svc_id, receiver.ue_svc_id, LONG)
        parts = split(msg, 2048)
        assert len(parts) == 5
        answers = [await sender.send_msg(p) for p in parts]
        assert [a.result for a in answers[:-1]] == [h.MsgResult.ACCEPTED] * 4
        assert answers[-1].result in (h.MsgResult.ACCEPTED, h.MsgResult.STORED)

        whole, segments = await _receive_whole(receiver, Reassembler())
        assert whole.payload == LONG
        assert whole.msg_id == msg.msg_id
        assert all(len((s.payload or "").encode()) <= 2048 for s in segments)
        assert len(segments) == 5
        await until_state(stack.http_url, msg.msg_id, f"UE:{sender.ue_svc_id}", "DELIVERED")


async def test_a_recipient_with_max_seg_size_256_gets_segments_of_that_size(
    stack: Stack,
) -> None:
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        MqttUe(new_ue_id("mqtt-small"), stack.mqtt_addr) as small,
    ):
        await a.register()
        await small.register(max_seg_size=256)
        text = "ü" * 1000  # 2000 bytes: a multi-byte character must not be cut
        sent = await a.send(small.ue_svc_id, text)
        whole, segments = await _receive_whole(small, Reassembler())
        assert whole.msg_id == sent.msg_id
        assert whole.payload == text
        assert all(len((s.payload or "").encode()) <= 256 for s in segments)
        assert len(segments) == 8
        assert {s.seg_params.seg_id for s in segments if s.seg_params} == {sent.msg_id}
        await until_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}", "DELIVERED")


async def test_bad_segments_get_clear_errors_and_disturb_nothing(stack: Stack) -> None:
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b,
    ):
        await a.register()
        await b.register()
        parts = split(build_msg(a.ue_svc_id, b.ue_svc_id, "y" * 5000), 2048)
        first, second, third = parts

        def renumbered(p: h.Msg, **changes: Any) -> h.Msg:
            assert p.seg_params is not None
            return replace(p, seg_params=replace(p.seg_params, **changes))

        with pytest.raises(RequestFailed, match="at most 64 segments"):
            await a.send_msg(renumbered(first, seg_numb=65, total_seg_count=None))
        with pytest.raises(RequestFailed, match="beyond the total"):
            await a.send_msg(renumbered(first, seg_numb=4, total_seg_count=3))
        assert (await a.send_msg(first)).result is h.MsgResult.ACCEPTED
        duplicate = await a.send_msg(first)
        assert duplicate.failure_cause == "DUPLICATE"
        with pytest.raises(RequestFailed, match="differs"):
            await a.send_msg(renumbered(second, total_seg_count=7))
        with pytest.raises(RequestFailed, match="beyond the total"):
            await a.send_msg(renumbered(second, seg_numb=5))
        await a.send_msg(second)
        await a.send_msg(third)
        whole, segments = await _receive_whole(b, Reassembler())
        assert whole.payload == "y" * 5000
        assert len(segments) == 3  # the duplicate was not delivered twice
        # An ordinary message goes through as before.
        sent = await a.send(b.ue_svc_id, "and now something short")
        assert (await b.receive()).msg_id == sent.msg_id


@pytest_asyncio.fixture
async def quick_timeout_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A system that gives up reassembling after one second."""
    config = stack_config(tmp_path, MSGIN5G_REASSEMBLY_TIMEOUT="1", MSGIN5G_SWEEP_INTERVAL="0.2")
    async with Stack(config) as running:
        yield running


async def test_a_lost_segment_fails_the_message_with_segment_timeout(
    quick_timeout_stack: Stack,
) -> None:
    stack = quick_timeout_stack
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b,
    ):
        await a.register()
        await b.register()
        msg = build_msg(a.ue_svc_id, b.ue_svc_id, LONG)
        parts = split(msg, 2048)
        for part in parts[:2] + parts[3:]:  # the third one is lost on the way
            await a.send_msg(part)
        # The server asks for it once (SEGREC) ...
        request = await asyncio.wait_for(a.receive(), WAIT)
        assert isinstance(request, h.SegRec)
        assert (request.seg_id, request.missing) == (msg.msg_id, (3,))
        # ... and, not getting it, gives up.
        report = await asyncio.wait_for(a.receive(), WAIT)
        assert isinstance(report, h.Imdn)
        assert report.msg_id == msg.msg_id
        assert report.deliv_st is h.DelivSt.REPT_DELY_FAILED
        assert report.failure_cause == "SEGMENT_TIMEOUT"
        # Nothing reached the recipient, and the message is unknown (never routed).
        async with httpx.AsyncClient(base_url=stack.http_url) as http:
            response = await http.get(
                f"/api/v1/messages/{msg.msg_id}", params={"ori": f"UE:{a.ue_svc_id}"}
            )
            assert response.status_code == 404
        sent = await a.send(b.ue_svc_id, "the next one")
        assert (await asyncio.wait_for(b.receive(), WAIT)).msg_id == sent.msg_id


async def test_a_long_group_message_reaches_each_member_in_its_own_segment_size(
    stack: Stack,
) -> None:
    group = new_ue_id("group")
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        MqttUe(new_ue_id("mqtt-small"), stack.mqtt_addr) as small,
        CoapUe(new_ue_id("coap-big"), stack.coap_addr) as big,
    ):
        await a.register()
        await small.register(max_seg_size=256)
        await big.register()
        await big.start_observing()
        async with httpx.AsyncClient(base_url=stack.http_url) as http:
            members = {"members": [a.ue_svc_id, small.ue_svc_id, big.ue_svc_id]}
            assert (await http.put(f"/api/v1/groups/{group}", json=members)).status_code == 201
        text = "g" * 5000
        msg = build_msg(a.ue_svc_id, group, text, dest_type=h.AddrType.GROUP)
        for part in split(msg, 2048):
            await a.send_msg(part)
        for ue, size, count in ((small, 256, 20), (big, 2048, 3)):
            whole, segments = await _receive_whole(ue, Reassembler())
            assert whole.payload == text
            assert whole.msg_id == msg.msg_id
            assert len(segments) == count
            assert all(len((s.payload or "").encode()) <= size for s in segments)


async def test_a_lost_segment_is_recovered_when_the_sender_answers_segrec(
    quick_timeout_stack: Stack,
) -> None:
    stack = quick_timeout_stack
    async with (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a,
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b,
    ):
        await a.register()
        await b.register()
        await a.start_observing()
        msg = build_msg(a.ue_svc_id, b.ue_svc_id, LONG)
        parts = split(msg, 2048)
        outbox = Outbox()
        outbox.remember(parts)
        for part in parts[:1] + parts[2:4]:  # the second and the last are lost
            await a.send_msg(part)
        request = await asyncio.wait_for(a.receive(), WAIT)
        assert isinstance(request, h.SegRec)
        assert request.missing == (2, 5)
        answers = [await a.send_msg(part) for part in outbox.asked(request)]
        assert len(answers) == 2
        whole, _ = await _receive_whole(b, Reassembler())
        assert whole.payload == LONG
        await until_state(stack.http_url, msg.msg_id, f"UE:{a.ue_svc_id}", "DELIVERED")
