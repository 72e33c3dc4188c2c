"""The broker authenticates devices from the registry's credentials (credsync.py), against a
real Redis and a real Mosquitto that reads the synced password file: a device connects with
its own username and password and publishes on its own uplink topic, reads neither another's
downlink nor takes over its session with its client id, a wrong password and
anonymous clients are refused, a revocation closes the device's live session and a rotation
retires the previous password. ``msgin5g-credsync --once`` writes the whole state and exits
(1 when Redis does not answer). The Helm chart's broker pod (charts/msgin5g, default values)
runs here as Kubernetes would run it: its init containers, Mosquitto and the credsync sidecar,
each with its rendered command, configuration and environment. Nothing sleeps: the tests
await the broker's log lines and the clients' disconnects, with timeouts."""

from __future__ import annotations

import asyncio
import base64
import getpass
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import helm_python
import pytest
import pytest_asyncio
import yaml
from redis.asyncio import Redis

from msgin5g_common.keys import Keys
from msgin5g_devstack.stack import HOST, Ports, Stack, StackConfig, free_port, mosquitto_binary
from msgin5g_registry.credentials import CredentialStore, mqtt_hash
from msgin5g_registry.credsync import (
    CredsyncSettings,
    Reloader,
    SyncResult,
    SyncState,
    follow,
    load_service_users,
    mosquitto_reloader,
    parse_password_file,
    sync_once,
)

KEYS = Keys("m5g")
KEK = secrets.token_bytes(32)
EDGE_USER = "msgin5g-edge"
EDGE_PASSWORD = secrets.token_urlsafe(24)
SERVICE_USERS = {EDGE_USER: mqtt_hash(EDGE_PASSWORD)}
TIMEOUT = 5.0
ACL = f"""\
user {EDGE_USER}
topic readwrite msgin5g/#

pattern write msgin5g/up/%u/#
pattern read msgin5g/ue/%u
"""


@dataclass
class Broker:
    stack: Stack
    store: CredentialStore
    password_file: Path
    state: SyncState
    reload: Reloader

    @property
    def port(self) -> int:
        return self.stack.ports.mqtt

    @property
    def pid(self) -> int:
        return self.stack.procs["mosquitto"].proc.pid

    def reloaded(self) -> asyncio.Future[str]:
        """The broker's next "Reloading config." line; Mosquitto reloads in one step of its
        single-threaded loop, so a connection made after the line meets the new file."""
        return self.stack.expect("mosquitto", lambda line: "Reloading config." in line)

    async def sync(self) -> SyncResult:
        reloaded = self.reloaded()
        result = await sync_once(
            self.store, self.state, self.password_file, SERVICE_USERS, self.reload
        )
        assert (result.written, result.reloaded) == (True, True)
        await asyncio.wait_for(reloaded, TIMEOUT)
        return result

    def client(
        self, username: str | None, password: str | None, identifier: str | None = None
    ) -> aiomqtt.Client:
        return aiomqtt.Client(
            HOST,
            self.port,
            username=username,
            password=password,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=TIMEOUT,
        )


async def start_mosquitto(stack: Stack, password_file: Path, acl_file: Path) -> None:
    conf = stack.data_dir / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"listener {stack.ports.mqtt} {HOST}",
                "per_listener_settings false",
                "allow_anonymous false",
                f"password_file {password_file}",
                f"acl_file {acl_file}",
                "use_username_as_clientid true",
                "persistence false",
                f"user {getpass.getuser()}",
                "log_dest stderr",
                "log_type all",
                "",
            ]
        )
    )
    await stack._spawn(
        "mosquitto",
        [mosquitto_binary(), "-c", str(conf)],
        {},
        lambda line: {} if " running" in line else None,
    )


