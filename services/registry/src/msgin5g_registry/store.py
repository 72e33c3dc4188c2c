"""Registrations in Redis: UEs (``ue:{id}:known``, ``ue:{id}:reg``), application servers
(``as:{id}:known``, ``as:{id}:reg``, ``asreg:<registrationId>``), groups and topics."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from msgin5g_common.keys import Keys


@dataclass(frozen=True, slots=True)
class Registration:
    ue_svc_id: str
    transport: str
    lifetime: int
    registered_at_ms: int
    expires_at_ms: int
    bc_area: str
    delivery_mode: str
    max_seg_size: int | None


@dataclass(frozen=True, slots=True)
class UeRecord:
    ue_svc_id: str
    known: bool
    registration: Registration | None


class RegistryStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def register(
        self,
        ue: str,
        *,
        transport: str,
        lifetime: int,
        bc_area: str = "",
        delivery_mode: str = "observe",
        max_seg_size: int | None = None,
    ) -> Registration:
        now = int(time.time() * 1000)
        reg = Registration(
            ue_svc_id=ue,
            transport=transport,
            lifetime=lifetime,
            registered_at_ms=now,
            expires_at_ms=now + lifetime * 1000,
            bc_area=bc_area,
            delivery_mode=delivery_mode,
            max_seg_size=max_seg_size,
        )
        fields: dict[FieldT, EncodableT] = {
            "transport": transport,
            "lifetime": lifetime,
            "registeredAt": reg.registered_at_ms,
            "expiresAt": reg.expires_at_ms,
            "bcArea": bc_area,
            "deliveryMode": delivery_mode,
            "maxSegSize": max_seg_size or 0,
        }
        key = self.keys.ue_reg(ue)
        previous = await self.redis.hget(key, "bcArea")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, lifetime * 1000)
            pipe.set(self.keys.ue_known(ue), now, nx=True)
            await pipe.execute()
        old_area = previous.decode() if isinstance(previous, bytes) else (previous or "")
        if old_area and old_area != bc_area:
            await self.redis.zrem(self.keys.bc_area(old_area), ue)
        if bc_area:
            # Scored by the registration's expiry: a lapsed registration leaves the area.
            await self.redis.zadd(self.keys.bc_area(bc_area), {ue: reg.expires_at_ms})
        return reg

    async def deregister(self, ue: str) -> bool:
        area = await self.redis.hget(self.keys.ue_reg(ue), "bcArea")
        if area:
            name = area.decode() if isinstance(area, bytes) else str(area)
            await self.redis.zrem(self.keys.bc_area(name), ue)
        return bool(await self.redis.delete(self.keys.ue_reg(ue)))

    async def subscribe(self, ue: str, topics: list[str], until_ms: float) -> None:
        for topic in topics:
            await self.redis.zadd(self.keys.topic_subs(topic), {ue: until_ms})

    async def unsubscribe(self, ue: str, topics: list[str]) -> None:
        for topic in topics:
            await self.redis.zrem(self.keys.topic_subs(topic), ue)

    async def subscribers(self, topic: str, now_ms: int) -> list[tuple[str, float]]:
        """Current subscribers of a topic with their subscription expiry (ms; inf: none)."""
        rows: Any = await self.redis.zrangebyscore(
            self.keys.topic_subs(topic), now_ms, "+inf", withscores=True
        )
        return [(m.decode() if isinstance(m, bytes) else str(m), float(score)) for m, score in rows]

    async def provision(self, ue: str) -> bool:
        """Makes a UE known without registering it; False when it was known already."""
        return bool(await self.redis.set(self.keys.ue_known(ue), int(time.time() * 1000), nx=True))

    async def get(self, ue: str) -> UeRecord:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.ue_known(ue))
            pipe.hgetall(self.keys.ue_reg(ue))
            known, fields = await pipe.execute()
        reg = None
        if fields:
            f = {k.decode(): v.decode() for k, v in fields.items()}
            reg = Registration(
                ue_svc_id=ue,
                transport=f["transport"],
                lifetime=int(f["lifetime"]),
                registered_at_ms=int(f["registeredAt"]),
                expires_at_ms=int(f["expiresAt"]),
                bc_area=f.get("bcArea", ""),
                delivery_mode=f.get("deliveryMode", "observe"),
                max_seg_size=int(f.get("maxSegSize", "0")) or None,
            )
        return UeRecord(ue_svc_id=ue, known=bool(known) or reg is not None, registration=reg)


class GroupStore:
    """Group profiles: a sorted set of member UE Service IDs per group (score 0, so that
    members page in id order)."""

    CHUNK = 10_000

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def replace(self, group: str, members: list[str]) -> bool:
        """Creates or replaces a group's members; True when the group is new. The new list is
        built aside and renamed over the old one, so readers never see half a group."""
        key = self.keys.group_members(group)
        staging = f"{key}:staging"
        await self.redis.delete(staging)
        for start in range(0, len(members), self.CHUNK):
            chunk = members[start : start + self.CHUNK]
            await self.redis.zadd(staging, dict.fromkeys(chunk, 0))
        existed = bool(await self.redis.exists(key))
        await self.redis.rename(staging, key)
        return not existed

    async def add(self, group: str, members: list[str]) -> int:
        key = self.keys.group_members(group)
        for start in range(0, len(members), self.CHUNK):
            await self.redis.zadd(key, dict.fromkeys(members[start : start + self.CHUNK], 0))
        return int(await self.redis.zcard(key))

    async def remove(self, group: str, member: str) -> bool:
        return bool(await self.redis.zrem(self.keys.group_members(group), member))

    async def delete(self, group: str) -> bool:
        return bool(await self.redis.delete(self.keys.group_members(group)))

    async def count(self, group: str) -> int:
        return int(await self.redis.zcard(self.keys.group_members(group)))

    async def page(self, group: str, after: str | None, limit: int) -> list[str]:
        low = f"({after}" if after else "-"
        members = await self.redis.zrangebylex(
            self.keys.group_members(group), low, "+", start=0, num=limit
        )
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


@dataclass(frozen=True, slots=True)
class AsRegistration:
    as_svc_id: str
    registration_id: str
    target_uri: str
    app_id: str
    profile: dict[str, Any] | None
    client_id: str
    registered_at_ms: int


# Creates or replaces an AS's registration and keeps its registrationId across updates:
# returns {registrationId, 1 if created}.
_AS_REGISTER = """
local id = redis.call('HGET', KEYS[1], 'registrationId')
local created = 0
if not id then id = ARGV[1]; created = 1 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'registrationId', id, 'targetUri', ARGV[2], 'appId', ARGV[3],
           'profile', ARGV[4], 'clientId', ARGV[5], 'registeredAt', ARGV[6])
