"""Device credentials in the registry (credentials.py) against a real Redis: the HTTP API
(admin scope), what is stored and how, rotation with a grace period (an injected clock, no
sleeping), revocation and its pub/sub signal, and the cost of a check at scale."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from msgin5g_common.keys import Keys
from msgin5g_registry.credentials import (
    PSK_ALPHABET,
    PSK_LENGTH,
    CredentialStore,
    OscoreMaterial,
    load_kek,
    mqtt_hash,
    mqtt_hash_matches,
)
from msgin5g_registry.http_api import create_app
from msgin5g_registry.settings import RegistrySettings
from msgin5g_registry.store import RegistryStore

KEYS = Keys("m5g")
UE = "ue-1"
KEK = secrets.token_bytes(32)
KEK_B64 = base64.b64encode(KEK).decode()
ADMIN_TOKEN = "static-admin-token-0123456789"
AS_SECRET = "s3cret-of-app-one-0123456789"
GRACE = 600
PATH = f"/api/v1/ues/{UE}/credentials"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


class FakeClock:
    """Seconds since the epoch that only move when the test says so."""

    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def signing_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def settings(**overrides: Any) -> RegistrySettings:
    values: dict[str, Any] = {
        "auth_enabled": True,
        "admin_token": ADMIN_TOKEN,
        "auth_signing_key": signing_key_pem(),
        "auth_clients": json.dumps(
            {"clients": [{"clientId": "as-app-1", "clientSecret": AS_SECRET, "asSvcIds": ["as-1"]}]}
        ),
        "credentials_kek": KEK_B64,
        "credentials_grace": GRACE,
        "as_rate_limit": 0,
    }
    values.update(overrides)
    return RegistrySettings(**values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def creds(redis: Redis, clock: FakeClock) -> CredentialStore:
    return CredentialStore(redis, KEYS, KEK, grace=GRACE, clock=clock)


def make_app(redis: Redis, **overrides: Any) -> FastAPI:
    return create_app(RegistryStore(redis, KEYS), redis, settings=settings(**overrides))


@pytest_asyncio.fixture
async def http(redis: Redis, creds: CredentialStore) -> AsyncIterator[httpx.AsyncClient]:
    """The registry's HTTP API with auth on and the credential store on the fake clock."""
    app = make_app(redis)
    assert isinstance(app.state.credentials, CredentialStore)
    app.state.credentials = creds
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        yield client


async def issue(http: httpx.AsyncClient, status: int = 201) -> dict[str, Any]:
    response = await http.post(PATH, headers=ADMIN)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def secrets_of(body: dict[str, Any]) -> list[str]:
    return [body["psk"], body["mqttPassword"], body["oscore"]["masterSecret"]]


async def next_message(pubsub: PubSub) -> dict[str, Any]:
    """The next published message, within 5 s."""
    async with asyncio.timeout(5.0):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                return dict(message)


# ---------------------------------------------------------------------------------------------
# HTTP


async def test_create_returns_every_secret_once(http: httpx.AsyncClient) -> None:
    """Verifies that the first POST answers 201 with the PSK, the MQTT login and the OSCORE
    context, not to be cached, and that GET then shows metadata only."""
    response = await http.post(PATH, headers=ADMIN)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["ueSvcId"] == UE
    assert body["generation"] == 1
    assert body["pskIdentity"] == UE
    assert body["mqttUsername"] == UE
    assert body["graceUntil"] is None
    psk = body["psk"]
    assert len(psk) == PSK_LENGTH
    assert set(psk) <= set(PSK_ALPHABET)
    assert psk.isprintable()
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", body["mqttPassword"])
    oscore = body["oscore"]
    assert re.fullmatch(r"[0-9a-f]{32}", oscore["masterSecret"])
    assert re.fullmatch(r"[0-9a-f]{16}", oscore["masterSalt"])
    assert re.fullmatch(r"[0-9a-f]{14}", oscore["senderId"])
    assert oscore["recipientId"] == "01"
    assert oscore["aeadAlgorithm"] == "AES-CCM-16-64-128"
    assert oscore["hkdfAlgorithm"] == "HKDF-SHA-256"

    info = await http.get(PATH, headers=ADMIN)
    assert info.status_code == 200, info.text
    doc = info.json()
    assert set(doc) == {"ueSvcId", "generation", "createdAt", "rotatedAt", "graceUntil"}
    assert doc["generation"] == 1
    assert doc["rotatedAt"] is None
    for secret in secrets_of(body):
        assert secret not in info.text