@pytest_asyncio.fixture
async def broker(redis: Redis, tmp_path: Path) -> AsyncIterator[Broker]:
    """Mosquitto on a free port, started on the password file of a first sync (the service
    user only: no UE has credentials yet)."""
    stack = Stack(StackConfig(ports=Ports.ephemeral(), data_dir=tmp_path))
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    password_file, acl_file = tmp_path / "passwords", tmp_path / "acl"
    acl_file.write_text(ACL)
    store = CredentialStore(redis, KEYS, KEK)
    state = SyncState()
    first = await sync_once(store, state, password_file, SERVICE_USERS, lambda: False)
    assert (first.written, first.users) == (True, 0)
    try:
        await stack._with_free_port("mqtt", lambda: start_mosquitto(stack, password_file, acl_file))
        pid = stack.procs["mosquitto"].proc.pid
        yield Broker(stack, store, password_file, state, mosquitto_reloader(pid=pid))
    finally:
        await stack.stop()


async def until_disconnected(client: aiomqtt.Client) -> None:
    """Returns when the broker ends the client's connection."""
    with pytest.raises(aiomqtt.MqttError):
        async for _ in client.messages:
            pass


async def connect(exits: AsyncExitStack, client: aiomqtt.Client) -> aiomqtt.Client:
    return await exits.enter_async_context(client)


async def refused(client: aiomqtt.Client) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with client:
            pass


async def test_devices_authenticate_with_their_registry_credentials(broker: Broker) -> None:
    a = await broker.store.issue("ue-a")
    b = await broker.store.issue("ue-b")
    await broker.store.issue("bad:name")  # Mosquitto cannot take it as a username: left out
    result = await broker.sync()
    assert (result.users, result.changed) == (2, 3)

    lines = broker.password_file.read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [EDGE_USER, "ue-a", "ue-b"]
    assert all(line.split(":", 1)[1].startswith("$7$") for line in lines)
    assert stat.S_IMODE(broker.password_file.stat().st_mode) == 0o600

    async with AsyncExitStack() as exits:
        # The edge's service account is not locked out; it sees the devices' uplink.
        edge = await connect(exits, broker.client(EDGE_USER, EDGE_PASSWORD))
        await edge.subscribe("msgin5g/up/#", qos=1)
        device_a = await connect(exits, broker.client("ue-a", a.mqtt_password))
        device_b = await connect(exits, broker.client("ue-b", b.mqtt_password))

        # A device publishes on its own uplink only: the other UE's topic is dropped.
        await device_a.publish("msgin5g/up/ue-b/x", b"forged", qos=1)
        await device_a.publish("msgin5g/up/ue-a/x", b"hello", qos=1)
        message = await asyncio.wait_for(anext(aiter(edge.messages)), TIMEOUT)
        assert (str(message.topic), message.payload) == ("msgin5g/up/ue-a/x", b"hello")

        # A wrong password, another UE's password and anonymous clients are refused.
        await refused(broker.client("ue-a", b.mqtt_password))
        await refused(broker.client("ue-a", "not-the-password"))
        await refused(broker.client("nobody", a.mqtt_password))
        await refused(broker.client(None, None))

        # Revoking ue-a closes its live session at the next sync; ue-b stays connected.
        a_gone = asyncio.create_task(until_disconnected(device_a))
        b_gone = asyncio.create_task(until_disconnected(device_b))
        await broker.store.revoke("ue-a")
        result = await broker.sync()
        assert (result.users, result.changed) == (1, 1)
        await asyncio.wait_for(a_gone, TIMEOUT)
        await refused(broker.client("ue-a", a.mqtt_password))

        await device_b.publish("msgin5g/up/ue-b/y", b"still here", qos=1)
        message = await asyncio.wait_for(anext(aiter(edge.messages)), TIMEOUT)
        assert (str(message.topic), message.payload) == ("msgin5g/up/ue-b/y", b"still here")
        assert not b_gone.done()
        b_gone.cancel()

        # Nothing changed: the file is not rewritten and Mosquitto is not reloaded.
        quiet = await sync_once(
            broker.store, broker.state, broker.password_file, SERVICE_USERS, broker.reload
        )
        assert (quiet.changed, quiet.written, quiet.reloaded) == (0, False, False)