redis.call('SET', KEYS[2], ARGV[6], 'NX')
return {id, created}
"""

# Deletes the registration only if it is still the one named (a newer one stays).
_AS_DEREGISTER = """
if redis.call('HGET', KEYS[1], 'registrationId') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AsStore:
    """Application server registrations (TS 29.538 MSGS_ASRegistration). One registration per
    asSvcId: registering again updates it and keeps its registrationId."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._register = redis.register_script(_AS_REGISTER)
        self._deregister = redis.register_script(_AS_DEREGISTER)

    async def register(
        self,
        as_svc_id: str,
        *,
        target_uri: str,
        app_id: str,
        profile: dict[str, Any] | None,
        client_id: str,
    ) -> tuple[AsRegistration, bool]:
        """The registration and whether it is new."""
        now = int(time.time() * 1000)
        reg_id, created = await self._register(
            keys=[self.keys.as_reg(as_svc_id), self.keys.as_known(as_svc_id)],
            args=[
                uuid.uuid4().hex,
                target_uri,
                app_id,
                json.dumps(profile) if profile is not None else "",
                client_id,
                now,
            ],
        )
        registration_id = _text(reg_id)
        # The index lives in another slot (Redis Cluster): written after the registration,
        # so a crash in between leaves a registration whose DELETE 404s until it is
        # registered again, never an index entry that names a foreign registration.
        await self.redis.set(self.keys.as_registration(registration_id), as_svc_id)
        reg = AsRegistration(
            as_svc_id=as_svc_id,
            registration_id=registration_id,
            target_uri=target_uri,
            app_id=app_id,
            profile=profile,
            client_id=client_id,
            registered_at_ms=now,
        )
        return reg, bool(created)

    async def get(self, as_svc_id: str) -> AsRegistration | None:
        raw = await self.redis.hgetall(self.keys.as_reg(as_svc_id))
        if not raw:
            return None
        f = {_text(k): _text(v) for k, v in raw.items()}
        return AsRegistration(
            as_svc_id=as_svc_id,
            registration_id=f.get("registrationId", ""),
            target_uri=f.get("targetUri", ""),
            app_id=f.get("appId", ""),
            profile=json.loads(f["profile"]) if f.get("profile") else None,
            client_id=f.get("clientId", ""),
            registered_at_ms=int(f.get("registeredAt", "0")),
        )

    async def owner(self, registration_id: str) -> str | None:
        """The asSvcId a registrationId belongs to, or None."""
        value = await self.redis.get(self.keys.as_registration(registration_id))
        return None if value is None else _text(value)

    async def deregister(self, as_svc_id: str, registration_id: str) -> bool:
        removed = await self._deregister(keys=[self.keys.as_reg(as_svc_id)], args=[registration_id])
        await self.redis.delete(self.keys.as_registration(registration_id))
        return bool(removed)
