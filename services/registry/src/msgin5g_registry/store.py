"""UE registrations in Redis (the registry owns the ``ue:{id}:known`` and ``ue:{id}:reg`` keys)."""

from __future__ import annotations

import time
from dataclasses import dataclass

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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, lifetime * 1000)
            pipe.set(self.keys.ue_known(ue), now, nx=True)
            await pipe.execute()
        return reg

    async def deregister(self, ue: str) -> bool:
        return bool(await self.redis.delete(self.keys.ue_reg(ue)))

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
