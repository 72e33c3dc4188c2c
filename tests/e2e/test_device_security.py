"""End-to-end: device security (issue 8), with the system as ``make run SECURE=1`` starts it:
plain CoAP off, the broker authenticating devices and confining them with ACLs (its password
file kept by msgin5g-credsync), the management API behind the admin token. CoAP devices
authenticate with DTLS-PSK (libcoap's ``coap-client-openssl``, and aiocoap's tinydtls client
for sessions that must stay up) or OSCORE (aiocoap's client), MQTT devices with their password;
every credential comes from the registry. Every document and path must name the device's own
UE."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import aiomqtt
import httpx
import pytest
import pytest_asyncio
from aiocoap import oscore
from aiocoap.numbers.codes import Code

from msgin5g_client import CoapUe, MqttUe, write_oscore_context
from msgin5g_client.common import build_msg
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack, free_port
from tests.conftest import new_ue_id, stack_config

pytestmark = pytest.mark.e2e

GRACE = 4  # seconds a rotated-out key stays valid
MAX_SESSIONS = 6
WAIT = 10.0


@pytest_asyncio.fixture(scope="module")
async def secure(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(
        tmp_path_factory.mktemp("secure"),
        MSGIN5G_CREDENTIALS_GRACE=str(GRACE),
        MSGIN5G_COAP_KEYS_TTL="1",
        MSGIN5G_COAP_DTLS_MAX_SESSIONS=str(MAX_SESSIONS),
    )
    config.secure = True
    async with Stack(config) as running:
        yield running


def admin(stack: Stack) -> httpx.AsyncClient:
    """The management API, with the admin token of the secure system."""
    return httpx.AsyncClient(
        base_url=stack.http_url, headers={"Authorization": f"Bearer {stack.admin_token}"}
    )


async def issue(stack: Stack, ue: str) -> dict[str, Any]:
    """Creates (or rotates) the UE's credentials in the registry."""
    async with admin(stack) as http:
        response = await http.post(f"/api/v1/ues/{ue}/credentials")
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def revoke(stack: Stack, ue: str) -> None:
    async with admin(stack) as http:
        response = await http.delete(f"/api/v1/ues/{ue}/credentials")
    assert response.status_code == 204, response.text


async def registered(stack: Stack, ue: str) -> bool:
    async with admin(stack) as http:
        response = await http.get(f"/api/v1/ues/{ue}")
    return response.status_code == 200 and bool(response.json().get("registered"))


async def metric(stack: Stack, name: str, **labels: str) -> float:
    """A sample of the coap-edge's /metrics (0 when absent)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(str(stack.listen["coap-edge"]["metrics"]))).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def coap_client(
    stack: Stack, ue: str, psk: str, method: str, path: str, body: str = "", *extra: str
) -> tuple[str, str]:
    """One request with libcoap's coap-client-openssl over DTLS-PSK: (stdout, stderr). It exits
    0 even when the handshake fails; without an answer it prints nothing on stdout."""
    host, port = stack.coaps_addr
    args = ["-B", "3", "-u", ue, "-k", psk, "-m", method, *extra]
    if body:
        args += ["-t", "50", "-e", body]
    proc = await asyncio.create_subprocess_exec(
        "coap-client-openssl",
        *args,
        f"coaps://{host}:{port}/{path}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    # libcoap's own log lines ("Nov 26 19:12:23.307 ERR ...") go to stdout too: they are
    # returned with stderr.
    lines = out.decode().splitlines()
    answer = [line for line in lines if not _LIBCOAP_LOG.match(line)]
    logs = [line for line in lines if _LIBCOAP_LOG.match(line)]
    return "\n".join(answer).strip(), "\n".join([err.decode().strip(), *logs]).strip()


_LIBCOAP_LOG = re.compile(r"^[A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d")


def reg(ue: str) -> str:
    return json.dumps({"msgType": "REG", "ueSvcId": ue})


async def dtls_context(stack: Stack, ue: str, psk: str) -> aiocoap.Context:
    """aiocoap's client with tinydtls: one DTLS session that stays up between requests."""
    context = await aiocoap.Context.create_client_context()
    host, port = stack.coaps_addr
    context.client_credentials.load_from_dict(
        {
            f"coaps://{host}:{port}/*": {
                "dtls": {"psk": psk.encode(), "client-identity": ue.encode()}
            }
        }
    )
    return context


