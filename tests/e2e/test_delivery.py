"""End-to-end: the delivery guarantees (msgin5g.md section 8) over both transports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from aiocoap.numbers.codes import Code

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import edge_pb2 as epb
from msgin5g.v1 import edge_pb2_grpc as egrpc
from msgin5g_client import CoapUe, MqttUe, RequestFailed
from msgin5g_common import convert
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import message_state, new_ue_id, stack_config

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture
async def fast_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A system that retries unacknowledged downlink after 0.3 s (doubling)."""
    config = stack_config(tmp_path, MSGIN5G_RETRY_BASE="0.3", MSGIN5G_SWEEP_INTERVAL="0.2")
    async with Stack(config) as running:
        yield running


def _only(state: dict[str, Any]) -> dict[str, Any]:
    """The state of a message's one recipient."""
    (rcpt,) = state["recipients"]
    assert isinstance(rcpt, dict)
    return rcpt


async def test_message_to_provisioned_ue_is_stored_until_it_first_registers(stack: Stack) -> None:
    b_id = new_ue_id("provisioned")
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        assert (await http.put(f"/api/v1/ues/{b_id}")).status_code == 201
        assert (await http.put(f"/api/v1/ues/{b_id}")).status_code == 200
    async with CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a:
        await a.register()
        sent = await a.send(b_id, "waiting for you")
        assert sent.result is h.MsgResult.STORED
        async with MqttUe(b_id, stack.mqtt_addr) as b:
            await b.register()
            got = await b.receive()
            assert got.msg_id == sent.msg_id
        state = await message_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}")
        rcpt = _only(state)
        assert rcpt["state"] == "DELIVERED"
        assert [step["state"] for step in rcpt["history"]] == [
            "ACCEPTED", "STORED", "FORWARDED", "DELIVERED",
        ]  # fmt: skip
        assert state["summary"] == {"DELIVERED": 1}


async def test_without_store_and_forward_an_unreachable_recipient_fails(stack: Stack) -> None:
    b_id = new_ue_id("asleep")
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        await http.put(f"/api/v1/ues/{b_id}")
    async with (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a,
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as m,
    ):
        await a.register()
        await m.register()
        with pytest.raises(RequestFailed) as coap_err:
            await a.send(b_id, "now or never", sto_and_fw_ind=False)
        assert (coap_err.value.code, coap_err.value.cause) == (
            "4.04 Not Found",
            "RECIPIENT_UNREACHABLE",
        )
        with pytest.raises(RequestFailed) as mqtt_err:
            await m.send(b_id, "now or never", sto_and_fw_ind=False)
        assert mqtt_err.value.cause == "RECIPIENT_UNREACHABLE"
        # Nothing was stored for b.
        async with CoapUe(b_id, stack.coap_addr) as b:
            assert await b.inbox() == []


@pytest.mark.parametrize("transport", ["coap", "mqtt"])
async def test_requested_delivery_report_reaches_the_sender(stack: Stack, transport: str) -> None:
    a: CoapUe | MqttUe = (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr)
        if transport == "coap"
        else MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr)
    )
    async with a, MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b:
        await a.register()
        await b.register()
        await a.start_observing()
        sent = await a.send(b.ue_svc_id, "tell me when you have it", deliv_st_req_ind=True)
        got = await b.receive()  # the client library acknowledges and reports it
        assert isinstance(got, h.Msg)
        assert got.deliv_st_req_ind is True
        report = await a.receive()
        assert isinstance(report, h.Imdn)
        assert report.msg_id == sent.msg_id
        assert report.deliv_st is h.DelivSt.REPT_DELY_SUCCESS
        assert report.ori_addr == h.Address(h.AddrType.UE, b.ue_svc_id)
        state = await message_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}")
        rcpt = _only(state)
        assert rcpt["deliveryReport"] == "REPT_DELY_SUCCESS"