async def test_a_device_cannot_read_for_another_nor_take_its_client_id(broker: Broker) -> None:
    a = await broker.store.issue("ue-a")
    b = await broker.store.issue("ue-b")
    await broker.sync()
    async with AsyncExitStack() as exits:
        edge = await connect(exits, broker.client(EDGE_USER, EDGE_PASSWORD))
        device_b = await connect(exits, broker.client("ue-b", b.mqtt_password, "ue-b"))
        await device_b.subscribe("msgin5g/ue/ue-b", qos=1)
        # ue-a connects with ue-b's client id: the broker uses its username instead, so
        # ue-b's session is not taken over.
        device_a = await connect(exits, broker.client("ue-a", a.mqtt_password, "ue-b"))
        await device_a.subscribe("msgin5g/ue/ue-a", qos=1)
        # Subscribing to ue-b's downlink (and to everything) gets it nothing.
        await device_a.subscribe("msgin5g/ue/ue-b", qos=1)
        await device_a.subscribe("msgin5g/#", qos=1)

        await edge.publish("msgin5g/ue/ue-b", b"for b", qos=1)
        await edge.publish("msgin5g/ue/ue-a", b"for a", qos=1)
        # One publisher, QoS 1: the broker hands them on in order, so a's first message
        # being its own shows that b's was not delivered to it.
        got_a = await asyncio.wait_for(anext(aiter(device_a.messages)), TIMEOUT)
        assert (str(got_a.topic), got_a.payload) == ("msgin5g/ue/ue-a", b"for a")
        # ue-b is still connected (a taken-over session would end its message stream).
        got_b = await asyncio.wait_for(anext(aiter(device_b.messages)), TIMEOUT)
        assert (str(got_b.topic), got_b.payload) == ("msgin5g/ue/ue-b", b"for b")


async def test_a_rotation_retires_the_previous_password_at_the_next_sync(broker: Broker) -> None:
    old = await broker.store.issue("ue-r")
    await broker.sync()
    async with broker.client("ue-r", old.mqtt_password) as device:
        gone = asyncio.create_task(until_disconnected(device))
        new = await broker.store.issue("ue-r")
        await broker.sync()
        # Mosquitto checks live sessions again on reload: the one on the old password ends.
        await asyncio.wait_for(gone, TIMEOUT)
    # The grace period covers DTLS and OSCORE; the password file holds the current one only.
    await refused(broker.client("ue-r", old.mqtt_password))
    async with broker.client("ue-r", new.mqtt_password) as device:
        await device.publish("msgin5g/up/ue-r/x", b"rotated", qos=1)


async def test_the_loop_applies_a_revocation_at_once(broker: Broker, tmp_path: Path) -> None:
    """The running sync wakes on the revocation channel: the interval is a minute, yet the
    device is disconnected within seconds."""
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{broker.pid}\n")
    health = tmp_path / "alive"
    settings = CredsyncSettings(
        credsync_password_file=str(broker.password_file),
        credsync_interval=60,
        credsync_mosquitto_pid_file=str(pid_file),
        credsync_service_users=json.dumps(SERVICE_USERS),
        credsync_health_file=str(health),
    )
    issued = await broker.store.issue("ue-l")
    reloaded = broker.reloaded()
    stop = asyncio.Event()
    loop = asyncio.create_task(follow(broker.store, settings, stop))
    try:
        await asyncio.wait_for(reloaded, TIMEOUT)
        # The loop touches its health file after each pass (the sidecar's liveness probe).
        assert age(health) < 60
        async with broker.client("ue-l", issued.mqtt_password) as device:
            gone = asyncio.create_task(until_disconnected(device))
            await broker.store.revoke("ue-l")
            await asyncio.wait_for(gone, TIMEOUT)
        await refused(broker.client("ue-l", issued.mqtt_password))
    finally:
        stop.set()
        await asyncio.wait_for(loop, TIMEOUT)


# ----------------------------------------------------------------------------- --once


def credsync_command() -> list[str]:
    """The console script the chart runs (``msgin5g-credsync``), from this environment."""
    script = Path(sys.executable).with_name("msgin5g-credsync")
    assert script.exists(), script
    return [str(script)]


