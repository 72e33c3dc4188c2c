"""OAuth2 client-credentials security of the registry's HTTP API (TS 29.538).

The oAuth2ClientCredentials security scheme of TS 29.538: application servers obtain a
short-lived bearer token from the registry's own token endpoint (``POST /oauth2/token``,
RFC 6749 section 4.4) and present it on the AS API; the management API needs the admin scope,
which a static ``MSGIN5G_ADMIN_TOKEN`` also satisfies.

Tokens are ES256 JWTs (RFC 9068 shape) signed with the first configured EC P-256 key; every
configured key verifies, so a key is rotated by putting the new one first and keeping the old
one until the tokens it signed have expired. ``GET /oauth2/jwks`` publishes the public keys.

Routes declare what they need with the typed aliases (``AsRegistrationDep``, ``MsgDeliveryDep``,
``TopicDep``, ``AdminDep``), which read the :class:`Authenticator` from ``app.state.auth``.
Refusals are ProblemDetails with an RFC 6750 ``WWW-Authenticate`` challenge; the token
endpoint alone answers in RFC 6749 section 5.2 form, as OAuth2 clients expect.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote_plus

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, OAuth2
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from msgin5g_registry.problems import PROBLEM_JSON, ProblemDetails, ProblemError
from msgin5g_registry.settings import RegistrySettings

log = logging.getLogger("msgin5g.registry.auth")

ASREG_SCOPE = "msgs-asregistration"
DELIVERY_SCOPE = "msgs-msgdelivery"
TOPIC_SCOPE = "msgs-topiclistevent"
ADMIN_SCOPE = "msgin5g-admin"
AS_SCOPES = frozenset({ASREG_SCOPE, DELIVERY_SCOPE, TOPIC_SCOPE})
ALL_SCOPES = AS_SCOPES | {ADMIN_SCOPE}
SCOPE_DESCRIPTIONS = {
    ASREG_SCOPE: "Register and deregister application servers (MSGS AS registration)",
    DELIVERY_SCOPE: "Send messages and query or update their delivery (MSGS message delivery)",
    TOPIC_SCOPE: "Subscribe to topic list events (MSGS topic list event)",
    ADMIN_SCOPE: "Manage the MSGin5G server (the /api/v1 management API)",
}

TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/oauth2/jwks"
AUDIENCE = "msgin5g"
DEFAULT_ISSUER = "msgin5g-registry"
ALGORITHM = "ES256"
REALM = "msgin5g"
OAUTH2_SCHEME = "oAuth2ClientCredentials"
ADMIN_TOKEN_SCHEME = "adminToken"
# Clock skew tolerated between the issuer and verifiers (replicas) on exp and nbf.
LEEWAY = 30
MIN_TTL = 30
MAX_TTL = 86400
# Secrets and the admin token are compared, not guessed: short ones would be guessable.
MIN_SECRET_LENGTH = 16
# A token request is a handful of short fields; anything bigger is not one.
MAX_FORM_BYTES = 8192
MAX_FORM_FIELDS = 16

CLIENT_ID_PATTERN = r"^[A-Za-z0-9._~\-]{1,128}$"
# The charset of UE and AS service ids elsewhere in the API.
AS_SVC_ID_PATTERN = r"^[A-Za-z0-9._~@:+\-]{1,128}$"
_AS_SVC_ID_RE = re.compile(AS_SVC_ID_PATTERN)
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)

Clock = Callable[[], float]


# --- principals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a request is from and what it may do."""

    client_id: str
    scopes: frozenset[str]
    # None: may act as any AS (auth disabled, or an admin).
    as_svc_ids: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def has_scope(self, scope: str) -> bool:
        """True when the principal holds ``scope``; the admin scope implies every AS scope."""
        return scope in self.scopes or (self.is_admin and scope in AS_SCOPES)

    def may_act_as(self, as_svc_id: str) -> bool:
        """True when the principal may act on behalf of the AS ``as_svc_id``."""
        return self.as_svc_ids is None or as_svc_id in self.as_svc_ids


# Every request's principal while auth is disabled.
ANONYMOUS = Principal("anonymous", ALL_SCOPES, None)
# The principal of the static admin token.
STATIC_ADMIN = Principal("admin", frozenset({ADMIN_SCOPE}), None)