async def test_expired_message_is_withdrawn_and_the_sender_gets_a_failure_report(
    stack: Stack,
) -> None:
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
    ):
        await a.register()
        await b.register()
        expires = datetime.now(UTC) + timedelta(seconds=1)
        sent = await a.send(b.ue_svc_id, "soon stale", deliv_st_req_ind=True, expr_time=expires)
        assert sent.result is h.MsgResult.STORED
        report = await a.receive()  # the sweeper's report, after exprTime
        assert isinstance(report, h.Imdn)
        assert (report.msg_id, report.deliv_st) == (sent.msg_id, h.DelivSt.REPT_DELY_FAILED)
        assert report.failure_cause == "EXPIRED"
        assert await b.inbox() == []
        state = await message_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}")
        rcpt = _only(state)
        assert (rcpt["state"], rcpt["failureCause"]) == ("EXPIRED", "EXPIRED")


async def test_retransmitted_msg_is_delivered_once_and_answered_as_a_duplicate(
    stack: Stack,
) -> None:
    async with (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
        MqttUe(new_ue_id("mqtt-c"), stack.mqtt_addr) as c,
    ):
        await a.register()
        await b.register()
        await c.register()
        msg = h.Msg("dup-1", h.Address(h.AddrType.UE, a.ue_svc_id),
                    h.Address(h.AddrType.UE, b.ue_svc_id), payload="once")  # fmt: skip
        first = await a.send_msg(msg)
        again = await a.send_msg(msg)
        assert first.result is h.MsgResult.STORED
        assert (again.result, again.failure_cause) == (h.MsgResult.STORED, "DUPLICATE")
        assert [d.msg_id for d in await b.inbox()] == ["dup-1"]
        # Over MQTT (a QoS 1 redelivery looks the same): the same msgId from another sender
        # is another message.
        from_c = h.Msg("dup-1", h.Address(h.AddrType.UE, c.ue_svc_id),
                       h.Address(h.AddrType.UE, b.ue_svc_id), payload="other sender")  # fmt: skip
        await c.send_msg(from_c)
        assert (await c.send_msg(from_c)).failure_cause == "DUPLICATE"
        assert len(await b.inbox()) == 2
        # After delivery a late retransmission does not come back.
        for doc in await b.inbox():
            await b.ack(doc)
        assert (await a.send_msg(msg)).failure_cause == "DUPLICATE"
        assert await b.inbox() == []


async def test_originator_updates_and_discards_its_stored_messages(stack: Stack) -> None:
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
        CoapUe(new_ue_id("coap-c"), stack.coap_addr) as c,
    ):
        await a.register()
        await b.register()
        await c.register()
        keep = await a.send(b.ue_svc_id, "keep me longer")
        drop = await a.send(b.ue_svc_id, "never mind")
        later = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)

        assert (await a.update_message(keep.msg_id, later)).result is h.Result.SUCCESS
        assert (await a.update_message(drop.msg_id, None)).result is h.Result.SUCCESS
        pending = await b.inbox()
        assert [d.msg_id for d in pending] == [keep.msg_id]
        assert isinstance(pending[0], h.Msg)
        assert pending[0].expr_time == later
        kept = await message_state(stack.http_url, keep.msg_id, f"UE:{a.ue_svc_id}")
        assert kept["expiresAt"] == later.isoformat().replace("+00:00", "Z")
        dropped = await message_state(stack.http_url, drop.msg_id, f"UE:{a.ue_svc_id}")
        rcpt = _only(dropped)
        assert (rcpt["state"], rcpt["failureCause"]) == ("FAILED", "DISCARDED")

        # Nobody else can: c names a's message under its own identity, finds nothing ...
        other = await c.request(Code.POST, "msg", h.encode(h.MsgUpd(
            keep.msg_id, h.Address(h.AddrType.UE, c.ue_svc_id), h.UpdAction.DISCARD)))  # fmt: skip
        assert str(other.code).startswith("4.04")
        assert other.payload.decode().startswith("UNKNOWN_MESSAGE")
        # ... and over MQTT a document naming a as its sender is refused outright.
        async with MqttUe(new_ue_id("mqtt-spoof"), stack.mqtt_addr) as spoof:
            as_a = h.MsgUpd(keep.msg_id, h.Address(h.AddrType.UE, a.ue_svc_id), h.UpdAction.DISCARD)
            await spoof.publish(h.encode(as_a))
            refused = await spoof.next_answer()
            assert isinstance(refused, h.MsgUpdResp)
            assert refused.failure_cause == "NOT_AUTHORIZED"
        assert [d.msg_id for d in await b.inbox()] == [keep.msg_id]
        # A delivered message can no longer be changed.
        await b.ack(pending[0])
        with pytest.raises(RequestFailed) as done:
            await a.update_message(keep.msg_id, None)
        assert done.value.cause == "INVALID_REQUEST"


