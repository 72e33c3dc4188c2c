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
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import edge_pb2 as epb
from msgin5g.v1 import edge_pb2_grpc as egrpc
from msgin5g_common import metrics
from msgin5g_common.batch import BatchedCall, ItemFailed, closed_channel, outcomes
from msgin5g_common.grpcutil import channel
from msgin5g_common.keys import address_key_of, as_of
from msgin5g_router.appservers import AppServers, Outcome
from msgin5g_router.domain import address_key, backoff_ms, parent_msg_id
from msgin5g_router.reports import Reports
from msgin5g_router.store import Acked, Route, RouterStore, StateChange, now_ms

log = logging.getLogger("msgin5g.router.dispatch")

COAP, MQTT = "coap", "mqtt"
# Deliveries to one edge replica in one DeliverMany call at most, and such calls on their
# way to it at once.
DELIVER_BATCH = 100
DELIVERIES_IN_FLIGHT = 1
# Seconds the router remembers an edge replica's address and the list of live MQTT replicas.
ADDRESS_TTL = 1.0
# A resolved UE: the replica that serves it and that replica's gRPC address.
Target = tuple[Route, str]
# A forward recorded already (``RouterStore.store_pending``): its state changes, and when
# the re-send it scheduled is due (ms; None: none scheduled).
Recorded = tuple[list[StateChange], int | None]


class EdgeClient:
    """The channel to one edge replica. Deliveries made at the same time (each for another
    UE: one dispatch at a time per UE) go in one DeliverMany call (EdgeBatchService,
    batch.py); an edge without that service gets one Deliver call each."""

    def __init__(self, address: str, timeout: float) -> None:
        # A subchannel of its own: a client is made anew after its edge failed, and must not
        # inherit the failed connection's back-off from gRPC's process-wide subchannel pool
        # (a restarted edge would be refused for another few hundred ms).
        self.channel = channel(address, [("grpc.use_local_subchannel_pool", 1)])
        self.stub: egrpc.EdgeServiceAsyncStub = egrpc.EdgeServiceStub(self.channel)
        self.batch_stub: egrpc.EdgeBatchServiceAsyncStub = egrpc.EdgeBatchServiceStub(self.channel)
        self.timeout = timeout
        self.deliver: BatchedCall[epb.DeliverRequest, epb.DeliverResponse] = BatchedCall(
            self._deliver_many,
            self._deliver_one,
            "DeliverMany",
            max_items=DELIVER_BATCH,
            max_in_flight=DELIVERIES_IN_FLIGHT,
        )

    async def _deliver_one(self, request: epb.DeliverRequest) -> epb.DeliverResponse:
        return await self.stub.Deliver(request, timeout=self.timeout)

    async def _deliver_many(
        self, requests: list[epb.DeliverRequest]
    ) -> list[epb.DeliverResponse | BaseException]:
        reply = await self.batch_stub.DeliverMany(
            epb.DeliverManyRequest(requests=requests), timeout=self.timeout
        )
        return outcomes(reply.results)

    async def close(self) -> None:
        self.deliver.close(closed_channel())
        await self.channel.close()
        await self.deliver.drain()


