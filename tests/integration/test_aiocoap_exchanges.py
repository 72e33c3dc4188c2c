"""CON exchanges per peer without scans (msgin5g_coap_edge.aiocoap_fix, ``_ActiveExchanges``).

aiocoap 0.4.17 looks for "does this peer still have an exchange" by scanning every active
exchange of the server, on every ACK: with thousands of observers whose CON notifications
are outstanding, a fan-out became quadratic. These tests run a real aiocoap server and raw
UDP observers on loopback:

- the per-peer rules stay as they were: a second CON to a peer waits (backlog) until the
  first is acknowledged, and afterwards the server holds no exchange, backlog or index entry;
- acknowledging N outstanding notifications compares peer addresses O(N) times, not O(N^2)
  (counted, not timed);
- an ICMP error from a vanished observer ends that peer's exchanges only;
- serving a request builds no repr of its message (aiocoap named each task with one).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiocoap  # type: ignore[import-untyped, unused-ignore]  # aiocoap ships no types
from aiocoap import ACK, CON, Code, Message, resource  # type: ignore[import-untyped, unused-ignore]
from aiocoap.transports import udp6  # type: ignore[import-untyped, unused-ignore]

from msgin5g_coap_edge import aiocoap_fix

WAIT = 10.0


class _Counter(resource.ObservableResource):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=b"%d" % self.value, transport_tuning=aiocoap.Reliable)

    def publish(self) -> None:
        self.value += 1
        self.updated_state()


class _Observer(asyncio.DatagramProtocol):
    """A device with its own UDP socket: observes with a CON GET and keeps the CON
    notifications' message IDs until told to acknowledge them."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.port = 0
        self.notifications: list[tuple[int, bytes]] = []  # (message ID, payload)
        self.arrived = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        message = Message.decode(data)
        if message.opt.observe is not None:
            self.notifications.append((message.mid, message.payload))
            self.arrived.set()

    async def until(self, count: int) -> None:
        while len(self.notifications) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), WAIT)

    def observe(self, path: str) -> None:
        request = Message(code=Code.GET, uri_path=("o", path), observe=0)
        request.mtype, request.mid, request.token = CON, 1, os.urandom(4)
        self.transport.sendto(request.encode())

    def ack(self, mid: int) -> None:
        message = Message(code=Code.EMPTY)
        message.mtype, message.mid = ACK, mid
        self.transport.sendto(message.encode())


@asynccontextmanager
async def _server(count: int) -> AsyncIterator[tuple[list[_Counter], Any, int, _Watch]]:
    """(resources, the server's MessageManager, its port, a watch on the manager)."""
    aiocoap_fix.apply()
    site = resource.Site()
    counters = [_Counter() for _ in range(count)]
    for i, counter in enumerate(counters):
        site.add_resource(["o", str(i)], counter)
    context = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", 0), transports=["udp6"]
    )
    (interface,) = context.request_interfaces
    manager = interface.token_interface
    transport = manager.message_interface.transport
    try:
        watch = _Watch(manager)
        yield counters, manager, transport.get_extra_info("socket").getsockname()[1], watch
    finally:
        await context.shutdown()


def _same(observer: _Observer) -> _Observer:
    return observer


async def _observers(port: int, count: int) -> list[_Observer]:
    loop = asyncio.get_running_loop()
    observers = []
    for i in range(count):
        observer = _Observer()
        await loop.create_datagram_endpoint(
            functools.partial(_same, observer), remote_addr=("127.0.0.1", port)
        )
        observer.observe(str(i))
        observers.append(observer)
    for observer in observers:
        await observer.until(1)  # the (piggybacked) answer to the registration
    return observers


class _WatchedExchanges(aiocoap_fix._ActiveExchanges):
    def __init__(self, changed: asyncio.Event) -> None:
        super().__init__()
        self.changed = changed

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.changed.set()

    def pop(self, key: Any, *default: Any) -> Any:
        value = super().pop(key, *default)
        self.changed.set()
        return value


class _Watch:
    """Wakes the test on every change of the server's exchanges and after every message it
    hands to its MessageManager, so conditions are awaited, not polled."""

    def __init__(self, manager: Any) -> None:
        self.changed = asyncio.Event()
        assert not manager._active_exchanges
        manager._active_exchanges = _WatchedExchanges(self.changed)
        send = manager.send_message

        def watched_send(*args: Any, **kwargs: Any) -> Any:
            result = send(*args, **kwargs)
            self.changed.set()
            return result

        manager.send_message = watched_send

    async def until(self, predicate: Any) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def test_the_patch_indexes_the_exchanges() -> None:
    aiocoap_fix.apply()
    assert aiocoap_fix.is_applied()
    exchanges = aiocoap_fix._ActiveExchanges()
    exchanges[("a", 1)] = "x"
    exchanges[("a", 2)] = "y"
    exchanges[("b", 1)] = "z"
    exchanges[("a", 1)] = "x again"  # overwritten, not counted twice
    assert exchanges.by_remote == {"a": {1, 2}, "b": {1}}
    assert exchanges.pop(("a", 1)) == "x again"
    assert exchanges.pop(("a", 9), None) is None
    del exchanges[("b", 1)]
    assert exchanges.by_remote == {"a": {2}}
    exchanges.clear()
    assert exchanges.by_remote == {}
    assert dict(exchanges) == {}


