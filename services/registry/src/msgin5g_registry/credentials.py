"""Device credentials: the registry is their single source of truth (Redis, one hash per UE).

What a UE gets from ``POST /api/v1/ues/{ueSvcId}/credentials`` (once; they are not readable
again) and what is stored of it:

- **DTLS PSK** (identity = ueSvcId). The key is a printable string of :data:`PSK_LENGTH`
  characters from the 56-character :data:`PSK_ALPHABET` (no 0/O, 1/l/I, o): about 93 bits of
  entropy; its UTF-8 bytes are the key, so ``coap-client -k`` takes it as is. 16 bytes is the
  longest key tinydtls (the coap-edge's DTLS) takes: its handshake copies the key into a
  16-byte buffer. A DTLS server
  needs the raw key to run the handshake, so it cannot be hashed: it is **wrapped**, AES-256-GCM
  under the key-encryption key (KEK) of the settings, with the ueSvcId and purpose as
  associated data (a wrapped value moved to another UE does not decrypt).
- **MQTT password** (username = ueSvcId): 32 url-safe characters (192 bits). The broker only
  has to check it, so it is **hashed**: PBKDF2-HMAC-SHA512 with a random 12-byte salt, stored
  in Mosquitto's password-file form ``$7$<iterations>$<salt b64>$<hash b64>``, which a password
  file sync can write as is, without ever seeing the password. The password is random and
  long, so a guess costs 2^192 whatever the iteration count: :data:`MQTT_ITERATIONS` is kept
  low enough for many devices to connect at once.
- **OSCORE** material (RFC 8613): master secret (16 bytes), master salt (8 bytes), the
  device's sender id (7 random bytes, unique: the server finds the context by it) and its
  recipient id (the server's id, :data:`SERVER_OSCORE_ID`); AES-CCM-16-64-128, HKDF-SHA-256,
  no ID context. The whole context is **wrapped** like the PSK; the device's sender id is also
  stored in clear (it is sent in clear on the wire) with an index ``oscore:{kid}`` -> ueSvcId.

A second POST **rotates**: new secrets, and the previous ones stay valid until ``graceUntil``
(``MSGIN5G_CREDENTIALS_GRACE`` seconds later; a further rotation drops the older ones). A
DELETE **revokes** at once: the secrets are removed (the hash keeps ``gen`` and ``revokedAt``
only), the generation goes up, and the ueSvcId is published on ``<p>:credentials:revoked`` so
that the edges end the device's live DTLS, OSCORE and MQTT sessions. Every change also gets a
version in ``<p>:{credentials}:changes`` (:meth:`CredentialStore.changed_since`), for syncs.

Every check (:meth:`CredentialStore.psk_keys`, :meth:`verify_mqtt_password`,
:meth:`oscore_context`) costs one or two Redis commands, whatever the number of devices.
Secrets are never logged: logs name the ueSvcId and the generation.
"""

# The HTTP models and path parameters use the contract's camelCase names.

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from msgin5g_common.errors import Cause
from msgin5g_common.keys import Keys
from msgin5g_registry.as_api import problem_responses
from msgin5g_registry.problems import ProblemError
from msgin5g_registry.settings import RegistrySettings

log = logging.getLogger("msgin5g.registry.credentials")

Clock = Callable[[], float]

PSK_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz"
PSK_LENGTH = 16  # tinydtls: DTLS_PSK_MAX_KEY_LEN
MQTT_PASSWORD_BYTES = 24  # 32 url-safe base64 characters
MQTT_SALT_BYTES = 12
MQTT_ITERATIONS = 1000
OSCORE_SECRET_BYTES = 16
OSCORE_SALT_BYTES = 8
OSCORE_ID_BYTES = 7  # the longest id AES-CCM-16-64-128 allows (13-byte nonce - 6)
SERVER_OSCORE_ID = b"\x01"
OSCORE_AEAD = "AES-CCM-16-64-128"
OSCORE_HKDF = "HKDF-SHA-256"
KEK_BYTES = 32
_WRAP_VERSION = b"\x01"
_NONCE_BYTES = 12
_MAX_KID_TRIES = 8