# --- configuration ----------------------------------------------------------------------------


class ClientConfig(BaseModel):
    """One OAuth2 client (an application server, or an admin tool)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: str = Field(alias="clientId", pattern=CLIENT_ID_PATTERN)
    client_secret: SecretStr = Field(alias="clientSecret", min_length=MIN_SECRET_LENGTH)
    as_svc_ids: tuple[str, ...] = Field(default=(), alias="asSvcIds")
    scopes: tuple[str, ...] = Field(default=tuple(sorted(AS_SCOPES)), min_length=1)

    @field_validator("as_svc_ids")
    @classmethod
    def _as_svc_ids_valid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for as_svc_id in value:
            if not _AS_SVC_ID_RE.match(as_svc_id):
                raise ValueError(f"{as_svc_id!r} is not a valid asSvcId ({AS_SVC_ID_PATTERN})")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for scope in value:
            if scope not in ALL_SCOPES:
                raise ValueError(
                    f"unknown scope {scope!r} (known: {', '.join(sorted(ALL_SCOPES))})"
                )
        return value

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    @model_validator(mode="after")
    def _as_svc_ids_fit_scopes(self) -> ClientConfig:
        if self.is_admin and self.as_svc_ids:
            raise ValueError(
                f"client {self.client_id!r}: asSvcIds: an admin client acts as every AS, "
                "leave asSvcIds out"
            )
        if not self.is_admin and not self.as_svc_ids:
            raise ValueError(
                f"client {self.client_id!r}: asSvcIds: a client without the {ADMIN_SCOPE} "
                "scope needs at least one asSvcId"
            )
        return self


class ClientsConfig(BaseModel):
    """The document of ``MSGIN5G_AUTH_CLIENTS`` / ``MSGIN5G_AUTH_CLIENTS_FILE``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: tuple[ClientConfig, ...]


def parse_clients(text: str, source: str) -> list[ClientConfig]:
    """The clients of one JSON document; ValueError names ``source`` and the bad field.

    The messages never carry input values: they would include secrets.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    try:
        config = ClientsConfig.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "document"
            problems.append(f"{where}: {error['msg']}")
        raise ValueError(f"{source}: invalid clients: {'; '.join(problems)}") from None
    return list(config.clients)


def load_signing_keys(pem: str, source: str) -> list[ec.EllipticCurvePrivateKey]:
    """The EC P-256 private keys of a PEM text, in order (the first one signs)."""
    keys: list[ec.EllipticCurvePrivateKey] = []
    for block in _PEM_BLOCK.finditer(pem.encode()):
        label = block.group(1).decode()
        if label == "EC PARAMETERS":
            # What `openssl ecparam -genkey` writes before the key: nothing to load.
            continue
        number = len(keys) + 1
        if label == "ENCRYPTED PRIVATE KEY":
            raise ValueError(f"{source}: key {number}: encrypted keys are not supported")
        if label not in ("PRIVATE KEY", "EC PRIVATE KEY"):
            raise ValueError(f"{source}: a PEM block {label!r} is not a private key")
        try:
            key = serialization.load_pem_private_key(block.group(0), password=None)
        except (ValueError, TypeError, binascii.Error) as exc:
            raise ValueError(f"{source}: key {number} cannot be loaded: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            # ValueError, not TypeError: a bad key is a configuration error like any other.
            raise ValueError(  # noqa: TRY004
                f"{source}: key {number} is not an EC P-256 key (ES256 needs one)"
            )
        keys.append(key)
    if not keys:
        raise ValueError(f"{source}: no PEM private key found")
    return keys


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The required members of a P-256 public key's JWK (RFC 7518 section 6.2.1)."""
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def jwk_thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256): the required members, sorted, without whitespace."""
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def _read(path: str, setting: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ValueError(f"{setting}: cannot read {path}: {reason}") from None


# --- errors -----------------------------------------------------------------------------------


class OAuthError(Exception):
    """A refusal of the token endpoint, answered in RFC 6749 section 5.2 form."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


class InvalidToken(Exception):
    """An access token that does not verify; the message is safe to send back."""


# --- rate limiting ----------------------------------------------------------------------------