async def test_management_api_shows_updates_and_discards_messages(stack: Stack) -> None:
    async with (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
        httpx.AsyncClient(base_url=stack.http_url) as http,
    ):
        await a.register()
        await b.register()
        sent = await a.send(b.ue_svc_id, "managed")
        path = f"/api/v1/messages/{sent.msg_id}"
        ori = {"ori": f"UE:{a.ue_svc_id}"}
        later = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
        patched = await http.patch(path, params=ori, json={"exprTime": later.isoformat()})
        assert patched.status_code == 200
        assert patched.json()["expiresAt"] == later.isoformat().replace("+00:00", "Z")
        assert (await http.delete(path, params=ori)).status_code == 204
        assert await b.inbox() == []
        again = await http.delete(path, params=ori)
        assert again.status_code == 409
        assert again.json()["detail"].endswith("is already FAILED")
        missing = await http.get("/api/v1/messages/nope", params=ori)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        bad_ori = await http.get(path, params={"ori": "ue-without-type"})
        assert bad_ori.status_code == 400


async def test_unacknowledged_downlink_is_sent_again_with_back_off(fast_stack: Stack) -> None:
    stack = fast_stack
    async with (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a,
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b,
    ):
        await a.register()
        await b.register()
        sent = await a.send(b.ue_svc_id, "ack me")
        first = await b.receive(auto_ack=False)
        assert first.msg_id == sent.msg_id
        # b does not acknowledge: the server sends it again (the client library, which
        # already saw it, acknowledges the redelivery and hides it from the application).
        redelivered = await asyncio.wait_for(b._downlink.get(), 10)
        assert redelivered.msg_id == sent.msg_id
        await b.ack(redelivered)
        state = await message_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}")
        rcpt = _only(state)
        assert rcpt["state"] == "DELIVERED"
        assert rcpt["attempts"] >= 2