def oscore_context(stack: Stack, material: dict[str, str], folder: Path) -> dict[str, Any]:
    """aiocoap client credentials for OSCORE from the registry's OSCORE material."""
    host, port = stack.coap_addr
    return {
        f"coap://{host}:{port}/*": {"oscore": {"basedir": write_oscore_context(folder, material)}}
    }


async def request(
    context: aiocoap.Context, code: Code, uri: str, payload: bytes = b""
) -> aiocoap.Message:
    return await asyncio.wait_for(
        context.request(aiocoap.Message(code=code, uri=uri, payload=payload)).response, WAIT
    )


async def observation_end(notifications: Any) -> str:
    """How an observation ends: the code of its last, unsuccessful notification, "error"
    when the transport failed under it, "end" when it just stopped."""
    try:
        async for notification in notifications:
            if not notification.code.is_successful():
                return str(notification.code.dotted)
    except Exception:
        return "error"
    return "end"


async def until(predicate: Any, within: float = WAIT) -> None:
    """Waits for a condition the system announces no event for (credentials changing state in
    another process), checking it every 50 ms."""
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


# -- DTLS-PSK with libcoap -------------------------------------------------------------------


async def test_a_device_with_its_psk_registers_sends_and_reads_over_dtls(secure: Stack) -> None:
    a, b = new_ue_id("dtls-a"), new_ue_id("dtls-b")
    ca, cb = await issue(secure, a), await issue(secure, b)
    out, _ = await coap_client(secure, a, ca["psk"], "post", "reg", reg(a))
    assert json.loads(out) == {
        "msgType": "REGRESP",
        "ueSvcId": a,
        "result": "SUCCESS",
        "lifetime": 86400,
    }
    out, _ = await coap_client(secure, b, cb["psk"], "post", "reg", reg(b))
    assert json.loads(out)["result"] == "SUCCESS"

    msg = build_msg(a, b, "over dtls")
    out, _ = await coap_client(secure, a, ca["psk"], "post", "msg", h.encode(msg).decode())
    assert json.loads(out)["result"] in ("ACCEPTED", "STORED")
    out, _ = await coap_client(secure, b, cb["psk"], "get", f"inbox/{b}")
    inbox = json.loads(out)
    assert [(d["msgId"], d["payload"]) for d in inbox] == [(msg.msg_id, "over dtls")]


async def test_a_wrong_or_unknown_psk_gets_no_session(secure: Stack) -> None:
    a = new_ue_id("dtls-wrong")
    await issue(secure, a)
    failed = await metric(secure, "msgin5g_coap_dtls_handshakes_total", result="failed")
    out, _ = await coap_client(secure, a, "not-the-right-k", "post", "reg", reg(a))
    assert out == ""
    out, _ = await coap_client(secure, new_ue_id("nobody"), "no-such-device1", "post", "reg", "")
    assert out == ""
    assert not await registered(secure, a)
    assert await metric(secure, "msgin5g_coap_dtls_handshakes_total", result="failed") > failed


async def test_a_device_naming_another_ue_is_refused_403(secure: Stack) -> None:
    a, victim = new_ue_id("dtls-liar"), new_ue_id("dtls-victim")
    ca = await issue(secure, a)
    await issue(secure, victim)
    for method, path, body in [
        ("post", "reg", reg(victim)),
        ("delete", f"reg/{victim}", ""),
        ("get", f"inbox/{victim}", ""),
        ("post", "msg", h.encode(build_msg(victim, a, "spoofed")).decode()),
        ("get", f"topic/news?ue={victim}", ""),
    ]:
        out, err = await coap_client(secure, a, ca["psk"], method, path, body)
        assert f"4.03 NOT_AUTHORIZED: authenticated as {a}" in err, (path, out, err)
    assert not await registered(secure, victim)


async def test_plain_coap_is_refused_401_when_security_is_on(secure: Stack) -> None:
    ue = new_ue_id("plain")
    host, port = secure.coap_addr
    context = await aiocoap.Context.create_client_context()
    try:
        for code, path, body in [
            (Code.POST, "reg", reg(ue).encode()),
            (Code.GET, f"inbox/{ue}", b""),
            (Code.POST, "msg", h.encode(build_msg(ue, ue, "x"))),
        ]:
            response = await request(context, code, f"coap://{host}:{port}/{path}", body)
            assert response.code == Code.UNAUTHORIZED
            assert response.payload.startswith(b"NOT_AUTHORIZED: ")
    finally:
        await context.shutdown()
    assert not await registered(secure, ue)


