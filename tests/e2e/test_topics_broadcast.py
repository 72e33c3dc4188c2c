"""End-to-end: messaging topics (TS 23.554 8.8) and broadcast areas, over both transports."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from msgin5g_client import CoapUe, MqttUe
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id

pytestmark = pytest.mark.e2e


async def _subscribers(stack: Stack, topic: str) -> dict[str, str | None]:
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        body = (await http.get(f"/api/v1/topics/{topic}")).json()
    return {s["ueSvcId"]: s["exprTime"] for s in body["subscribers"]}


async def test_topic_message_reaches_every_current_subscriber(stack: Stack) -> None:
    topic = new_ue_id("topic")
    async with (
        CoapUe(new_ue_id("tc"), stack.coap_addr) as c,
        MqttUe(new_ue_id("tm"), stack.mqtt_addr) as m,
        MqttUe(new_ue_id("gone"), stack.mqtt_addr) as gone,
        CoapUe(new_ue_id("pub"), stack.coap_addr) as publisher,
    ):
        for ue in (c, m, gone, publisher):
            await ue.register()
        await c.start_observing()
        later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
        assert (await c.subscribe([topic])).result is h.Result.SUCCESS
        assert (await m.subscribe([topic], later)).result is h.Result.SUCCESS
        assert (await gone.subscribe([topic])).result is h.Result.SUCCESS
        assert (await gone.unsubscribe([topic])).unsub is True
        subs = await _subscribers(stack, topic)
        assert subs == {c.ue_svc_id: None, m.ue_svc_id: later.isoformat().replace("+00:00", "Z")}

        sent = await publisher.send(topic, "news", dest_type=h.AddrType.TOPIC)
        assert sent.result is h.MsgResult.ACCEPTED
        for ue in (c, m):
            got = await ue.receive()
            assert isinstance(got, h.Msg)
            assert (got.msg_id, got.dest_addr) == (sent.msg_id, h.Address(h.AddrType.TOPIC, topic))
            assert got.rcpt_addr == h.Address(h.AddrType.UE, ue.ue_svc_id)
        # The unsubscribed UE got nothing: its next document is a direct message.
        direct = await publisher.send(gone.ue_svc_id, "direct")
        assert (await gone.receive()).msg_id == direct.msg_id


async def test_coap_topic_observation_subscribes_while_it_lives(stack: Stack) -> None:
    topic = new_ue_id("topic")
    async with (
        CoapUe(new_ue_id("tc"), stack.coap_addr) as c,
        MqttUe(new_ue_id("pub"), stack.mqtt_addr) as publisher,
    ):
        await c.register()
        await publisher.register()
        context = c._context
        request = context.request(
            Message(code=Code.GET, uri=f"{c.base}/topic/{topic}?ue={c.ue_svc_id}", observe=0)
        )
        first = await asyncio.wait_for(request.response, 10)
        assert first.code == Code.CONTENT
        assert json.loads(first.payload) == []
        assert c.ue_svc_id in await _subscribers(stack, topic)

        sent = await publisher.send(topic, "observed", dest_type=h.AddrType.TOPIC)
        notification = await asyncio.wait_for(request.observation.__aiter__().__anext__(), 10)
        docs = h.decode_downlink_list(notification.payload)
        assert [d.msg_id for d in docs if isinstance(d, h.Msg)] == [sent.msg_id]
        # It is in the UE's inbox too (store and forward), until acknowledged.
        pending = await c.inbox()
        assert [d.msg_id for d in pending] == [sent.msg_id]
        await c.ack(pending[0])

        # The client cancels the observation; the server learns it when the next notification
        # is refused (CoAP reset), and the subscription ends with it.
        unsubscribed = stack.expect("registry", lambda line: '"unsubscribed"' in line
                                    and c.ue_svc_id in line)  # fmt: skip
        request.observation.cancel()
        await publisher.send(topic, "after the end", dest_type=h.AddrType.TOPIC)
        await asyncio.wait_for(unsubscribed, 30)
        assert c.ue_svc_id not in await _subscribers(stack, topic)
        missing = await c.request(Code.GET, f"topic/{topic}")
        assert str(missing.code).startswith("4.00")


async def test_broadcast_reaches_the_registered_ues_of_an_area(stack: Stack) -> None:
    area = new_ue_id("cell")
    async with (
        CoapUe(new_ue_id("in-c"), stack.coap_addr) as in_c,
        MqttUe(new_ue_id("in-m"), stack.mqtt_addr) as in_m,
        MqttUe(new_ue_id("moved"), stack.mqtt_addr) as moved,
        CoapUe(new_ue_id("out"), stack.coap_addr) as out,
        MqttUe(new_ue_id("sender"), stack.mqtt_addr) as sender,
    ):
        await in_c.register(bc_area=area)
        await in_m.register(bc_area=area)
        await moved.register(bc_area=area)
        await moved.register(bc_area=new_ue_id("elsewhere"))
        await out.register()
        await sender.register()
        await in_c.start_observing()
        sent = await sender.send(area, "area alert", dest_type=h.AddrType.BC,
                                 priority=h.Priority.HIGH)  # fmt: skip
        for ue in (in_c, in_m):
            got = await ue.receive()
            assert isinstance(got, h.Msg)
            assert (got.msg_id, got.dest_addr) == (sent.msg_id, h.Address(h.AddrType.BC, area))
        async with httpx.AsyncClient(base_url=stack.http_url) as http:
            state = (await http.get(f"/api/v1/messages/{sent.msg_id}",
                                    params={"ori": f"UE:{sender.ue_svc_id}"})).json()  # fmt: skip
        assert {r["rcptAddr"]["addr"] for r in state["recipients"]} == {
            in_c.ue_svc_id, in_m.ue_svc_id,
        }  # fmt: skip
        assert await out.inbox() == []


async def test_bad_topic_documents_are_refused(stack: Stack) -> None:
    async with (
        MqttUe(new_ue_id("tm"), stack.mqtt_addr) as m,
        httpx.AsyncClient(base_url=stack.http_url) as http,
    ):
        await m.register()
        for topics in (["news/sport"], ["#"], ["a+b", "x/#"], []):
            doc = {"msgType": "SUB", "ueSvcId": m.ue_svc_id, "msgTopics": topics}
            await m.publish(json.dumps(doc).encode())
            answer = await m.next_answer()
            assert isinstance(answer, h.SubResp)
            assert (answer.result, answer.failure_cause) == (h.Result.FAILURE, "INVALID_REQUEST")
        assert (await http.get("/api/v1/topics/news%2Fsport")).status_code in (400, 404)
        assert (await http.get("/api/v1/topics/bad%20topic")).status_code == 400
        # Still subscribed to nothing, still serving.
        assert (await m.subscribe(["fine"])).result is h.Result.SUCCESS
