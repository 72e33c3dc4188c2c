"""Downlink dispatch: finds the edge replica that serves a UE and pushes its documents there,
or POSTs them to an application server's targetUri.

The route lease names the replica; an MQTT UE can be served by any live mqtt-edge (the broker
holds its session), so a dead MQTT replica is replaced by a live one. When no replica can take
the documents they simply stay stored until the UE shows up again. An AS takes its documents
one at a time, in inbox order, each answered by HTTP status (appservers.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import edge_pb2 as epb
from msgin5g.v1 import edge_pb2_grpc as egrpc
from msgin5g_common import metrics
from msgin5g_common.grpcutil import channel
from msgin5g_common.keys import address_key_of, as_of
from msgin5g_router.appservers import AppServers, Outcome
from msgin5g_router.domain import address_key, backoff_ms
from msgin5g_router.reports import Reports
from msgin5g_router.store import Acked, Route, RouterStore, now_ms

log = logging.getLogger("msgin5g.router.dispatch")

COAP, MQTT = "coap", "mqtt"


class EdgeClients:
    """One gRPC channel per edge address, reused across calls."""

    def __init__(self) -> None:
        self._stubs: dict[str, tuple[grpc.aio.Channel, egrpc.EdgeServiceAsyncStub]] = {}

    def stub(self, address: str) -> egrpc.EdgeServiceAsyncStub:
        entry = self._stubs.get(address)
        if entry is None:
            ch = channel(address)
            entry = (ch, egrpc.EdgeServiceStub(ch))
            self._stubs[address] = entry
        return entry[1]

    async def forget(self, address: str) -> None:
        entry = self._stubs.pop(address, None)
        if entry is not None:
            await entry[0].close()

    async def close(self) -> None:
        for ch, _ in self._stubs.values():
            await ch.close()
        self._stubs.clear()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_ms: int = 5_000
    max_ms: int = 300_000
    limit: int = 8


class Dispatcher:
    def __init__(
        self,
        store: RouterStore,
        clients: EdgeClients,
        inbox_limit: int,
        timeout: float,
        retry: RetryPolicy | None = None,
        *,
        appservers: AppServers | None = None,
        default_expiry: int = 7 * 86400,
    ) -> None:
        self.store = store
        self.clients = clients
        self.inbox_limit = inbox_limit
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.appservers = appservers or AppServers(timeout)
        self.reports = Reports(store, self.spawn, default_expiry)
        # One dispatch at a time per UE keeps the per-recipient order on the wire.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Dispatches in flight at once: more only queue up for Redis connections and edges.
        self._slots = asyncio.Semaphore(64)

    def spawn(self, ue: str, new_refs: list[str] | None = None) -> None:
        """Dispatches in the background (the caller has already answered its client)."""
        task = asyncio.create_task(self._dispatch_quietly(ue, new_refs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch_quietly(self, ue: str, new_refs: list[str] | None) -> None:
        await self.dispatch(ue, new_refs)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.timeout)

    async def reachable(self, rcpt: str) -> bool:
        """Whether documents for the recipient (UE or AS) can leave now."""
        as_id = as_of(rcpt)
        if as_id is not None:
            return bool(await self.store.as_target(as_id))
        return await self.resolve(rcpt) is not None

    async def resolve(self, ue: str) -> tuple[Route, str] | None:
        """The live replica serving the UE and its gRPC address, or None."""
        route = await self.store.route(ue)
        if route is not None:
            address = await self.store.edge_address(route.kind, route.edge_id)
            if address is not None:
                return route, address
        kind = route.kind if route is not None else await self.store.registered_transport(ue)
        if kind != MQTT:
            return None
        for edge_id in await self.store.live_edges(MQTT):
            address = await self.store.edge_address(MQTT, edge_id)
            if address is not None:
                return Route(MQTT, edge_id), address
        return None

    async def dispatch(self, ue: str, new_refs: list[str] | None = None) -> bool:
        """Sends the UE its pending documents; ``new_refs`` limits MQTT to the new ones
        (None: everything pending, as on a re-attach). True when they left for the UE."""
        try:
            async with self._serialized(ue), self._slots:
                return await self._dispatch(ue, new_refs)
        except Exception:
            log.exception("dispatch failed", extra={"ueSvcId": ue})
            return False

    @asynccontextmanager
    async def _serialized(self, ue: str) -> AsyncIterator[None]:
        """A per-UE lock that exists only while someone holds or awaits it."""
        lock, users = self._locks.get(ue, (asyncio.Lock(), 0))
        self._locks[ue] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[ue]
            if users == 1:
                del self._locks[ue]
            else:
                self._locks[ue] = (lock, users - 1)

    async def _dispatch(self, ue: str, new_refs: list[str] | None) -> bool:
        as_id = as_of(ue)
        if as_id is not None:
            return await self._dispatch_as(ue, as_id)
        target = await self.resolve(ue)
        if target is None:
            return False
        route, address = target
        snapshot = route.kind == COAP
        pairs, _ = await self.store.inbox(ue, self.inbox_limit if snapshot else None)
        if not snapshot and new_refs is not None:
            wanted = set(new_refs)
            pairs = [p for p in pairs if p[0] in wanted]
        if not pairs:
            return False
        docs = [pb.Downlink.FromString(d) for _, d in pairs]
        try:
            with metrics.timed("edge", "Deliver"):
                reply = await self.clients.stub(address).Deliver(
                    epb.DeliverRequest(
                        ue_svc_id=ue, docs=docs, snapshot=snapshot, edge_id=route.edge_id
                    ),
                    timeout=self.timeout,
                )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "edge unreachable",
                extra={"ueSvcId": ue, "edge": route.edge_id, "code": exc.code().name},
            )
            await self.clients.forget(address)
            return False
        if reply.forwarded:
            await self._mark(ue, docs, "FORWARDED")
            await self._schedule_retry(ue)
        return bool(reply.forwarded)

    async def _dispatch_as(self, rcpt: str, as_id: str) -> bool:
        """POSTs the AS's pending documents in inbox order; stops at the first that must be
        tried again later (the order per originator holds)."""
        target = await self.store.as_target(as_id)
        if not target:
            return False
        pairs, pending = await self.store.inbox(rcpt, self.inbox_limit)
        progressed = False
        for ref, raw in pairs:
            doc = pb.Downlink.FromString(raw)
            await self._mark(rcpt, [doc], "FORWARDED")
            with metrics.timed("as", "post"):
                answer = await self.appservers.post(target, doc)
            if answer.outcome is Outcome.RETRY:
                log.warning(
                    "application server unreachable",
                    extra={"asSvcId": as_id, "ref": ref, "detail": answer.detail},
                )
                if progressed:
                    # It answers again: back-off starts over from the shortest delay.
                    await self.store.clear_retry(rcpt)
                await self._schedule_retry(rcpt, unlimited=True)
                return False
            progressed = True
            refused = answer.outcome is Outcome.REFUSED
            if refused:
                log.warning(
                    "application server refused a document",
                    extra={"asSvcId": as_id, "ref": ref, "detail": answer.detail},
                )
            await self.complete(rcpt, [ref], exact=True, failed=refused, cause="REFUSED")
        if pending > len(pairs):
            self.spawn(rcpt)
        return bool(pairs)

    async def complete(
        self, rcpt: str, refs: list[str], *, exact: bool, failed: bool = False, cause: str = ""
    ) -> Acked:
        """The recipient took (or refused for good) one pending document: it leaves the inbox
        and its schedules, the message's state becomes final, and a refusal is reported to a
        sender that asked for reports."""
        acked = await self.store.ack(rcpt, refs, exact=exact)
        if not acked.matched:
            return acked
        await self.store.unschedule_expiry(rcpt, acked.ref)
        if acked.remaining == 0:
            await self.store.clear_retry(rcpt)
        doc = pb.Downlink.FromString(acked.doc)
        if doc.WhichOneof("doc") == "msg":
            accepted_ms = await self.store.set_state(
                address_key(doc.msg.ori_addr),
                doc.msg.msg_id,
                address_key_of(rcpt),
                "FAILED" if failed else "DELIVERED",
                (cause or "REFUSED") if failed else "",
            )
            if accepted_ms > 1 and not failed:
                metrics.DELIVERY_LATENCY.observe(max(now_ms() - accepted_ms, 0) / 1000)
            if accepted_ms and failed and doc.msg.deliv_st_req_ind:
                # The recipient refused it for good: the sender asked to know.
                await self.reports.failed(doc.msg, rcpt, cause or "REFUSED")
        return acked

    async def _schedule_retry(self, ue: str, *, unlimited: bool = False) -> None:
        """Until the UE acknowledges, its documents are sent again with a doubling delay, a
        bounded number of times; after that they wait for the UE to show up. An AS does not
        "show up": its documents are retried at the longest delay until they expire."""
        count = await self.store.count_forward(ue)
        if count <= self.retry.limit or unlimited:
            delay = backoff_ms(count, self.retry.base_ms, self.retry.max_ms)
            await self.store.retry_at(ue, now_ms() + delay)

    async def _mark(self, ue: str, docs: Iterable[pb.Downlink], state: str) -> None:
        rcpt = address_key_of(ue)
        for doc in docs:
            if doc.WhichOneof("doc") == "msg":
                ori = doc.msg.ori_addr
                await self.store.set_state(address_key(ori), doc.msg.msg_id, rcpt, state)