def process_env(env: dict[str, str]) -> dict[str, str]:
    """This machine's environment without its MSGIN5G_* settings, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MSGIN5G_")}
    return {**base, **env}


def users_in(path: Path) -> list[str]:
    """The usernames of a password file, in order."""
    return [line.split(":", 1)[0] for line in path.read_text().splitlines()]


def age(path: Path) -> float:
    """Seconds since ``path`` was last modified."""
    return time.time() - path.stat().st_mtime


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def run(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Runs a process to its end (a minute at most): its exit status and output."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        env=process_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


async def test_once_writes_the_whole_state_and_exits(
    redis: Redis, redis_server: Stack, tmp_path: Path
) -> None:
    store = CredentialStore(redis, KEYS, KEK)
    a = await store.issue("ue-a")
    await store.issue("ue-b")
    await store.revoke("ue-b")
    await store.issue("ue-a")  # rotated: only the current password goes into the file
    current = await store.mqtt_password_hashes("ue-a")
    assert a.mqtt_password  # (the rotated-out one)
    static = tmp_path / "static.passwd"
    static.write_text(f"# fixed accounts\nlab-1:{mqtt_hash('lab-pw')}\n\n")
    password_file = tmp_path / "devices.passwd"
    code, output = await run(
        [*credsync_command(), "--once"],
        {
            "MSGIN5G_REDIS_URL": redis_server.redis_url,
            "MSGIN5G_REDIS_PREFIX": "m5g",
            "MSGIN5G_CREDSYNC_PASSWORD_FILE": str(password_file),
            "MSGIN5G_CREDSYNC_SERVICE_USERS_FILE": str(static),
            "MSGIN5G_CREDSYNC_SERVICE_USERS": json.dumps(SERVICE_USERS),
        },
    )
    assert code == 0, output
    assert users_in(password_file) == ["lab-1", EDGE_USER, "ue-a"]
    assert f"ue-a:{current[0]}" in await asyncio.to_thread(password_file.read_text)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    # Only the file: no temporary file left behind.
    assert files_in(tmp_path) == ["devices.passwd", "static.passwd"]
    done = events(output)[-1]
    assert (done["event"], done["users"], done["level"]) == ("synced once", 1, "info")
    # Logs carry counts, never a hash.
    assert "$7$" not in output


async def test_once_fails_when_redis_does_not_answer_in_time(tmp_path: Path) -> None:
    password_file = tmp_path / "devices.passwd"
    started = time.monotonic()
    code, output = await run(
        [*credsync_command(), "--once"],
        {
            "MSGIN5G_REDIS_URL": f"redis://{HOST}:{free_port()}/0",
            "MSGIN5G_CREDSYNC_PASSWORD_FILE": str(password_file),
            "MSGIN5G_CREDSYNC_ONCE_TIMEOUT": "1.5",
        },
    )
    assert code == 1, output
    assert time.monotonic() - started < 15
    assert not password_file.exists()
    last = events(output)[-1]
    assert (last["level"], last["event"]) == ("error", "password file not written")
    assert "redis did not answer within 1.5 s" in last["error"]
    assert "Traceback" not in output


async def test_once_fails_on_a_bad_service_users_file(redis_server: Stack, tmp_path: Path) -> None:
    static = tmp_path / "static.passwd"
    static.write_text("lab-1:plain-text-password\n")
    code, output = await run(
        [*credsync_command(), "--once"],
        {
            "MSGIN5G_REDIS_URL": redis_server.redis_url,
            "MSGIN5G_CREDSYNC_PASSWORD_FILE": str(tmp_path / "devices.passwd"),
            "MSGIN5G_CREDSYNC_SERVICE_USERS_FILE": str(static),
        },
    )
    assert code == 1, output
    assert "line 1: lab-1: not a Mosquitto $7$ (or $6$) hash" in events(output)[-1]["error"]
    assert "plain-text-password" not in output


def test_service_users_come_from_a_password_file_and_the_json_setting(tmp_path: Path) -> None:
    edge, lab, other = mqtt_hash("e"), mqtt_hash("l"), mqtt_hash("o")
    assert parse_password_file(f"# c\n\n  lab-1:{lab}  \nedge:{edge}\n", "f") == {
        "lab-1": lab,
        "edge": edge,
    }
    for bad, message in (
        ("no-colon", "f: line 1: not username:hash"),
        (f"a/b:{lab}", "f: line 1: bad username 'a/b'"),
        ("lab-1:secret", "f: line 1: lab-1: not a Mosquitto"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_password_file(bad, "f")
    path = tmp_path / "static.passwd"
    path.write_text(f"edge:{other}\nlab-1:{lab}\n")
    settings = CredsyncSettings(
        credsync_service_users_file=str(path), credsync_service_users=json.dumps({"edge": edge})
    )
    # The JSON setting wins for a name in both.
    assert load_service_users(settings) == {"edge": edge, "lab-1": lab}
    with pytest.raises(ValueError, match="cannot read it"):
        load_service_users(CredsyncSettings(credsync_service_users_file=str(tmp_path / "no")))


# ----------------------------------------------------------------------------- the chart's pod

CHART = Path(__file__).resolve().parents[2] / "charts" / "msgin5g"
RELEASE = "msgin5g"


@dataclass
class Pod:
    """The chart's broker pod, moved from Kubernetes to a folder of this machine: every path
    under /mosquitto/ and /tmp/ of the containers is under ``root``."""

    root: Path
    spec: dict[str, Any]
    objects: list[dict[str, Any]]
    redis_url: str

    def local(self, text: str) -> str:
        return re.sub(
            r"(?<![\w./-])/(mosquitto|tmp)/",
            lambda m: f"{self.root}/" + ("tmp/" if m[1] == "tmp" else ""),
            text,
        )

    def get(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [o for o in self.objects if (o["kind"], o["metadata"]["name"]) == (kind, name)]
        return found

    def container(self, name: str) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.spec["initContainers"] + self.spec["containers"]
        (found,) = [c for c in containers if c["name"] == name]
        return found

    def env(self, name: str) -> dict[str, str]:
        """The container's environment; Secret references from the rendered Secrets, the
        Redis URL the local Redis's."""
        env: dict[str, str] = {}
        for entry in self.container(name).get("env", []):
            if "value" in entry:
                env[entry["name"]] = self.local(entry["value"])
            elif entry["name"] == "MSGIN5G_REDIS_URL":
                env[entry["name"]] = self.redis_url
            else:
                ref = entry["valueFrom"]["secretKeyRef"]
                data = self.get("Secret", ref["name"])["data"]
                env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
        return env


