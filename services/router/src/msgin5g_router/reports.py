"""Delivery status reports (IMDN): forwarding the recipient's, and the server's own on failure."""

from __future__ import annotations

import time

from msgin5g.v1 import common_pb2 as pb
from msgin5g_router import domain
from msgin5g_router.dispatch import Dispatcher
from msgin5g_router.store import RouterStore


class Reports:
    def __init__(self, store: RouterStore, dispatcher: Dispatcher, default_expiry: int) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.default_expiry = default_expiry

    async def deliver(self, imdn: pb.Imdn) -> None:
        """Queues a report for the original sender (``imdn.dest_addr``) like any downlink
        document: stored, sent, acknowledged, expired after the default time."""
        if imdn.dest_addr.addr_type != pb.ADDR_TYPE_UE:
            # Reports for application servers come with the AS API.
            return
        sender = imdn.dest_addr.addr
        ref = domain.imdn_ref(imdn.ori_addr, imdn.msg_id)
        doc = pb.Downlink(imdn=imdn).SerializeToString()
        rank = domain.priority_rank(pb.PRIORITY_MIDDLE)
        if await self.store.enqueue(sender, ref, doc, rank):
            expires = int((time.time() + self.default_expiry) * 1000)
            await self.store.schedule_expiry(sender, ref, expires)
        self.dispatcher.spawn(sender, [ref])

    async def failed(self, msg: pb.Message, recipient: str, cause: str) -> None:
        """The server's own report that ``msg`` could not be delivered to ``recipient``."""
        await self.deliver(
            pb.Imdn(
                ori_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr=recipient),
                dest_addr=msg.ori_addr,
                msg_id=msg.msg_id,
                deliv_st=pb.DELIVERY_STATUS_REPT_DELY_FAILED,
                failure_cause=cause,
            )
        )
