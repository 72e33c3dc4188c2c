"""Delivery status reports (IMDN): forwarding the recipient's, and the server's own on failure."""

from __future__ import annotations

import time
from collections.abc import Callable

from msgin5g.v1 import common_pb2 as pb
from msgin5g_router import domain
from msgin5g_router.store import RouterStore

# Starts a dispatch of a recipient's new documents (Dispatcher.spawn).
Spawn = Callable[[str, list[str]], None]


class Reports:
    def __init__(self, store: RouterStore, spawn: Spawn, default_expiry: int) -> None:
        self.store = store
        self.spawn = spawn
        self.default_expiry = default_expiry

    async def deliver(self, imdn: pb.Imdn) -> None:
        """Queues a report for the original sender (``imdn.dest_addr``) like any downlink
        document: stored, sent, acknowledged, expired after the default time."""
        sender = domain.recipient_of(imdn.dest_addr)
        if sender is None:
            return
        doc = pb.Downlink(imdn=imdn)
        ref = domain.imdn_ref(imdn.ori_addr, imdn.msg_id)
        await self._queue(sender, ref, doc, pb.PRIORITY_MIDDLE, self.default_expiry)

    async def ask_for_segments(self, first: pb.Message, missing: list[int], ttl_s: float) -> None:
        """Queues a SEGREC for the originator of an incomplete segmented message (``first``
        is one of its segments): it lives as long as the reassembly waits for the answer."""
        originator = domain.recipient_of(first.ori_addr)
        if originator is None:
            return
        seg_id = first.seg_params.seg_id
        ref = domain.segrec_ref(first.ori_addr, seg_id)
        doc = pb.Downlink(
            segrec=pb.SegRec(
                ori_addr=first.ori_addr, dest_addr=first.dest_addr, seg_id=seg_id, missing=missing
            )
        )
        await self._queue(originator, ref, doc, pb.PRIORITY_HIGH, ttl_s)

    async def _queue(
        self, rcpt: str, ref: str, doc: pb.Downlink, priority: int, ttl_s: float
    ) -> None:
        """Queues a server-made document for ``rcpt`` and sends it. A document queued already
        (a repeat) keeps its place and its expiry."""
        rank = domain.priority_rank(priority)
        if await self.store.enqueue(rcpt, ref, doc.SerializeToString(), rank):
            await self.store.schedule_expiry(rcpt, ref, int((time.time() + ttl_s) * 1000))
        self.spawn(rcpt, [ref])

    async def failed(self, msg: pb.Message, recipient: str, cause: str) -> None:
        """The server's own report that ``msg`` could not be delivered to ``recipient`` (a
        recipient id: UE or AS)."""
        await self.deliver(
            pb.Imdn(
                ori_addr=domain.rcpt_address(recipient),
                dest_addr=msg.ori_addr,
                msg_id=domain.parent_msg_id(msg),
                deliv_st=pb.DELIVERY_STATUS_REPT_DELY_FAILED,
                failure_cause=cause,
            )
        )