UE_ID_PATTERN = r"^[A-Za-z0-9._~@:+\-]{1,128}$"
_UE_ID_RE = re.compile(UE_ID_PATTERN)

NOT_CONFIGURED = (
    "device credentials are not configured: set MSGIN5G_CREDENTIALS_KEK or "
    "MSGIN5G_CREDENTIALS_KEK_FILE (base64 of a 32-byte key-encryption key)"
)


def load_kek(settings: RegistrySettings) -> bytes | None:
    """The key-encryption key of the settings, None when none is set; ValueError names a bad
    one (the registry then refuses to start)."""
    inline, path = settings.credentials_kek.strip(), settings.credentials_kek_file
    if inline and path:
        raise ValueError("give MSGIN5G_CREDENTIALS_KEK or MSGIN5G_CREDENTIALS_KEK_FILE, not both")
    name, text = "MSGIN5G_CREDENTIALS_KEK", inline
    if path:
        name = f"MSGIN5G_CREDENTIALS_KEK_FILE ({path})"
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise ValueError(f"{name}: cannot read it ({exc.strerror})") from None
    if not text:
        return None
    try:
        kek = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError(f"{name}: not base64") from None
    if len(kek) != KEK_BYTES:
        raise ValueError(f"{name}: must be {KEK_BYTES} bytes, got {len(kek)}")
    return kek


