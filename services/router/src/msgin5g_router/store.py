"""The router's Redis adapter: message records, inboxes and route leases.

Every multi-step change of one key family is one Lua script, so a crash between two steps
cannot leave half a change behind, and every script touches keys of one hash tag only
(Redis Cluster). The message record (originator's slot) and the inbox entry (recipient's
slot) are written by two scripts, both idempotent: a retried or duplicate MSG repairs a
record whose enqueue was interrupted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from msgin5g_common.keys import Keys

# Separates the UE from the inbox ref in the expiry schedule: a UE id never contains it, so
# the first one is the split even though refs contain it too.
SEP = "\x1f"

_ACCEPT = """
if redis.call('HSETNX', KEYS[1], 'doc', ARGV[1]) == 0 then
  local st = redis.call('HGET', KEYS[1], 'st:' .. ARGV[4])
  local final = 0
  if st then
    local state = cjson.decode(st).state
    if state == 'DELIVERED' or state == 'EXPIRED' or state == 'FAILED' then final = 1 end
  end
  return {0, redis.call('HGET', KEYS[1], 'outcome') or '', final}
end
redis.call('HSET', KEYS[1], 'acceptedAt', ARGV[2], 'rcpt', ARGV[4], 'expiresAt', ARGV[6])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'st:' .. ARGV[4], ARGV[5]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, '', 0}
"""

_ENQUEUE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[3])
local score = tonumber(ARGV[3]) * 1099511627776 + seq
redis.call('ZADD', KEYS[1], string.format('%.0f', score), ARGV[1])
return 1
"""

# ARGV[1] = 'exact' followed by candidate refs, or 'suffix' followed by one ref suffix.
_ACK = """
local ref = false
if ARGV[1] == 'exact' then
  for i = 2, #ARGV do
    if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then ref = ARGV[i]; break end
  end
else
  local n = #ARGV[2]
  for _, r in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if string.sub(r, -n) == ARGV[2] then ref = r; break end
  end
end
if not ref then return {0, redis.call('ZCARD', KEYS[1])} end
local doc = redis.call('HGET', KEYS[2], ref)
redis.call('HDEL', KEYS[2], ref)
redis.call('ZREM', KEYS[1], ref)
return {1, redis.call('ZCARD', KEYS[1]), ref, doc}
"""

# States only move forward: ACCEPTED < STORED < FORWARDED < a final state. A late STORED
# (written after a dispatch already forwarded) or any change after the end is ignored.
_SET_STATE = """
local rank = {ACCEPTED = 0, STORED = 1, FORWARDED = 2, DELIVERED = 3, EXPIRED = 3, FAILED = 3}
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local st = cjson.decode(cur)
local current = rank[st.state] or 0
if current == 3 then return 0 end
local changed = 0
if ARGV[2] == 'FORWARDED' then
  st.attempts = (st.attempts or 0) + 1
  changed = 1
end
if (rank[ARGV[2]] or 0) > current then
  st.state = ARGV[2]
  st.times[ARGV[2]] = tonumber(ARGV[3])
  if ARGV[4] ~= '' then st.cause = ARGV[4] end
  changed = 1
end
if changed == 1 then redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st)) end
if changed == 1 and rank[ARGV[2]] == 3 then return st.times.ACCEPTED or 1 end
return changed
"""

# Takes one document out of an inbox (expiry, discard); returns it, or nothing.
_REMOVE = """
local doc = redis.call('HGET', KEYS[2], ARGV[1])
if not doc then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return doc
"""

# The sweeper lock: taken when free, renewed by its holder.
_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_TOUCH_ROUTE = """
local cur = redis.call('HMGET', KEYS[1], 'kind', 'edge')
local changed = 0
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'edge', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  changed = 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return changed
"""

_RENEW_ROUTE = """
if redis.call('HGET', KEYS[1], 'edge') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_DETACH_ROUTE = """
if redis.call('HGET', KEYS[1], 'edge') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Route:
    kind: str
    edge_id: str


@dataclass(frozen=True, slots=True)
class Acked:
    matched: bool
    remaining: int
    ref: str = ""
    doc: bytes = b""


class RouterStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._accept = redis.register_script(_ACCEPT)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._ack = redis.register_script(_ACK)
        self._set_state = redis.register_script(_SET_STATE)
        self._touch_route = redis.register_script(_TOUCH_ROUTE)
        self._renew_route = redis.register_script(_RENEW_ROUTE)
        self._detach_route = redis.register_script(_DETACH_ROUTE)
        self._remove = redis.register_script(_REMOVE)
        self._lock = redis.register_script(_LOCK)

    # -- registrations (read-only: the registry owns them) -----------------------------------

    async def check_parties(self, ori: str, rcpt: str) -> tuple[bool, bool, str | None]:
        """(originator registered, recipient known, recipient's registered transport), for
        recipient ids of UEs and ASs."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.registration(ori))
            pipe.exists(self.keys.known(rcpt))
            pipe.hget(self.keys.registration(rcpt), "transport")
            ori_reg, rcpt_known, transport = await pipe.execute()
        return bool(ori_reg), bool(rcpt_known) or transport is not None, text_or_none(transport)

    async def is_registered(self, rcpt: str) -> bool:
        return bool(await self.redis.exists(self.keys.registration(rcpt)))

    async def as_target(self, as_svc_id: str) -> str | None:
        """Where the AS takes deliveries (its registration's targetUri), or None."""
        return text_or_none(await self.redis.hget(self.keys.as_reg(as_svc_id), "targetUri"))

    async def group_membership(self, group: str, ue: str) -> tuple[int, bool]:
        """(how many members the group has, whether ``ue`` is one of them)."""
        key = self.keys.group_members(group)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(key)
            pipe.zscore(key, ue)
            size, score = await pipe.execute()
        return int(size), score is not None

    async def registered_transport(self, ue: str) -> str | None:
        return text_or_none(await self.redis.hget(self.keys.ue_reg(ue), "transport"))

    # -- message records -----------------------------------------------------------------------

    async def accept(
        self, ori: str, msg_id: str, doc: bytes, rcpt: str, ttl_ms: int, expires_ms: int = 0
    ) -> tuple[bool, str, bool]:
        """Creates the record unless it exists: (created, outcome of the earlier copy, whether
        the earlier copy has reached a final state for ``rcpt``)."""
        now = now_ms()
        # A group, topic or broadcast message's record gets one state per recipient from the
        # fan-out instead.
        many = rcpt.split(":", 1)[0] in ("GROUP", "TOPIC", "BC")
        state = "" if many else json.dumps({"state": "ACCEPTED", "times": {"ACCEPTED": now}})
        created, outcome, final = await self._accept(
            keys=[self.keys.message(ori, msg_id)],
            args=[doc, now, ttl_ms, rcpt, state, expires_ms],
        )
        return bool(created), text_or_none(outcome) or "", bool(final)

    async def set_outcome(self, ori: str, msg_id: str, outcome: str) -> None:
        await self.redis.hset(self.keys.message(ori, msg_id), "outcome", outcome)

    async def set_state(self, ori: str, msg_id: str, rcpt: str, state: str, cause: str = "") -> int:
        """Moves the recipient's state forward; 0 when nothing changed, else non-zero (the
        acceptance time in ms when the new state is final)."""
        changed = await self._set_state(
            keys=[self.keys.message(ori, msg_id)], args=[f"st:{rcpt}", state, now_ms(), cause]
        )
        return int(changed)

    async def set_report(self, ori: str, msg_id: str, rcpt: str, deliv_st: int) -> None:
        """Notes the recipient's delivery report in the message record (if still kept)."""
        name = {1: "REPT_DELY_SUCCESS", 2: "REPT_DELY_FAILED"}.get(deliv_st, "")
        key = self.keys.message(ori, msg_id)
        if await self.redis.exists(key):
            await self.redis.hset(key, f"rep:{rcpt}", name)

    async def record(self, ori: str, msg_id: str) -> dict[str, Any]:
        raw = await self.redis.hgetall(self.keys.message(ori, msg_id))
        return {text_or_none(k) or "": v for k, v in raw.items()}

    # -- inboxes ---------------------------------------------------------------------------------

    async def enqueue(self, ue: str, ref: str, doc: bytes, rank: int) -> bool:
        added = await self._enqueue(
            keys=[self.keys.inbox(ue), self.keys.docs(ue), self.keys.seq(ue)], args=[ref, doc, rank]
        )
        return bool(added)

    async def ack(self, ue: str, refs: list[str], exact: bool) -> Acked:
        """Removes the first pending document among ``refs`` (exact), or the first in inbox
        order whose ref ends with ``refs[0]`` (suffix)."""
        result = await self._ack(
            keys=[self.keys.inbox(ue), self.keys.docs(ue)],
            args=["exact" if exact else "suffix", *refs],
        )
        if not result[0]:
            return Acked(False, int(result[1]))
        return Acked(True, int(result[1]), text_or_none(result[2]) or "", _bytes(result[3]))

    async def remove_pending(self, ue: str, ref: str) -> bytes | None:
        doc = await self._remove(keys=[self.keys.inbox(ue), self.keys.docs(ue)], args=[ref])
        return None if doc is None else _bytes(doc)

    async def replace_pending(self, ue: str, ref: str, doc: bytes) -> bool:
        """Rewrites a pending document in place (an updated expiry); False when not pending."""
        key = self.keys.docs(ue)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hexists(key, ref)
            pipe.hset(key, ref, doc)
            exists, _ = await pipe.execute()
        if not exists:
            await self.redis.hdel(key, ref)
        return bool(exists)

    # -- expiry and retry schedules ------------------------------------------------------------

    async def schedule_expiry(self, ue: str, ref: str, expires_ms: int) -> None:
        await self.redis.zadd(self.keys.expiry(), {f"{ue}{SEP}{ref}": expires_ms})

    async def unschedule_expiry(self, ue: str, ref: str) -> None:
        await self.redis.zrem(self.keys.expiry(), f"{ue}{SEP}{ref}")

    async def pending_count(self) -> int:
        """Documents stored and not acknowledged, all UEs together (the expiry schedule)."""
        return int(await self.redis.zcard(self.keys.expiry()))

    async def due_expiries(self, now: int, limit: int) -> list[tuple[str, str]]:
        members = await self.redis.zrangebyscore(self.keys.expiry(), 0, now, start=0, num=limit)
        pairs = []
        for member in members:
            ue, _, ref = (text_or_none(member) or "").partition(SEP)
            pairs.append((ue, ref))
        return pairs

    async def count_forward(self, ue: str) -> int:
        """Counts one more forward of the UE's documents without an acknowledgement."""
        count = int(await self.redis.incr(self.keys.retry_count(ue)))
        await self.redis.expire(self.keys.retry_count(ue), 7 * 86400)
        return count

    async def retry_at(self, ue: str, when_ms: int) -> None:
        await self.redis.zadd(self.keys.retry(), {ue: when_ms})

    async def clear_retry(self, ue: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.retry_count(ue))
            pipe.zrem(self.keys.retry(), ue)
            await pipe.execute()

    async def claim_due_retries(self, now: int, limit: int) -> list[str]:
        """UEs whose retry is due, each taken off the schedule by exactly one caller."""
        members = await self.redis.zrangebyscore(self.keys.retry(), 0, now, start=0, num=limit)
        claimed = []
        for member in members:
            ue = text_or_none(member) or ""
            if await self.redis.zrem(self.keys.retry(), ue):
                claimed.append(ue)
        return claimed

    async def take_lock(self, holder: str, ttl_ms: int) -> bool:
        return bool(await self._lock(keys=[self.keys.sweeper()], args=[holder, ttl_ms]))

    async def set_record_expiry(self, ori: str, msg_id: str, expires_ms: int, ttl_ms: int) -> None:
        key = self.keys.message(ori, msg_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "expiresAt", expires_ms)
            pipe.pexpire(key, ttl_ms)
            await pipe.execute()

    async def inbox(self, ue: str, limit: int | None) -> tuple[list[tuple[str, bytes]], int]:
        """The first ``limit`` pending documents (all when None) and how many are pending."""
        if limit is not None and limit <= 0:
            return [], int(await self.redis.zcard(self.keys.inbox(ue)))
        stop = -1 if limit is None else limit - 1
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.inbox(ue), 0, stop)
            pipe.zcard(self.keys.inbox(ue))
            refs, pending = await pipe.execute()
        if not refs:
            return [], int(pending)
        docs = await self.redis.hmget(self.keys.docs(ue), refs)
        pairs = [
            (text_or_none(r) or "", _bytes(d))
            for r, d in zip(refs, docs, strict=True)
            if d is not None
        ]
        return pairs, int(pending)

    # -- route leases and edges ---------------------------------------------------------------

    async def touch_route(self, ue: str, kind: str, edge_id: str, ttl_ms: int) -> bool:
        """Points the UE's lease at this replica; True when it pointed elsewhere (or nowhere)."""
        changed = await self._touch_route(keys=[self.keys.route(ue)], args=[kind, edge_id, ttl_ms])
        return bool(changed)

    async def renew_routes(self, ues: list[str], edge_id: str, ttl_ms: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for ue in ues:
                await self._renew_route(
                    keys=[self.keys.route(ue)], args=[edge_id, ttl_ms], client=pipe
                )
            await pipe.execute()

    async def detach_route(self, ue: str, edge_id: str) -> None:
        await self._detach_route(keys=[self.keys.route(ue)], args=[edge_id])

    async def route(self, ue: str) -> Route | None:
        kind, edge = await self.redis.hmget(self.keys.route(ue), ["kind", "edge"])
        if kind is None or edge is None:
            return None
        return Route(text_or_none(kind) or "", text_or_none(edge) or "")

    async def edge_address(self, kind: str, edge_id: str) -> str | None:
        return text_or_none(await self.redis.get(self.keys.edge(kind, edge_id)))

    async def live_edges(self, kind: str) -> list[str]:
        ids = await self.redis.zrangebyscore(self.keys.edges(kind), now_ms(), "+inf")
        return [text_or_none(i) or "" for i in ids]


def text_or_none(value: object) -> str | None:
    """A Redis reply as text (redis-py's types do not know the client decodes nothing)."""
    if value is None:
        return None
    return as_text(value)


def as_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
