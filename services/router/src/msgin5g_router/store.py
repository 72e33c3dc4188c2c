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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from msgin5g_common.keys import Keys, as_of
from msgin5g_common.redisutil import AutoPipeline

# Separates the UE from the inbox ref in the expiry schedule: a UE id never contains it, so
# the first one is the split even though refs contain it too.
SEP = "\x1f"
# Seconds a recipient's retry counter outlives its last forward.
RETRY_COUNT_TTL = 7 * 86400

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

# Takes back one forward that did not happen (recorded before the edge was called, as
# _SET_STATE FORWARDED does, and the edge did not take the documents): one attempt less, and a
# recipient never forwarded to is STORED again, as if the forward had not been tried. A final
# state stays as it is.
_UNFORWARD = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local st = cjson.decode(cur)
if st.state ~= 'FORWARDED' then return 0 end
local attempts = (st.attempts or 1) - 1
if attempts > 0 then
  st.attempts = attempts
else
  st.attempts = nil
  st.state = 'STORED'
  st.times.FORWARDED = nil
  if not st.times.STORED then st.times.STORED = tonumber(ARGV[2]) end
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st))
return 1
"""

# One forward fewer without an acknowledgement (the recipient's retry counter).
_UNCOUNT = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 1 then return redis.call('DECR', KEYS[1]) end
redis.call('DEL', KEYS[1])
return 0
"""

# Takes a recipient off the retry schedule only if it is still due when the caller put it.
_UNSCHEDULE = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at and tonumber(at) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

# Adds segment ARGV[1] (document ARGV[2]) of a reassembly. ARGV[3]: the total it declares
# (0: none), ARGV[4]: the originator's bound on open reassemblies, ARGV[5]: TTL ms, ARGV[6]:
# the segId. Returns {status, segments held, total}; status 1 added, 0 duplicate,
# -1 inconsistent total, -2 number beyond the total, -3 too many open reassemblies.
_ADD_SEGMENT = """
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
local held = redis.call('HLEN', KEYS[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  held = held - 1 - redis.call('HEXISTS', KEYS[1], 'asked')
end
if redis.call('HEXISTS', KEYS[1], 'n:' .. ARGV[1]) == 1 then return {0, held, total} end
local declared = tonumber(ARGV[3])
if declared > 0 then
  if total > 0 and total ~= declared then return {-1, held, total} end
  total = declared
end
if total > 0 and tonumber(ARGV[1]) > total then return {-2, held, total} end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then return {-3, held, total} end
  redis.call('SADD', KEYS[2], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('HSET', KEYS[1], 'n:' .. ARGV[1], ARGV[2], 'total', total)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, held + 1, total}
"""

# Counts down the segments of a message still to be acknowledged by one recipient (field
# ARGV[1] of the message record, set when it was segmented): returns what remains.
_SEGMENT_DONE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
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


@dataclass(frozen=True, slots=True)
class Parties:
    """What acceptance needs to know about a message's two parties, read in one round trip."""

    ori_registered: bool
    rcpt_known: bool
    transport: str | None
    route: Route | None
    route_changed: bool
    as_target: str | None
    max_seg_size: int = 0
    # Documents pending in the recipient's inbox.
    pending: int = 0
    # Forwards to the recipient without an acknowledgement (its retry counter).
    unacknowledged: int = 0