class RateLimiter:
    """Token buckets keyed by client id, in memory (per replica).

    The keys are configured client ids (a token of an unknown client is refused before it gets
    here), so the table cannot grow without bound.
    """

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        # A burst of at least one request, so that a rate below 0.5/s still lets requests in.
        self.burst = max(1.0, 2.0 * rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, key: str) -> float:
        """Takes one request from ``key``'s bucket: 0 when allowed, else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        # max(): a clock that steps back must not drain the bucket.
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


# --- the authenticator ------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenGrant:
    """An issued access token and what the token endpoint tells about it."""

    access_token: str
    expires_in: int
    scope: str


@dataclass(frozen=True)
class _SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey
    public: ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class RegisteredClient:
    """A configured client as kept in memory: its secret only as a salted hash."""

    client_id: str
    secret_hash: bytes
    scopes: frozenset[str]
    as_svc_ids: frozenset[str] | None


def _challenge(error: str | None = None, description: str | None = None, scope: str = "") -> str:
    """An RFC 6750 section 3 ``WWW-Authenticate`` value (the values never contain quotes)."""
    parts = [f'Bearer realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return ", ".join(parts)


class Authenticator:
    """Issues and verifies access tokens, and decides what a request may do."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        clients: Iterable[ClientConfig] = (),
        signing_keys: Sequence[ec.EllipticCurvePrivateKey] = (),
        admin_token: str = "",
        issuer: str = DEFAULT_ISSUER,
        token_ttl: int = 300,
        rate_limit: float = 100.0,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self.issuer = issuer
        self.token_ttl = token_ttl
        self._clock = clock
        self._limiter = RateLimiter(rate_limit, monotonic)
        # Secrets are kept only as salted hashes; the salt is per process, so a dump of one
        # replica's memory matches nothing precomputed.
        self._salt = secrets.token_bytes(16)
        # Compared against when the client id is unknown, so that unknown and known ids take
        # the same time to refuse.
        self._dummy_hash = self._hash(secrets.token_urlsafe(32))
        self._admin_token = admin_token.strip().encode()
        self._clients: dict[str, RegisteredClient] = {}
        self._keys: list[_SigningKey] = []
        self._by_kid: dict[str, _SigningKey] = {}
        if not enabled:
            return

        if not MIN_TTL <= token_ttl <= MAX_TTL:
            raise ValueError(f"auth_token_ttl: must be between {MIN_TTL} and {MAX_TTL} seconds")
        if rate_limit < 0:
            raise ValueError("as_rate_limit: must be 0 (unlimited) or positive")
        if self._admin_token and (
            len(self._admin_token) < MIN_SECRET_LENGTH
            or any(c in b" \t\r\n" for c in self._admin_token)
        ):
            raise ValueError(
                f"admin_token: must be at least {MIN_SECRET_LENGTH} characters, without spaces"
            )
        for config in clients:
            if config.client_id in self._clients:
                raise ValueError(f"auth clients: duplicate clientId {config.client_id!r}")
            self._clients[config.client_id] = RegisteredClient(
                client_id=config.client_id,
                secret_hash=self._hash(config.client_secret.get_secret_value()),
                scopes=frozenset(config.scopes),
                as_svc_ids=None if config.is_admin else frozenset(config.as_svc_ids),
            )
        seen: set[str] = set()
        for private in signing_keys:
            public = private.public_key()
            kid = jwk_thumbprint(public)
            if kid not in seen:  # the same key twice is harmless: keep its first place
                seen.add(kid)
                self._keys.append(_SigningKey(kid, private, public))
        if not self._keys:
            raise ValueError(
                "auth_enabled needs a signing key: set MSGIN5G_AUTH_SIGNING_KEY_FILE "
                "(or MSGIN5G_AUTH_SIGNING_KEY) to a PEM EC P-256 private key"
            )
        if not self._clients and not self._admin_token:
            raise ValueError(
                "auth_enabled needs clients (MSGIN5G_AUTH_CLIENTS or MSGIN5G_AUTH_CLIENTS_FILE) "
                "or an admin token (MSGIN5G_ADMIN_TOKEN): nobody could authenticate"
            )
        self._by_kid.update((key.kid, key) for key in self._keys)

    @classmethod
    def disabled(cls) -> Authenticator:
        """An authenticator that lets every request in as :data:`ANONYMOUS`."""
        return cls(enabled=False)

    @classmethod
    def from_settings(
        cls,
        settings: RegistrySettings,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> Authenticator:
        """The authenticator the settings describe; ValueError names what is wrong."""
        if not settings.auth_enabled:
            log.warning("HTTP API authentication is disabled: every request is allowed")
            return cls.disabled()
        clients: list[ClientConfig] = []
        if settings.auth_clients.strip():
            clients += parse_clients(settings.auth_clients, "MSGIN5G_AUTH_CLIENTS")
        if settings.auth_clients_file:
            source = f"MSGIN5G_AUTH_CLIENTS_FILE ({settings.auth_clients_file})"
            text = _read(settings.auth_clients_file, "MSGIN5G_AUTH_CLIENTS_FILE")
            clients += parse_clients(text, source)
        if settings.auth_signing_key.strip() and settings.auth_signing_key_file:
            # Which of the two would sign is not obvious: refuse rather than guess.
            raise ValueError(
                "give MSGIN5G_AUTH_SIGNING_KEY or MSGIN5G_AUTH_SIGNING_KEY_FILE, not both"
            )
        keys: list[ec.EllipticCurvePrivateKey] = []
        if settings.auth_signing_key_file:
            pem = _read(settings.auth_signing_key_file, "MSGIN5G_AUTH_SIGNING_KEY_FILE")
            keys = load_signing_keys(pem, "MSGIN5G_AUTH_SIGNING_KEY_FILE")
        elif settings.auth_signing_key.strip():
            keys = load_signing_keys(settings.auth_signing_key, "MSGIN5G_AUTH_SIGNING_KEY")
        auth = cls(
            clients=clients,
            signing_keys=keys,
            admin_token=settings.admin_token,
            issuer=settings.auth_issuer,
            token_ttl=settings.auth_token_ttl,
            rate_limit=settings.as_rate_limit,
            clock=clock,
            monotonic=monotonic,
        )
        log.info(
            "HTTP API authentication enabled",
            extra={
                "clients": len(auth._clients),
                "keys": len(auth._keys),
                "signingKid": auth._keys[0].kid,
                "adminToken": bool(auth._admin_token),
            },
        )
        return auth

    def _hash(self, secret: str) -> bytes:
        return hashlib.sha256(self._salt + secret.encode()).digest()

    # --- the token endpoint's side ---

    def authenticate_client(
        self, client_id: str, secret: str, alternative: str | None = None
    ) -> RegisteredClient:
        """The client whose credentials these are (``alternative``: another spelling of the
        secret worth trying); OAuthError invalid_client otherwise."""
        client = self._clients.get(client_id)
        expected = client.secret_hash if client else self._dummy_hash
        candidates = [secret]
        if alternative is not None and alternative != secret:
            candidates.append(alternative)
        matched = False
        for candidate in candidates:
            matched |= hmac.compare_digest(self._hash(candidate), expected)
        if client is None or not matched:
            log.info(
                "token refused",
                extra={"clientId": client_id[:128], "reason": "invalid client credentials"},
            )
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return client

    def issue(self, client_id: str, secret: str, scope: str | None = None) -> TokenGrant:
        """RFC 6749 section 4.4: authenticates the client and issues it a token."""
        return self.grant(self.authenticate_client(client_id, secret), scope)

    def grant(self, client: RegisteredClient, scope: str | None = None) -> TokenGrant:
        """A token for an authenticated client with the scopes asked for (all of the client's
        when ``scope`` is None or empty); OAuthError invalid_scope for one it does not have."""
        wanted = frozenset(part for part in (scope or "").split(" ") if part)
        if not wanted:
            granted = client.scopes
        elif wanted <= client.scopes:
            granted = wanted
        else:
            refused = " ".join(sorted(wanted - client.scopes))
            log.info(
                "token refused",
                extra={"clientId": client.client_id, "reason": f"scope not granted: {refused}"},
            )
            raise OAuthError("invalid_scope", f"scope not granted to this client: {refused}")
        return self._mint(client, granted)

    def _mint(self, client: RegisteredClient, scopes: frozenset[str]) -> TokenGrant:
        key = self._keys[0]
        now = int(self._clock())
        scope = " ".join(sorted(scopes))
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": client.client_id,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + self.token_ttl,
            "jti": uuid.uuid4().hex,
            "scope": scope,
            "asSvcIds": sorted(client.as_svc_ids or ()),
        }
        token = jwt.encode(
            claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "at+jwt"}
        )
        log.info(
            "token issued",
            extra={"clientId": client.client_id, "scope": scope, "expiresIn": self.token_ttl},
        )
        return TokenGrant(access_token=token, expires_in=self.token_ttl, scope=scope)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys as a JWK set (RFC 7517 section 5), signing key first."""
        return {
            "keys": [
                {**public_jwk(key.public), "kid": key.kid, "use": "sig", "alg": ALGORITHM}
                for key in self._keys
            ]
        }

    # --- the resource server's side ---

    def verify(self, token: str) -> Principal:
        """The principal of a JWT access token; InvalidToken when it does not verify."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        kid = header.get("kid")
        key = self._by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown signing key")
        try:
            claims = jwt.decode(
                token,
                key.public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self.issuer,
                options={
                    "require": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"],
                    # Times are checked below against the injectable clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"missing claim {exc.claim}") from None
        except jwt.PyJWTError:
            raise InvalidToken("invalid token") from None

        exp, nbf = claims["exp"], claims["nbf"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, nbf)):
            raise InvalidToken("invalid time claims")
        now = self._clock()
        if now >= exp + LEEWAY:
            raise InvalidToken("token expired")
        if nbf > now + LEEWAY:
            raise InvalidToken("token not yet valid")
        scope, as_svc_ids = claims.get("scope", ""), claims.get("asSvcIds", [])
        if not isinstance(scope, str) or not (
            isinstance(as_svc_ids, list) and all(isinstance(a, str) for a in as_svc_ids)
        ):
            raise InvalidToken("invalid scope or asSvcIds claim")

        # The token is signed, but the configuration may have changed since it was issued:
        # a removed client or scope takes effect at once, not when the token expires.
        client = self._clients.get(claims["sub"])
        if client is None:
            raise InvalidToken("client no longer known")
        scopes = frozenset(scope.split()) & client.scopes
        allowed = (
            None
            if ADMIN_SCOPE in scopes
            else frozenset(as_svc_ids) & (client.as_svc_ids or frozenset())
        )
        return Principal(client.client_id, scopes, allowed)

    def _principal_of(self, token: str) -> Principal:
        """The principal of a bearer token: the static admin token or a JWT."""
        if not token:
            raise InvalidToken("empty token")
        if self._admin_token and hmac.compare_digest(token.encode(), self._admin_token):
            return STATIC_ADMIN
        return self.verify(token)

    def authorize(self, authorization: str | None, scope: str) -> Principal:
        """The principal of a request's ``Authorization`` header if it holds ``scope``.

        Raises ProblemError 401 (no or bad token), 403 (scope missing) or 429 (over the rate).
        """
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer":
            # No bearer token at all (or another scheme): RFC 6750 3.1, no error code.
            raise ProblemError(
                401,
                "an access token is required",
                "UNAUTHORIZED",
                headers={"WWW-Authenticate": _challenge()},
            )
        try:
            principal = self._principal_of(token)
        except InvalidToken as exc:
            log.info("request refused", extra={"reason": str(exc), "scope": scope})
            raise ProblemError(
                401,
                f"invalid access token: {exc}",
                "UNAUTHORIZED",
                headers={"WWW-Authenticate": _challenge("invalid_token", str(exc))},
            ) from None

        # Admins are exempt: the limit protects the AS API from one AS, not operators.
        if not principal.is_admin:
            wait = self._limiter.acquire(principal.client_id)
            if wait > 0:
                log.debug("request rate-limited", extra={"clientId": principal.client_id})
                raise ProblemError(
                    429,
                    f"more than {self._limiter.rate:g} requests per second",
                    "TOO_MANY_REQUESTS",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        if not principal.has_scope(scope):
            log.info(
                "request refused",
                extra={
                    "clientId": principal.client_id,
                    "reason": "insufficient scope",
                    "scope": scope,
                },
            )
            raise ProblemError(
                403,
                f"the access token lacks the scope {scope}",
                "NOT_AUTHORIZED",
                headers={
                    "WWW-Authenticate": _challenge(
                        "insufficient_scope", f"the scope {scope} is required", scope
                    )
                },
            )
        return principal


# --- FastAPI integration ----------------------------------------------------------------------


def get_authenticator(request: Request) -> Authenticator:
    """The app's Authenticator. Failing closed: a missing one is an internal error (500),
    never an open API."""
    auth = getattr(request.app.state, "auth", None)
    if not isinstance(auth, Authenticator):
        raise TypeError("app.state.auth is not an Authenticator: the registry must set it")
    return auth


# Declared only so that FastAPI documents each operation's security in OpenAPI; the header is
# read and judged by the Authenticator (auto_error off: the refusals are ProblemDetails).
_OAUTH2 = OAuth2(
    flows=OAuthFlows(
        clientCredentials=OAuthFlowClientCredentials(tokenUrl=TOKEN_PATH, scopes=SCOPE_DESCRIPTIONS)
    ),
    scheme_name=OAUTH2_SCHEME,
    description="OAuth2 client credentials (TS 29.538): a bearer token from POST /oauth2/token",
    auto_error=False,
)
_ADMIN_BEARER = HTTPBearer(
    scheme_name=ADMIN_TOKEN_SCHEME,
    description="The static admin token (MSGIN5G_ADMIN_TOKEN), for the management API",
    auto_error=False,
)


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the request's Principal, refused unless it holds ``scope``."""
    if scope not in ALL_SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(
        request: Request, oauth2: str | None = None, admin: object | None = None
    ) -> Principal:
        principal = get_authenticator(request).authorize(
            request.headers.get("authorization"), scope
        )
        request.state.principal = principal
        return principal

    # The signature FastAPI sees: the security schemes as sub-dependencies carrying the scope.
    # Built by hand because the scope is a closure variable, which string annotations (this
    # module uses postponed evaluation) could not name.
    parameters = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter(
            "oauth2",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None,
            annotation=Annotated[str | None, Security(_OAUTH2, scopes=[scope])],
        ),
    ]
    if scope == ADMIN_SCOPE:
        parameters.append(
            inspect.Parameter(
                "admin",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None,
                annotation=Annotated[HTTPAuthorizationCredentials | None, Security(_ADMIN_BEARER)],
            )
        )
    dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        parameters, return_annotation=Principal
    )
    return dependency