def mqtt_hash(password: str, salt: bytes | None = None, iterations: int = MQTT_ITERATIONS) -> str:
    """Mosquitto's ``$7$`` password hash (PBKDF2-HMAC-SHA512) of ``password``."""
    salt = salt if salt is not None else secrets.token_bytes(MQTT_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mqtt_hash_matches(stored: str, password: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(mqtt_hash(password, salt, iterations), stored)


@dataclass(frozen=True, slots=True)
class OscoreMaterial:
    """One OSCORE security context, from the device's point of view."""

    master_secret: bytes
    master_salt: bytes
    sender_id: bytes  # the device's (the kid of its requests; the server's recipient id)
    recipient_id: bytes  # the server's

    def to_json(self) -> dict[str, str]:
        return {
            "masterSecret": self.master_secret.hex(),
            "masterSalt": self.master_salt.hex(),
            "senderId": self.sender_id.hex(),
            "recipientId": self.recipient_id.hex(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, str]) -> OscoreMaterial:
        return cls(
            master_secret=bytes.fromhex(doc["masterSecret"]),
            master_salt=bytes.fromhex(doc["masterSalt"]),
            sender_id=bytes.fromhex(doc["senderId"]),
            recipient_id=bytes.fromhex(doc["recipientId"]),
        )


@dataclass(frozen=True, slots=True)
class OscoreContext:
    """What an OSCORE server needs for a request carrying ``kid``: whose context it is."""

    ue_svc_id: str
    generation: int
    material: OscoreMaterial
    current: bool  # False: the previous context, within its grace
    valid_until_ms: int | None = None  # the end of the grace of a previous context


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    """The secrets, as returned once to the caller."""

    ue_svc_id: str
    generation: int
    created: bool  # False: a rotation
    psk: str
    mqtt_password: str
    oscore: OscoreMaterial
    grace_until_ms: int | None


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    ue_svc_id: str
    generation: int
    created_at_ms: int
    rotated_at_ms: int | None
    grace_until_ms: int | None


# Creates or rotates: KEYS[1] the UE's hash; ARGV now, grace (ms), wrapped psk, mqtt hash,
# wrapped oscore, kid. Returns {created, gen, dropped kid, previous kid}.
_ISSUE = """
local h = KEYS[1]
local now = tonumber(ARGV[1])
local cur = redis.call('HMGET', h, 'psk', 'mqtt', 'oscore', 'kid', 'gen', 'prevKid')
local gen = tonumber(cur[5] or '0') + 1
local created = 1
local dropped = ''
local previous = ''
if cur[1] then
  created = 0
  dropped = cur[6] or ''
  previous = cur[4]
  redis.call('HSET', h, 'prevPsk', cur[1], 'prevMqtt', cur[2], 'prevOscore', cur[3],
    'prevKid', cur[4], 'graceUntil', now + tonumber(ARGV[2]), 'rotatedAt', now)
else
  redis.call('DEL', h)
  redis.call('HSET', h, 'createdAt', now)
end
redis.call('HSET', h, 'gen', gen, 'psk', ARGV[3], 'mqtt', ARGV[4], 'oscore', ARGV[5],
  'kid', ARGV[6])
return {created, gen, dropped, previous}
"""

# Revokes: KEYS[1] the UE's hash; ARGV now. Returns false or {gen, kid, previous kid}.
_REVOKE = """
local h = KEYS[1]
local cur = redis.call('HMGET', h, 'psk', 'gen', 'kid', 'prevKid')
if not cur[1] then return false end
local gen = tonumber(cur[2] or '0') + 1
redis.call('DEL', h)
redis.call('HSET', h, 'gen', gen, 'revokedAt', ARGV[1])
return {gen, cur[3] or '', cur[4] or ''}
"""

# Records a change: KEYS[1] the version counter, KEYS[2] the changes set; ARGV the ueSvcId.
# One script, so that versions enter the set in order: a sync never skips one.
_CHANGED = """
local v = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], v, ARGV[1])
return v
"""


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(_str(value))


class CredentialStore:
    """Device credentials in Redis (see the module docstring for what is stored how)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        kek: bytes,
        *,
        grace: int = 3600,
        clock: Clock = time.time,
    ) -> None:
        if len(kek) != KEK_BYTES:
            raise ValueError(f"the key-encryption key must be {KEK_BYTES} bytes")
        self.redis = redis
        self.keys = keys
        self.grace = grace
        self._aead = AESGCM(kek)
        self._clock = clock
        self._issue = redis.register_script(_ISSUE)
        self._revoke = redis.register_script(_REVOKE)
        self._changed = redis.register_script(_CHANGED)

    @classmethod
    def from_settings(
        cls, redis: Redis, keys: Keys, settings: RegistrySettings
    ) -> CredentialStore | None:
        """The store, or None when no KEK is configured (the endpoints then answer 503)."""
        kek = load_kek(settings)
        if kek is None:
            log.warning("device credentials disabled: no key-encryption key")
            return None
        return cls(redis, keys, kek, grace=settings.credentials_grace)

    @property
    def revoked_channel(self) -> str:
        return self.keys.credentials_revoked()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- wrapping ------------------------------------------------------------------------------

    @staticmethod
    def _aad(ue: str, purpose: str) -> bytes:
        return f"msgin5g-credentials\x1f{ue}\x1f{purpose}".encode()

    def _wrap(self, ue: str, purpose: str, plain: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _WRAP_VERSION + nonce + self._aead.encrypt(nonce, plain, self._aad(ue, purpose))

    def _unwrap(self, ue: str, purpose: str, wrapped: bytes) -> bytes | None:
        if not wrapped.startswith(_WRAP_VERSION):
            return None
        nonce = wrapped[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, wrapped[1 + _NONCE_BYTES :], self._aad(ue, purpose))
        except InvalidTag:
            pass
        log.error("credential does not unwrap (another KEK?)", extra={"ueSvcId": ue})
        return None

    # --- changes -------------------------------------------------------------------------------

    async def issue(self, ue: str) -> IssuedCredentials:
        """Creates the UE's credentials, or rotates them (the previous ones then stay valid
        for the grace period)."""
        psk = "".join(secrets.choice(PSK_ALPHABET) for _ in range(PSK_LENGTH))
        password = secrets.token_urlsafe(MQTT_PASSWORD_BYTES)
        kid = await self._new_kid(ue)
        oscore = OscoreMaterial(
            master_secret=secrets.token_bytes(OSCORE_SECRET_BYTES),
            master_salt=secrets.token_bytes(OSCORE_SALT_BYTES),
            sender_id=kid,
            recipient_id=SERVER_OSCORE_ID,
        )
        now = self._now_ms()
        grace_ms = self.grace * 1000
        reply: Any = await self._issue(
            keys=[self.keys.credentials(ue)],
            args=[
                now,
                grace_ms,
                self._wrap(ue, "psk", psk.encode()),
                mqtt_hash(password),
                self._wrap(ue, "oscore", json.dumps(oscore.to_json()).encode()),
                kid.hex(),
            ],
        )
        created, generation = bool(int(reply[0])), int(reply[1])
        dropped, previous = _str(reply[2]), _str(reply[3])
        if dropped:
            await self.redis.delete(self.keys.oscore_kid(dropped))
            await self.redis.hdel(self.keys.credentials(ue), f"seq:{dropped}")
        if previous:
            # The rotated-out context is found by its id only during its grace.
            await self.redis.pexpire(self.keys.oscore_kid(previous), max(grace_ms, 1))
        await self._record_change(ue)
        log.info(
            "credentials created" if created else "credentials rotated",
            extra={"ueSvcId": ue, "generation": generation},
        )
        return IssuedCredentials(
            ue_svc_id=ue,
            generation=generation,
            created=created,
            psk=psk,
            mqtt_password=password,
            oscore=oscore,
            grace_until_ms=None if created else now + grace_ms,
        )

    async def _new_kid(self, ue: str) -> bytes:
        for _ in range(_MAX_KID_TRIES):
            kid = secrets.token_bytes(OSCORE_ID_BYTES)
            if await self.redis.set(self.keys.oscore_kid(kid.hex()), ue, nx=True):
                return kid
        raise RuntimeError("no free OSCORE sender id")  # 2^56 ids: not in this universe

    async def revoke(self, ue: str) -> int | None:
        """Revokes the UE's credentials at once and announces it on the revocation channel;
        the new generation, None when the UE had none."""
        reply: Any = await self._revoke(keys=[self.keys.credentials(ue)], args=[self._now_ms()])
        if not reply:
            return None
        generation = int(reply[0])
        kids = [self.keys.oscore_kid(_str(k)) for k in reply[1:] if _str(k)]
        if kids:
            await self.redis.delete(*kids)
        await self._record_change(ue)
        await self.redis.publish(self.revoked_channel, ue)
        log.info("credentials revoked", extra={"ueSvcId": ue, "generation": generation})
        return generation

    async def _record_change(self, ue: str) -> int:
        version: Any = await self._changed(
            keys=[self.keys.credentials_version(), self.keys.credentials_changes()], args=[ue]
        )
        return int(version)

    async def changed_since(self, version: int, limit: int = 1000) -> list[tuple[str, int]]:
        """UEs whose credentials changed (created, rotated or revoked) after ``version``, with
        the version of their last change, oldest first: a sync keeps the last version it saw
        and reads each UE's current state (:meth:`mqtt_password_hashes`, :meth:`info`)."""
        rows: Any = await self.redis.zrangebyscore(
            self.keys.credentials_changes(),
            f"({version}",
            "+inf",
            start=0,
            num=limit,
            withscores=True,
        )
        return [(_str(ue), int(score)) for ue, score in rows]

    # --- reading -------------------------------------------------------------------------------

    async def info(self, ue: str) -> CredentialInfo | None:
        """Metadata of the UE's live credentials (never a secret); None when it has none."""
        fields: Any = await self.redis.hmget(
            self.keys.credentials(ue), ["psk", "gen", "createdAt", "rotatedAt", "graceUntil"]
        )
        if fields[0] is None:
            return None
        return CredentialInfo(
            ue_svc_id=ue,
            generation=int(_str(fields[1])),
            created_at_ms=int(_str(fields[2])),
            rotated_at_ms=_int(fields[3]),
            grace_until_ms=_int(fields[4]),
        )

    async def generation(self, ue: str) -> int | None:
        """The generation of the UE's live credentials, None when it has none: a session
        authenticated at another generation (or the one before, after its grace) is over."""
        info = await self.info(ue)
        return None if info is None else info.generation

    async def _current_and_previous(self, ue: str, field: str) -> list[bytes]:
        """The stored values of ``field``: the current one, then the previous one while its
        grace lasts. One command."""
        rows: Any = await self.redis.hmget(
            self.keys.credentials(ue), [field, "prev" + field.capitalize(), "graceUntil"]
        )
        current, previous, grace_until = rows
        values: list[bytes] = [current] if current is not None else []
        if values and previous is not None and (_int(grace_until) or 0) > self._now_ms():
            values.append(previous)
        return values

    async def device_psks(self, identity: str) -> tuple[int, list[tuple[bytes, int | None]]]:
        """The generation and the PSKs accepted now for a DTLS PSK identity, each with the time
        (ms) it stops being accepted (None: the current one); (0, []) when it has none. One
        command. What the coap-edge asks for (RegistryService.GetDeviceKeys)."""
        rows: Any = await self.redis.hmget(
            self.keys.credentials(identity), ["psk", "prevPsk", "graceUntil", "gen"]
        )
        current, previous, grace_until, gen = rows
        if current is None:
            return 0, []
        wrapped: list[tuple[bytes, int | None]] = [(current, None)]
        until = _int(grace_until) or 0
        if previous is not None and until > self._now_ms():
            wrapped.append((previous, until))
        keys = [(self._unwrap(identity, "psk", w), u) for w, u in wrapped]
        return int(_str(gen)), [(k, u) for k, u in keys if k is not None]

    async def reserve_oscore_sequence(self, context: OscoreContext, block: int) -> tuple[int, int]:
        """Reserves ``block`` sender sequence numbers of the server in the context (RFC 8613
        Appendix B.1.1): every edge replica, and every restart, protects its own messages with
        numbers no one used before. One command; [start, end)."""
        field = f"seq:{context.material.sender_id.hex()}"
        end = int(await self.redis.hincrby(self.keys.credentials(context.ue_svc_id), field, block))
        return end - block, end

    async def psk_keys(self, identity: str) -> list[bytes]:
        """The PSKs accepted now for a DTLS PSK identity (= ueSvcId): the current one, then the
        previous one while its grace lasts; empty when unknown or revoked."""
        keys = [
            self._unwrap(identity, "psk", w)
            for w in await self._current_and_previous(identity, "psk")
        ]
        return [k for k in keys if k is not None]

    async def verify_psk(self, identity: str) -> bytes | None:
        """The current PSK of a DTLS PSK identity, None when it has none."""
        keys = await self.psk_keys(identity)
        return keys[0] if keys else None

    async def mqtt_password_hashes(self, username: str) -> list[str]:
        """The Mosquitto ``$7$`` hashes accepted now for an MQTT username (= ueSvcId)."""
        return [_str(v) for v in await self._current_and_previous(username, "mqtt")]

    async def verify_mqtt_password(self, username: str, password: str) -> bool:
        hashes = await self.mqtt_password_hashes(username)
        # Every candidate is checked: the time does not tell which one matched.
        matches = [mqtt_hash_matches(h, password) for h in hashes]
        return any(matches)

    async def oscore_context(self, kid: bytes) -> OscoreContext | None:
        """The OSCORE context of a request's ``kid`` (the device's sender id), current or
        within its grace; None when there is none. Two commands."""
        owner: Any = await self.redis.get(self.keys.oscore_kid(kid.hex()))
        if owner is None:
            return None
        ue = _str(owner)
        rows: Any = await self.redis.hmget(
            self.keys.credentials(ue),
            ["kid", "oscore", "prevKid", "prevOscore", "graceUntil", "gen"],
        )
        kid_now, wrapped, kid_before, wrapped_before, grace_until, gen = rows
        if kid_now is not None and _str(kid_now) == kid.hex():
            chosen, current = wrapped, True
        elif (
            kid_before is not None
            and _str(kid_before) == kid.hex()
            and (_int(grace_until) or 0) > self._now_ms()
        ):
            chosen, current = wrapped_before, False
        else:
            return None
        plain = self._unwrap(ue, "oscore", chosen)
        if plain is None:
            return None
        material = OscoreMaterial.from_json(json.loads(plain))
        return OscoreContext(
            ue_svc_id=ue,
            generation=int(_str(gen)),
            material=material,
            current=current,
            valid_until_ms=None if current else _int(grace_until),
        )


# --- HTTP ------------------------------------------------------------------------------------


class OscorePublic(BaseModel):
    masterSecret: str = Field(description="hex, 16 bytes")
    masterSalt: str = Field(description="hex, 8 bytes")
    senderId: str = Field(description="hex: the device's sender id (the kid of its requests)")
    recipientId: str = Field(description="hex: the server's sender id")
    aeadAlgorithm: str = OSCORE_AEAD
    hkdfAlgorithm: str = OSCORE_HKDF


class CredentialsIssued(BaseModel):
    ueSvcId: str
    generation: int
    pskIdentity: str = Field(description="the DTLS PSK identity: the ueSvcId")
    psk: str = Field(description="the DTLS PSK: its UTF-8 bytes are the key (coap-client -k)")
    mqttUsername: str = Field(description="the ueSvcId")
    mqttPassword: str
    oscore: OscorePublic
    graceUntil: datetime | None = Field(
        default=None, description="after a rotation: until when the previous secrets work"
    )


class CredentialsInfo(BaseModel):
    ueSvcId: str
    generation: int
    createdAt: datetime
    rotatedAt: datetime | None = None
    graceUntil: datetime | None = Field(
        default=None, description="until when the previous secrets work (may be past)"
    )


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def get_credentials(request: Request) -> CredentialStore:
    store: CredentialStore | None = getattr(request.app.state, "credentials", None)
    if store is None:
        raise ProblemError(503, NOT_CONFIGURED, "CREDENTIALS_NOT_CONFIGURED")
    return store


CredentialsDep = Annotated[CredentialStore, Depends(get_credentials)]
UeId = Annotated[
    str, PathParam(description="UE Service ID", json_schema_extra={"pattern": UE_ID_PATTERN})
]
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _check_id(ue: str) -> None:
    if not _UE_ID_RE.fullmatch(ue):
        raise ProblemError(
            400, "ueSvcId: must be 1-128 characters of [A-Za-z0-9._~@:+-]", Cause.INVALID_REQUEST
        )


def router() -> APIRouter:
    """The credential routes; mounted on the management router (admin scope)."""
    api = APIRouter(tags=["Device credentials"])
    path = "/api/v1/ues/{ueSvcId}/credentials"

    @api.post(
        path,
        response_model=CredentialsIssued,
        status_code=200,
        responses={
            200: {"description": "Rotated: new secrets; the previous ones work until graceUntil"},
            201: {"model": CredentialsIssued, "description": "Created"},
            **problem_responses(400, 503),
        },
        summary="Create (201) or rotate (200) a device's credentials; the secrets are returned "
        "this once",
    )
    async def issue(ueSvcId: UeId, store: CredentialsDep) -> JSONResponse:
        _check_id(ueSvcId)
        issued = await store.issue(ueSvcId)
        body = CredentialsIssued(
            ueSvcId=ueSvcId,
            generation=issued.generation,
            pskIdentity=ueSvcId,
            psk=issued.psk,
            mqttUsername=ueSvcId,
            mqttPassword=issued.mqtt_password,
            oscore=OscorePublic(**issued.oscore.to_json()),
            graceUntil=_time(issued.grace_until_ms),
        )
        return JSONResponse(
            body.model_dump(mode="json"),
            status_code=201 if issued.created else 200,
            headers=_NO_STORE,
        )

    @api.get(
        path,
        response_model=CredentialsInfo,
        responses=problem_responses(400, 404, 503),
        summary="A device's credentials: metadata only, never a secret",
    )
    async def info(ueSvcId: UeId, store: CredentialsDep) -> CredentialsInfo:
        _check_id(ueSvcId)
        found = await store.info(ueSvcId)
        if found is None:
            raise ProblemError(404, f"UE {ueSvcId} has no credentials", Cause.UNKNOWN_RECIPIENT)
        return CredentialsInfo(
            ueSvcId=ueSvcId,
            generation=found.generation,
            createdAt=datetime.fromtimestamp(found.created_at_ms / 1000, UTC),
            rotatedAt=_time(found.rotated_at_ms),
            graceUntil=_time(found.grace_until_ms),
        )

    @api.delete(
        path,
        status_code=204,
        responses=problem_responses(400, 404, 503),
        summary="Revoke a device's credentials at once; its live sessions are ended",
    )
    async def revoke(ueSvcId: UeId, store: CredentialsDep) -> Response:
        _check_id(ueSvcId)
        if await store.revoke(ueSvcId) is None:
            raise ProblemError(404, f"UE {ueSvcId} has no credentials", Cause.UNKNOWN_RECIPIENT)
        return Response(status_code=204)

    return api
