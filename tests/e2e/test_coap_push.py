"""End-to-end: CoAP push delivery (the seed's Figure 3, ``deliveryMode: push``).

The UE here is an aiocoap server context on its own loopback port: it registers from that
socket and serves ``/msg``, where the coap-edge POSTs each downlink document.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import httpx
import pytest
import pytest_asyncio
from aiocoap import Message, resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat

from msgin5g_client import CoapUe, MqttUe
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id, until_state

pytestmark = pytest.mark.e2e

WAIT = 15.0


class MsgResource(resource.Resource):  # type: ignore[misc]
    """The UE's own ``/msg``: takes each pushed document and answers ``code``."""

    def __init__(self) -> None:
        super().__init__()
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.code = Code.CHANGED

    async def render_post(self, request: Message) -> Message:
        await self.received.put(json.loads(request.payload))
        return Message(code=self.code)


class PushUe:
    """A UE that registers with ``deliveryMode: push`` from the socket it serves /msg on."""

    def __init__(self, ue_svc_id: str, server: tuple[str, int]) -> None:
        self.ue_svc_id = ue_svc_id
        self.server = server
        self.msg = MsgResource()
        self.context: aiocoap.Context | None = None

    async def start(self) -> None:
        site = resource.Site()
        site.add_resource(["msg"], self.msg)
        self.context = await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", 0), transports=["udp6"]
        )

    async def register(self) -> dict[str, Any]:
        assert self.context is not None
        host, port = self.server
        doc = {"msgType": "REG", "ueSvcId": self.ue_svc_id, "deliveryMode": "push"}
        request = Message(
            code=Code.POST,
            uri=f"coap://{host}:{port}/reg",
            payload=json.dumps(doc).encode(),
            content_format=ContentFormat.JSON,
        )
        response = await asyncio.wait_for(self.context.request(request).response, WAIT)
        assert response.code == Code.CREATED, response.payload
        answer: dict[str, Any] = json.loads(response.payload)
        return answer

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.msg.received.get(), WAIT)

    async def close(self) -> None:
        if self.context is not None:
            await self.context.shutdown()
            self.context = None


@pytest_asyncio.fixture
async def push_ue(stack: Stack) -> AsyncIterator[PushUe]:
    ue = PushUe(new_ue_id("push"), stack.coap_addr)
    await ue.start()
    try:
        yield ue
    finally:
        await ue.close()


async def test_a_push_ue_gets_each_message_by_post_and_the_ack_is_delivery(
    stack: Stack, push_ue: PushUe
) -> None:
    answer = await push_ue.register()
    assert answer["result"] == "SUCCESS"
    async with MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a:
        await a.register()
        sent = [await a.send(push_ue.ue_svc_id, f"push {i}") for i in range(3)]
        got = [await push_ue.next() for _ in sent]
        assert [g["payload"] for g in got] == ["push 0", "push 1", "push 2"]
        assert all(g["msgType"] == "MSG" for g in got)
        for s in sent:
            state = await until_state(stack.http_url, s.msg_id, f"UE:{a.ue_svc_id}", "DELIVERED")
            rcpt = state["recipients"][0]
            assert rcpt["attempts"] >= 1


async def test_messages_stored_before_a_push_registration_are_pushed_when_it_registers(
    stack: Stack, push_ue: PushUe
) -> None:
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        await http.put(f"/api/v1/ues/{push_ue.ue_svc_id}")
    async with MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a:
        await a.register()
        sent = await a.send(push_ue.ue_svc_id, "waited")
        assert sent.result is h.MsgResult.STORED
        await push_ue.register()
        got = await push_ue.next()
        assert got["msgId"] == sent.msg_id
        await until_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}", "DELIVERED")


async def test_a_push_to_a_vanished_ue_leaves_the_message_in_its_inbox(
    stack: Stack, push_ue: PushUe
) -> None:
    await push_ue.register()
    await push_ue.close()  # the UE's socket is gone: pushes meet ICMP errors or silence
    async with MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a:
        await a.register()
        failed = stack.expect_event("coap-edge", "push failed")
        sent = await a.send(push_ue.ue_svc_id, "are you there?")
        await asyncio.wait_for(failed, WAIT)
        await until_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}", "FORWARDED")
        # The UE wakes up with a new socket and reads its inbox.
        async with CoapUe(push_ue.ue_svc_id, stack.coap_addr) as woken:
            inbox = await woken.inbox()
            assert [d.msg_id for d in inbox] == [sent.msg_id]
            await woken.ack(inbox[0])
        await until_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}", "DELIVERED")


async def test_a_push_refused_by_the_ue_is_sent_again_later(stack: Stack, push_ue: PushUe) -> None:
    await push_ue.register()
    push_ue.msg.code = Code.SERVICE_UNAVAILABLE
    async with MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a:
        await a.register()
        refused = stack.expect_event("coap-edge", "push refused")
        sent = await a.send(push_ue.ue_svc_id, "later, then")
        await asyncio.wait_for(refused, WAIT)
        first = await push_ue.next()
        assert first["msgId"] == sent.msg_id
        await until_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}", "FORWARDED")
        # The router's retry (after MSGIN5G_RETRY_BASE) pushes it again, and now it is taken.
        push_ue.msg.code = Code.CHANGED
        again = await push_ue.next()
        assert again["msgId"] == sent.msg_id
        state = await until_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}", "DELIVERED")
        rcpt = state["recipients"][0]
        assert rcpt["attempts"] >= 2