AsRegistrationDep = Annotated[Principal, Depends(require(ASREG_SCOPE))]
MsgDeliveryDep = Annotated[Principal, Depends(require(DELIVERY_SCOPE))]
TopicDep = Annotated[Principal, Depends(require(TOPIC_SCOPE))]
AdminDep = Annotated[Principal, Depends(require(ADMIN_SCOPE))]


def security_schemes() -> dict[str, Any]:
    """The OpenAPI ``components.securitySchemes`` entries of this module."""
    return {
        OAUTH2_SCHEME: jsonable_encoder(_OAUTH2.model, by_alias=True, exclude_none=True),
        ADMIN_TOKEN_SCHEME: jsonable_encoder(_ADMIN_BEARER.model, by_alias=True, exclude_none=True),
    }


def install_openapi_security(app: FastAPI) -> None:
    """Makes the app's OpenAPI document carry the security schemes, even before a route uses
    them (routes using the dependencies also list their scopes per operation)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        declared = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        for name, scheme in security_schemes().items():
            declared.setdefault(name, scheme)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- the token endpoint -----------------------------------------------------------------------


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    scope: str


class OAuthErrorResponse(BaseModel):
    error: str = Field(
        description="invalid_request, invalid_client, unsupported_grant_type or invalid_scope"
    )
    error_description: str | None = None


class JwkSet(BaseModel):
    keys: list[dict[str, str]]


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_TOKEN_DESCRIPTION = """\
OAuth 2.0 client credentials grant (RFC 6749 section 4.4), the oAuth2ClientCredentials security
scheme of TS 29.538.

