"""The registry against a real Redis: its store, its gRPC RegistryService through a real
channel, and its HTTP API through an in-process ASGI client."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import grpc
import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import registry_pb2 as rpb
from msgin5g.v1 import registry_pb2_grpc as rgrpc
from msgin5g_common.grpcutil import GrpcServer, channel
from msgin5g_common.keys import Keys
from msgin5g_registry.grpc_api import RegistryServicer
from msgin5g_registry.http_api import create_app
from msgin5g_registry.settings import RegistrySettings
from msgin5g_registry.store import RegistryStore

KEYS = Keys("m5g")
MIN_LIFETIME = 60
MAX_LIFETIME = 3600
# How far a TTL may have run down between writing a key and reading its PTTL.
TTL_SLACK_MS = 5_000
UE = "ue-1"


def now_ms() -> int:
    return int(time.time() * 1000)


def assert_ttl_close(pttl: int, lifetime_s: int) -> None:
    assert lifetime_s * 1000 - TTL_SLACK_MS < pttl <= lifetime_s * 1000


@pytest.fixture
def store(redis: Redis) -> RegistryStore:
    return RegistryStore(redis, KEYS)


# ---------------------------------------------------------------------------------------------
# RegistryStore


async def test_register_writes_registration_hash_with_lifetime_ttl(
    store: RegistryStore, redis: Redis
) -> None:
    """Verifies that a registration is one hash with every field, living exactly its lifetime."""
    before = now_ms()
    reg = await store.register(
        UE,
        transport="coap",
        lifetime=600,
        bc_area="area-7",
        delivery_mode="push",
        max_seg_size=512,
    )
    after = now_ms()

    fields = await redis.hgetall(KEYS.ue_reg(UE))
    assert fields == {
        b"transport": b"coap",
        b"lifetime": b"600",
        b"registeredAt": str(reg.registered_at_ms).encode(),
        b"expiresAt": str(reg.expires_at_ms).encode(),
        b"bcArea": b"area-7",
        b"deliveryMode": b"push",
        b"maxSegSize": b"512",
    }
    assert before <= reg.registered_at_ms <= after
    assert reg.expires_at_ms == reg.registered_at_ms + 600_000
    assert_ttl_close(await redis.pttl(KEYS.ue_reg(UE)), 600)
    # Registering makes the UE known for good: the known key has no TTL.
    assert await redis.pttl(KEYS.ue_known(UE)) == -1


async def test_reregistration_replaces_fields_and_refreshes_ttl(
    store: RegistryStore, redis: Redis
) -> None:
    """Verifies that a refresh replaces the whole registration and restarts its lifetime."""
    await store.register(
        UE, transport="coap", lifetime=3600, bc_area="area-7", delivery_mode="push", max_seg_size=64
    )
    known_since = await redis.get(KEYS.ue_known(UE))
    # A field no registration writes, and a lifetime almost run out.
    await redis.hset(KEYS.ue_reg(UE), "stale", "1")
    await redis.pexpire(KEYS.ue_reg(UE), 10_000)
    assert 0 < await redis.pttl(KEYS.ue_reg(UE)) <= 10_000

    reg = await store.register(UE, transport="mqtt", lifetime=120)

    fields = await redis.hgetall(KEYS.ue_reg(UE))
    assert b"stale" not in fields
    assert fields[b"transport"] == b"mqtt"
    assert fields[b"lifetime"] == b"120"
    assert fields[b"bcArea"] == b""
    assert fields[b"deliveryMode"] == b"observe"
    assert fields[b"maxSegSize"] == b"0"
    assert_ttl_close(await redis.pttl(KEYS.ue_reg(UE)), 120)
    record = await store.get(UE)
    assert record.registration == reg
    assert record.registration is not None
    assert record.registration.max_seg_size is None
    # "Known since" is the first time only.
    assert await redis.get(KEYS.ue_known(UE)) == known_since


async def test_deregistration_keeps_the_ue_known(store: RegistryStore, redis: Redis) -> None:
    """Verifies that deregistering ends the registration but the UE stays known."""
    await store.register(UE, transport="coap", lifetime=600)

    assert await store.deregister(UE) is True

    record = await store.get(UE)
    assert record.known is True
    assert record.registration is None
    assert await redis.exists(KEYS.ue_reg(UE)) == 0
    assert await redis.exists(KEYS.ue_known(UE)) == 1
    assert await store.deregister(UE) is False


async def test_expired_registration_leaves_the_ue_known(store: RegistryStore, redis: Redis) -> None:
    """Verifies that when the registration's TTL runs out the UE is known but not registered."""
    await store.register(UE, transport="mqtt", lifetime=600)
    await redis.delete(KEYS.ue_reg(UE))  # what the TTL does at expiry

    record = await store.get(UE)
    assert record.known is True
    assert record.registration is None


