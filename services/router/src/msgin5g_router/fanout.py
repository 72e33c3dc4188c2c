"""Group fan-out: one accepted message, delivered to every member by its own UE Service ID.

Before the originator is answered, the group is split into pages of members and one task per
page goes into a Redis stream read by every router replica through a consumer group. A task
that a replica took and did not acknowledge (it died) is claimed by another after a while.
Handling a page twice is harmless: a member whose state already exists and is final is
skipped, and enqueueing is idempotent. Deliveries are paced by a token bucket per replica.
A member whose inbox is full (``max_pending``) does not get its copy: its state becomes FAILED
with cause OVERLOADED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from msgin5g.v1 import common_pb2 as pb
from msgin5g_common import metrics
from msgin5g_common.errors import Cause
from msgin5g_common.keys import Keys, address_key_of, as_of
from msgin5g_router import domain
from msgin5g_router.dispatch import Dispatcher
from msgin5g_router.store import RouterStore, as_text, now_ms

log = logging.getLogger("msgin5g.router.fanout")

GROUP = "fanout"

# Marks the members of a page as ACCEPTED unless they have a state already; returns those to
# enqueue (no state, or one that is not final).
_MEMBERS = """
local out = {}
for i, member in ipairs(ARGV) do
  if i > 1 then
    local field = 'st:UE:' .. member
    if string.sub(member, 1, 3) == 'as/' then field = 'st:AS:' .. string.sub(member, 4) end
    local cur = redis.call('HGET', KEYS[1], field)
    if not cur then
      redis.call('HSET', KEYS[1], field, ARGV[1])
      table.insert(out, member)
    else
      local state = cjson.decode(cur).state
      if state ~= 'DELIVERED' and state ~= 'EXPIRED' and state ~= 'FAILED' then
        table.insert(out, member)
      end
    end
  end
