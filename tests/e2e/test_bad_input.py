"""End-to-end: bad input gets a protocol-correct error and the system keeps serving."""

from __future__ import annotations

import json

import pytest
from aiocoap.numbers.codes import Code

from msgin5g_client import CoapUe, MqttUe, RequestFailed
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id

pytestmark = pytest.mark.e2e

MAX_PAYLOAD = 2048


def _msg(ori: str, dest: str, **extra: object) -> dict[str, object]:
    return {
        "msgType": "MSG",
        "msgId": "m-1",
        "oriAddr": {"addrType": "UE", "addr": ori},
        "destAddr": {"addrType": "UE", "addr": dest},
        "payload": "x",
        **extra,
    }


def _coap_cases(ori: str, dest: str) -> list[tuple[str, bytes, int | None, str, str]]:
    """(name, payload, content format, expected code, expected diagnostic start)."""
    ok = _msg(ori, dest)
    no_id = {k: v for k, v in ok.items() if k != "msgId"}
    return [
        ("malformed json", b'{"msgType": "MSG",', 50, "4.00", "INVALID_REQUEST: not a JSON"),
        ("not an object", b'"text"', 50, "4.00", "INVALID_REQUEST: the document must be"),
        (
            "an array of non-documents",
            b"[1, 2]",
            50,
            "4.00",
            "INVALID_REQUEST: every item of an aggregated document",
        ),
        ("missing msgId", json.dumps(no_id).encode(), 50, "4.00", "INVALID_REQUEST: msgId"),
        (
            "wrong type",
            json.dumps(_msg(ori, dest, delivStReqInd="yes")).encode(),
            50,
            "4.00",
            "INVALID_REQUEST: delivStReqInd: wrong type",
        ),
        (
            "unknown field",
            json.dumps(_msg(ori, dest, colour="red")).encode(),
            50,
            "4.00",
            "INVALID_REQUEST: colour: unknown field",
        ),
        (
            "unknown msgType",
            json.dumps({**ok, "msgType": "SHOUT"}).encode(),
            50,
            "4.00",
            "INVALID_REQUEST: msgType",
        ),
        (
            "payload too large",
            json.dumps(_msg(ori, dest, payload="y" * (MAX_PAYLOAD + 1))).encode(),
            50,
            "4.13",
            "PAYLOAD_TOO_LARGE",
        ),
        ("cbor content format", b"\xa0", 60, "4.15", "UNSUPPORTED_CONTENT_FORMAT"),
        (
            "unknown recipient",
            json.dumps(_msg(ori, new_ue_id("nobody"))).encode(),
            50,
            "4.04",
            "UNKNOWN_RECIPIENT",
        ),
        (
            "unregistered originator",
            json.dumps(_msg(new_ue_id("stranger"), dest)).encode(),
            50,
            "4.04",
            "NOT_REGISTERED",
        ),
    ]


async def test_bad_coap_documents_get_4xx_with_a_diagnostic_and_serving_goes_on(
    stack: Stack,
) -> None:
    a, b = new_ue_id("coap-a"), new_ue_id("coap-b")
    async with CoapUe(a, stack.coap_addr) as ua, CoapUe(b, stack.coap_addr) as ub:
        await ua.register()
        await ub.register()
        for name, payload, fmt, code, diagnostic in _coap_cases(a, b):
            response = await ua.request(Code.POST, "msg", payload, content_format=fmt)
            assert str(response.code).startswith(code), name
            assert response.payload.decode().startswith(diagnostic), (name, response.payload)
            assert response.opt.content_format is None, name  # a diagnostic is plain text
        # Nothing of that reached b, and the system still delivers.
        assert await ub.inbox() == []
        sent = await ua.send(b, "still here")
        assert [d.msg_id for d in await ub.inbox()] == [sent.msg_id]