The client authenticates with HTTP Basic (`client_id:client_secret`, form-encoded then base64)
or with the `client_id` and `client_secret` form fields, not both. `scope` is optional: without
it the token carries every scope of the client. Errors follow RFC 6749 section 5.2.
"""

_TOKEN_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "required": ["grant_type"],
                "properties": {
                    "grant_type": {"type": "string", "enum": ["client_credentials"]},
                    "scope": {
                        "type": "string",
                        "description": "Space-separated scopes, a subset of the client's",
                    },
                    "client_id": {"type": "string"},
                    "client_secret": {"type": "string", "format": "password"},
                },
            }
        }
    },
}


def _oauth_error(exc: OAuthError) -> JSONResponse:
    headers = dict(_NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    body = OAuthErrorResponse(error=exc.error, error_description=exc.description)
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=headers)


async def _read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a token request, each parameter at most once (RFC 6749 3.2)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise OAuthError(
            "invalid_request", "the Content-Type must be application/x-www-form-urlencoded"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "the request body is too large")
    try:
        fields = parse_qs(
            body.decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except ValueError:  # UnicodeDecodeError included
        raise OAuthError("invalid_request", "the request body is not a valid form") from None
    form: dict[str, str] = {}
    for name, values in fields.items():
        if len(values) > 1:
            raise OAuthError("invalid_request", f"the parameter {name} is repeated")
        form[name] = values[0]
    return form


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str, str | None]:
    """The client id and secret from HTTP Basic or the form, and (Basic only) the secret as
    sent, before form-decoding."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if not client_id or secret is None:
            raise OAuthError("invalid_client", "client authentication is required", 401)
        return client_id, secret, None
    if "client_secret" in form:
        raise OAuthError("invalid_request", "use one client authentication method, not two")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", "client authentication must use HTTP Basic", 401)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed HTTP Basic credentials", 401) from None
    raw_id, colon, raw_secret = decoded.partition(":")
    if not colon:
        raise OAuthError("invalid_client", "malformed HTTP Basic credentials", 401)
    # RFC 6749 2.3.1 form-encodes both before base64; many clients (curl -u) do not.
    client_id = unquote_plus(raw_id)
    if "client_id" in form and form["client_id"] != client_id:
        raise OAuthError("invalid_request", "client_id differs from the HTTP Basic one")
    return client_id, unquote_plus(raw_secret), raw_secret