@dataclass(frozen=True, slots=True)
class StateChange:
    """A recipient's state in a message record moves forward (``set_state``)."""

    ori: str
    msg_id: str
    rcpt: str
    state: str
    cause: str = ""


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
        self._add_segment = redis.register_script(_ADD_SEGMENT)
        self._segment_done = redis.register_script(_SEGMENT_DONE)
        self._unforward = redis.register_script(_UNFORWARD)
        self._uncount = redis.register_script(_UNCOUNT)
        self._unschedule = redis.register_script(_UNSCHEDULE)
        self._scripts = [
            self._accept,
            self._enqueue,
            self._ack,
            self._set_state,
            self._touch_route,
            self._renew_route,
            self._detach_route,
            self._remove,
            self._lock,
            self._add_segment,
            self._segment_done,
            self._unforward,
            self._uncount,
            self._unschedule,
        ]
        # The hot path's commands: what concurrent requests (and the items of a batched
        # one) ask at the same time goes to Redis in one round trip.
        self._auto = AutoPipeline(redis, self._load_scripts)

    # -- pipelines ---------------------------------------------------------------------------

    def _queue(self, pipe: Any, script: AsyncScript, keys: list[str], args: list[Any]) -> None:
        """Queues a script by its SHA: redis-py's own pipelined scripts ask Redis whether
        they exist before every pipeline, a round trip per message on the hot path."""
        pipe.evalsha(script.sha, len(keys), *keys, *args)

    async def _execute(self, build: Callable[[Any], None]) -> list[Any]:
        """Runs the commands ``build`` puts on a pipeline, in one round trip with those of
        other requests built at the same time (AutoPipeline); their replies, or the first
        error. A Redis that lost its script cache (a restart) answers NOSCRIPT: the scripts
        are loaded and the commands run again (every step in these pipelines is idempotent
        or only counts)."""
        return await self._auto.execute(build)

    async def _one(self, build: Callable[[Any], None]) -> Any:
        """``_execute`` of a single command: its reply."""
        return (await self._execute(build))[0]

    async def _load_scripts(self) -> None:
        for script in self._scripts:
            await self.redis.script_load(script.script)

    async def close(self) -> None:
        """Waits for the commands on their way."""
        await self._auto.close()

    # -- registrations (read-only: the registry owns them) -----------------------------------

    async def parties(
        self, ori: str, rcpt: str, touch: tuple[str, str, int] | None = None
    ) -> Parties:
        """The parties of a P2P/P2A/A2P message in one round trip (with the size of the
        recipient's inbox); ``touch`` (kind, edge id, TTL ms) also points the originator's
        lease at the edge it came through."""
        as_id = as_of(rcpt)

        def build(pipe: Any) -> None:
            pipe.exists(self.keys.registration(ori))
            pipe.exists(self.keys.known(rcpt))
            pipe.hmget(self.keys.registration(rcpt), ["transport", "maxSegSize"])
            if as_id is None:
                pipe.hmget(self.keys.route(rcpt), ["kind", "edge"])
            else:
                pipe.hget(self.keys.as_reg(as_id), "targetUri")
            pipe.zcard(self.keys.inbox(rcpt))
            pipe.get(self.keys.retry_count(rcpt))
            if touch is not None:
                self._queue(pipe, self._touch_route, [self.keys.route(ori)], list(touch))

        replies = await self._execute(build)
        ori_reg, rcpt_known, (transport, max_seg), where, pending, retries = replies[:6]
        route = None
        target = None
        if as_id is None:
            kind, edge = where
            if kind is not None and edge is not None:
                route = Route(as_text(kind), as_text(edge))
        else:
            target = text_or_none(where)
        return Parties(
            ori_registered=bool(ori_reg),
            rcpt_known=bool(rcpt_known) or transport is not None,
            transport=text_or_none(transport),
            route=route,
            route_changed=touch is not None and bool(replies[6]),
            as_target=target,
            max_seg_size=int(max_seg or 0),
            pending=int(pending),
            unacknowledged=int(retries or 0),
        )

    async def pending_counts(self, rcpts: list[str]) -> dict[str, int]:
        """How many documents are pending for each recipient, in one round trip."""

        def build(pipe: Any) -> None:
            for rcpt in rcpts:
                pipe.zcard(self.keys.inbox(rcpt))

        counts = await self._execute(build)
        return {r: int(n) for r, n in zip(rcpts, counts, strict=True)}

    async def has_message(self, ori: str, msg_id: str) -> bool:
        """Whether a message record of ``ori`` with ``msg_id`` exists (accepted before)."""
        return bool(await self._one(lambda pipe: pipe.exists(self.keys.message(ori, msg_id))))

    async def is_registered(self, rcpt: str) -> bool:
        return bool(await self._one(lambda pipe: pipe.exists(self.keys.registration(rcpt))))

    async def as_target(self, as_svc_id: str) -> str | None:
        """Where the AS takes deliveries (its registration's targetUri), or None."""
        key = self.keys.as_reg(as_svc_id)
        return text_or_none(await self._one(lambda pipe: pipe.hget(key, "targetUri")))

    async def group_membership(self, group: str, ue: str) -> tuple[int, bool]:
        """(how many members the group has, whether ``ue`` is one of them)."""
        key = self.keys.group_members(group)

        def build(pipe: Any) -> None:
            pipe.zcard(key)
            pipe.zscore(key, ue)

        size, score = await self._execute(build)
        return int(size), score is not None

    async def registered_transport(self, ue: str) -> str | None:
        key = self.keys.ue_reg(ue)
        return text_or_none(await self._one(lambda pipe: pipe.hget(key, "transport")))

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
        created, outcome, final = await self._one(
            lambda pipe: self._queue(
                pipe,
                self._accept,
                [self.keys.message(ori, msg_id)],
                [doc, now, ttl_ms, rcpt, state, expires_ms],
            )
        )
        return bool(created), text_or_none(outcome) or "", bool(final)

    async def store_pending(
        self,
        rcpt: str,
        ref: str,
        doc: bytes,
        rank: int,
        expires_ms: int,
        *,
        outcome: tuple[str, str, str] | None = None,
        state: StateChange | None = None,
        forward_retry: int | None = None,
    ) -> None:
        """Enqueues a document and schedules its expiry, and optionally sets the message's
        outcome (ori, msgId, outcome) and a recipient state: one round trip, each step
        idempotent (a retried or duplicate submission repeats them harmlessly). A state
        FORWARDED also counts the forward as ``forwarded`` does and, with ``forward_retry``
        (ms), schedules the re-send then (the caller forwards the document right after)."""

        def build(pipe: Any) -> None:
            self._queue(
                pipe,
                self._enqueue,
                [self.keys.inbox(rcpt), self.keys.docs(rcpt), self.keys.seq(rcpt)],
                [ref, doc, rank],
            )
            pipe.zadd(self.keys.expiry(), {f"{rcpt}{SEP}{ref}": expires_ms})
            if outcome is not None:
                pipe.hset(self.keys.message(outcome[0], outcome[1]), "outcome", outcome[2])
            if state is not None:
                self._queue_state(pipe, state)
            if state is not None and state.state == "FORWARDED":
                pipe.incr(self.keys.retry_count(rcpt))
                pipe.expire(self.keys.retry_count(rcpt), RETRY_COUNT_TTL)
                if forward_retry is not None:
                    pipe.zadd(self.keys.retry(), {rcpt: forward_retry})

        await self._execute(build)

    def _queue_state(self, pipe: Any, change: StateChange) -> None:
        self._queue(
            pipe,
            self._set_state,
            [self.keys.message(change.ori, change.msg_id)],
            [f"st:{change.rcpt}", change.state, now_ms(), change.cause],
        )

    async def forwarded(self, rcpt: str, changes: list[StateChange]) -> int:
        """Records that documents left for the recipient (their states become FORWARDED)
        and counts one more forward without an acknowledgement; returns the count."""

        def build(pipe: Any) -> None:
            for change in changes:
                self._queue_state(pipe, change)
            pipe.incr(self.keys.retry_count(rcpt))
            pipe.expire(self.keys.retry_count(rcpt), RETRY_COUNT_TTL)

        replies = await self._execute(build)
        return int(replies[len(changes)])

    async def unforwarded(
        self, rcpt: str, changes: list[StateChange], retry_ms: int | None
    ) -> None:
        """Takes back a ``forwarded`` whose documents did not leave: each state loses that
        attempt (back to STORED when it was the only one), the count goes down by one, and
        the re-send scheduled for ``retry_ms`` (if any, and unless rescheduled since) goes."""

        def build(pipe: Any) -> None:
            now = now_ms()
            for change in changes:
                self._queue(
                    pipe,
                    self._unforward,
                    [self.keys.message(change.ori, change.msg_id)],
                    [f"st:{change.rcpt}", now],
                )
            self._queue(pipe, self._uncount, [self.keys.retry_count(rcpt)], [])
            if retry_ms is not None:
                self._queue(pipe, self._unschedule, [self.keys.retry()], [rcpt, retry_ms])

        await self._execute(build)

    async def take_pending(
        self, rcpt: str, refs: list[str], exact: bool, touch: tuple[str, str, int] | None = None
    ) -> tuple[Acked, bool]:
        """``ack`` and, with ``touch``, the recipient's lease refresh, in one round trip:
        (what was acknowledged, whether the lease moved)."""

        def build(pipe: Any) -> None:
            self._queue(
                pipe,
                self._ack,
                [self.keys.inbox(rcpt), self.keys.docs(rcpt)],
                ["exact" if exact else "suffix", *refs],
            )
            if touch is not None:
                self._queue(pipe, self._touch_route, [self.keys.route(rcpt)], list(touch))

        replies = await self._execute(build)
        result = replies[0]
        moved = touch is not None and bool(replies[1])
        if not result[0]:
            return Acked(False, int(result[1])), moved
        acked = Acked(True, int(result[1]), text_or_none(result[2]) or "", _bytes(result[3]))
        return acked, moved

    async def settle(self, rcpt: str, acked: Acked, change: StateChange | None) -> int:
        """After ``take_pending``: the document leaves the expiry schedule, the retry state
        goes when nothing is pending any more, and the message's state moves on. Returns
        what ``set_state`` returns (0 without a change)."""

        def build(pipe: Any) -> None:
            pipe.zrem(self.keys.expiry(), f"{rcpt}{SEP}{acked.ref}")
            if acked.remaining == 0:
                pipe.delete(self.keys.retry_count(rcpt))
                pipe.zrem(self.keys.retry(), rcpt)
            if change is not None:
                self._queue_state(pipe, change)

        replies = await self._execute(build)
        return int(replies[-1]) if change is not None else 0

    # -- segmentation ---------------------------------------------------------------------------

    async def add_segment(
        self,
        ori: str,
        seg_id: str,
        number: int,
        doc: bytes,
        declared_total: int,
        *,
        max_open: int,
        ttl_ms: int,
        deadline_ms: int,
    ) -> tuple[int, int, int]:
        """Stores one segment of an uplink message: (status, segments held, total); see
        _ADD_SEGMENT. A new reassembly gets a deadline in the sweeper's schedule."""
        status, held, total = await self._add_segment(
            keys=[self.keys.reassembly(ori, seg_id), self.keys.reassemblies(ori)],
            args=[number, doc, declared_total, max_open, ttl_ms, seg_id],
        )
        if int(status) == 1 and int(held) == 1:
            await self.redis.zadd(
                self.keys.reassembly_deadlines(), {f"{ori}{SEP}{seg_id}": deadline_ms}, nx=True
            )
        return int(status), int(held), int(total)

    async def segments(self, ori: str, seg_id: str) -> dict[int, bytes]:
        parts, _, _ = await self.reassembly(ori, seg_id)
        return parts

    async def reassembly(self, ori: str, seg_id: str) -> tuple[dict[int, bytes], int, bool]:
        """The segments held by number, the total (0: not known yet), and whether the
        originator was asked for the missing ones already."""
        raw = await self.redis.hgetall(self.keys.reassembly(ori, seg_id))
        parts: dict[int, bytes] = {}
        total, asked = 0, False
        for field, value in raw.items():
            name = as_text(field)
            if name.startswith("n:"):
                parts[int(name[2:])] = _bytes(value)
            elif name == "total":
                total = int(value)
            elif name == "asked":
                asked = True
        return parts, total, asked

    async def ask_again(self, ori: str, seg_id: str, deadline_ms: int, ttl_ms: int) -> None:
        """The originator was asked for the missing segments: one more deadline."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.reassembly(ori, seg_id), "asked", 1)
            pipe.pexpire(self.keys.reassembly(ori, seg_id), ttl_ms)
            pipe.pexpire(self.keys.reassemblies(ori), ttl_ms)
            pipe.zadd(self.keys.reassembly_deadlines(), {f"{ori}{SEP}{seg_id}": deadline_ms})
            await pipe.execute()

    async def drop_reassembly(self, ori: str, seg_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.reassembly(ori, seg_id))
            pipe.srem(self.keys.reassemblies(ori), seg_id)
            pipe.zrem(self.keys.reassembly_deadlines(), f"{ori}{SEP}{seg_id}")
            await pipe.execute()

    async def due_reassemblies(self, now: int, limit: int) -> list[tuple[str, str]]:
        members = await self.redis.zrangebyscore(
            self.keys.reassembly_deadlines(), 0, now, start=0, num=limit
        )
        pairs = []
        for member in members:
            ori, _, seg_id = as_text(member).partition(SEP)
            pairs.append((ori, seg_id))
        return pairs

    async def max_seg_sizes(self, rcpts: list[str]) -> dict[str, int]:
        """The maxSegSize each recipient registered (absent: none declared)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rcpt in rcpts:
                pipe.hget(self.keys.registration(rcpt), "maxSegSize")
            values = await pipe.execute()
        return {r: int(v) for r, v in zip(rcpts, values, strict=True) if v and int(v) > 0}

    async def expect_segments(self, ori: str, msg_id: str, rcpt: str, count: int) -> None:
        """The message goes to ``rcpt`` in ``count`` segments, each acknowledged on its own."""
        key = self.keys.message(ori, msg_id)
        await self._one(lambda pipe: pipe.hset(key, f"segs:{rcpt}", count))

    async def segment_done(self, ori: str, msg_id: str, rcpt: str) -> int:
        """One more segment acknowledged: how many remain (-1: the message was not segmented
        for this recipient, or its record is gone)."""
        left = await self._one(
            lambda pipe: self._queue(
                pipe, self._segment_done, [self.keys.message(ori, msg_id)], [f"segs:{rcpt}"]
            )
        )
        return int(left)

    async def set_outcome(self, ori: str, msg_id: str, outcome: str) -> None:
        key = self.keys.message(ori, msg_id)
        await self._one(lambda pipe: pipe.hset(key, "outcome", outcome))

    async def set_state(self, ori: str, msg_id: str, rcpt: str, state: str, cause: str = "") -> int:
        """Moves the recipient's state forward; 0 when nothing changed, else non-zero (the
        acceptance time in ms when the new state is final)."""
        changed = await self._one(
            lambda pipe: self._queue_state(pipe, StateChange(ori, msg_id, rcpt, state, cause))
        )
        return int(changed)

    async def set_report(self, ori: str, msg_id: str, rcpt: str, deliv_st: int) -> None:
        """Notes the recipient's delivery report in the message record (if still kept)."""
        name = {1: "REPT_DELY_SUCCESS", 2: "REPT_DELY_FAILED"}.get(deliv_st, "")
        key = self.keys.message(ori, msg_id)
        if await self.redis.exists(key):
            await self.redis.hset(key, f"rep:{rcpt}", name)

    async def record(self, ori: str, msg_id: str) -> dict[str, Any]:
        key = self.keys.message(ori, msg_id)
        raw = await self._one(lambda pipe: pipe.hgetall(key))
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
        acked, _ = await self.take_pending(ue, refs, exact)
        return acked

    async def remove_pending(self, ue: str, ref: str) -> bytes | None:
        doc = await self._one(
            lambda pipe: self._queue(
                pipe, self._remove, [self.keys.inbox(ue), self.keys.docs(ue)], [ref]
            )
        )
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
        key = self.keys.expiry()
        await self._one(lambda pipe: pipe.zadd(key, {f"{ue}{SEP}{ref}": expires_ms}))

    async def unschedule_expiry(self, ue: str, ref: str) -> None:
        key = self.keys.expiry()
        await self._one(lambda pipe: pipe.zrem(key, f"{ue}{SEP}{ref}"))

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

    async def retry_at(self, ue: str, when_ms: int) -> None:
        key = self.keys.retry()
        await self._one(lambda pipe: pipe.zadd(key, {ue: when_ms}))

    async def clear_retry(self, ue: str) -> None:
        def build(pipe: Any) -> None:
            pipe.delete(self.keys.retry_count(ue))
            pipe.zrem(self.keys.retry(), ue)

        await self._execute(build)

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
        inbox = self.keys.inbox(ue)
        if limit is not None and limit <= 0:
            return [], int(await self._one(lambda pipe: pipe.zcard(inbox)))
        stop = -1 if limit is None else limit - 1

        def build(pipe: Any) -> None:
            pipe.zrange(inbox, 0, stop)
            pipe.zcard(inbox)

        refs, pending = await self._execute(build)
        if not refs:
            return [], int(pending)
        docs_key = self.keys.docs(ue)
        docs = await self._one(lambda pipe: pipe.hmget(docs_key, refs))
        pairs = [
            (text_or_none(r) or "", _bytes(d))
            for r, d in zip(refs, docs, strict=True)
            if d is not None
        ]
        return pairs, int(pending)

    # -- route leases and edges ---------------------------------------------------------------

    async def touch_route(self, ue: str, kind: str, edge_id: str, ttl_ms: int) -> bool:
        """Points the UE's lease at this replica; True when it pointed elsewhere (or nowhere)."""
        changed = await self._one(
            lambda pipe: self._queue(
                pipe, self._touch_route, [self.keys.route(ue)], [kind, edge_id, ttl_ms]
            )
        )
        return bool(changed)

    async def renew_routes(self, ues: list[str], edge_id: str, ttl_ms: int) -> None:
        def build(pipe: Any) -> None:
            for ue in ues:
                self._queue(pipe, self._renew_route, [self.keys.route(ue)], [edge_id, ttl_ms])

        await self._execute(build)

    async def detach_route(self, ue: str, edge_id: str) -> None:
        await self._one(
            lambda pipe: self._queue(pipe, self._detach_route, [self.keys.route(ue)], [edge_id])
        )

    async def route(self, ue: str) -> Route | None:
        key = self.keys.route(ue)
        kind, edge = await self._one(lambda pipe: pipe.hmget(key, ["kind", "edge"]))
        if kind is None or edge is None:
            return None
        return Route(text_or_none(kind) or "", text_or_none(edge) or "")

    async def edge_address(self, kind: str, edge_id: str) -> str | None:
        key = self.keys.edge(kind, edge_id)
        return text_or_none(await self._one(lambda pipe: pipe.get(key)))

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
