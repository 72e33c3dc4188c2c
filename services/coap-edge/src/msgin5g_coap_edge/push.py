"""Push delivery (the seed's Figure 3): for a UE registered with ``deliveryMode: push``, each
downlink document goes as a Confirmable POST to ``/msg`` on the UE's own address.

The address is the one the UE registered from, updated by each of its uplink requests (a NAT
may rebind it). A 2.xx answer is delivery: the edge acknowledges the document to the router
on the UE's behalf. An error answer, a timeout or an ICMP error leaves the document in the
UE's inbox: the router sends it again later, and the UE can GET ``/inbox/{ueSvcId}`` when
it wakes up. The addresses live in this replica's memory: after a restart of the edge a push
UE takes its downlink by GET until it registers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from aiocoap import Context, Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat

from msgin5g_common import header as h
from msgin5g_common import metrics
from msgin5g_common.uplink import UplinkHandler

log = logging.getLogger("msgin5g.coap_edge.push")

# Documents remembered as pushed and acknowledged, so that a dispatch that overlapped the
# previous one does not push them twice.
RECENT = 10_000


class Pusher:
    def __init__(self, handler: UplinkHandler, timeout: float) -> None:
        self.handler = handler
        self.timeout = timeout
        self.context: Context | None = None
        self._targets: dict[str, Any] = {}
        # One push at a time per UE keeps its documents in inbox order on the wire.
        self._busy: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()

    def remember(self, ue: str, remote: Any) -> None:
        """The UE takes pushes at ``remote`` (an aiocoap endpoint address)."""
        self._targets[ue] = remote

    def refresh(self, ue: str, remote: Any) -> None:
        """An uplink from a push UE: its latest source address wins (NAT rebinding)."""
        if ue in self._targets:
            self._targets[ue] = remote

    def forget(self, ue: str) -> None:
        self._targets.pop(ue, None)
        self._busy.pop(ue, None)

    def holds(self, ue: str) -> bool:
        return ue in self._targets

    def ues(self) -> list[str]:
        return list(self._targets)

    def push(self, ue: str, docs: list[h.Downlink]) -> bool:
        """Starts pushing ``docs`` to the UE; False when it is not a push UE of this replica."""
        remote = self._targets.get(ue)
        if remote is None or self.context is None or not docs:
            return False
        task = asyncio.create_task(self._push(ue, remote, docs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _push(self, ue: str, remote: Any, docs: list[h.Downlink]) -> None:
        async with self._busy.setdefault(ue, asyncio.Lock()):
            for doc in docs:
                key = (ue, doc.ori_addr.addr_type.value, doc.ori_addr.addr, doc.msg_id)
                if key in self._recent:
                    # Pushed and acknowledged while this push waited for the previous one.
                    continue
                if not await self._post(ue, remote, doc):
                    return
                self._recent[key] = None
                if len(self._recent) > RECENT:
                    self._recent.popitem(last=False)
                metrics.MESSAGES.labels("out", type(doc).__name__.upper(), "coap").inc()
                ack = h.MsgResp(
                    doc.msg_id, h.MsgResult.DELIVERED, ue_svc_id=ue, ori_addr=doc.ori_addr
                )
                await self.handler.handle(ack)

    async def _post(self, ue: str, remote: Any, doc: h.Downlink) -> bool:
        assert self.context is not None
        request = Message(code=Code.POST, payload=h.encode(doc), content_format=ContentFormat.JSON)
        request.remote = remote
        request.opt.uri_path = ("msg",)
        try:
            response = await asyncio.wait_for(self.context.request(request).response, self.timeout)
        except Exception as exc:  # timeout, ICMP error, a reset: the UE is not there
            log.info(
                "push failed",
                extra={"ueSvcId": ue, "msgId": doc.msg_id, "error": type(exc).__name__},
            )
            return False
        if not response.code.is_successful():
            log.info(
                "push refused",
                extra={"ueSvcId": ue, "msgId": doc.msg_id, "code": str(response.code)},
            )
            return False
        return True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)