async def test_the_store_verifies_the_issued_secrets(
    http: httpx.AsyncClient, creds: CredentialStore
) -> None:
    """Verifies that each check accepts the current secret and refuses a wrong one."""
    body = await issue(http)
    assert await creds.verify_psk(UE) == body["psk"].encode()
    assert await creds.psk_keys(UE) == [body["psk"].encode()]
    assert await creds.verify_psk("ue-other") is None
    assert await creds.verify_mqtt_password(UE, body["mqttPassword"])
    assert not await creds.verify_mqtt_password(UE, body["mqttPassword"][:-1] + "x")
    assert not await creds.verify_mqtt_password(UE, "")
    assert not await creds.verify_mqtt_password("ue-other", body["mqttPassword"])

    kid = bytes.fromhex(body["oscore"]["senderId"])
    context = await creds.oscore_context(kid)
    assert context is not None
    assert context.ue_svc_id == UE
    assert context.generation == 1
    assert context.current
    assert context.material.to_json() == {
        k: v for k, v in body["oscore"].items() if not k.endswith("Algorithm")
    }
    assert await creds.oscore_context(b"\x00" * 7) is None


async def test_rotation_keeps_the_old_secrets_for_the_grace_period_only(
    http: httpx.AsyncClient, creds: CredentialStore, clock: FakeClock
) -> None:
    """Verifies that a second POST answers 200 with new secrets, that the previous ones work
    until graceUntil and not after, and that the new ones keep working."""
    old = await issue(http)
    clock.advance(10)
    new = await issue(http, 200)
    assert new["generation"] == 2
    assert new["graceUntil"] is not None
    assert secrets_of(new) != secrets_of(old)
    old_kid = bytes.fromhex(old["oscore"]["senderId"])
    new_kid = bytes.fromhex(new["oscore"]["senderId"])
    assert old_kid != new_kid

    info = (await http.get(PATH, headers=ADMIN)).json()
    assert info["generation"] == 2
    assert info["rotatedAt"] is not None
    assert info["graceUntil"] == new["graceUntil"]

    # Within the grace period: both.
    clock.advance(GRACE - 1)
    assert await creds.verify_psk(UE) == new["psk"].encode()
    assert await creds.psk_keys(UE) == [new["psk"].encode(), old["psk"].encode()]
    assert await creds.verify_mqtt_password(UE, new["mqttPassword"])
    assert await creds.verify_mqtt_password(UE, old["mqttPassword"])
    before = await creds.oscore_context(old_kid)
    assert before is not None
    assert not before.current
    assert before.material.master_secret.hex() == old["oscore"]["masterSecret"]

    # After it: the new ones only.
    clock.advance(2)
    assert await creds.psk_keys(UE) == [new["psk"].encode()]
    assert not await creds.verify_mqtt_password(UE, old["mqttPassword"])
    assert await creds.verify_mqtt_password(UE, new["mqttPassword"])
    assert await creds.oscore_context(old_kid) is None
    after = await creds.oscore_context(new_kid)
    assert after is not None
    assert after.current


async def test_a_third_rotation_drops_the_oldest_secrets(
    http: httpx.AsyncClient, creds: CredentialStore, redis: Redis
) -> None:
    """Verifies that only the one previous generation survives a rotation."""
    first = await issue(http)
    await issue(http, 200)
    third = await issue(http, 200)
    assert third["generation"] == 3
    assert not await creds.verify_mqtt_password(UE, first["mqttPassword"])
    assert first["psk"].encode() not in await creds.psk_keys(UE)
    assert not await redis.exists(KEYS.oscore_kid(first["oscore"]["senderId"]))
    assert await creds.oscore_context(bytes.fromhex(first["oscore"]["senderId"])) is None