class EdgeClients:
    """One client (channel) per edge address, reused across calls."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._clients: dict[str, EdgeClient] = {}

    async def deliver(self, address: str, request: epb.DeliverRequest) -> epb.DeliverResponse:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = EdgeClient(address, self.timeout)
        return await client.deliver(request)

    async def forget(self, address: str) -> None:
        client = self._clients.pop(address, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


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
        self._tasks: set[asyncio.Task[bool]] = set()
        # Dispatches in flight at once: more only queue up for Redis connections and edges.
        self._slots = asyncio.Semaphore(64)
        self._addresses: dict[tuple[str, str], tuple[str, float]] = {}
        self._waiting_full: set[str] = set()
        self._mqtt_edges: tuple[list[str], float] = ([], 0.0)

    def spawn(
        self,
        ue: str,
        new_refs: list[str] | None = None,
        *,
        target: Target | None = None,
        docs: list[pb.Downlink] | None = None,
        recorded: Recorded | None = None,
    ) -> None:
        """Dispatches in the background (the caller has already answered its client). A
        caller that has just resolved the recipient and holds the new documents passes them:
        the dispatch then reads neither the route nor the inbox again; one that also recorded
        their forward (MQTT: exactly these documents go) passes that, and the dispatch only
        calls the edge. A dispatch of the whole inbox that is still waiting to start covers
        another one (a burst of acknowledgements from a CoAP observer becomes one
        notification, not one per acknowledgement)."""
        if new_refs is None:
            if ue in self._waiting_full:
                return
            self._waiting_full.add(ue)
        task = asyncio.create_task(
            self.dispatch(ue, new_refs, target=target, docs=docs, recorded=recorded)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.timeout)

    async def _edge_address(self, kind: str, edge_id: str) -> str | None:
        """A replica's gRPC address, remembered for a second: on the hot path every message
        would read it otherwise, and a replica that died meanwhile only fails one Deliver,
        after which the documents wait in Redis as always."""
        key = (kind, edge_id)
        now = time.monotonic()
        cached = self._addresses.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        address = await self.store.edge_address(kind, edge_id)
        if address is None:
            self._addresses.pop(key, None)
        else:
            self._addresses[key] = (address, now + ADDRESS_TTL)
        return address

    async def _live_mqtt_edges(self) -> list[str]:
        now = time.monotonic()
        if self._mqtt_edges[1] <= now:
            self._mqtt_edges = (await self.store.live_edges(MQTT), now + ADDRESS_TTL)
        return self._mqtt_edges[0]

    async def resolve(
        self,
        ue: str,
        route: Route | None = None,
        transport: str | None = None,
        *,
        known: bool = False,
    ) -> Target | None:
        """The live replica serving the UE and its gRPC address, or None. ``known``: the
        caller read the route and the registered transport already (``route``/``transport``)."""
        if not known:
            route = await self.store.route(ue)
        if route is not None:
            address = await self._edge_address(route.kind, route.edge_id)
            if address is not None:
                return route, address
        if route is not None:
            kind: str | None = route.kind
        elif known:
            kind = transport
        else:
            kind = await self.store.registered_transport(ue)
        if kind != MQTT:
            return None
        for edge_id in await self._live_mqtt_edges():
            address = await self._edge_address(MQTT, edge_id)
            if address is not None:
                return Route(MQTT, edge_id), address
        return None

    async def dispatch(
        self,
        ue: str,
        new_refs: list[str] | None = None,
        *,
        target: Target | None = None,
        docs: list[pb.Downlink] | None = None,
        recorded: Recorded | None = None,
    ) -> bool:
        """Sends the UE its pending documents; ``new_refs`` limits MQTT to the new ones
        (None: everything pending, as on a re-attach). True when they left for the UE."""
        try:
            async with self._serialized(ue), self._slots:
                if new_refs is None:
                    # From here on, a new change needs a dispatch of its own.
                    self._waiting_full.discard(ue)
                return await self._dispatch(ue, new_refs, target, docs, recorded)
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

    async def _dispatch(
        self,
        ue: str,
        new_refs: list[str] | None,
        target: Target | None,
        given: list[pb.Downlink] | None,
        recorded: Recorded | None = None,
    ) -> bool:
        as_id = as_of(ue)
        if as_id is not None:
            return await self._dispatch_as(ue, as_id)
        if target is None:
            target = await self.resolve(ue)
        if target is None:
            return False
        route, address = target
        snapshot = route.kind == COAP
        if not snapshot and new_refs is not None and given is not None:
            # MQTT sends exactly the new documents, and the caller holds them already.
            docs = given
        else:
            recorded = None
            pairs, _ = await self.store.inbox(ue, self.inbox_limit if snapshot else None)
            if not snapshot and new_refs is not None:
                wanted = set(new_refs)
                pairs = [p for p in pairs if p[0] in wanted]
            docs = [pb.Downlink.FromString(d) for _, d in pairs]
        if not docs:
            return False
        # The forward is recorded before the edge is called, not after it answers: the edge
        # may hand the documents on before it answers (a CoAP push edge pushes in the
        # background), and the recipient's acknowledgement, which any router replica may
        # handle, must find the forward already recorded, or DELIVERED would be final before
        # FORWARDED is written. A forward the edge did not make is taken back.
        if recorded is None:
            changes = _forward_changes(ue, docs)
            retry_ms = await self._forwarded(ue, changes)
        else:
            changes, retry_ms = recorded
        try:
            with metrics.timed("edge", "Deliver"):
                reply = await self.clients.deliver(
                    address,
                    epb.DeliverRequest(
                        ue_svc_id=ue, docs=docs, snapshot=snapshot, edge_id=route.edge_id
                    ),
                )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "edge unreachable",
                extra={
                    "ueSvcId": ue,
                    "edge": route.edge_id,
                    "code": exc.code().name,
                    "detail": exc.details(),
                },
            )
            if not isinstance(exc, ItemFailed):
                # The channel failed (not only this delivery): connect anew next time.
                await self.clients.forget(address)
                self._addresses.pop((route.kind, route.edge_id), None)
            await self.store.unforwarded(ue, changes, retry_ms)
            return False
        if not reply.forwarded:
            # The replica no longer holds the UE (or died since the route was read): the
            # documents wait, STORED, until the UE shows up again.
            await self.store.unforwarded(ue, changes, retry_ms)
        return bool(reply.forwarded)

    async def _forwarded(
        self, rcpt: str, changes: list[StateChange], unlimited: bool = False
    ) -> int | None:
        """The documents leave for the recipient: FORWARDED, and a re-send scheduled until it
        acknowledges them (a doubling delay, a bounded number of times; after that they
        wait for a UE to show up; an AS, which does not "show up", is retried at the longest
        delay until the documents expire). Returns when the re-send is due (ms), if one is."""
        count = await self.store.forwarded(rcpt, changes)
        when = self.retry_due(count, unlimited)
        if when is not None:
            await self.store.retry_at(rcpt, when)
        return when

    def retry_due(self, count: int, unlimited: bool = False) -> int | None:
        """When the re-send after the ``count``-th forward without an acknowledgement is due
        (ms), or None when there is to be none."""
        if count <= self.retry.limit or unlimited:
            return now_ms() + backoff_ms(count, self.retry.base_ms, self.retry.max_ms)
        return None

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
                await self._forwarded(rcpt, _forward_changes(rcpt, [doc]), unlimited=True)
                return False
            progressed = True
            await self.store.forwarded(rcpt, _forward_changes(rcpt, [doc]))
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
        acked, _ = await self.store.take_pending(rcpt, refs, exact)
        await self.settled(rcpt, acked, failed=failed, cause=cause)
        return acked

    async def settled(self, rcpt: str, acked: Acked, *, failed: bool, cause: str) -> None:
        """The rest of ``complete`` once the document is out of the inbox."""
        if not acked.matched:
            return
        doc = pb.Downlink.FromString(acked.doc)
        change = None
        if doc.WhichOneof("doc") == "msg":
            ori, msg_id = address_key(doc.msg.ori_addr), parent_msg_id(doc.msg)
            change = StateChange(
                ori,
                msg_id,
                address_key_of(rcpt),
                "FAILED" if failed else "DELIVERED",
                (cause or "REFUSED") if failed else "",
            )
            segment = msg_id != doc.msg.msg_id and not failed
            # A segment: the message is delivered with the last of its segments.
            if segment and await self.store.segment_done(ori, msg_id, address_key_of(rcpt)) > 0:
                change = None
        accepted_ms = await self.store.settle(rcpt, acked, change)
        if change is None:
            return
        if accepted_ms > 1 and not failed:
            metrics.DELIVERY_LATENCY.observe(max(now_ms() - accepted_ms, 0) / 1000)
        if accepted_ms and failed and doc.msg.deliv_st_req_ind:
            # The recipient refused it for good: the sender asked to know.
            await self.reports.failed(doc.msg, rcpt, cause or "REFUSED")


def _forward_changes(rcpt: str, docs: Iterable[pb.Downlink]) -> list[StateChange]:
    rcpt_key = address_key_of(rcpt)
    return [
        StateChange(address_key(d.msg.ori_addr), parent_msg_id(d.msg), rcpt_key, "FORWARDED")
        for d in docs
        if d.WhichOneof("doc") == "msg"
    ]
