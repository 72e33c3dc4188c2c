"""End-to-end: aggregation (TS 23.554 8.4). What waits for a UE that comes back leaves as
few aggregated documents, HIGH ones alone and first; a UE may aggregate its uplink too.

The UE here is a raw MQTT client, so that the test sees exactly what goes over the wire.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiocoap
import aiomqtt
import httpx
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat

from msgin5g_client import CoapUe, MqttUe
from msgin5g_client.common import build_msg
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id

pytestmark = pytest.mark.e2e

WAIT = 15.0


async def _next(client: aiomqtt.Client) -> Any:
    message = await asyncio.wait_for(anext(client.messages), WAIT)
    payload = message.payload
    assert isinstance(payload, bytes | bytearray)
    return json.loads(payload)


async def test_fifty_messages_to_a_ue_that_comes_back_arrive_in_few_documents_high_first(
    stack: Stack,
) -> None:
    b = new_ue_id("back")
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        assert (await http.put(f"/api/v1/ues/{b}")).status_code == 201
    high = set()
    async with MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a:
        await a.register()
        for n in range(50):
            priority = h.Priority.HIGH if n % 10 == 0 else (h.Priority.LOW, None)[n % 2]
            msg = build_msg(a.ue_svc_id, b, f"reading {n}", priority=priority)
            if priority is h.Priority.HIGH:
                high.add(msg.msg_id)
            sent = await a.send_msg(msg)
            assert sent.result is h.MsgResult.STORED

    host, port = stack.mqtt_addr
    client = aiomqtt.Client(host, port, identifier=b, protocol=aiomqtt.ProtocolVersion.V5)
    async with client:
        await client.subscribe(f"msgin5g/ue/{b}", qos=1)
        await client.publish(f"msgin5g/up/{b}", json.dumps({"msgType": "REG", "ueSvcId": b}), qos=1)
        publishes: list[Any] = []
        received: list[dict[str, Any]] = []
        while len(received) < 50:
            obj = await _next(client)
            if isinstance(obj, dict) and obj.get("msgType") == "REGRESP":
                continue
            publishes.append(obj)
            received.extend(obj if isinstance(obj, list) else [obj])
        ids = [d["msgId"] for d in received]
        assert len(set(ids)) == 50
        # The five HIGH ones first, each a document of its own.
        assert all(isinstance(p, dict) for p in publishes[:5])
        assert {p["msgId"] for p in publishes[:5]} == high
        # The other 45 in a few arrays, none holding a HIGH one.
        rest = publishes[5:]
        assert len(rest) <= 6, [len(p) if isinstance(p, list) else 1 for p in rest]
        assert all(d.get("priority") != "HIGH" for p in rest for d in p)
        # An aggregated acknowledgement of everything, answered (MSGRESP has no answer) by
        # nothing, empties the inbox.
        acks = [
            {"msgType": "MSGRESP", "msgId": d["msgId"], "result": "DELIVERED", "ueSvcId": b,
             "oriAddr": d["oriAddr"]}
            for d in received
        ]  # fmt: skip
        for start in range(0, 50, 25):
            await client.publish(f"msgin5g/up/{b}", json.dumps(acks[start : start + 25]), qos=1)
    async with CoapUe(b, stack.coap_addr) as check:
        for _ in range(100):
            if await check.inbox() == []:
                break
            await asyncio.sleep(0.05)
        assert await check.inbox() == []


async def test_an_aggregated_uplink_gets_one_answer_per_document(stack: Stack) -> None:
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b,
    ):
        await a.register()
        await b.register()
        docs = [h.to_json(build_msg(a.ue_svc_id, b.ue_svc_id, f"n{n}")) for n in range(3)]
        bad = {"msgType": "MSG", "msgId": "x"}  # no oriAddr/destAddr
        await a.publish(json.dumps([*docs, bad]).encode())
        answers = [await a.next_answer() for _ in range(4)]
        results = [(r.msg_id, r.result) for r in answers if isinstance(r, h.MsgResp)]
        assert results[:3] == [(d["msgId"], h.MsgResult.ACCEPTED) for d in docs]
        assert results[3] == ("x", h.MsgResult.FAILED)
        got = [await b.receive() for _ in docs]
        assert [g.payload if isinstance(g, h.Msg) else g for g in got] == ["n0", "n1", "n2"]


async def test_an_aggregated_coap_post_is_answered_with_an_array(stack: Stack) -> None:
    async with (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a,
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b,
    ):
        await a.register()
        await b.register()
        docs = [h.to_json(build_msg(a.ue_svc_id, b.ue_svc_id, f"c{n}")) for n in range(2)]
        context = await aiocoap.Context.create_client_context()
        try:
            host, port = stack.coap_addr
            request = Message(
                code=Code.POST,
                uri=f"coap://{host}:{port}/msg",
                payload=json.dumps([*docs, {"msgType": "REG", "ueSvcId": a.ue_svc_id}]).encode(),
                content_format=ContentFormat.JSON,
            )
            response = await asyncio.wait_for(context.request(request).response, WAIT)
        finally:
            await context.shutdown()
        assert response.code == Code.CHANGED
        answers = json.loads(response.payload)
        assert [x["result"] for x in answers] == ["ACCEPTED", "ACCEPTED", "FAILURE"]
        got = [await b.receive() for _ in docs]
        assert [g.payload if isinstance(g, h.Msg) else g for g in got] == ["c0", "c1"]


async def test_malformed_aggregated_documents_are_refused_and_nothing_else_is_disturbed(
    stack: Stack,
) -> None:
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b,
    ):
        await a.register()
        await b.register()
        for payload in (b"[]", b"[1, 2]", json.dumps([{}] * 33).encode(), b"[{"):
            await a.publish(payload)
            answer = await a.next_answer()
            assert isinstance(answer, h.MsgResp)
            assert answer.result is h.MsgResult.FAILED
            assert answer.failure_cause == "INVALID_REQUEST"
        oversized = json.dumps([{"msgType": "MSG", "payload": "z" * 300_000}] * 2).encode()
        await a.publish(oversized)
        answer = await a.next_answer()
        assert isinstance(answer, h.MsgResp)
        assert answer.failure_cause == "PAYLOAD_TOO_LARGE"
        sent = await a.send(b.ue_svc_id, "still fine")
        assert (await b.receive()).msg_id == sent.msg_id
