"""End-to-end: application servers on the TS 29.538 API, with OAuth2 on, against a real HTTP
application server (an aiohttp app on loopback) as the registered targetUri.

Verifies A2P to CoAP and MQTT UEs, P2A from both, delivery reports both ways, topic
subscriptions of an AS, an AS that is down and comes back, an AS that keeps failing, and the
errors a misbehaving client gets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio

from msgin5g_client import CoapUe, MqttUe
from msgin5g_client.common import build_msg
from msgin5g_common import header as h
from msgin5g_registry import spec
from tests.conftest import message_state, new_ue_id, until_state
from tests.e2e.as_support import (
    ADMIN_TOKEN,
    OTHER_AS,
    OWN_AS,
    WAIT,
    AppServer,
    System,
    system_fixture,
)
from tests.e2e.as_support import token as _token

pytestmark = pytest.mark.e2e

system = system_fixture()


@pytest_asyncio.fixture
async def api(system: System) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the AS API holding app-1's token."""
    async with httpx.AsyncClient(base_url=system.url, timeout=10) as http:
        http.headers["Authorization"] = f"Bearer {await _token(http)}"
        yield http


async def _register(api: httpx.AsyncClient, as_svc_id: str, target: str) -> str:
    response = await api.post(
        "/msgs-asregistration/v1/registrations",
        json={"asSvcId": as_svc_id, "targetUri": target, "appId": "meters"},
    )
    assert response.status_code == 201, response.text
    assert spec.validate("ASRegistrationAck", response.json()) == []
    location: str = response.headers["Location"]
    return location


def _a2p(as_svc_id: str, ue: str, **extra: Any) -> dict[str, Any]:
    return {
        "oriAddr": {"addrType": "AS", "addr": as_svc_id},
        "destAddr": {"addrType": "UE", "addr": ue},
        "msgId": new_ue_id("m"),
        "stoAndFwInd": True,
        "payload": "hello from the application",
        **extra,
    }


# -- registration ------------------------------------------------------------------------------


async def test_registering_again_updates_the_registration_and_keeps_its_id(
    api: httpx.AsyncClient, app_server: AppServer
) -> None:
    first = await _register(api, OWN_AS[0], app_server.url)
    assert "/msgs-asregistration/v1/registrations/" in first
    again = await _register(api, OWN_AS[0], app_server.url + "?v=2")
    assert again == first
    deleted = await api.delete(first)
    assert deleted.status_code == 204
    assert (await api.delete(first)).status_code == 404


# -- A2P ----------------------------------------------------------------------------------------


