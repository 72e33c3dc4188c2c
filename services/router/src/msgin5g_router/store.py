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
redis.call('HSET', KEYS[1], 'acceptedAt', ARGV[2], 'rcpt', ARGV[4], 'st:' .. ARGV[4], ARGV[5])
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

_ACK = """
local ref = false
if ARGV[2] == '1' then
  if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then ref = ARGV[1] end
else
  local n = #ARGV[1]
  for _, r in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if string.sub(r, -n) == ARGV[1] then ref = r; break end
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
if (rank[ARGV[2]] or 0) <= (rank[st.state] or 0) then return 0 end
st.state = ARGV[2]
st.times[ARGV[2]] = tonumber(ARGV[3])
if ARGV[4] ~= '' then st.cause = ARGV[4] end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st))
return 1
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

    # -- registrations (read-only: the registry owns them) -----------------------------------

    async def check_parties(self, ori_ue: str, rcpt_ue: str) -> tuple[bool, bool, str | None]:
        """(originator registered, recipient known, recipient's registered transport)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.ue_reg(ori_ue))
            pipe.exists(self.keys.ue_known(rcpt_ue))
            pipe.hget(self.keys.ue_reg(rcpt_ue), "transport")
            ori_reg, rcpt_known, transport = await pipe.execute()
        return bool(ori_reg), bool(rcpt_known) or transport is not None, _text(transport)

    async def registered_transport(self, ue: str) -> str | None:
        return _text(await self.redis.hget(self.keys.ue_reg(ue), "transport"))

    # -- message records -----------------------------------------------------------------------

    async def accept(
        self, ori: str, msg_id: str, doc: bytes, rcpt: str, ttl_ms: int
    ) -> tuple[bool, str, bool]:
        """Creates the record unless it exists: (created, outcome of the earlier copy, whether
        the earlier copy has reached a final state for ``rcpt``)."""
        now = now_ms()
        state = json.dumps({"state": "ACCEPTED", "times": {"ACCEPTED": now}})
        created, outcome, final = await self._accept(
            keys=[self.keys.message(ori, msg_id)], args=[doc, now, ttl_ms, rcpt, state]
        )
        return bool(created), _text(outcome) or "", bool(final)

    async def set_outcome(self, ori: str, msg_id: str, outcome: str) -> None:
        await self.redis.hset(self.keys.message(ori, msg_id), "outcome", outcome)

    async def set_state(
        self, ori: str, msg_id: str, rcpt: str, state: str, cause: str = ""
    ) -> bool:
        changed = await self._set_state(
            keys=[self.keys.message(ori, msg_id)], args=[f"st:{rcpt}", state, now_ms(), cause]
        )
        return bool(changed)

    async def record(self, ori: str, msg_id: str) -> dict[str, Any]:
        raw = await self.redis.hgetall(self.keys.message(ori, msg_id))
        return {_text(k) or "": v for k, v in raw.items()}

    # -- inboxes ---------------------------------------------------------------------------------

    async def enqueue(self, ue: str, ref: str, doc: bytes, rank: int) -> bool:
        added = await self._enqueue(
            keys=[self.keys.inbox(ue), self.keys.docs(ue), self.keys.seq(ue)], args=[ref, doc, rank]
        )
        return bool(added)

    async def ack(self, ue: str, ref_or_suffix: str, exact: bool) -> Acked:
        result = await self._ack(
            keys=[self.keys.inbox(ue), self.keys.docs(ue)],
            args=[ref_or_suffix, "1" if exact else "0"],
        )
        if not result[0]:
            return Acked(False, int(result[1]))
        return Acked(True, int(result[1]), _text(result[2]) or "", bytes(result[3]))

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
            (_text(r) or "", _bytes(d)) for r, d in zip(refs, docs, strict=True) if d is not None
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
        return Route(_text(kind) or "", _text(edge) or "")

    async def edge_address(self, kind: str, edge_id: str) -> str | None:
        return _text(await self.redis.get(self.keys.edge(kind, edge_id)))

    async def live_edges(self, kind: str) -> list[str]:
        ids = await self.redis.zrangebyscore(self.keys.edges(kind), now_ms(), "+inf")
        return [_text(i) or "" for i in ids]


def _text(value: object) -> str | None:
    """A Redis reply as text (redis-py's types do not know the client decodes nothing)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