async def test_provision_makes_a_ue_known_once(store: RegistryStore, redis: Redis) -> None:
    """Verifies that provisioning makes a UE known without registering it, and reports
    whether it was known before."""
    assert await store.provision(UE) is True
    assert await store.provision(UE) is False

    record = await store.get(UE)
    assert record.known is True
    assert record.registration is None
    assert await redis.pttl(KEYS.ue_known(UE)) == -1
    assert await redis.exists(KEYS.ue_reg(UE)) == 0


async def test_provision_of_a_registered_ue_reports_it_known(store: RegistryStore) -> None:
    """Verifies that a UE that registered once counts as provisioned already."""
    await store.register(UE, transport="coap", lifetime=600)
    assert await store.provision(UE) is False


async def test_get_of_an_unknown_ue_reports_neither_known_nor_registered(
    store: RegistryStore, redis: Redis
) -> None:
    """Verifies that looking up a UE never seen writes nothing and reports it unknown."""
    record = await store.get("ue-unknown")

    assert record.ue_svc_id == "ue-unknown"
    assert record.known is False
    assert record.registration is None
    assert await redis.dbsize() == 0


# ---------------------------------------------------------------------------------------------
# RegistryService over gRPC


@pytest.fixture
def settings() -> RegistrySettings:
    return RegistrySettings(min_lifetime=MIN_LIFETIME, max_lifetime=MAX_LIFETIME)


@pytest_asyncio.fixture
async def registry_stub(
    store: RegistryStore, settings: RegistrySettings
) -> AsyncIterator[rgrpc.RegistryServiceAsyncStub]:
    """RegistryService on a real grpc.aio server on loopback, wired as app.py wires it."""
    server = GrpcServer(["msgin5g.v1.RegistryService"])
    server.add(
        lambda s: rgrpc.add_RegistryServiceServicer_to_server(RegistryServicer(store, settings), s)
    )
    port = await server.start("127.0.0.1:0")
    ch = channel(f"127.0.0.1:{port}")
    try:
        yield rgrpc.RegistryServiceStub(ch)
    finally:
        await ch.close()
        await server.stop(grace=0)


def coap_edge() -> pb.EdgeRef:
    return pb.EdgeRef(kind=pb.EDGE_KIND_COAP, edge_id="coap-edge-1")


async def test_grpc_register_stores_the_registration_and_get_ue_reports_it(
    registry_stub: rgrpc.RegistryServiceAsyncStub, redis: Redis
) -> None:
    """Verifies that Register over gRPC stores every field and GetUe reads them back."""
    before = now_ms()
    reply = await registry_stub.Register(
        rpb.RegisterRequest(
            ue_svc_id=UE,
            lifetime=120,
            max_seg_size=256,
            bc_area="area-1",
            delivery_mode=pb.DELIVERY_MODE_PUSH,
            edge=coap_edge(),
        ),
        timeout=5,
    )
    after = now_ms()

    assert reply.ue_svc_id == UE
    assert reply.lifetime == 120
    assert before + 120_000 <= reply.expires_at.ToMilliseconds() <= after + 120_000
    assert_ttl_close(await redis.pttl(KEYS.ue_reg(UE)), 120)

    info = await registry_stub.GetUe(rpb.GetUeRequest(ue_svc_id=UE), timeout=5)
    assert info.ue_svc_id == UE
    assert info.known is True
    assert info.registered is True
    assert info.transport == pb.EDGE_KIND_COAP
    assert info.lifetime == 120
    assert info.expires_at == reply.expires_at
    assert info.expires_at.ToMilliseconds() - info.registered_at.ToMilliseconds() == 120_000
    assert info.bc_area == "area-1"
    assert info.delivery_mode == pb.DELIVERY_MODE_PUSH
    assert info.HasField("max_seg_size")
    assert info.max_seg_size == 256


