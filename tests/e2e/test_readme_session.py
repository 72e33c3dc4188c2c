"""End-to-end: ``make run``'s command serves the README session with the real CLI tools
(libcoap's coap-client, Mosquitto's mosquitto_pub/mosquitto_sub), and Ctrl-C leaves no
process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

pytestmark = pytest.mark.e2e

COAP_CLIENT = "coap-client-notls"
COAPS_CLIENT = "coap-client-openssl"
TIMEOUT = 20
ADMIN_TOKEN = "readme-admin-token-0123456789"


def _children(pid: int) -> set[int]:
    """Every descendant of a process, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Running:
    def __init__(self, proc: asyncio.subprocess.Process, banner: str) -> None:
        self.proc, self.banner = proc, banner
        self.coap, self.coaps = self._port(r"coap://"), self._port(r"coaps://")
        self.mqtt, self.http = self._port(r"mqtt://"), self._port(r"http://")

    def _port(self, scheme: str) -> int:
        found = re.search(scheme + r"127\.0\.0\.1:(\d+)", self.banner)
        assert found is not None, (scheme, self.banner)
        return int(found.group(1))


async def _devstack(tmp_path: Path, *options: str, env: dict[str, str]) -> Running:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "msgin5g_devstack", "run",
        "--coap-port", "0", "--coaps-port", "0", "--http-port", "0", "--mqtt-port", "0",
        "--redis-port", "0", "--data-dir", str(tmp_path), *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )  # fmt: skip
    assert proc.stdout is not None
    banner = ""
    while "Ctrl-C stops everything." not in banner:
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line, "msgin5g-devstack exited before it was ready"
        banner += line.decode()
    return Running(proc, banner)


@pytest_asyncio.fixture
async def devstack(tmp_path: Path) -> AsyncIterator[Running]:
    running = await _devstack(tmp_path, env={})
    try:
        yield running
    finally:
        await _stop(running.proc)


