"""Expiry of stored messages and retries of unacknowledged downlink.

Any router replica may run the sweeper; a lock in Redis lets one of them sweep at a time, and
every step is idempotent (an entry is taken off a schedule only after it has been handled), so
a replica that dies mid-sweep leaves work that the next sweep finishes.
"""

from __future__ import annotations

import asyncio
import logging

from msgin5g.v1 import common_pb2 as pb
from msgin5g_common import metrics
from msgin5g_common.keys import address_key_of
from msgin5g_router import domain
from msgin5g_router.dispatch import Dispatcher
from msgin5g_router.reports import Reports
from msgin5g_router.store import RouterStore, now_ms

log = logging.getLogger("msgin5g.router.sweeper")

BATCH = 200


class Sweeper:
    def __init__(
        self,
        store: RouterStore,
        dispatcher: Dispatcher,
        reports: Reports,
        holder: str,
        interval: float,
        reassembly_timeout: float = 60.0,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.reports = reports
        self.holder = holder
        self.interval = interval
        self.reassembly_timeout_s = reassembly_timeout

    async def run(self) -> None:
        while True:
            try:
                if await self.store.take_lock(self.holder, int(self.interval * 5000)):
                    await self.sweep()
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self.interval)

    async def sweep(self) -> None:
        now = now_ms()
        metrics.PENDING.set(await self.store.pending_count())
        for ue, ref in await self.store.due_expiries(now, BATCH):
            await self.expire(ue, ref)
        for ori, seg_id in await self.store.due_reassemblies(now, BATCH):
            await self.reassembly_timeout(ori, seg_id)
        for ue in await self.store.claim_due_retries(now, BATCH):
            log.info("retry", extra={"ueSvcId": ue})
            self.dispatcher.spawn(ue)

    async def expire(self, ue: str, ref: str) -> None:
        """Withdraws one expired document from the UE's inbox, records EXPIRED and reports it
        to the originator when a report was asked for."""
        raw = await self.store.remove_pending(ue, ref)
        if raw is not None:
            doc = pb.Downlink.FromString(raw)
            if doc.WhichOneof("doc") == "msg":
                msg = doc.msg
                ori = domain.address_key(msg.ori_addr)
                changed = await self.store.set_state(
                    ori, domain.parent_msg_id(msg), address_key_of(ue), "EXPIRED", "EXPIRED"
                )
                log.info("expired", extra={"msgId": msg.msg_id, "ori": ori, "ueSvcId": ue})
                # Once per message, also when it expires as several segments.
                if msg.deliv_st_req_ind and changed:
                    await self.reports.failed(msg, ue, "EXPIRED")
        await self.store.unschedule_expiry(ue, ref)

    async def reassembly_timeout(self, ori: str, seg_id: str) -> None:
        """A message sent in segments did not arrive whole in time. A UE is asked once for
        the missing segments (SEGREC) and given the same time again; after that (or at once
        for an AS) the parts are dropped and the originator gets a failure report with
        SEGMENT_TIMEOUT (unless the whole message was routed and only the clean-up was
        interrupted)."""
        parts, total, asked = await self.store.reassembly(ori, seg_id)
        record = await self.store.record(ori, seg_id)
        if parts and "doc" not in record:
            first = pb.Message.FromString(next(iter(parts.values())))
            if not asked and first.ori_addr.addr_type == pb.ADDR_TYPE_UE:
                top = total or max(parts) + 1
                missing = [n for n in range(1, top + 1) if n not in parts]
                wait = self.reassembly_timeout_s
                await self.store.ask_again(
                    ori, seg_id, now_ms() + int(wait * 1000), int(2 * wait * 1000)
                )
                await self.reports.ask_for_segments(first, missing, wait)
                log.info(
                    "segments asked again", extra={"segId": seg_id, "ori": ori, "missing": missing}
                )
                return
            sender = domain.recipient_of(first.ori_addr)
            log.info(
                "reassembly timed out",
                extra={"segId": seg_id, "ori": ori, "held": sorted(parts)},
            )
            metrics.ERRORS.labels("SEGMENT_TIMEOUT").inc()
            if sender is not None:
                await self.reports.deliver(
                    pb.Imdn(
                        ori_addr=first.dest_addr,
                        dest_addr=first.ori_addr,
                        msg_id=seg_id,
                        deliv_st=pb.DELIVERY_STATUS_REPT_DELY_FAILED,
                        failure_cause="SEGMENT_TIMEOUT",
                    )
                )
        await self.store.drop_reassembly(ori, seg_id)