async def test_grpc_register_over_mqtt_defaults_to_observe_without_max_seg_size(
    registry_stub: rgrpc.RegistryServiceAsyncStub,
) -> None:
    """Verifies that an MQTT registration without options reads back with the defaults."""
    await registry_stub.Register(
        rpb.RegisterRequest(
            ue_svc_id=UE, lifetime=600, edge=pb.EdgeRef(kind=pb.EDGE_KIND_MQTT, edge_id="m-1")
        ),
        timeout=5,
    )

    info = await registry_stub.GetUe(rpb.GetUeRequest(ue_svc_id=UE), timeout=5)
    assert info.transport == pb.EDGE_KIND_MQTT
    assert info.delivery_mode == pb.DELIVERY_MODE_OBSERVE
    assert not info.HasField("max_seg_size")
    assert info.bc_area == ""


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        (1, MIN_LIFETIME),
        (MIN_LIFETIME - 1, MIN_LIFETIME),
        (MIN_LIFETIME, MIN_LIFETIME),
        (MAX_LIFETIME, MAX_LIFETIME),
        (MAX_LIFETIME + 1, MAX_LIFETIME),
        (2**32 - 1, MAX_LIFETIME),
        (0, MAX_LIFETIME),  # 0 means the default (86400 s), which is above this maximum
    ],
)
async def test_grpc_register_clamps_the_lifetime_to_the_configured_bounds(
    registry_stub: rgrpc.RegistryServiceAsyncStub, redis: Redis, requested: int, granted: int
) -> None:
    """Verifies that the lifetime granted, stored and applied as TTL lies within
    [min_lifetime, max_lifetime]."""
    reply = await registry_stub.Register(
        rpb.RegisterRequest(ue_svc_id=UE, lifetime=requested, edge=coap_edge()), timeout=5
    )

    assert reply.lifetime == granted
    assert await redis.hget(KEYS.ue_reg(UE), "lifetime") == str(granted).encode()
    assert_ttl_close(await redis.pttl(KEYS.ue_reg(UE)), granted)


async def test_grpc_register_uses_the_default_lifetime_when_none_is_given(
    store: RegistryStore, redis: Redis
) -> None:
    """Verifies that a request without lifetime gets 86400 s when the bounds allow it."""
    wide = RegistrySettings(min_lifetime=30, max_lifetime=30 * 86400)
    server = GrpcServer(["msgin5g.v1.RegistryService"])
    server.add(
        lambda s: rgrpc.add_RegistryServiceServicer_to_server(RegistryServicer(store, wide), s)
    )
    port = await server.start("127.0.0.1:0")
    ch = channel(f"127.0.0.1:{port}")
    try:
        reply = await rgrpc.RegistryServiceStub(ch).Register(
            rpb.RegisterRequest(ue_svc_id=UE, edge=coap_edge()), timeout=5
        )
    finally:
        await ch.close()
        await server.stop(grace=0)

    assert reply.lifetime == 86400
    assert_ttl_close(await redis.pttl(KEYS.ue_reg(UE)), 86400)