def render_broker_pod(values: dict[str, Any], root: Path, redis_url: str) -> Pod:
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace="credsync-test")
    objects = [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    (deployment,) = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{RELEASE}-mosquitto"
    ]
    pod = Pod(root, deployment["spec"]["template"]["spec"], objects, redis_url)
    # The volumes the containers mount.
    for volume in pod.spec["volumes"]:
        for container in pod.spec["initContainers"] + pod.spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] == volume["name"]:
                    Path(pod.local(mount["mountPath"] + "/")).mkdir(parents=True, exist_ok=True)
    config = root / "config"
    for key, text in pod.get("ConfigMap", f"{RELEASE}-mosquitto")["data"].items():
        (config / key).write_text(pod.local(text))
    with (config / "mosquitto.conf").open("a") as conf:
        conf.write(f"\nuser {getpass.getuser()}\n")  # as root it would switch users
    devices = pod.get("Secret", f"{RELEASE}-mosquitto")["data"]["devices.passwd"]
    (root / "secret" / "devices.passwd").write_text(base64.b64decode(devices).decode())
    return pod


def client(port: int, username: str, password: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        HOST,
        port,
        username=username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=TIMEOUT,
    )


@pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="needs mosquitto_passwd")
async def test_the_charts_broker_pod_takes_device_passwords_from_the_registry(
    redis: Redis, redis_server: Stack, tmp_path: Path
) -> None:
    device_port, edge_port = free_port(), free_port()
    values = {
        "mosquitto": {
            "port": device_port,
            "edgePort": edge_port,
            "auth": {
                "edge": {"password": EDGE_PASSWORD},
                "devices": [{"username": "lab-1", "password": "lab-pw"}],
            },
        }
    }
    pod = render_broker_pod(values, tmp_path / "pod", redis_server.redis_url)
    store = CredentialStore(redis, KEYS, KEK)
    early = await store.issue("ue-a")  # before the pod starts

    # Init containers, in order: the broker's own (edge password, static accounts, ACLs),
    # then msgin5g-credsync --once (the registry's devices).
    passwords = pod.container("passwords")
    code, output = await run(
        [*passwords["command"], pod.local(passwords["args"][0])], pod.env("passwords")
    )
    assert code == 0, output
    init = pod.container("credsync-init")
    assert init["command"] == ["msgin5g-credsync"]
    code, output = await run([*credsync_command(), *init["args"]], pod.env("credsync-init"))
    assert code == 0, output
    password_file = Path(pod.env("credsync")["MSGIN5G_CREDSYNC_PASSWORD_FILE"])
    assert users_in(password_file) == ["lab-1", "ue-a"]

    stack = Stack(StackConfig(ports=Ports.ephemeral(), data_dir=tmp_path / "stack"))
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        mosquitto = pod.container("mosquitto")
        # stdbuf: the rendered configuration logs to stdout, which a pipe would buffer.
        await stack._spawn(
            "mosquitto",
            ["stdbuf", "-oL", mosquitto_binary(), *[pod.local(a) for a in mosquitto["args"][1:]]],
            {},
            lambda line: {} if " running" in line else None,
        )
        reloaded = stack.expect("mosquitto", lambda line: "Reloading config." in line)
        sidecar = pod.container("credsync")
        assert sidecar["command"] == ["msgin5g-credsync"]
        await stack._spawn(
            "credsync",
            credsync_command(),
            process_env(pod.env("credsync")),
            lambda line: {} if '"event": "ready"' in line else None,
        )
        # Its first pass rewrote the file and signalled the broker through the pid_file.
        await asyncio.wait_for(reloaded, TIMEOUT)

        async with AsyncExitStack() as exits:
            # The mqtt-edge on its own listener, with its own password file: never locked out.
            edge = await connect(exits, client(edge_port, EDGE_USER, EDGE_PASSWORD))
            await edge.subscribe("msgin5g/up/#", qos=1)
            # The device issued before the pod started connects at once (the init container),
            # so does the static account.
            device_a = await connect(exits, client(device_port, "ue-a", early.mqtt_password))
            await connect(exits, client(device_port, "lab-1", "lab-pw"))
            await device_a.publish("msgin5g/up/ue-a/x", b"hello", qos=1)
            message = await asyncio.wait_for(anext(aiter(edge.messages)), TIMEOUT)
            assert (str(message.topic), message.payload) == ("msgin5g/up/ue-a/x", b"hello")
            await refused(client(edge_port, "ue-a", early.mqtt_password))
            await refused(client(device_port, EDGE_USER, EDGE_PASSWORD))

            # A device issued later can connect after the sidecar's next pass.
            reloaded = stack.expect("mosquitto", lambda line: "Reloading config." in line)
            late = await store.issue("ue-b")
            await asyncio.wait_for(reloaded, TIMEOUT)
            await connect(exits, client(device_port, "ue-b", late.mqtt_password))

            # A revocation closes the device's session.
            gone = asyncio.create_task(until_disconnected(device_a))
            await store.revoke("ue-a")
            await asyncio.wait_for(gone, TIMEOUT)
            await refused(client(device_port, "ue-a", early.mqtt_password))
        health = Path(pod.env("credsync")["MSGIN5G_CREDSYNC_HEALTH_FILE"])
        assert age(health) < 60
    finally:
        await stack.stop()
