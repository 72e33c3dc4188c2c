"""The broker authenticates devices from the registry's credentials (credsync.py), against a
real Redis and a real Mosquitto that reads the synced password file: a device connects with
its own username and password and publishes on its own uplink topic, a wrong password and
anonymous clients are refused, a revocation closes the device's live session and a rotation
retires the previous password. Nothing sleeps: the tests await the broker's log lines and
the clients' disconnects, with timeouts."""

from __future__ import annotations

import asyncio
import getpass
import json
import secrets
import stat
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from msgin5g_common.keys import Keys
from msgin5g_devstack.stack import HOST, Ports, Stack, StackConfig, mosquitto_binary
from msgin5g_registry.credentials import CredentialStore, mqtt_hash
from msgin5g_registry.credsync import (
    CredsyncSettings,
    Reloader,
    SyncResult,
    SyncState,
    follow,
    mosquitto_reloader,
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

    def client(self, username: str | None, password: str | None) -> aiomqtt.Client:
        return aiomqtt.Client(
            HOST,
            self.port,
            username=username,
            password=password,
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
    settings = CredsyncSettings(
        credsync_password_file=str(broker.password_file),
        credsync_interval=60,
        credsync_mosquitto_pid_file=str(pid_file),
        credsync_service_users=json.dumps(SERVICE_USERS),
    )
    issued = await broker.store.issue("ue-l")
    reloaded = broker.reloaded()
    stop = asyncio.Event()
    loop = asyncio.create_task(follow(broker.store, settings, stop))
    try:
        await asyncio.wait_for(reloaded, TIMEOUT)
        async with broker.client("ue-l", issued.mqtt_password) as device:
            gone = asyncio.create_task(until_disconnected(device))
            await broker.store.revoke("ue-l")
            await asyncio.wait_for(gone, TIMEOUT)
        await refused(broker.client("ue-l", issued.mqtt_password))
    finally:
        stop.set()
        await asyncio.wait_for(loop, TIMEOUT)