@pytest.mark.parametrize(
    "edge",
    [None, pb.EdgeRef(kind=pb.EDGE_KIND_UNSPECIFIED, edge_id="coap-edge-1")],
    ids=["no-edge", "unspecified-kind"],
)
async def test_grpc_register_without_edge_kind_is_invalid_argument(
    registry_stub: rgrpc.RegistryServiceAsyncStub, redis: Redis, edge: pb.EdgeRef | None
) -> None:
    """Verifies that a registration that names no edge kind is refused and stores nothing."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await registry_stub.Register(
            rpb.RegisterRequest(ue_svc_id=UE, lifetime=600, edge=edge), timeout=5
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "edge.kind" in (caught.value.details() or "")
    assert await redis.dbsize() == 0


async def test_grpc_deregister_reports_whether_the_ue_was_registered(
    registry_stub: rgrpc.RegistryServiceAsyncStub,
) -> None:
    """Verifies that Deregister ends a registration once and the UE stays known."""
    await registry_stub.Register(
        rpb.RegisterRequest(ue_svc_id=UE, lifetime=600, edge=coap_edge()), timeout=5
    )

    first = await registry_stub.Deregister(rpb.DeregisterRequest(ue_svc_id=UE), timeout=5)
    second = await registry_stub.Deregister(rpb.DeregisterRequest(ue_svc_id=UE), timeout=5)

    assert first.was_registered is True
    assert second.was_registered is False
    info = await registry_stub.GetUe(rpb.GetUeRequest(ue_svc_id=UE), timeout=5)
    assert info.known is True
    assert info.registered is False
    assert info.transport == pb.EDGE_KIND_UNSPECIFIED
    assert not info.HasField("expires_at")


async def test_grpc_get_ue_of_an_unknown_ue(
    registry_stub: rgrpc.RegistryServiceAsyncStub,
) -> None:
    """Verifies that GetUe answers (not an error) for a UE never seen: unknown, unregistered."""
    info = await registry_stub.GetUe(rpb.GetUeRequest(ue_svc_id="ue-unknown"), timeout=5)

    assert info.ue_svc_id == "ue-unknown"
    assert info.known is False
    assert info.registered is False


# ---------------------------------------------------------------------------------------------
# HTTP API


@pytest_asyncio.fixture
async def http(store: RegistryStore, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, redis)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://registry"
    ) as client:
        yield client


def assert_problem(response: httpx.Response, status: int, cause: str | None) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert body.get("cause") == cause
    return body


async def test_http_get_of_an_unknown_ue_is_404_unknown_recipient(
    http: httpx.AsyncClient,
) -> None:
    """Verifies that an unknown UE is a 404 ProblemDetails with cause UNKNOWN_RECIPIENT."""
    response = await http.get("/api/v1/ues/ue-unknown")

    body = assert_problem(response, 404, "UNKNOWN_RECIPIENT")
    assert body["instance"] == "http://registry/api/v1/ues/ue-unknown"
    assert "ue-unknown" in str(body["detail"])


@pytest.mark.parametrize(
    "path_id",
    ["bad%20id", "a" * 129, "ue%7Bx%7D", "ue%2A"],
    ids=["space", "129-chars", "braces", "asterisk"],
)
@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_http_invalid_ue_id_is_400_invalid_request(
    http: httpx.AsyncClient, redis: Redis, method: str, path_id: str
) -> None:
    """Verifies that an id outside 1..128 characters of [A-Za-z0-9._~@:+-] is a 400
    ProblemDetails and touches nothing."""
    response = await http.request(method, f"/api/v1/ues/{path_id}")

    body = assert_problem(response, 400, "INVALID_REQUEST")
    assert "ueSvcId" in str(body["detail"])
    assert await redis.dbsize() == 0


async def test_http_longest_valid_ue_id_is_accepted(http: httpx.AsyncClient) -> None:
    """Verifies that 128 characters (the maximum) and every allowed punctuation pass."""
    longest = "a" * 128
    odd = "A.b_c~d@e:f+g-0"

    assert (await http.put(f"/api/v1/ues/{longest}")).status_code == 201
    assert (await http.get(f"/api/v1/ues/{longest}")).status_code == 200
    assert (await http.put(f"/api/v1/ues/{odd}")).status_code == 201
    assert (await http.get(f"/api/v1/ues/{odd}")).json()["ueSvcId"] == odd


async def test_http_put_provisions_201_then_200(http: httpx.AsyncClient, redis: Redis) -> None:
    """Verifies that PUT makes a UE known (201 the first time, 200 after) without
    registering it."""
    first = await http.put(f"/api/v1/ues/{UE}")
    second = await http.put(f"/api/v1/ues/{UE}")

    assert first.status_code == 201
    assert second.status_code == 200
    for response in (first, second):
        body = response.json()
        assert body["ueSvcId"] == UE
        assert body["known"] is True
        assert body["registered"] is False
        assert body["transport"] is None
    assert await redis.exists(KEYS.ue_known(UE)) == 1
    assert await redis.exists(KEYS.ue_reg(UE)) == 0
    got = await http.get(f"/api/v1/ues/{UE}")
    assert got.status_code == 200
    assert got.json()["registered"] is False


async def test_http_get_of_a_registered_ue_shows_the_registration(
    http: httpx.AsyncClient, store: RegistryStore
) -> None:
    """Verifies that GET shows transport, lifetime and the registration's times."""
    reg = await store.register(
        UE, transport="mqtt", lifetime=900, bc_area="area-2", max_seg_size=1024
    )

    response = await http.get(f"/api/v1/ues/{UE}")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["ueSvcId"] == UE
    assert body["known"] is True
    assert body["registered"] is True
    assert body["transport"] == "mqtt"
    assert body["lifetime"] == 900
    assert body["bcArea"] == "area-2"
    assert body["deliveryMode"] == "observe"
    assert body["maxSegSize"] == 1024
    expires = datetime.fromisoformat(body["expiresAt"])
    registered = datetime.fromisoformat(body["registeredAt"])
    assert expires.utcoffset() is not None  # an absolute time, not a local one
    assert round(expires.timestamp() * 1000) == reg.expires_at_ms
    assert round(registered.timestamp() * 1000) == reg.registered_at_ms