async def test_two_identities_from_one_address_each_get_a_session(secure: Stack) -> None:
    """aiocoap kept one DTLS state per address: a second device behind the same NAT mapping
    (or a restarted one) could not handshake again."""
    a, b = new_ue_id("nat-a"), new_ue_id("nat-b")
    ca, cb = await issue(secure, a), await issue(secure, b)
    # One client port for all three requests (a free one: a port in use makes coap-client
    # fail before it sends anything).
    local = str(free_port(socket.SOCK_DGRAM))
    out, err = await coap_client(secure, a, ca["psk"], "post", "reg", reg(a), "-p", local)
    assert out, err
    assert json.loads(out)["result"] == "SUCCESS"
    out, err = await coap_client(secure, b, cb["psk"], "post", "reg", reg(b), "-p", local)
    assert out, err
    assert json.loads(out)["result"] == "SUCCESS"
    out, err = await coap_client(secure, a, ca["psk"], "get", f"inbox/{a}", "", "-p", local)
    assert out, err
    assert json.loads(out) == []


# -- live sessions: revocation, rotation, bounds ----------------------------------------------


async def test_revocation_ends_a_live_dtls_session_at_once(secure: Stack) -> None:
    ue = new_ue_id("dtls-revoked")
    creds = await issue(secure, ue)
    host, port = secure.coaps_addr
    context = await dtls_context(secure, ue, creds["psk"])
    try:
        base = f"coaps://{host}:{port}"
        response = await request(context, Code.POST, f"{base}/reg", reg(ue).encode())
        assert response.code == Code.CREATED
        observe = context.request(
            aiocoap.Message(code=Code.GET, uri=f"{base}/inbox/{ue}", observe=0)
        )
        first = await asyncio.wait_for(observe.response, WAIT)
        assert first.code == Code.CONTENT
        assert first.opt.observe is not None
        ended = await metric(secure, "msgin5g_coap_dtls_sessions_ended_total", reason="revoked")

        await revoke(secure, ue)
        assert await asyncio.wait_for(observation_end(observe.observation), WAIT) in (
            "4.01",
            "end",
            "error",
        )

        async def session_ended() -> bool:
            name = "msgin5g_coap_dtls_sessions_ended_total"
            return await metric(secure, name, reason="revoked") == ended + 1

        await until(session_ended)
    finally:
        await context.shutdown()
    out, _ = await coap_client(secure, ue, creds["psk"], "get", f"inbox/{ue}")
    assert out == ""  # no new session either


async def test_rotation_keeps_the_old_psk_for_its_grace_then_ends_it(secure: Stack) -> None:
    ue = new_ue_id("dtls-rotated")
    old = await issue(secure, ue)
    out, _ = await coap_client(secure, ue, old["psk"], "post", "reg", reg(ue))
    assert json.loads(out)["result"] == "SUCCESS"
    host, port = secure.coaps_addr
    live = await dtls_context(secure, ue, old["psk"])
    try:
        base = f"coaps://{host}:{port}"
        assert (await request(live, Code.GET, f"{base}/inbox/{ue}")).code == Code.CONTENT

        new = await issue(secure, ue)
        assert new["psk"] != old["psk"]
        assert new["graceUntil"]
        # Within the grace both keys work; the device that switched needs one retry at most.
        out, _ = await coap_client(secure, ue, old["psk"], "get", f"inbox/{ue}")
        assert json.loads(out) == []
        answers = [(await coap_client(secure, ue, new["psk"], "get", f"inbox/{ue}"))[0]]
        if not answers[0]:
            answers.append((await coap_client(secure, ue, new["psk"], "get", f"inbox/{ue}"))[0])
        assert json.loads(answers[-1]) == []

        async def old_key_refused() -> bool:
            return (await coap_client(secure, ue, old["psk"], "get", f"inbox/{ue}"))[0] == ""

        await until(old_key_refused, within=GRACE + WAIT)
        # The session opened with the old key ended with its grace.
        with pytest.raises(Exception):  # noqa: B017 - the session is gone, however it shows
            await request(live, Code.GET, f"{base}/inbox/{ue}")
    finally:
        await live.shutdown()
    out, _ = await coap_client(secure, ue, new["psk"], "get", f"inbox/{ue}")
    assert json.loads(out) == []