async def test_delete_revokes_at_once_and_publishes_it(
    http: httpx.AsyncClient, creds: CredentialStore, redis: Redis
) -> None:
    """Verifies that DELETE answers 204, that every check refuses at once (the secrets of
    the previous generation too), that the ueSvcId is published on the revocation channel and
    that the generation keeps going up."""
    old = await issue(http)
    body = await issue(http, 200)
    pubsub = redis.pubsub()
    await pubsub.subscribe(creds.revoked_channel)
    # The confirmation: the subscription is live before anything is published.
    confirmation = await pubsub.get_message(timeout=5.0)
    assert confirmation is not None
    assert confirmation["type"] == "subscribe"
    try:
        response = await http.delete(PATH, headers=ADMIN)
        assert response.status_code == 204, response.text
        message = await next_message(pubsub)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert message["channel"] == b"m5g:credentials:revoked"
    assert message["data"] == UE.encode()

    assert await creds.verify_psk(UE) is None
    assert await creds.psk_keys(UE) == []
    for password in (body["mqttPassword"], old["mqttPassword"]):
        assert not await creds.verify_mqtt_password(UE, password)
    for doc in (body, old):
        assert await creds.oscore_context(bytes.fromhex(doc["oscore"]["senderId"])) is None
    assert await creds.generation(UE) is None

    missing = await http.get(PATH, headers=ADMIN)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    again = await http.delete(PATH, headers=ADMIN)
    assert again.status_code == 404

    # Re-created: a later generation, so a session of the revoked one cannot pass for it.
    fresh = await issue(http, 201)
    assert fresh["generation"] == 4
    assert await creds.generation(UE) == 4


async def test_no_secret_is_stored_in_clear(http: httpx.AsyncClient, redis: Redis) -> None:
    """Verifies that no Redis value holds the PSK, the MQTT password or the OSCORE master
    secret in clear (raw, hex or base64), before and after a rotation."""
    issued = [await issue(http), await issue(http, 200)]
    forbidden: list[bytes] = []
    for body in issued:
        for secret in secrets_of(body):
            forbidden += [secret.encode(), base64.b64encode(secret.encode())]
        master = bytes.fromhex(body["oscore"]["masterSecret"])
        forbidden += [master, base64.b64encode(master)]

    stored: list[Any] = []
    keys = [key async for key in redis.scan_iter(match="*")]
    assert KEYS.credentials(UE).encode() in keys
    for key in keys:
        kind = await redis.type(key)
        if kind == b"hash":
            fields: Any = await redis.hgetall(key)
            for field, value in fields.items():
                stored += [field, value]
        elif kind == b"string":
            stored.append(await redis.get(key))
        elif kind == b"zset":
            stored += await redis.zrange(key, 0, -1)
        else:
            pytest.fail(f"unexpected key {key!r} of type {kind!r}")
    for value in stored:
        assert isinstance(value, bytes)
        for needle in forbidden:
            assert needle not in value


async def test_changes_are_listed_by_version(creds: CredentialStore) -> None:
    """Verifies that changed_since lists each UE once, at the version of its last change."""
    await creds.issue("ue-a")
    await creds.issue("ue-b")
    await creds.issue("ue-a")
    assert await creds.changed_since(0) == [("ue-b", 2), ("ue-a", 3)]
    await creds.revoke("ue-b")
    assert await creds.changed_since(3) == [("ue-b", 4)]
    assert await creds.changed_since(4) == []
    assert await creds.changed_since(0, limit=1) == [("ue-a", 3)]
    assert len(await creds.mqtt_password_hashes("ue-a")) == 2
    assert await creds.mqtt_password_hashes("ue-b") == []


async def test_bad_ids_are_refused(http: httpx.AsyncClient) -> None:
    for method in ("POST", "GET", "DELETE"):
        response = await http.request(method, "/api/v1/ues/a%20b/credentials", headers=ADMIN)
        assert response.status_code == 400, (method, response.text)
        assert response.json()["cause"] == "INVALID_REQUEST"


async def test_without_a_kek_the_endpoints_answer_503(redis: Redis) -> None:
    """Verifies that without a key-encryption key nothing is stored and every endpoint
    answers 503 ProblemDetails saying what to set."""
    app = make_app(redis, credentials_kek="")
    assert app.state.credentials is None
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        for method in ("POST", "GET", "DELETE"):
            response = await client.request(method, PATH, headers=ADMIN)
            assert response.status_code == 503, (method, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert "MSGIN5G_CREDENTIALS_KEK" in response.json()["detail"]
    assert await redis.dbsize() == 0


async def test_the_admin_scope_is_required(http: httpx.AsyncClient, redis: Redis) -> None:
    """Verifies 401 without a token and 403 with an AS client's token."""
    for method in ("POST", "GET", "DELETE"):
        response = await http.request(method, PATH)
        assert response.status_code == 401, (method, response.text)
    token = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=("as-app-1", AS_SECRET),
    )
    assert token.status_code == 200, token.text
    as_auth = {"authorization": f"Bearer {token.json()['access_token']}"}
    for method in ("POST", "GET", "DELETE"):
        response = await http.request(method, PATH, headers=as_auth)
        assert response.status_code == 403, (method, response.text)
    assert not await redis.exists(KEYS.credentials(UE))