async def _token_grant(request: Request, auth: Authenticator) -> TokenGrant:
    """Handles a token request; OAuthError for every refusal."""
    form = await _read_form(request)
    client_id, secret, raw_secret = _client_credentials(request, form)
    if "grant_type" not in form:
        raise OAuthError("invalid_request", "grant_type is missing")
    client = auth.authenticate_client(client_id, secret, raw_secret)
    if form["grant_type"] != "client_credentials":
        log.info(
            "token refused",
            extra={"clientId": client.client_id, "reason": "unsupported grant_type"},
        )
        raise OAuthError(
            "unsupported_grant_type", "only grant_type=client_credentials is supported"
        )
    return auth.grant(client, form.get("scope"))


def token_router() -> APIRouter:
    """The token endpoint and the JWK set, to be mounted at the root of the registry's app."""
    router = APIRouter(tags=["OAuth2"])
    not_found: dict[int | str, dict[str, Any]] = {
        404: {
            "model": ProblemDetails,
            "content": {PROBLEM_JSON: {}},
            "description": "Authentication is disabled",
        }
    }

    @router.post(
        TOKEN_PATH,
        summary="Obtain an access token (OAuth2 client credentials)",
        description=_TOKEN_DESCRIPTION,
        response_model=TokenResponse,
        responses={
            400: {"model": OAuthErrorResponse, "description": "Bad token request"},
            401: {"model": OAuthErrorResponse, "description": "Client authentication failed"},
            **not_found,
        },
        openapi_extra={"requestBody": _TOKEN_REQUEST_BODY},
    )
    async def token(request: Request) -> JSONResponse:
        auth = get_authenticator(request)
        if not auth.enabled:
            raise ProblemError(404, "auth is disabled")
        try:
            grant = await _token_grant(request, auth)
        except OAuthError as exc:
            return _oauth_error(exc)
        body = TokenResponse(
            access_token=grant.access_token, expires_in=grant.expires_in, scope=grant.scope
        )
        return JSONResponse(body.model_dump(), headers=_NO_STORE)

    @router.get(
        JWKS_PATH,
        summary="The public keys that verify access tokens (JWK set)",
        response_model=JwkSet,
        responses=not_found,
    )
    async def jwks(request: Request) -> JSONResponse:
        auth = get_authenticator(request)
        if not auth.enabled:
            raise ProblemError(404, "auth is disabled")
        return JSONResponse(auth.jwks())

    return router