async def test_dtls_state_is_bounded(secure: Stack) -> None:
    """Beyond MSGIN5G_COAP_DTLS_MAX_SESSIONS the least recently used session ends."""
    contexts = []
    host, port = secure.coaps_addr
    evicted = await metric(secure, "msgin5g_coap_dtls_sessions_ended_total", reason="evicted")
    try:
        for _ in range(MAX_SESSIONS + 3):
            ue = new_ue_id("many")
            creds = await issue(secure, ue)
            context = await dtls_context(secure, ue, creds["psk"])
            contexts.append(context)
            response = await request(context, Code.GET, f"coaps://{host}:{port}/inbox/{ue}")
            assert response.code == Code.CONTENT
        assert await metric(secure, "msgin5g_coap_dtls_sessions") <= MAX_SESSIONS
        now = await metric(secure, "msgin5g_coap_dtls_sessions_ended_total", reason="evicted")
        assert now > evicted
    finally:
        for context in contexts:
            await context.shutdown()


# -- OSCORE with aiocoap ---------------------------------------------------------------------


async def test_oscore_device_registers_observes_and_is_bound_to_its_identity(
    secure: Stack, tmp_path: Path
) -> None:
    a, b = new_ue_id("osc-a"), new_ue_id("osc-b")
    ca = await issue(secure, a)
    host, port = secure.coap_addr
    base = f"coap://{host}:{port}"
    context = await aiocoap.Context.create_client_context()
    context.client_credentials.load_from_dict(oscore_context(secure, ca["oscore"], tmp_path / a))
    try:
        response = await request(context, Code.POST, f"{base}/reg", reg(a).encode())
        assert response.code == Code.CREATED, response.payload
        assert json.loads(response.payload)["result"] == "SUCCESS"
        forbidden = await request(context, Code.GET, f"{base}/inbox/{b}")
        assert forbidden.code == Code.FORBIDDEN
        assert forbidden.payload == f"NOT_AUTHORIZED: authenticated as {a}, not {b}".encode()

        observe = context.request(
            aiocoap.Message(code=Code.GET, uri=f"{base}/inbox/{a}", observe=0)
        )
        assert (await asyncio.wait_for(observe.response, WAIT)).code == Code.CONTENT
        notifications = observe.observation.__aiter__()
        msg = build_msg(a, a, "sealed")
        response = await request(context, Code.POST, f"{base}/msg", h.encode(msg))
        assert json.loads(response.payload)["result"] in ("ACCEPTED", "STORED")
        notification = await asyncio.wait_for(notifications.__anext__(), WAIT)
        assert [d["msgId"] for d in json.loads(notification.payload)] == [msg.msg_id]

        await revoke(secure, a)
        assert await asyncio.wait_for(observation_end(notifications), WAIT) in (
            "4.01",
            "end",
            "error",
        )
        # Without a context the server can only answer unprotected: 4.01.
        with pytest.raises(oscore.NotAProtectedMessage) as unprotected:
            await request(context, Code.GET, f"{base}/inbox/{a}")
        assert unprotected.value.plain_message.code == Code.UNAUTHORIZED
    finally:
        await context.shutdown()


async def test_an_unknown_oscore_kid_is_refused_401(secure: Stack, tmp_path: Path) -> None:
    material = {
        "senderId": "00112233445566",
        "recipientId": "01",
        "masterSecret": "00" * 16,
        "masterSalt": "00" * 8,
    }
    ue = new_ue_id("osc-nobody")
    host, port = secure.coap_addr
    context = await aiocoap.Context.create_client_context()
    context.client_credentials.load_from_dict(oscore_context(secure, material, tmp_path / "x"))
    try:
        with pytest.raises(oscore.NotAProtectedMessage) as unprotected:
            await request(context, Code.POST, f"coap://{host}:{port}/reg", reg(ue).encode())
        assert unprotected.value.plain_message.code == Code.UNAUTHORIZED
    finally:
        await context.shutdown()
    assert not await registered(secure, ue)


# -- MQTT: the broker authenticates devices -------------------------------------------------


async def connected(ue: MqttUe, within: float = WAIT) -> MqttUe:
    """Connects once the broker knows the device's password: msgin5g-credsync writes it into
    the password file within a second of the registry's change."""
    deadline = time.monotonic() + within
    while True:
        try:
            await ue.__aenter__()
        except aiomqtt.MqttError:
            assert time.monotonic() < deadline, "the broker never accepted the password"
            await asyncio.sleep(0.1)
        else:
            return ue