async def test_http_put_of_a_registered_ue_is_200_and_keeps_the_registration(
    http: httpx.AsyncClient, store: RegistryStore
) -> None:
    """Verifies that provisioning a registered UE changes nothing."""
    await store.register(UE, transport="coap", lifetime=900)

    response = await http.put(f"/api/v1/ues/{UE}")

    assert response.status_code == 200
    assert response.json()["registered"] is True
    assert response.json()["transport"] == "coap"


async def test_http_unknown_path_is_a_problem_document(http: httpx.AsyncClient) -> None:
    """Verifies that even routing errors come as ProblemDetails."""
    response = await http.get("/api/v1/nothing-here")

    assert_problem(response, 404, "RESOURCE_NOT_FOUND")


async def test_http_healthz_is_200(http: httpx.AsyncClient) -> None:
    """Verifies that liveness answers without asking Redis."""
    response = await http.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_http_readyz_is_200_while_redis_answers(http: httpx.AsyncClient) -> None:
    """Verifies that readiness reports ready when Redis answers."""
    response = await http.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused, and no other
    process can take it while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_http_readyz_is_503_problem_when_redis_is_unreachable(
    store: RegistryStore, closed_port: int
) -> None:
    """Verifies that readiness is a 503 ProblemDetails when Redis does not answer."""
    # No retries: the point is the answer, not redis-py's reconnect backoff.
    dead = Redis(host="127.0.0.1", port=closed_port, retry=Retry(NoBackoff(), 0))
    app = create_app(store, dead)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://registry"
        ) as client:
            response = await client.get("/readyz")
            live = await client.get("/healthz")
    finally:
        await dead.aclose()

    body = assert_problem(response, 503, "OVERLOADED")
    assert "redis" in str(body["detail"])
    assert body["instance"] == "http://registry/readyz"
    assert live.status_code == 200  # not ready is not dead


async def test_http_openapi_lists_the_ue_resource(http: httpx.AsyncClient) -> None:
    """Verifies that the OpenAPI document is served and describes the UE resource."""
    response = await http.get("/openapi.json")

    assert response.status_code == 200
    spec = response.json()
    assert spec["info"]["title"] == "MSGin5G registry"
    ue_path = spec["paths"]["/api/v1/ues/{ueSvcId}"]
    assert set(ue_path) >= {"get", "put"}
    assert "404" in ue_path["get"]["responses"]
    assert {"/healthz", "/readyz"} <= set(spec["paths"])