async def test_bad_reports_and_updates_get_clear_errors_and_change_nothing(stack: Stack) -> None:
    async with (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
        CoapUe(new_ue_id("coap-c"), stack.coap_addr) as c,
    ):
        for ue in (a, b, c):
            await ue.register()
        sent = await a.send(b.ue_svc_id, "report me", deliv_st_req_ind=True)
        unreported = await a.send(b.ue_svc_id, "no report asked")

        def imdn(reporter: str, msg_id: str) -> bytes:
            return h.encode(h.Imdn(h.Address(h.AddrType.UE, reporter),
                                   h.Address(h.AddrType.UE, a.ue_svc_id),
                                   msg_id, h.DelivSt.REPT_DELY_SUCCESS))  # fmt: skip

        cases = [
            (c, imdn(c.ue_svc_id, "no-such-message"), "4.04", "UNKNOWN_MESSAGE"),
            (c, imdn(c.ue_svc_id, sent.msg_id), "4.03", "NOT_AUTHORIZED"),
            (b, imdn(b.ue_svc_id, unreported.msg_id), "4.00", "INVALID_REQUEST"),
        ]
        for ue, payload, code, cause in cases:
            response = await ue.request(Code.POST, "msg", payload)
            assert str(response.code).startswith(code), (cause, response.payload)
            assert response.payload.decode().startswith(cause)

        past = json.dumps({
            "msgType": "MSG", "msgId": "late", "payload": "x",
            "oriAddr": {"addrType": "UE", "addr": a.ue_svc_id},
            "destAddr": {"addrType": "UE", "addr": b.ue_svc_id},
            "stoAndFwParams": {"exprTime": "2001-01-01T00:00:00Z"},
        }).encode()  # fmt: skip
        response = await a.request(Code.POST, "msg", past)
        assert (str(response.code)[:4], response.payload.decode()[:7]) == ("4.00", "EXPIRED")
        malformed = past.replace(b"2001-01-01T00:00:00Z", b"yesterday")
        response = await a.request(Code.POST, "msg", malformed)
        assert response.payload.decode() == (
            "INVALID_REQUEST: stoAndFwParams.exprTime: not an RFC 3339 date-time"
        )
        long_ago = datetime(2001, 1, 1, tzinfo=UTC)
        ori = h.Address(h.AddrType.UE, a.ue_svc_id)
        update_past = h.encode(h.MsgUpd(sent.msg_id, ori, h.UpdAction.UPDATE, long_ago))
        response = await a.request(Code.POST, "msg", update_past)
        assert response.payload.decode().startswith("EXPIRED")
        # Nothing changed: b still has both messages, and no report was recorded.
        assert [d.msg_id for d in await b.inbox()] == [sent.msg_id, unreported.msg_id]
        state = await message_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}")
        rcpt = _only(state)
        assert rcpt["deliveryReport"] is None


@pytest.mark.parametrize("transport", ["coap", "mqtt"])
async def test_edge_refuses_a_delivery_meant_for_another_replica(
    stack: Stack, transport: str
) -> None:
    ue: CoapUe | MqttUe = (
        CoapUe(new_ue_id("coap-b"), stack.coap_addr)
        if transport == "coap"
        else MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr)
    )
    port = stack.ports.coap_edge_grpc if transport == "coap" else stack.ports.mqtt_edge_grpc
    own_id = stack.service_env(f"{transport}-edge")["MSGIN5G_EDGE_ID"]
    msg = h.Msg("fenced", h.Address(h.AddrType.UE, "someone"),
                h.Address(h.AddrType.UE, ue.ue_svc_id), payload="x")  # fmt: skip
    request = epb.DeliverRequest(
        ue_svc_id=ue.ue_svc_id, docs=[pb.Downlink(msg=convert.msg_to_pb(msg))], snapshot=True
    )
    async with ue, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await ue.register()
        await ue.start_observing()
        edge = egrpc.EdgeServiceStub(channel)
        request.edge_id = "a-replica-that-died"
        assert (await edge.Deliver(request, timeout=5)).forwarded is False
        request.edge_id = own_id
        assert (await edge.Deliver(request, timeout=5)).forwarded is True
        # Only the delivery meant for this replica reached the UE.
        assert (await ue.receive()).msg_id == "fenced"


async def test_recipient_refusal_is_reported_to_a_sender_who_asked(stack: Stack) -> None:
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
    ):
        await a.register()
        await b.register()
        sent = await a.send(b.ue_svc_id, "you will not like this", deliv_st_req_ind=True)
        (pending,) = await b.inbox()
        refusal = h.MsgResp(pending.msg_id, h.MsgResult.FAILED, "UNSUPPORTED_APP",
                            ue_svc_id=b.ue_svc_id, ori_addr=pending.ori_addr)  # fmt: skip
        response = await b.request(Code.POST, "msg", h.encode(refusal))
        assert response.code == Code.CHANGED
        report = await a.receive()
        assert isinstance(report, h.Imdn)
        assert (report.msg_id, report.deliv_st) == (sent.msg_id, h.DelivSt.REPT_DELY_FAILED)
        assert report.failure_cause == "UNSUPPORTED_APP"
        rcpt = _only(await message_state(stack.http_url, sent.msg_id, f"UE:{a.ue_svc_id}"))
        assert (rcpt["state"], rcpt["failureCause"]) == ("FAILED", "UNSUPPORTED_APP")