async def test_coap_paths_and_methods_outside_the_contract_are_refused(stack: Stack) -> None:
    async with CoapUe(new_ue_id("coap"), stack.coap_addr) as ue:
        assert str((await ue.request(Code.GET, "nowhere")).code).startswith("4.04")
        assert str((await ue.request(Code.GET, "msg")).code).startswith("4.05")
        assert str((await ue.request(Code.POST, "inbox/x", b"{}")).code).startswith("4.05")
        bad_id = await ue.request(Code.GET, "inbox/has%20space")
        assert str(bad_id.code).startswith("4.00")
        not_reg = await ue.request(Code.POST, "reg", h.encode(h.Dereg("x")))
        assert str(not_reg.code).startswith("4.00")


async def test_coap_register_with_bad_fields_names_the_field(stack: Stack) -> None:
    async with CoapUe(new_ue_id("coap"), stack.coap_addr) as ue:
        bad = json.dumps({"msgType": "REG", "ueSvcId": ue.ue_svc_id, "lifetime": "long"})
        response = await ue.request(Code.POST, "reg", bad.encode())
        assert str(response.code).startswith("4.00")
        assert (
            response.payload.decode() == "INVALID_REQUEST: lifetime: wrong type, expected integer"
        )


async def test_bad_mqtt_documents_get_a_failed_response_document_and_serving_goes_on(
    stack: Stack,
) -> None:
    a, b = new_ue_id("mqtt-a"), new_ue_id("mqtt-b")
    async with MqttUe(a, stack.mqtt_addr) as ua, MqttUe(b, stack.mqtt_addr) as ub:
        await ua.register()
        await ub.register()

        await ua.publish(b"not json at all")
        answer = await ua.next_answer()
        assert isinstance(answer, h.MsgResp)
        assert (answer.result, answer.failure_cause) == (h.MsgResult.FAILED, "INVALID_REQUEST")

        await ua.publish(json.dumps({"msgType": "REG"}).encode())
        reg = await ua.next_answer()
        assert isinstance(reg, h.RegResp)
        assert (reg.result, reg.failure_cause) == (h.Result.FAILURE, "INVALID_REQUEST")
        assert reg.failure_detail == "ueSvcId: mandatory field missing"

        await ua.publish(json.dumps(_msg(a, b, payload="z" * (MAX_PAYLOAD + 1))).encode())
        big = await ua.next_answer()
        assert isinstance(big, h.MsgResp)
        assert (big.msg_id, big.failure_cause) == ("m-1", "PAYLOAD_TOO_LARGE")

        with pytest.raises(RequestFailed) as unknown:
            await ua.send(new_ue_id("nobody"), "hello?")
        assert unknown.value.cause == "UNKNOWN_RECIPIENT"

        # b's own publishes still work after all of that.
        await ub.start_observing()
        sent = await ua.send(b, "still here")
        assert (await ub.receive()).msg_id == sent.msg_id


async def test_mqtt_document_naming_another_ue_than_its_topic_is_not_authorized(
    stack: Stack,
) -> None:
    a, victim = new_ue_id("mqtt-a"), new_ue_id("mqtt-victim")
    async with MqttUe(a, stack.mqtt_addr) as ua, MqttUe(victim, stack.mqtt_addr) as uv:
        await ua.register()
        await uv.register()
        # a publishes on its own uplink topic, but the documents claim to be the victim.
        await ua.publish(json.dumps(_msg(victim, a)).encode())
        spoofed = await ua.next_answer()
        assert isinstance(spoofed, h.MsgResp)
        assert (spoofed.result, spoofed.failure_cause) == (h.MsgResult.FAILED, "NOT_AUTHORIZED")

        await ua.publish(h.encode(h.Dereg(victim)))
        dereg = await ua.next_answer()
        assert isinstance(dereg, h.DeregResp)
        assert dereg.failure_cause == "NOT_AUTHORIZED"

        # The victim is untouched: still registered and able to send.
        await ua.start_observing()
        sent = await uv.send(a, "I am still registered")
        assert (await ua.receive()).msg_id == sent.msg_id