def test_the_openapi_document_declares_the_routes(redis: Redis) -> None:
    schema = make_app(redis).openapi()
    operations = schema["paths"]["/api/v1/ues/{ueSvcId}/credentials"]
    assert set(operations) == {"post", "get", "delete"}
    post = operations["post"]["responses"]
    assert {"200", "201", "400", "401", "403", "503"} <= set(post)
    assert "application/problem+json" in post["503"]["content"]
    assert "404" in operations["delete"]["responses"]
    assert operations["post"]["security"]


# ---------------------------------------------------------------------------------------------
# Scale and cost


async def test_two_thousand_devices_with_bounded_lookups(
    creds: CredentialStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verifies that 2,000 devices live in two keys each plus two shared ones, and that each
    check costs a fixed number of Redis commands (1 for PSK and MQTT, 2 for OSCORE), counted
    at the client, not timed."""
    count = 2000
    issued = {}
    for i in range(count):
        issued[f"dev-{i}"] = await creds.issue(f"dev-{i}")
    assert await redis.dbsize() == 2 * count + 2

    commands: list[str] = []
    execute: Callable[..., Awaitable[Any]] = redis.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        commands.append(str(args[0]))
        return await execute(*args, **options)

    monkeypatch.setattr(redis, "execute_command", counting)

    async def cost(check: Callable[[], Awaitable[object]]) -> int:
        commands.clear()
        await check()
        return len(commands)

    for ue in ("dev-0", "dev-999", "dev-1999"):
        got = issued[ue]
        assert await cost(lambda: creds.verify_psk(ue)) == 1  # noqa: B023
        assert await creds.verify_psk(ue) == got.psk.encode()
        assert await cost(lambda: creds.verify_mqtt_password(ue, got.mqtt_password)) == 1  # noqa: B023
        kid = got.oscore.sender_id
        assert await cost(lambda: creds.oscore_context(kid)) == 2  # noqa: B023
    assert await cost(lambda: creds.verify_mqtt_password("dev-unknown", "x")) == 1
    monkeypatch.undo()

    for ue, got in issued.items():
        assert await creds.verify_mqtt_password(ue, got.mqtt_password), ue
        assert await creds.verify_psk(ue) == got.psk.encode(), ue


# ---------------------------------------------------------------------------------------------
# Pieces


def test_kek_settings(tmp_path: Path) -> None:
    assert load_kek(RegistrySettings(credentials_kek="")) is None
    assert load_kek(RegistrySettings(credentials_kek=KEK_B64)) == KEK
    path = tmp_path / "kek"
    path.write_text(KEK_B64 + "\n")
    assert load_kek(RegistrySettings(credentials_kek_file=str(path))) == KEK
    for bad in (
        RegistrySettings(credentials_kek="not base64!"),
        RegistrySettings(credentials_kek_file=str(tmp_path / "missing")),
    ):
        with pytest.raises(ValueError, match="MSGIN5G_CREDENTIALS_KEK"):
            load_kek(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        load_kek(RegistrySettings(credentials_kek=base64.b64encode(b"short").decode()))
    with pytest.raises(ValueError, match="not both"):
        load_kek(RegistrySettings(credentials_kek=KEK_B64, credentials_kek_file=str(path)))


def test_mqtt_hash_is_mosquittos_pbkdf2_form() -> None:
    hashed = mqtt_hash("secret-password")
    prefix, iterations, salt, digest = hashed.split("$")[1:]
    assert prefix == "7"
    assert int(iterations) >= 1
    assert len(base64.b64decode(salt)) == 12
    assert len(base64.b64decode(digest)) == 64
    assert mqtt_hash_matches(hashed, "secret-password")
    assert not mqtt_hash_matches(hashed, "secret-passwore")
    assert not mqtt_hash_matches("$6$abc$def", "secret-password")


def test_psk_alphabet_is_unambiguous_and_printable() -> None:
    assert len(set(PSK_ALPHABET)) == len(PSK_ALPHABET) == 56
    assert not set(PSK_ALPHABET) & set("0O1lIo")
    assert set(PSK_ALPHABET) <= set(string.ascii_letters + string.digits)
    material = OscoreMaterial(b"s" * 16, b"t" * 8, b"\x02" * 7, b"\x01")
    assert OscoreMaterial.from_json(material.to_json()) == material