end
return out
"""


class TokenBucket:
    """Paces deliveries: ``rate`` per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.capacity = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class Fanout:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        store: RouterStore,
        dispatcher: Dispatcher,
        *,
        consumer: str,
        page: int = 500,
        rate: float = 1000.0,
        claim_after: float = 15.0,
        parallel: int = 50,
        max_payload: int = 2048,
        max_pending: int = 0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.dispatcher = dispatcher
        self.consumer = consumer
        self.page = page
        self.bucket = TokenBucket(rate, max(rate, 1.0))
        self.claim_after_ms = int(claim_after * 1000)
        self.parallel = parallel
        self.max_payload = max_payload
        self.max_pending = max_pending
        self._members = redis.register_script(_MEMBERS)

    # -- starting a fan-out (before the originator is answered) ------------------------------

    async def snapshot(self, ori: str, msg_id: str, source: str, ttl_ms: int) -> str:
        """Copies the current members of a scored set (topic subscribers, UEs of a broadcast
        area: score = until when) into a recipient set of the message; returns its key."""
        key = self.keys.fanout_recipients(ori, msg_id)
        now = now_ms()
        offset = 0
        while True:
            chunk = await self.redis.zrangebyscore(source, now, "+inf", start=offset, num=10_000)
            if not chunk:
                break
            await self.redis.zadd(key, dict.fromkeys((as_text(m) for m in chunk), 0))
            offset += len(chunk)
        await self.redis.pexpire(key, ttl_ms)
        return key

    async def split(self, ori: str, msg_id: str, key: str) -> int:
        """Queues one task per page of the members in ``key`` (a set scored 0, paged by id);
        returns how many members."""
        boundaries = [""]
        after = "-"
        total = 0
        while True:
            members = await self.redis.zrangebylex(key, after, "+", start=0, num=self.page)
            total += len(members)
            if len(members) < self.page:
                break
            last = as_text(members[-1])
            boundaries.append(last)
            after = f"({last}"
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in boundaries:
                pipe.xadd(
                    self.keys.fanout_stream(),
                    {"ori": ori, "msgId": msg_id, "source": key, "after": start},
                )
            await pipe.execute()
        return total

    # -- workers -----------------------------------------------------------------------------

    async def run(self) -> None:
        stream = self.keys.fanout_stream()
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        while True:
            try:
                await self._claim_stale()
                batches: Any = await self.redis.xreadgroup(
                    GROUP, self.consumer, {stream: ">"}, count=1, block=1000
                )
                for _, entries in batches or []:
                    for entry_id, fields in entries:
                        await self._handle(entry_id, fields)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fan-out worker failed")
                await asyncio.sleep(1)

    async def _claim_stale(self) -> None:
        """Takes over tasks another replica took and never finished (it died)."""
        result: Any = await self.redis.xautoclaim(
            self.keys.fanout_stream(), GROUP, self.consumer, self.claim_after_ms, "0-0", count=10
        )
        for entry_id, fields in result[1]:
            if fields:
                log.info("resuming a fan-out page", extra={"entry": as_text(entry_id)})
                await self._handle(entry_id, fields)

    async def _handle(self, entry_id: object, raw: dict[object, object]) -> None:
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        await self.deliver_page(fields["ori"], fields["msgId"], fields["source"], fields["after"])
        await self.redis.xack(self.keys.fanout_stream(), GROUP, as_text(entry_id))
        await self.redis.xdel(self.keys.fanout_stream(), as_text(entry_id))

    async def deliver_page(self, ori: str, msg_id: str, source: str, after: str) -> None:
        record = await self.store.record(ori, msg_id)
        if "doc" not in record:
            return  # expired or never there: nothing to do
        msg = pb.Downlink.FromString(record["doc"]).msg
        log.info("fan-out page started", extra={"msgId": msg_id, "page": after})
        low = f"({after}" if after else "-"
        members = [
            as_text(m)
            for m in await self.redis.zrangebylex(source, low, "+", start=0, num=self.page)
        ]
        # The originator does not receive its own group message.
        members = [m for m in members if address_key_of(m) != ori]
        state = json.dumps({"state": "ACCEPTED", "times": {"ACCEPTED": now_ms()}})
        todo = [
            as_text(m)
            for m in await self._members(
                keys=[self.keys.message(ori, msg_id)], args=[state, *members]
            )
        ]
        expires_ms = int(record.get("expiresAt", 0) or 0) or now_ms() + 7 * 86400_000
        rank = domain.priority_rank(msg.priority)
        # Members that take less than the payload get it in segments (TS 23.554 8.5).
        limits = await self.store.max_seg_sizes(todo) if msg.payload else {}
        for start in range(0, len(todo), self.parallel):
            chunk = todo[start : start + self.parallel]
            full = await self._full_inboxes(chunk)
            await asyncio.gather(
                *(
                    self._skip_full(msg, m, ori)
                    if m in full
                    else self._deliver_one(
                        msg, m, limits.get(m) or self.max_payload, rank, ori, expires_ms
                    )
                    for m in chunk
                )
            )
        log.info(
            "fan-out page delivered",
            extra={
                "msgId": msg_id,
                "ori": ori,
                "page": after,
                "members": len(todo),
            },
        )

    async def _full_inboxes(self, members: list[str]) -> set[str]:
        """The UE members whose inbox holds ``max_pending`` documents (one round trip)."""
        ues = [m for m in members if as_of(m) is None]
        if not self.max_pending or not ues:
            return set()
        counts = await self.store.pending_counts(ues)
        return {m for m, n in counts.items() if n >= self.max_pending}

    async def _skip_full(self, msg: pb.Message, member: str, ori: str) -> None:
        """The member's inbox is full: no copy for it, its state FAILED (OVERLOADED), and a
        report to a sender that asked for one."""
        metrics.LIMITED.labels("inbox").inc()
        cause = Cause.OVERLOADED.value
        changed = await self.store.set_state(
            ori, msg.msg_id, address_key_of(member), "FAILED", cause
        )
        log.info(
            "inbox full, copy skipped",
            extra={"msgId": msg.msg_id, "ori": ori, "ueSvcId": member, "max": self.max_pending},
        )
        if changed and msg.deliv_st_req_ind:
            await self.dispatcher.reports.failed(msg, member, cause)

    async def _deliver_one(
        self, msg: pb.Message, member: str, limit: int, rank: int, ori: str, expires_ms: int
    ) -> None:
        copy = pb.Message()
        copy.CopyFrom(msg)
        copy.rcpt_addr.CopyFrom(domain.rcpt_address(member))
        pieces = [copy]
        if as_of(member) is None and len(copy.payload.encode()) > limit:
            pieces = domain.segment(copy, limit)
            await self.store.expect_segments(ori, msg.msg_id, address_key_of(member), len(pieces))
        refs = []
        for piece in pieces:
            ref = domain.msg_ref(msg.ori_addr, piece.msg_id)
            refs.append(ref)
            doc = pb.Downlink(msg=piece).SerializeToString()
            await self.store.store_pending(member, ref, doc, rank, expires_ms)
        await self.bucket.take()
        if not await self.dispatcher.dispatch(member, refs):
            await self.store.set_state(ori, msg.msg_id, address_key_of(member), "STORED")