async def test_a_second_con_to_a_peer_waits_for_the_first_acknowledgement() -> None:
    async with _server(1) as (counters, manager, port, watch):
        (observer,) = await _observers(port, 1)
        exchanges = manager._active_exchanges
        assert isinstance(exchanges, aiocoap_fix._ActiveExchanges)
        # (the watch's subclass; an unpatched server has a plain dict here)

        counters[0].publish()
        await observer.until(2)
        first_mid, first = observer.notifications[1]
        assert first == b"1"
        counters[0].publish()
        # The second notification is not sent while the first is unacknowledged.
        await watch.until(lambda: len(manager._backlogs) == 1)
        (remote,) = exchanges.by_remote
        assert exchanges.by_remote[remote] == {first_mid}
        assert len(observer.notifications) == 2

        observer.ack(first_mid)
        await observer.until(3)
        second_mid, second = observer.notifications[2]
        assert second == b"2"
        assert exchanges.by_remote == {remote: {second_mid}}
        observer.ack(second_mid)
        await watch.until(lambda: not exchanges and not manager._backlogs)
        assert exchanges.by_remote == {}


@contextmanager
def _counting_comparisons() -> Iterator[list[int]]:
    """Counts comparisons of UDP peer addresses (what the stock scan does per entry)."""
    calls = [0]
    original = udp6.UDP6EndpointAddress.__eq__

    def counted(self: Any, other: Any) -> Any:
        calls[0] += 1
        return original(self, other)

    udp6.UDP6EndpointAddress.__eq__ = counted
    try:
        yield calls
    finally:
        udp6.UDP6EndpointAddress.__eq__ = original


async def test_acknowledging_n_notifications_costs_o_n_comparisons() -> None:
    count = 400
    async with _server(count) as (counters, manager, port, watch):
        observers = await _observers(port, count)
        for counter in counters:
            counter.publish()
        for observer in observers:
            await observer.until(2)
        exchanges = manager._active_exchanges
        assert len(exchanges) == count
        with _counting_comparisons() as calls:
            # 50 ACKs at a time: a burst of 400 would overflow the server's socket buffer.
            for start in range(0, count, 50):
                for observer in observers[start : start + 50]:
                    observer.ack(observer.notifications[1][0])
                left = count - start - len(observers[start : start + 50])
                await watch.until(lambda left=left: len(exchanges) == left)
        assert exchanges.by_remote == {}
        assert not manager._backlogs
        # The stock scan compares each ACK's peer with every exchange left: ~count^2 / 2
        # (80,000 here). With the index a few per ACK remain (dictionary lookups).
        assert calls[0] < 10 * count, calls[0]


async def test_an_icmp_error_ends_the_exchanges_of_that_peer_only() -> None:
    async with _server(3) as (counters, manager, port, watch):
        observers = await _observers(port, 3)
        exchanges = manager._active_exchanges
        for counter in counters:
            counter.publish()
        for observer in observers:
            await observer.until(2)
        assert len(exchanges.by_remote) == 3
        # Observer 0 vanishes: the retransmission of its notification (after 2-3 s) comes
        # back as ICMP port unreachable, which ends that peer's exchange.
        (gone,) = [r for r in exchanges.by_remote if r.sockaddr[1] == observers[0].port]
        observers[0].transport.close()
        await watch.until(lambda: gone not in exchanges.by_remote)
        assert len(exchanges.by_remote) == 2
        assert len(exchanges) == 2
        for observer in observers[1:]:
            observer.ack(observer.notifications[1][0])
        await watch.until(lambda: not exchanges)
        assert exchanges.by_remote == {}


async def test_serving_a_request_formats_no_message() -> None:
    """aiocoap named every request's task with a repr of the whole message (and its peer)."""
    calls = [0]
    original = aiocoap.Message.__repr__

    def counted(self: Any) -> Any:
        calls[0] += 1
        return original(self)

    async with _server(1) as (_counters, _manager, port, _watch):
        aiocoap.Message.__repr__ = counted
        try:
            await _observers(port, 1)  # one CON GET, answered
        finally:
            aiocoap.Message.__repr__ = original
    assert calls[0] == 0
