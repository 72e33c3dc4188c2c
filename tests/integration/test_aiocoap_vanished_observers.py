"""Observers that vanish without deregistering must not break the live ones.

50 UEs observe their own inbox resource on one plain aiocoap server; 20 of them close their
UDP socket without deregistering (as a device that dies or sleeps does). Their next
notifications come back as ICMP "port unreachable". The other 30 must receive every
notification of every round, no live observation may be dropped, and nothing may escape as
an unhandled exception. With CON notifications the server must also drop exactly the 20
vanished observations (by the ICMP error, or else by the retransmission timeout).

With NON notifications the server only learns of a vanished observer from an ICMP error,
and none comes if another socket has taken the freed port in the meantime (seen with tests
running in parallel on one host); the NON case therefore checks the live observers only.

Without ``msgin5g_coap_edge.aiocoap_fix.apply()`` aiocoap 0.4.17 blames the ICMP error on
the live observer notified next and drops that observation (see the fix's docstring); the
vanished observers are interleaved with live ones so that every vanished observer is
followed by a live one in the sending order.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Any

import aiocoap  # type: ignore[import-untyped, unused-ignore]  # aiocoap ships no types
import pytest
from aiocoap import resource  # type: ignore[import-untyped, unused-ignore]

from msgin5g_coap_edge import aiocoap_fix

OBSERVERS = 50
VANISHED = frozenset(i for i in range(OBSERVERS) if i % 5 in (1, 3))
LIVE = tuple(i for i in range(OBSERVERS) if i not in VANISHED)
ROUNDS = 5
WAIT = 10.0  # seconds for any one expected event; loopback delivers in milliseconds
CLEANUP_WAIT = 30.0  # covers CON retransmissions (2-3 s, then doubling) if an ICMP is lost


class _ObserverTally:
    """Server-side number of observations per resource, with a change event."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.changed = asyncio.Event()

    def update(self, index: int, count: int) -> None:
        self.counts[index] = count
        self.changed.set()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self.changed.clear()
            await self.changed.wait()


class _Inbox(resource.ObservableResource):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self, index: int, tally: _ObserverTally, tuning: Any) -> None:
        super().__init__()
        self._index = index
        self._tally = tally
        self._tuning = tuning
        self.value = 0

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=str(self.value).encode(), transport_tuning=self._tuning)

    def update_observation_count(self, newcount: int) -> None:
        self._tally.update(self._index, newcount)

    def publish(self) -> None:
        self.value += 1
        self.updated_state()


class _ServerErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _udp_transport(context: Any) -> Any:
    """The asyncio transport of a context's udp6 interface (created with transports=["udp6"])."""
    (interface,) = context.request_interfaces
    return interface.token_interface.message_interface.transport


def _vanish(context: Any) -> None:
    """Close the client's UDP socket as a dying device would: nothing reaches the server."""
    _udp_transport(context).close()


async def _pump(observation: Any, queue: asyncio.Queue[str | BaseException]) -> None:
    try:
        async for notification in observation:
            queue.put_nowait(notification.payload.decode())
    except Exception as exc:  # delivered to the assertion rather than lost in the task
        queue.put_nowait(exc)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "tuning", [aiocoap.Reliable, aiocoap.Unreliable], ids=["CON-notifications", "NON-notifications"]
)
async def test_vanished_observers_do_not_break_live_observations(tuning: Any) -> None:
    aiocoap_fix.apply()
    assert aiocoap_fix.is_applied()

    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))

    tally = _ObserverTally()
    site = resource.Site()
    inboxes = [_Inbox(i, tally, tuning) for i in range(OBSERVERS)]
    for i, inbox in enumerate(inboxes):
        site.add_resource(["inbox", str(i)], inbox)
    server = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", 0), transports=["udp6"]
    )
    server_errors = _ServerErrors()
    server.log.addHandler(server_errors)
    port = _udp_transport(server).get_extra_info("socket").getsockname()[1]

    clients: list[Any] = []
    queues: list[asyncio.Queue[str | BaseException]] = []
    pumps: list[asyncio.Task[None]] = []
    try:
        for i in range(OBSERVERS):
            client = await aiocoap.Context.create_client_context(transports=["udp6"])
            clients.append(client)
            request = client.request(
                aiocoap.Message(
                    code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/inbox/{i}", observe=0
                )
            )
            first = await asyncio.wait_for(request.response, WAIT)
            assert first.payload == b"0"
            queue: asyncio.Queue[str | BaseException] = asyncio.Queue()
            queues.append(queue)
            pumps.append(asyncio.create_task(_pump(request.observation, queue)))
        await asyncio.wait_for(tally.wait_until(lambda: tally.total == OBSERVERS), WAIT)

        for i in VANISHED:
            _vanish(clients[i])

        for round_ in range(1, ROUNDS + 1):
            for inbox in inboxes:
                inbox.publish()
            received = await asyncio.gather(
                *(asyncio.wait_for(queues[i].get(), WAIT) for i in LIVE),
                return_exceptions=True,
            )
            wrong = {i: got for i, got in zip(LIVE, received, strict=True) if got != str(round_)}
            assert not wrong, f"round {round_}: live observers without notification: {wrong}"

        assert all(tally.counts[i] == 1 for i in LIVE), tally.counts
        if tuning is aiocoap.Reliable:
            # The errors reached the vanished observers' own observations, and only those.
            await asyncio.wait_for(tally.wait_until(lambda: tally.total == len(LIVE)), CLEANUP_WAIT)
            assert {i for i, count in tally.counts.items() if count} == set(LIVE)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for i, client in enumerate(clients):
            if i not in VANISHED:
                await client.shutdown()
        await server.shutdown()
        server.log.removeHandler(server_errors)

    gc.collect()  # a failed task that nobody awaited reports itself when it is collected
    loop.set_exception_handler(previous_handler)
    assert not unhandled, [context.get("message") for context in unhandled]
    assert not server_errors.records, [record.getMessage() for record in server_errors.records]