async def test_an_mqtt_device_talks_to_a_dtls_device_with_registry_credentials(
    secure: Stack,
) -> None:
    m, d = new_ue_id("mqtt-dev"), new_ue_id("dtls-dev")
    cm, cd = await issue(secure, m), await issue(secure, d)
    assert cm["mqttUsername"] == m
    out, _ = await coap_client(secure, d, cd["psk"], "post", "reg", reg(d))
    assert json.loads(out)["result"] == "SUCCESS"
    ue = await connected(MqttUe(m, secure.mqtt_addr, username=m, password=cm["mqttPassword"]))
    try:
        assert (await ue.register()).result is h.Result.SUCCESS
        answer = await ue.send(d, "from mqtt")
        assert answer.result in (h.MsgResult.ACCEPTED, h.MsgResult.STORED)
        out, _ = await coap_client(secure, d, cd["psk"], "get", f"inbox/{d}")
        assert [doc["payload"] for doc in json.loads(out)] == ["from mqtt"]

        # And back: the CoAP device's message reaches the MQTT device.
        msg = build_msg(d, m, "from coaps")
        out, _ = await coap_client(secure, d, cd["psk"], "post", "msg", h.encode(msg).decode())
        assert json.loads(out)["result"] in ("ACCEPTED", "STORED")
        received = await asyncio.wait_for(ue.receive(), WAIT)
        assert isinstance(received, h.Msg)
        assert received.payload == "from coaps"
    finally:
        await ue.__aexit__(None, None, None)


async def test_the_broker_refuses_anonymous_devices_and_wrong_passwords(secure: Stack) -> None:
    m = new_ue_id("mqtt-refused")
    creds = await issue(secure, m)
    await (
        await connected(MqttUe(m, secure.mqtt_addr, username=m, password=creds["mqttPassword"]))
    ).__aexit__(None, None, None)
    for username, password in [(None, None), (m, "wrong-password"), (m, None)]:
        with pytest.raises(aiomqtt.MqttError):
            async with MqttUe(m, secure.mqtt_addr, username=username, password=password):
                pass


# -- the client library and the msgin5g CLI ----------------------------------------------------


async def test_the_client_library_speaks_dtls_and_oscore(secure: Stack, tmp_path: Path) -> None:
    d, o = new_ue_id("lib-dtls"), new_ue_id("lib-osc")
    cd, co = await issue(secure, d), await issue(secure, o)
    folder = write_oscore_context(tmp_path / "ctx", co["oscore"])
    async with (
        CoapUe(d, secure.coaps_addr, psk=cd["psk"]) as dtls_ue,
        CoapUe(o, secure.coap_addr, oscore_dir=folder) as oscore_ue,
    ):
        assert (await dtls_ue.register()).result is h.Result.SUCCESS
        assert (await oscore_ue.register()).result is h.Result.SUCCESS
        await oscore_ue.start_observing()
        await dtls_ue.send(o, "sealed twice")
        received = await asyncio.wait_for(oscore_ue.receive(), WAIT)
        assert isinstance(received, h.Msg)
        assert received.payload == "sealed twice"


async def test_the_cli_takes_a_psk_and_an_mqtt_password(secure: Stack) -> None:
    c, m = new_ue_id("cli-dtls"), new_ue_id("cli-mqtt")
    cc, cm = await issue(secure, c), await issue(secure, m)
    host, port = secure.coaps_addr
    mhost, mport = secure.mqtt_addr

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "msgin5g_client.cli", "--json", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    dtls = ["--psk", cc["psk"], "--server", f"{host}:{port}"]
    code, out = await cli(*dtls, "register", c)
    assert code == 0, out
    assert json.loads(out.splitlines()[-1])["result"] == "SUCCESS"
    code, out = await cli("--server", f"{host}:{port}", "--psk", "wrong-key-16-chr", "register", c)
    assert code != 0, out

    mqtt = ["--transport", "mqtt", "--broker", f"{mhost}:{mport}", "--password", cm["mqttPassword"]]
    deadline = time.monotonic() + WAIT
    while (result := await cli(*mqtt, "register", m))[0] != 0:
        assert time.monotonic() < deadline, result  # the broker learns the password within 1 s
        await asyncio.sleep(0.1)
    code, out = await cli(*mqtt, "send", m, c, "via the cli")
    assert code == 0, out
    code, out = await cli(*dtls, "listen", c, "--count", "1")
    assert code == 0, out
    assert "via the cli" in out