async def test_a2p_reaches_mqtt_and_coap_ues_and_their_reports_reach_the_as(
    system: System, api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[1]
    await _register(api, as_id, app_server.url)
    stack = system.stack
    async with (
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as mqtt_ue,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as coap_ue,
    ):
        await mqtt_ue.register()
        await coap_ue.register()
        await coap_ue.start_observing()
        for ue in (mqtt_ue, coap_ue):
            body = _a2p(as_id, ue.ue_svc_id, delivStReqInd=True, priority="HIGH", appId="app-7")
            response = await api.post("/msgs-msgdelivery/v1/deliver-as-message", json=body)
            assert response.status_code == 200, response.text
            ack = response.json()
            assert spec.validate("MessageDeliveryAck", ack) == []
            assert ack["msgId"] == body["msgId"]
            assert ack["oriAddr"] == {"addrType": "AS", "addr": as_id}

            got = await asyncio.wait_for(ue.receive(), WAIT)
            assert isinstance(got, h.Msg)
            assert got.msg_id == body["msgId"]
            assert got.ori_addr == h.Address(h.AddrType.AS, as_id)
            assert got.payload == body["payload"]
            assert got.priority is h.Priority.HIGH
            assert got.app_id == "app-7"
            await ue.report(got)

            report = await app_server.next()
            assert spec.validate("DeliveryStatusReport", report) == []
            assert report == {
                "oriAddr": {"addrType": "UE", "addr": ue.ue_svc_id},
                "destAddr": {"addrType": "AS", "addr": as_id},
                "msgId": body["msgId"],
                "delivSt": "REPT_DELY_SUCCESS",
            }
            state = await until_state(
                system.url, body["msgId"], f"AS:{as_id}", "DELIVERED", token=ADMIN_TOKEN
            )
            assert state["recipients"][0]["deliveryReport"] == "REPT_DELY_SUCCESS"


async def test_a2p_to_a_group_reaches_every_member(
    system: System, api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[2]
    await _register(api, as_id, app_server.url)
    stack = system.stack
    group = new_ue_id("group")
    async with (
        MqttUe(new_ue_id("m1"), stack.mqtt_addr) as m1,
        CoapUe(new_ue_id("c1"), stack.coap_addr) as c1,
    ):
        await m1.register()
        await c1.register()
        await c1.start_observing()
        members = {"members": [m1.ue_svc_id, c1.ue_svc_id]}
        created = await api.put(
            f"/api/v1/groups/{group}",
            json=members,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert created.status_code == 201, created.text
        body = _a2p(as_id, group)
        body["destAddr"] = {"addrType": "GROUP", "addr": group}
        response = await api.post("/msgs-msgdelivery/v1/deliver-as-message", json=body)
        assert response.status_code == 200, response.text
        for ue in (m1, c1):
            got = await asyncio.wait_for(ue.receive(), WAIT)
            assert isinstance(got, h.Msg)
            assert got.msg_id == body["msgId"]
            assert got.rcpt_addr == h.Address(h.AddrType.UE, ue.ue_svc_id)


async def test_a2p_latency_is_a_delivery_deadline(
    system: System, api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[3]
    await _register(api, as_id, app_server.url)
    asleep = new_ue_id("asleep")
    provisioned = await api.put(
        f"/api/v1/ues/{asleep}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert provisioned.status_code == 201
    far = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    body = _a2p(as_id, asleep, latency=1, delivStReqInd=True, stoAndFwParams={"exprTime": far})
    response = await api.post("/msgs-msgdelivery/v1/deliver-as-message", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "DELY_STORED"
    # One second later it expires (not tomorrow), and the AS hears so.
    report = await app_server.next()
    assert report["delivSt"] == "REPT_DELY_FAILED"
    assert report["failureCause"] == "EXPIRED"
    state = await message_state(system.url, body["msgId"], f"AS:{as_id}", token=ADMIN_TOKEN)
    assert state["recipients"][0]["state"] == "EXPIRED"


async def test_a2p_without_store_and_forward_to_an_unreachable_ue_fails_in_the_ack(
    api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[4]
    await _register(api, as_id, app_server.url)
    asleep = new_ue_id("asleep")
    await api.put(f"/api/v1/ues/{asleep}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    body = _a2p(as_id, asleep, stoAndFwInd=False)
    response = await api.post("/msgs-msgdelivery/v1/deliver-as-message", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "DELY_FAILED"
    assert response.json()["failureCause"] == "RECIPIENT_UNREACHABLE"


# -- P2A ----------------------------------------------------------------------------------------


async def test_p2a_from_mqtt_and_coap_ues_reaches_the_as_and_its_report_reaches_the_ue(
    system: System, api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[5]
    await _register(api, as_id, app_server.url)
    stack = system.stack
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as mqtt_ue,
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as coap_ue,
    ):
        await mqtt_ue.register()
        await coap_ue.register()
        await coap_ue.start_observing()
        for ue in (mqtt_ue, coap_ue):
            msg = build_msg(
                ue.ue_svc_id,
                as_id,
                "reading 42",
                dest_type=h.AddrType.AS,
                deliv_st_req_ind=True,
                app_id="meters",
            )
            sent = await ue.send_msg(msg)
            assert sent.result in (h.MsgResult.ACCEPTED, h.MsgResult.STORED)
            got = await app_server.next()
            assert spec.validate("UEMessageDelivery", got) == []
            assert got["oriAddr"] == {"addrType": "UE", "addr": ue.ue_svc_id}
            assert got["destAddr"] == {"addrType": "AS", "addr": as_id}
            assert got["msgId"] == msg.msg_id
            assert got["payload"] == "reading 42"
            assert got["appId"] == "meters"
            assert got["delivStReqInd"] is True
            assert got["stoAndFwInd"] is True
            await until_state(
                system.url, msg.msg_id, f"UE:{ue.ue_svc_id}", "DELIVERED", token=ADMIN_TOKEN
            )

            report = {
                "oriAddr": {"addrType": "AS", "addr": as_id},
                "destAddr": {"addrType": "UE", "addr": ue.ue_svc_id},
                "msgId": msg.msg_id,
                "delivSt": "REPT_DELY_SUCCESS",
            }
            response = await api.post("/msgs-msgdelivery/v1/deliver-report", json=report)
            assert response.status_code == 200, response.text
            assert spec.validate("MessageDeliveryAck", response.json()) == []
            imdn = await asyncio.wait_for(ue.receive(), WAIT)
            assert isinstance(imdn, h.Imdn)
            assert imdn.msg_id == msg.msg_id
            assert imdn.ori_addr == h.Address(h.AddrType.AS, as_id)
            assert imdn.deliv_st is h.DelivSt.REPT_DELY_SUCCESS


async def test_p2a_to_an_as_that_is_down_waits_and_arrives_when_it_is_back(
    system: System, api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[6]
    await _register(api, as_id, app_server.url)
    await app_server.go_down()
    unreachable = system.stack.expect_event("router", "application server unreachable")
    async with MqttUe(new_ue_id("mqtt-a"), system.stack.mqtt_addr) as ue:
        await ue.register()
        sent = [
            await ue.send_msg(build_msg(ue.ue_svc_id, as_id, f"n{i}", dest_type=h.AddrType.AS))
            for i in range(3)
        ]
        await asyncio.wait_for(unreachable, WAIT)
        state = await message_state(
            system.url, sent[0].msg_id, f"UE:{ue.ue_svc_id}", token=ADMIN_TOKEN
        )
        assert state["recipients"][0]["state"] in ("ACCEPTED", "FORWARDED")
        await app_server.listen()
        got = [await app_server.next() for _ in sent]
        # In the order they were sent, each once.
        assert [g["payload"] for g in got] == ["n0", "n1", "n2"]
        for s in sent:
            await until_state(
                system.url, s.msg_id, f"UE:{ue.ue_svc_id}", "DELIVERED", token=ADMIN_TOKEN
            )


async def test_an_as_answering_500_gets_retries_then_the_message_fails_with_a_report(
    system: System, api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[7]
    await _register(api, as_id, app_server.url)
    app_server.status = 500
    async with MqttUe(new_ue_id("mqtt-a"), system.stack.mqtt_addr) as ue:
        await ue.register()
        soon = datetime.now(UTC) + timedelta(seconds=3)
        msg = build_msg(
            ue.ue_svc_id, as_id, "x", dest_type=h.AddrType.AS, deliv_st_req_ind=True, expr_time=soon
        )
        await ue.send_msg(msg)
        imdn = await asyncio.wait_for(ue.receive(), WAIT)
        assert isinstance(imdn, h.Imdn)
        assert imdn.deliv_st is h.DelivSt.REPT_DELY_FAILED
        assert imdn.failure_cause == "EXPIRED"
        state = await message_state(system.url, msg.msg_id, f"UE:{ue.ue_svc_id}", token=ADMIN_TOKEN)
        rcpt = state["recipients"][0]
        assert rcpt["state"] == "EXPIRED"
        assert rcpt["attempts"] >= 2
        assert app_server.posts >= 2


async def test_an_as_refusing_with_4xx_fails_the_message_at_once(
    system: System, api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[8]
    await _register(api, as_id, app_server.url)
    app_server.status = 400
    async with MqttUe(new_ue_id("mqtt-a"), system.stack.mqtt_addr) as ue:
        await ue.register()
        msg = build_msg(ue.ue_svc_id, as_id, "x", dest_type=h.AddrType.AS, deliv_st_req_ind=True)
        await ue.send_msg(msg)
        imdn = await asyncio.wait_for(ue.receive(), WAIT)
        assert isinstance(imdn, h.Imdn)
        assert imdn.deliv_st is h.DelivSt.REPT_DELY_FAILED
        assert imdn.failure_cause == "REFUSED"
        state = await message_state(system.url, msg.msg_id, f"UE:{ue.ue_svc_id}", token=ADMIN_TOKEN)
        assert state["recipients"][0]["state"] == "FAILED"
        assert app_server.posts == 1


# -- topics -------------------------------------------------------------------------------------


async def test_an_as_subscribed_to_a_topic_gets_its_messages_until_it_unsubscribes(
    system: System, api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[9]
    await _register(api, as_id, app_server.url)
    topic = new_ue_id("weather")
    sub = {"oriAddr": {"addrType": "AS", "addr": as_id}, "msgTopics": [topic]}
    response = await api.post("/msgs-topiclistevent/v1/request-topic-subscription", json=sub)
    assert response.status_code == 200, response.text
    assert spec.validate("TopicSubscription", response.json()) == []
    async with MqttUe(new_ue_id("mqtt-a"), system.stack.mqtt_addr) as ue:
        await ue.register()
        first = await ue.send(topic, "rain", dest_type=h.AddrType.TOPIC)
        got = await app_server.next()
        assert got["msgId"] == first.msg_id
        assert got["destAddr"] == {"addrType": "TOPIC", "addr": topic}
        gone = await api.post("/msgs-topiclistevent/v1/request-topic-unsubscription", json=sub)
        assert gone.status_code == 204, gone.text
        listed = await api.get(
            f"/api/v1/topics/{topic}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert listed.json()["subscribers"] == []


# -- errors -------------------------------------------------------------------------------------


def _is_problem(response: httpx.Response, status: int, cause: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert spec.validate("ProblemDetails", body) == []
    assert body["status"] == status
    if cause is not None:
        assert body["cause"] == cause, body


async def test_requests_without_a_valid_token_are_refused(
    system: System, app_server: AppServer
) -> None:
    path = "/msgs-msgdelivery/v1/deliver-as-message"
    body = _a2p(OWN_AS[10], "nobody")
    async with httpx.AsyncClient(base_url=system.url) as http:
        _is_problem(await http.post(path, json=body), 401)
        assert "Bearer" in (await http.post(path, json=body)).headers["WWW-Authenticate"]
        bad = {"Authorization": "Bearer not-a-token"}
        _is_problem(await http.post(path, json=body, headers=bad), 401)
        now = int(time.time())
        expired = jwt.encode(
            {
                "iss": "msgin5g-registry",
                "sub": "app-1",
                "aud": "msgin5g",
                "iat": now - 3600,
                "nbf": now - 3600,
                "exp": now - 600,
                "scope": "msgs-msgdelivery",
                "asSvcIds": OWN_AS,
            },
            system.signing_key,
            algorithm="ES256",
        )
        old = {"Authorization": f"Bearer {expired}"}
        _is_problem(await http.post(path, json=body, headers=old), 401)
        wrong = await http.post(
            "/oauth2/token", auth=("app-1", "nope"), data={"grant_type": "client_credentials"}
        )
        assert wrong.status_code == 401
        # The management API wants the admin token; an AS token is not one.
        as_token = {"Authorization": f"Bearer {await _token(http)}"}
        _is_problem(await http.get("/api/v1/ues/x"), 401)
        _is_problem(await http.get("/api/v1/ues/x", headers=as_token), 403)


async def test_an_as_cannot_act_as_another(
    system: System, api: httpx.AsyncClient, app_server: AppServer
) -> None:
    _is_problem(
        await api.post(
            "/msgs-asregistration/v1/registrations",
            json={"asSvcId": OTHER_AS, "targetUri": app_server.url},
        ),
        403,
        "NOT_AUTHORIZED",
    )
    body = _a2p(OTHER_AS, "anyone")
    _is_problem(await api.post("/msgs-msgdelivery/v1/deliver-as-message", json=body), 403)
    async with httpx.AsyncClient(base_url=system.url) as other:
        other.headers["Authorization"] = (
            f"Bearer {await _token(other, 'app-2', 'secret-2-for-tests')}"
        )
        registered = await other.post(
            "/msgs-asregistration/v1/registrations",
            json={"asSvcId": OTHER_AS, "targetUri": app_server.url},
        )
        assert registered.status_code == 201
        # app-1 may not delete app-2's registration.
        _is_problem(await api.delete(registered.headers["Location"]), 403)


async def test_bad_requests_get_problem_details(
    api: httpx.AsyncClient, app_server: AppServer
) -> None:
    as_id = OWN_AS[11]
    reg = "/msgs-asregistration/v1/registrations"
    send = "/msgs-msgdelivery/v1/deliver-as-message"
    _is_problem(await api.delete(f"{reg}/no-such-registration"), 404)
    _is_problem(
        await api.post(reg, json={"asSvcId": as_id, "targetUri": "not a uri"}),
        400,
        "INVALID_MSG_FORMAT",
    )
    _is_problem(await api.post(reg, json={"asSvcId": as_id, "targetUri": "ftp://x/y"}), 400)
    _is_problem(await api.post(reg, content=b'{"asSvcId": ', headers=_json()), 400)
    _is_problem(
        await api.post(reg, content=b"asSvcId=x", headers={"Content-Type": "text/plain"}), 415
    )
    await _register(api, as_id, app_server.url)
    missing = _a2p(as_id, "x")
    del missing["stoAndFwInd"]
    response = await api.post(send, json=missing)
    _is_problem(response, 400, "INVALID_MSG_FORMAT")
    assert response.json()["invalidParams"][0]["param"] == "stoAndFwInd"
    _is_problem(await api.post(send, json=_a2p(as_id, "x", payload="p" * 5000)), 413)
    _is_problem(await api.post(send, content=b" " * 200_000, headers=_json()), 413)
    _is_problem(
        await api.post(send, json=_a2p(as_id, new_ue_id("unknown"))), 404, "UNKNOWN_RECIPIENT"
    )
    known = new_ue_id("known")
    await api.put(f"/api/v1/ues/{known}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = _a2p(as_id, known, stoAndFwParams={"exprTime": past})
    _is_problem(await api.post(send, json=expired), 400)


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


async def test_the_openapi_document_declares_the_ts_29538_operations(system: System) -> None:
    async with httpx.AsyncClient(base_url=system.url) as http:
        doc = (await http.get("/openapi.json")).json()
    paths = doc["paths"]
    for path in (
        "/msgs-asregistration/v1/registrations",
        "/msgs-asregistration/v1/registrations/{registrationId}",
        "/msgs-msgdelivery/v1/deliver-as-message",
        "/msgs-msgdelivery/v1/deliver-report",
        "/msgs-topiclistevent/v1/request-topic-subscription",
        "/msgs-topiclistevent/v1/request-topic-unsubscription",
        "/oauth2/token",
    ):
        assert path in paths, path
    schema = paths["/msgs-msgdelivery/v1/deliver-as-message"]["post"]["requestBody"]
    assert schema["content"]["application/json"]["schema"] == spec.schema("ASMessageDelivery")
