"""OAuth2 client credentials of the registry's HTTP API (auth.py): the token endpoint, token
verification, scopes, the static admin token, key rotation, rate limiting and configuration.

Everything runs in process (httpx over ASGI) with an injected clock: no sockets, no sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from msgin5g_registry import problems
from msgin5g_registry.auth import (
    ADMIN_SCOPE,
    ASREG_SCOPE,
    AUDIENCE,
    DELIVERY_SCOPE,
    OAUTH2_SCHEME,
    TOPIC_SCOPE,
    AdminDep,
    AsRegistrationDep,
    Authenticator,
    ClientConfig,
    MsgDeliveryDep,
    Principal,
    TopicDep,
    install_openapi_security,
    jwk_thumbprint,
    load_signing_keys,
    parse_clients,
    require,
    token_router,
)
from msgin5g_registry.problems import ProblemError
from msgin5g_registry.settings import RegistrySettings

SECRET = "s3cret-of-app-one-0123456789"
ADMIN_SECRET = "s3cret-of-the-admin-client-42"
ADMIN_TOKEN = "static-admin-token-0123456789"
ISSUER = "msgin5g-registry"
FORM = {"content-type": "application/x-www-form-urlencoded"}

CLIENTS_DOC: dict[str, Any] = {
    "clients": [
        {"clientId": "as-app-1", "clientSecret": SECRET, "asSvcIds": ["as-1", "as-2"]},
        {
            "clientId": "as-reg-only",
            "clientSecret": SECRET,
            "asSvcIds": ["as-3"],
            "scopes": [ASREG_SCOPE],
        },
        {"clientId": "ops", "clientSecret": ADMIN_SECRET, "scopes": [ADMIN_SCOPE]},
    ]
}


class FakeClock:
    """Seconds since the epoch that only move when the test says so."""

    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(*keys: ec.EllipticCurvePrivateKey) -> str:
    return "".join(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        for key in keys
    )


def clients(doc: dict[str, Any] | None = None) -> list[ClientConfig]:
    return parse_clients(json.dumps(doc or CLIENTS_DOC), "test")


def basic(client_id: str, secret: str) -> dict[str, str]:
    value = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"authorization": f"Basic {value}"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def make_app(auth: Authenticator) -> FastAPI:
    """An app as the registry mounts it, with one protected route per scope."""
    app = FastAPI()
    problems.install(app)
    app.include_router(token_router())
    install_openapi_security(app)
    app.state.auth = auth

    @app.get("/admin")
    async def admin(principal: AdminDep) -> dict[str, Any]:
        return {"clientId": principal.client_id}

    @app.get("/asreg/{as_svc_id}")
    async def asreg(as_svc_id: str, principal: AsRegistrationDep) -> dict[str, Any]:
        if not principal.may_act_as(as_svc_id):
            raise ProblemError(403, f"may not act as {as_svc_id}", "NOT_AUTHORIZED")
        return {"clientId": principal.client_id, "asSvcId": as_svc_id}

    @app.get("/delivery")
    async def delivery(principal: MsgDeliveryDep) -> dict[str, Any]:
        return {"clientId": principal.client_id}

    @app.get("/topics")
    async def topics(principal: TopicDep) -> dict[str, Any]:
        return {"clientId": principal.client_id}

    return app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return new_key()


AuthFactory = Callable[..., Authenticator]


@pytest.fixture
def make_auth(clock: FakeClock, key: ec.EllipticCurvePrivateKey) -> AuthFactory:
    def build(**overrides: Any) -> Authenticator:
        options: dict[str, Any] = {
            "clients": clients(),
            "signing_keys": [key],
            "admin_token": ADMIN_TOKEN,
            "issuer": ISSUER,
            "token_ttl": 300,
            "rate_limit": 0.0,
            "clock": clock,
            "monotonic": clock,
        }
        options.update(overrides)
        return Authenticator(**options)

    return build


@pytest.fixture
def auth(make_auth: AuthFactory) -> Authenticator:
    return make_auth()


async def client_for(auth: Authenticator) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=make_app(auth))
    return httpx.AsyncClient(transport=transport, base_url="http://registry")


@pytest.fixture
async def http(auth: Authenticator) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(auth) as client:
        yield client


async def get_token(
    http: httpx.AsyncClient, client_id: str = "as-app-1", secret: str = SECRET, **form: str
) -> str:
    response = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", **form},
        headers=basic(client_id, secret),
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def craft(key: ec.EllipticCurvePrivateKey, clock: FakeClock, **claims: Any) -> str:
    """A token as the registry would issue it, with some claims overridden."""
    now = int(clock())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "as-app-1",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "j-1",
        "scope": f"{ASREG_SCOPE} {DELIVERY_SCOPE}",
        "asSvcIds": ["as-1"],
    }
    body.update(claims)
    kid = jwk_thumbprint(key.public_key())
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid})


# --- the token endpoint -----------------------------------------------------------------------


async def test_token_by_basic(http: httpx.AsyncClient, key: ec.EllipticCurvePrivateKey) -> None:
    response = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers=basic("as-app-1", SECRET),
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert set(body["scope"].split()) == {ASREG_SCOPE, DELIVERY_SCOPE, TOPIC_SCOPE}

    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256"
    assert header["kid"] == jwk_thumbprint(key.public_key())
    claims = jwt.decode(
        body["access_token"],
        key.public_key(),
        algorithms=["ES256"],
        audience=AUDIENCE,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert claims["sub"] == "as-app-1"
    assert claims["iss"] == ISSUER
    assert claims["asSvcIds"] == ["as-1", "as-2"]
    assert claims["exp"] - claims["iat"] == 300
    assert {"nbf", "jti"} <= claims.keys()


async def test_token_by_form_fields(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "as-app-1",
            "client_secret": SECRET,
            "scope": ASREG_SCOPE,
        },
    )
    assert response.status_code == 200
    assert response.json()["scope"] == ASREG_SCOPE


async def test_basic_credentials_are_form_decoded(make_auth: AuthFactory) -> None:
    # RFC 6749 2.3.1: id and secret are form-encoded before base64; the raw form works too.
    odd = "with space+plus%-0123456789"
    doc = {"clients": [{"clientId": "odd", "clientSecret": odd, "asSvcIds": ["as-9"]}]}
    async with await client_for(make_auth(clients=clients(doc))) as http:
        encoded = "with+space%2Bplus%25-0123456789"
        assert await get_token(http, "odd", encoded)
        assert await get_token(http, "odd", odd)


async def test_wrong_secret_is_invalid_client(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers=basic("as-app-1", "not-the-secret-at-all"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"] == 'Basic realm="msgin5g"'
    assert "application/json" in response.headers["content-type"]


@pytest.mark.parametrize(
    ("headers", "form"),
    [
        (basic("nobody", SECRET), {}),
        ({}, {}),
        ({"authorization": "Bearer abc"}, {}),
        ({"authorization": "Basic !!!"}, {}),
        ({}, {"client_id": "as-app-1"}),
    ],
    ids=["unknown-client", "no-credentials", "not-basic", "bad-base64", "no-secret"],
)
async def test_client_authentication_failures(
    http: httpx.AsyncClient, headers: dict[str, str], form: dict[str, str]
) -> None:
    response = await http.post(
        "/oauth2/token", data={"grant_type": "client_credentials", **form}, headers=headers
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_unknown_grant_type(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/oauth2/token", data={"grant_type": "password"}, headers=basic("as-app-1", SECRET)
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"scope=x", {**FORM, **basic("as-app-1", SECRET)}),
        (b"grant_type=client_credentials", {"content-type": "application/json"}),
        (b"grant_type=a&grant_type=b", {**FORM, **basic("as-app-1", SECRET)}),
        (
            b"grant_type=client_credentials&client_secret=" + SECRET.encode(),
            {**FORM, **basic("as-app-1", SECRET)},
        ),
        (b"grant_type=client_credentials&" + b"x" * 9000, FORM),
    ],
    ids=["no-grant-type", "json", "repeated", "two-methods", "too-large"],
)
async def test_invalid_request(
    http: httpx.AsyncClient, content: bytes, headers: dict[str, str]
) -> None:
    response = await http.post("/oauth2/token", content=content, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_scope_not_granted(http: httpx.AsyncClient) -> None:
    for scope in (ADMIN_SCOPE, f"{ASREG_SCOPE} no-such-scope"):
        response = await http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "scope": scope},
            headers=basic("as-app-1", SECRET),
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_scope"


async def test_jwks_lists_every_key(make_auth: AuthFactory) -> None:
    first, second = new_key(), new_key()
    async with await client_for(make_auth(signing_keys=[first, second])) as http:
        response = await http.get("/oauth2/jwks")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert [k["kid"] for k in keys] == [
        jwk_thumbprint(first.public_key()),
        jwk_thumbprint(second.public_key()),
    ]
    for jwk, private in zip(keys, (first, second), strict=True):
        assert jwk["kty"] == "EC"
        assert jwk["crv"] == "P-256"
        assert jwk["alg"] == "ES256"
        assert "d" not in jwk
        public = jwt.PyJWK(jwk).key
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.public_numbers() == private.public_key().public_numbers()


def test_thumbprint_is_rfc7638() -> None:
    # Independent of the module's JWK code: PyJWT's JWK of the key, required members only.
    key = new_key().public_key()
    full = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    canonical = json.dumps({k: full[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    assert jwk_thumbprint(key) == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --- protected routes -------------------------------------------------------------------------


async def test_valid_token_opens_the_route(http: httpx.AsyncClient) -> None:
    token = await get_token(http)
    response = await http.get("/asreg/as-1", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"clientId": "as-app-1", "asSvcId": "as-1"}
    assert (await http.get("/delivery", headers=bearer(token))).status_code == 200
    assert (await http.get("/topics", headers=bearer(token))).status_code == 200


async def test_no_token(http: httpx.AsyncClient) -> None:
    for headers in ({}, basic("as-app-1", SECRET)):
        response = await http.get("/asreg/as-1", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == problems.PROBLEM_JSON
        assert response.json()["cause"] == "UNAUTHORIZED"
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="msgin5g"')
        assert "error=" not in challenge


def assert_invalid_token(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == problems.PROBLEM_JSON
    assert response.json()["cause"] == "UNAUTHORIZED"
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert reason in challenge


async def test_garbage_token(http: httpx.AsyncClient) -> None:
    for value in ("Bearer not-a-jwt", "Bearer ", "Bearer a.b.c"):
        response = await http.get("/asreg/as-1", headers={"authorization": value})
        assert_invalid_token(response, "")


async def test_expired_token(http: httpx.AsyncClient, clock: FakeClock) -> None:
    token = await get_token(http)
    # Still accepted within the leeway after exp...
    clock.advance(300 + 29)
    assert (await http.get("/asreg/as-1", headers=bearer(token))).status_code == 200
    # ...and refused once past it.
    clock.advance(2)
    assert_invalid_token(await http.get("/asreg/as-1", headers=bearer(token)), "expired")


async def test_token_not_yet_valid(
    http: httpx.AsyncClient, key: ec.EllipticCurvePrivateKey, clock: FakeClock
) -> None:
    token = craft(key, clock, nbf=int(clock()) + 120)
    assert_invalid_token(await http.get("/asreg/as-1", headers=bearer(token)), "not yet valid")


async def test_token_of_another_key(http: httpx.AsyncClient, clock: FakeClock) -> None:
    stranger = new_key()
    token = craft(stranger, clock)
    assert_invalid_token(await http.get("/asreg/as-1", headers=bearer(token)), "unknown")


async def test_token_forged_under_our_kid(
    http: httpx.AsyncClient, key: ec.EllipticCurvePrivateKey, clock: FakeClock
) -> None:
    # Another key's signature under the kid of ours: the signature must not verify.
    kid = jwk_thumbprint(key.public_key())
    genuine = jwt.decode(
        craft(key, clock), options={"verify_signature": False}, algorithms=["ES256"]
    )
    forged = jwt.encode(genuine, new_key(), algorithm="ES256", headers={"kid": kid})
    assert_invalid_token(await http.get("/asreg/as-1", headers=bearer(forged)), "signature")


async def test_token_wrong_audience_or_issuer(
    http: httpx.AsyncClient, key: ec.EllipticCurvePrivateKey, clock: FakeClock
) -> None:
    token = craft(key, clock, aud="someone-else")
    assert_invalid_token(await http.get("/asreg/as-1", headers=bearer(token)), "audience")
    token = craft(key, clock, iss="another-issuer")
    assert_invalid_token(await http.get("/asreg/as-1", headers=bearer(token)), "issuer")


async def test_token_without_required_claim(
    http: httpx.AsyncClient, key: ec.EllipticCurvePrivateKey, clock: FakeClock
) -> None:
    body = jwt.decode(craft(key, clock), options={"verify_signature": False}, algorithms=["ES256"])
    del body["exp"]
    kid = jwk_thumbprint(key.public_key())
    token = jwt.encode(body, key, algorithm="ES256", headers={"kid": kid})
    assert_invalid_token(await http.get("/asreg/as-1", headers=bearer(token)), "exp")


async def test_token_of_removed_client(
    make_auth: AuthFactory, key: ec.EllipticCurvePrivateKey, clock: FakeClock
) -> None:
    token = craft(key, clock, sub="gone-client")
    async with await client_for(make_auth()) as http:
        response = await http.get("/asreg/as-1", headers=bearer(token))
    assert_invalid_token(response, "no longer known")


async def test_token_lacking_scope(http: httpx.AsyncClient) -> None:
    token = await get_token(http, scope=ASREG_SCOPE)
    response = await http.get("/delivery", headers=bearer(token))
    assert response.status_code == 403
    assert response.headers["content-type"] == problems.PROBLEM_JSON
    assert response.json()["cause"] == "NOT_AUTHORIZED"
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert f'scope="{DELIVERY_SCOPE}"' in challenge


async def test_may_act_as(http: httpx.AsyncClient) -> None:
    token = await get_token(http)
    assert (await http.get("/asreg/as-2", headers=bearer(token))).status_code == 200
    assert (await http.get("/asreg/as-3", headers=bearer(token))).status_code == 403


def test_principal() -> None:
    principal = Principal("c", frozenset({ASREG_SCOPE}), frozenset({"as-1"}))
    assert principal.may_act_as("as-1")
    assert not principal.may_act_as("as-2")
    assert not principal.is_admin
    assert principal.has_scope(ASREG_SCOPE)
    assert not principal.has_scope(DELIVERY_SCOPE)
    admin = Principal("a", frozenset({ADMIN_SCOPE}), None)
    assert admin.is_admin
    assert admin.may_act_as("any-as")
    assert admin.has_scope(TOPIC_SCOPE)


async def test_admin_static_token(http: httpx.AsyncClient) -> None:
    response = await http.get("/admin", headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200
    assert response.json() == {"clientId": "admin"}
    # An admin may do what an AS may, as any AS.
    assert (await http.get("/asreg/as-77", headers=bearer(ADMIN_TOKEN))).status_code == 200
    response = await http.get("/admin", headers=bearer(ADMIN_TOKEN + "x"))
    assert_invalid_token(response, "")


async def test_admin_client_token(http: httpx.AsyncClient) -> None:
    token = await get_token(http, "ops", ADMIN_SECRET)
    assert (await http.get("/admin", headers=bearer(token))).status_code == 200
    assert (await http.get("/asreg/as-77", headers=bearer(token))).status_code == 200


async def test_as_token_on_admin_route(http: httpx.AsyncClient) -> None:
    token = await get_token(http)
    response = await http.get("/admin", headers=bearer(token))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


async def test_key_rotation(make_auth: AuthFactory, clock: FakeClock) -> None:
    old, new = new_key(), new_key()
    async with await client_for(make_auth(signing_keys=[old])) as http:
        old_token = await get_token(http)
    # The new key goes first, the old one stays until its tokens have expired.
    async with await client_for(
        make_auth(signing_keys=load_signing_keys(pem(new, old), "t"))
    ) as http:
        assert (await http.get("/asreg/as-1", headers=bearer(old_token))).status_code == 200
        new_token = await get_token(http)
        assert jwt.get_unverified_header(new_token)["kid"] == jwk_thumbprint(new.public_key())
        assert (await http.get("/asreg/as-1", headers=bearer(new_token))).status_code == 200
    # Once the old key is gone, its tokens are refused.
    async with await client_for(make_auth(signing_keys=[new])) as http:
        assert_invalid_token(await http.get("/asreg/as-1", headers=bearer(old_token)), "unknown")


async def test_rate_limit(make_auth: AuthFactory, clock: FakeClock) -> None:
    async with await client_for(make_auth(rate_limit=2.0)) as http:
        token = await get_token(http)
        # Burst: twice the rate.
        for _ in range(4):
            assert (await http.get("/asreg/as-1", headers=bearer(token))).status_code == 200
        response = await http.get("/asreg/as-1", headers=bearer(token))
        assert response.status_code == 429
        assert response.headers["content-type"] == problems.PROBLEM_JSON
        assert response.json()["cause"] == "TOO_MANY_REQUESTS"
        assert int(response.headers["retry-after"]) >= 1
        # Another client has its own bucket; the admin is not limited.
        other = await get_token(http, "as-reg-only")
        assert (await http.get("/asreg/as-3", headers=bearer(other))).status_code == 200
        for _ in range(10):
            assert (await http.get("/admin", headers=bearer(ADMIN_TOKEN))).status_code == 200
        # Half a second refills one request at 2/s.
        clock.advance(0.5)
        assert (await http.get("/asreg/as-1", headers=bearer(token))).status_code == 200
        assert (await http.get("/asreg/as-1", headers=bearer(token))).status_code == 429


async def test_auth_disabled() -> None:
    async with await client_for(Authenticator.disabled()) as http:
        for path in ("/admin", "/asreg/whatever", "/delivery", "/topics"):
            assert (await http.get(path)).status_code == 200
        response = await http.post("/oauth2/token", data={"grant_type": "client_credentials"})
        assert response.status_code == 404
        assert response.headers["content-type"] == problems.PROBLEM_JSON
        assert response.json()["detail"] == "auth is disabled"
        assert (await http.get("/oauth2/jwks")).status_code == 404


async def test_missing_authenticator_fails_closed() -> None:
    app = make_app(Authenticator.disabled())
    del app.state.auth
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as http:
        assert (await http.get("/delivery")).status_code == 500


async def test_openapi_security(http: httpx.AsyncClient) -> None:
    schema = (await http.get("/openapi.json")).json()
    scheme = schema["components"]["securitySchemes"][OAUTH2_SCHEME]
    assert scheme["type"] == "oauth2"
    flow = scheme["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/oauth2/token"
    assert set(flow["scopes"]) == {ASREG_SCOPE, DELIVERY_SCOPE, TOPIC_SCOPE, ADMIN_SCOPE}
    assert {OAUTH2_SCHEME: [DELIVERY_SCOPE]} in schema["paths"]["/delivery"]["get"]["security"]
    assert {OAUTH2_SCHEME: [ADMIN_SCOPE]} in schema["paths"]["/admin"]["get"]["security"]
    token_op = schema["paths"]["/oauth2/token"]["post"]
    assert "application/x-www-form-urlencoded" in token_op["requestBody"]["content"]
    assert "security" not in token_op


# --- configuration ----------------------------------------------------------------------------


def settings(**values: Any) -> RegistrySettings:
    return RegistrySettings(**values)


def test_from_settings(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem(key))
    clients_file = tmp_path / "clients.json"
    clients_file.write_text(json.dumps({"clients": CLIENTS_DOC["clients"][:1]}))
    inline = json.dumps({"clients": CLIENTS_DOC["clients"][1:]})
    auth = Authenticator.from_settings(
        settings(
            auth_enabled=True,
            auth_signing_key_file=str(key_file),
            auth_clients=inline,
            auth_clients_file=str(clients_file),
            auth_token_ttl=60,
        )
    )
    assert auth.enabled
    grant = auth.issue("as-app-1", SECRET)  # from the file
    assert grant.expires_in == 60
    assert auth.issue("ops", ADMIN_SECRET).scope == ADMIN_SCOPE  # inline
    assert auth.verify(grant.access_token).as_svc_ids == frozenset({"as-1", "as-2"})


def test_from_settings_disabled() -> None:
    auth = Authenticator.from_settings(settings(auth_enabled=False))
    assert not auth.enabled
    principal = auth.authorize(None, ADMIN_SCOPE)
    assert principal.is_admin
    assert principal.may_act_as("anything")


def test_secrets_not_kept(auth: Authenticator) -> None:
    # Only hashes are kept: the secret appears nowhere in the authenticator's state.
    state = repr(vars(auth)) + repr(list(vars(auth).get("_clients", {}).values()))
    assert SECRET not in state
    assert SECRET not in repr(clients())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth_clients": json.dumps(CLIENTS_DOC)}, "signing key"),
        ({"auth_signing_key": "KEY"}, "nobody could authenticate"),
        (
            {"auth_signing_key": "KEY", "auth_clients": "{not json"},
            "MSGIN5G_AUTH_CLIENTS: not valid JSON",
        ),
        (
            {"auth_signing_key": "KEY", "admin_token": "short"},
            "admin_token",
        ),
        (
            {"auth_signing_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            "MSGIN5G_AUTH_SIGNING_KEY: key 1 cannot be loaded",
        ),
        ({"auth_signing_key": "no pem here", "admin_token": ADMIN_TOKEN}, "no PEM private key"),
        (
            {"auth_signing_key_file": "/nonexistent/key.pem", "admin_token": ADMIN_TOKEN},
            "MSGIN5G_AUTH_SIGNING_KEY_FILE: cannot read",
        ),
    ],
    ids=["no-key", "no-clients", "bad-json", "short-admin", "bad-pem", "no-pem", "no-file"],
)
def test_config_errors(
    values: dict[str, Any], message: str, key: ec.EllipticCurvePrivateKey
) -> None:
    if values.get("auth_signing_key") == "KEY":
        values = {**values, "auth_signing_key": pem(key)}
    with pytest.raises(ValueError) as caught:
        Authenticator.from_settings(settings(auth_enabled=True, **values))
    assert message in str(caught.value)


def test_duplicate_client_id(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    clients_file = tmp_path / "clients.json"
    clients_file.write_text(json.dumps(CLIENTS_DOC))
    values = settings(
        auth_enabled=True,
        auth_signing_key=pem(key),
        auth_clients=json.dumps({"clients": CLIENTS_DOC["clients"][:1]}),
        auth_clients_file=str(clients_file),
    )
    with pytest.raises(ValueError, match="duplicate clientId 'as-app-1'"):
        Authenticator.from_settings(values)


def test_wrong_curve_key() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="not an EC P-256 key"):
        load_signing_keys(pem(other), "k")


def test_openssl_style_pem() -> None:
    # `openssl ecparam -genkey` writes an EC PARAMETERS block and a SEC1 key.
    key = new_key()
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    text = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n" + sec1
    [loaded] = load_signing_keys(text, "k")
    assert jwk_thumbprint(loaded.public_key()) == jwk_thumbprint(key.public_key())


@pytest.mark.parametrize(
    ("client", "field"),
    [
        (
            {"clientId": "c", "clientSecret": SECRET, "asSvcIds": ["a"], "scopes": ["bogus"]},
            "scopes",
        ),
        ({"clientId": "c", "clientSecret": SECRET, "asSvcIds": ["a"], "scopes": []}, "scopes"),
        ({"clientId": "c", "clientSecret": "short", "asSvcIds": ["a"]}, "clientSecret"),
        ({"clientId": "bad id", "clientSecret": SECRET, "asSvcIds": ["a"]}, "clientId"),
        ({"clientId": "c", "clientSecret": SECRET, "asSvcIds": ["bad/id"]}, "asSvcIds"),
        ({"clientId": "c", "clientSecret": SECRET}, "asSvcIds"),
        (
            {"clientId": "c", "clientSecret": SECRET, "asSvcIds": ["a"], "scopes": [ADMIN_SCOPE]},
            "asSvcIds",
        ),
        ({"clientId": "c", "clientSecret": SECRET, "asSvcIds": ["a"], "extra": 1}, "extra"),
        ({"clientSecret": SECRET, "asSvcIds": ["a"]}, "clientId"),
    ],
    ids=[
        "unknown-scope",
        "no-scopes",
        "short-secret",
        "bad-client-id",
        "bad-as-svc-id",
        "no-as-svc-ids",
        "admin-with-as-svc-ids",
        "unknown-field",
        "no-client-id",
    ],
)
def test_bad_client_config(client: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_clients(json.dumps({"clients": [client]}), "MSGIN5G_AUTH_CLIENTS")
    message = str(caught.value)
    assert message.startswith("MSGIN5G_AUTH_CLIENTS: invalid clients: clients.0")
    assert field in message
    assert SECRET not in message


def test_require_unknown_scope() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        require("msgs-everything")


def test_wall_clock_default(key: ec.EllipticCurvePrivateKey) -> None:
    # Without an injected clock, a fresh token verifies against the real time.
    auth = Authenticator(clients=clients(), signing_keys=[key])
    grant = auth.issue("as-app-1", SECRET)
    claims = jwt.decode(grant.access_token, options={"verify_signature": False})
    assert abs(claims["iat"] - time.time()) < 60
    assert auth.verify(grant.access_token).client_id == "as-app-1"


async def test_algorithm_confusion_refused(
    http: httpx.AsyncClient, key: ec.EllipticCurvePrivateKey, clock: FakeClock
) -> None:
    # An HMAC token under our kid, keyed with anything: only ES256 is accepted.
    body = jwt.decode(craft(key, clock), options={"verify_signature": False}, algorithms=["ES256"])
    kid = jwk_thumbprint(key.public_key())
    forged = jwt.encode(body, "k" * 32, algorithm="HS256", headers={"kid": kid})
    assert_invalid_token(await http.get("/asreg/as-1", headers=bearer(forged)), "")


async def test_logs_carry_no_secrets(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="msgin5g.registry.auth")
    token = await get_token(http)
    await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers=basic("as-app-1", SECRET + "x"),
    )
    await http.get("/admin", headers=bearer(token))
    await http.get("/admin", headers=bearer(ADMIN_TOKEN))
    records = [r for r in caplog.records if r.name == "msgin5g.registry.auth"]
    assert {r.getMessage() for r in records} >= {"token issued", "token refused", "request refused"}
    issued = next(r for r in records if r.getMessage() == "token issued")
    assert issued.__dict__["clientId"] == "as-app-1"
    dumped = repr([r.__dict__ for r in records])
    for secret in (SECRET, token, ADMIN_TOKEN):
        assert secret not in dumped
