"""End-to-end: UEs on CoAP and MQTT exchange messages through the whole system."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from msgin5g_client import CoapUe, MqttUe
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id

pytestmark = pytest.mark.e2e

Ue = CoapUe | MqttUe


@asynccontextmanager
async def connected(stack: Stack, transport: str, label: str) -> AsyncIterator[Ue]:
    ue_id = new_ue_id(f"{transport}-{label}")
    client: Ue = (
        CoapUe(ue_id, stack.coap_addr) if transport == "coap" else MqttUe(ue_id, stack.mqtt_addr)
    )
    async with client:
        yield client


COMBINATIONS = [("coap", "coap"), ("coap", "mqtt"), ("mqtt", "coap"), ("mqtt", "mqtt")]


@pytest.mark.parametrize(("src", "dst"), COMBINATIONS, ids=[f"{a}-to-{b}" for a, b in COMBINATIONS])
async def test_p2p_message_is_accepted_delivered_and_acknowledged(
    stack: Stack, src: str, dst: str
) -> None:
    async with connected(stack, src, "a") as a, connected(stack, dst, "b") as b:
        await a.register()
        await b.register()
        await b.start_observing()

        resp = await a.send(
            b.ue_svc_id, f"hello from {src}", priority=h.Priority.HIGH, app_id="app-1"
        )
        assert resp.result is h.MsgResult.ACCEPTED
        doc = await b.receive()
        assert isinstance(doc, h.Msg)
        assert doc.msg_id == resp.msg_id
        assert doc.payload == f"hello from {src}"
        assert doc.ori_addr == h.Address(h.AddrType.UE, a.ue_svc_id)
        assert doc.dest_addr == h.Address(h.AddrType.UE, b.ue_svc_id)
        assert doc.priority is h.Priority.HIGH
        assert doc.app_id == "app-1"

        # And back the other way.
        await a.start_observing()
        back = await b.send(a.ue_svc_id, "hello back")
        reply = await a.receive()
        assert isinstance(reply, h.Msg)
        assert (reply.msg_id, reply.payload) == (back.msg_id, "hello back")

        # Receiving acknowledged both: nothing stays pending.
        if isinstance(b, CoapUe):
            assert await b.inbox() == []
        if isinstance(a, CoapUe):
            assert await a.inbox() == []


async def test_message_to_offline_coap_ue_is_stored_and_waits_in_its_inbox(stack: Stack) -> None:
    async with (
        connected(stack, "mqtt", "a") as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
    ):
        await a.register()
        await b.register()
        resp = await a.send(b.ue_svc_id, "while you slept")
        # b registered but observes nothing: the message is stored for it.
        assert resp.result in (h.MsgResult.ACCEPTED, h.MsgResult.STORED)
        pending = await b.inbox()
        assert [d.msg_id for d in pending] == [resp.msg_id]
        # Reading the inbox is not receiving: only an acknowledgement removes the document.
        assert [d.msg_id for d in await b.inbox()] == [resp.msg_id]
        await b.ack(pending[0])
        assert await b.inbox() == []


async def test_inbox_lists_high_priority_first_then_oldest_first(stack: Stack) -> None:
    async with (
        connected(stack, "coap", "a") as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
    ):
        await a.register()
        await b.register()
        low = await a.send(b.ue_svc_id, "low", priority=h.Priority.LOW)
        mid1 = await a.send(b.ue_svc_id, "mid1")
        high = await a.send(b.ue_svc_id, "high", priority=h.Priority.HIGH)
        mid2 = await a.send(b.ue_svc_id, "mid2", priority=h.Priority.MIDDLE)
        order = [d.msg_id for d in await b.inbox()]
        assert order == [high.msg_id, mid1.msg_id, mid2.msg_id, low.msg_id]


async def test_registration_state_is_visible_on_the_http_api_until_deregistration(
    stack: Stack,
) -> None:
    async with (
        connected(stack, "coap", "a") as a,
        httpx.AsyncClient(base_url=stack.http_url) as http,
    ):
        missing = await http.get(f"/api/v1/ues/{a.ue_svc_id}")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"

        reg = await a.register(lifetime=600)
        assert reg.result is h.Result.SUCCESS
        assert reg.lifetime == 600
        body = (await http.get(f"/api/v1/ues/{a.ue_svc_id}")).json()
        assert body["registered"] is True
        assert body["transport"] == "coap"
        assert body["lifetime"] == 600
        assert body["expiresAt"]

        dereg = await a.deregister()
        assert dereg.result is h.Result.SUCCESS
        body = (await http.get(f"/api/v1/ues/{a.ue_svc_id}")).json()
        assert body == {"ueSvcId": a.ue_svc_id, "known": True, "registered": False} | {
            k: None for k in body if k not in ("ueSvcId", "known", "registered")
        }


async def test_mqtt_registration_and_deregistration_are_answered_on_the_downlink_topic(
    stack: Stack,
) -> None:
    async with (
        connected(stack, "mqtt", "a") as a,
        httpx.AsyncClient(base_url=stack.http_url) as http,
    ):
        assert (await a.register(lifetime=120)).lifetime == 120
        assert (await http.get(f"/api/v1/ues/{a.ue_svc_id}")).json()["transport"] == "mqtt"
        assert (await a.deregister()).result is h.Result.SUCCESS
        assert (await http.get(f"/api/v1/ues/{a.ue_svc_id}")).json()["registered"] is False


async def test_stored_message_reaches_mqtt_ue_when_it_registers_again(stack: Stack) -> None:
    async with connected(stack, "coap", "a") as a:
        await a.register()
        b_id = new_ue_id("mqtt-b")
        async with MqttUe(b_id, stack.mqtt_addr) as b:
            await b.register()
            await b.deregister()
        # b is known but not registered: the message waits.
        resp = await a.send(b_id, "stored for later")
        assert resp.result is h.MsgResult.STORED
        async with MqttUe(b_id, stack.mqtt_addr) as b:
            await b.register()
            doc = await b.receive()
            assert doc.msg_id == resp.msg_id