@pytest_asyncio.fixture
async def secure_devstack(tmp_path: Path) -> AsyncIterator[Running]:
    """``make run SECURE=1``, with the admin token from the environment."""
    running = await _devstack(tmp_path, "--secure", env={"MSGIN5G_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        yield running
    finally:
        await _stop(running.proc)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _run(*cmd: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, (cmd, err)
    return out.decode()


async def _coap(uri: str, post: str | None = None) -> str:
    """coap-client: a POST of a JSON document, or a GET."""
    if post is None:
        return await _run(COAP_CLIENT, "-m", "get", uri)
    return await _run(COAP_CLIENT, "-m", "post", "-t", "50", "-e", post, uri)


async def _subscriber(
    port: int, client_id: str, topic: str, count: int
) -> asyncio.subprocess.Process:
    """mosquitto_sub, returned once the broker has acknowledged the subscription."""
    # stdbuf: mosquitto_sub buffers its output when it is not a terminal.
    proc = await asyncio.create_subprocess_exec(
        "stdbuf", "-oL", "mosquitto_sub", "-V", "mqttv5", "-p", str(port), "-i", client_id,
        "-q", "1",
        "-t", topic, "-C", str(count), "-W", str(TIMEOUT // 2), "-d",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line, "mosquitto_sub ended before subscribing"
        if b"SUBACK" in line:
            return proc


async def _next_document(proc: asyncio.subprocess.Process) -> dict[str, object]:
    """The next payload mosquitto_sub prints (its debug lines skipped)."""
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line, "mosquitto_sub ended"
        if line.startswith(b"{"):
            doc: dict[str, object] = json.loads(line)
            return doc


@pytest.mark.skipif(
    shutil.which(COAP_CLIENT) is None or shutil.which("mosquitto_pub") is None,
    reason="make test installs libcoap3-bin and mosquitto-clients",
)
async def test_readme_session_with_coap_client_and_mosquitto_tools(devstack: Running) -> None:
    coap = f"coap://127.0.0.1:{devstack.coap}"
    mqtt = ["-V", "mqttv5", "-p", str(devstack.mqtt), "-q", "1"]

    # ue-1 registers over CoAP.
    reg = json.loads(await _coap(f"{coap}/reg", '{"msgType":"REG","ueSvcId":"ue-1"}'))
    assert reg == {"msgType": "REGRESP", "ueSvcId": "ue-1", "result": "SUCCESS", "lifetime": 86400}

    # ue-2 listens on its downlink topic, then registers over MQTT.
    sub = await _subscriber(devstack.mqtt, "ue-2", "msgin5g/ue/ue-2", 3)
    await _run("mosquitto_pub", *mqtt, "-i", "ue-2-pub", "-t", "msgin5g/up/ue-2",
               "-m", '{"msgType":"REG","ueSvcId":"ue-2"}')  # fmt: skip
    assert (await _next_document(sub))["msgType"] == "REGRESP"

    # CoAP -> MQTT.
    to_mqtt = {
        "msgType": "MSG", "msgId": "m-1", "payload": "hello from CoAP",
        "oriAddr": {"addrType": "UE", "addr": "ue-1"},
        "destAddr": {"addrType": "UE", "addr": "ue-2"},
    }  # fmt: skip
    resp = await _coap(f"{coap}/msg", json.dumps(to_mqtt))
    assert json.loads(resp) == {"msgType": "MSGRESP", "msgId": "m-1", "result": "ACCEPTED"}
    assert await _next_document(sub) == to_mqtt

    # MQTT -> CoAP: stored until ue-1 reads its inbox and acknowledges.
    to_coap = {
        "msgType": "MSG", "msgId": "m-2", "payload": "hello from MQTT",
        "oriAddr": {"addrType": "UE", "addr": "ue-2"},
        "destAddr": {"addrType": "UE", "addr": "ue-1"},
    }  # fmt: skip
    await _run("mosquitto_pub", *mqtt, "-i", "ue-2-pub", "-t", "msgin5g/up/ue-2",
               "-m", json.dumps(to_coap))  # fmt: skip
    assert await _next_document(sub) == {"msgType": "MSGRESP", "msgId": "m-2", "result": "STORED"}
    await asyncio.wait_for(sub.wait(), TIMEOUT)

    inbox = json.loads(await _coap(f"{coap}/inbox/ue-1"))
    assert inbox == [to_coap]
    ack = '{"msgType":"MSGRESP","msgId":"m-2","result":"DELIVERED","ueSvcId":"ue-1"}'
    await _coap(f"{coap}/msg", ack)
    assert json.loads(await _coap(f"{coap}/inbox/ue-1")) == []


async def _tool(*cmd: str) -> tuple[int, str, str]:
    """A command-line tool's exit code, stdout and stderr (it may fail)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip(), err.decode().strip()


@pytest.mark.skipif(
    shutil.which(COAPS_CLIENT) is None or shutil.which("mosquitto_rr") is None,
    reason="make test installs libcoap3-bin and mosquitto-clients",
)
async def test_readme_secure_session_with_coap_client_openssl_and_mosquitto_rr(
    secure_devstack: Running,
) -> None:
    run = secure_devstack
    coap, coaps = f"coap://127.0.0.1:{run.coap}", f"coaps://127.0.0.1:{run.coaps}"
    assert ADMIN_TOKEN in run.banner
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http}", headers=headers) as http:
        one = (await http.post("/api/v1/ues/ue-1/credentials")).json()
        two = (await http.post("/api/v1/ues/ue-2/credentials")).json()
        psk1, pw2 = one["psk"], two["mqttPassword"]

        dtls = [COAPS_CLIENT, "-B", "5", "-u", "ue-1", "-k", psk1]
        reg = '{"msgType":"REG","ueSvcId":"ue-1"}'
        out = await _run(*dtls, "-m", "post", "-t", "50", "-e", reg, f"{coaps}/reg")
        assert json.loads(out) == {
            "msgType": "REGRESP", "ueSvcId": "ue-1", "result": "SUCCESS", "lifetime": 86400,
        }  # fmt: skip
        _, _, err = await _tool(COAP_CLIENT, "-m", "get", f"{coap}/inbox/ue-1")
        assert "4.01 NOT_AUTHORIZED: use coaps:// (DTLS-PSK) or OSCORE" in err
        _, _, err = await _tool(*dtls, "-m", "get", f"{coaps}/inbox/ue-2")
        assert "4.03 NOT_AUTHORIZED: authenticated as ue-1, not ue-2" in err

        # ue-2 over MQTT; the broker knows its password once msgin5g-credsync has synced.
        rr = ["mosquitto_rr", "-V", "mqttv5", "-p", str(run.mqtt), "-u", "ue-2", "-P", pw2,
              "-q", "1", "-t", "msgin5g/up/ue-2", "-e", "msgin5g/ue/ue-2", "-W", "5"]  # fmt: skip
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            code, out, err = await _tool(*rr, "-m", '{"msgType":"REG","ueSvcId":"ue-2"}')
            if code == 0 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)  # the password file is re-read every second
        assert json.loads(out)["result"] == "SUCCESS", err
        msg = {
            "msgType": "MSG", "msgId": "m-3", "payload": "sealed",
            "oriAddr": {"addrType": "UE", "addr": "ue-2"},
            "destAddr": {"addrType": "UE", "addr": "ue-1"},
        }  # fmt: skip
        out = await _run(*rr, "-m", json.dumps(msg))
        assert json.loads(out) == {"msgType": "MSGRESP", "msgId": "m-3", "result": "STORED"}
        assert json.loads(await _run(*dtls, "-m", "get", f"{coaps}/inbox/ue-1")) == [msg]

        assert (await http.delete("/api/v1/ues/ue-2/credentials")).status_code == 204
        mqtt = ["-V", "mqttv5", "-p", str(run.mqtt), "-u", "ue-2", "-P", pw2]
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            code, out, err = await _tool("mosquitto_pub", *mqtt, "-t", "msgin5g/up/ue-2", "-m", "x")
            if code != 0 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert code != 0
        assert "not authorised" in err.lower() or "not authorized" in err.lower(), err


async def test_sigint_stops_every_process_of_the_system(devstack: Running) -> None:
    children = _children(devstack.proc.pid)
    # Redis, Mosquitto and the four services, at least.
    assert len(children) >= 6
    devstack.proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(devstack.proc.wait(), TIMEOUT) == 0
    assert [pid for pid in children if _alive(pid)] == []
