"""How long an aiocoap server takes to get through the acknowledgements of N outstanding CON
notifications (the per-peer exchange index of msgin5g_coap_edge.aiocoap_fix).

One process: a plain aiocoap server with N observable resources, and N raw UDP observers
(one socket each) that observe one resource each with a CON GET. Every resource then changes
once; the observers hold their ACKs until every notification has arrived (as sleepy devices
answer late), then send them, 50 per 5 ms, and acknowledge any retransmission at once. The
figure is the time and CPU from the first ACK until the server holds no exchange.

    .venv/bin/python -m bench.coap_acks --observers 6000             # with aiocoap_fix
    .venv/bin/python -m bench.coap_acks --observers 6000 --unpatched # stock aiocoap 0.4.17
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import resource as rlimit
import time
from typing import Any

import aiocoap  # type: ignore[import-untyped, unused-ignore]  # aiocoap ships no types
from aiocoap import ACK, CON, Code, Message, resource  # type: ignore[import-untyped, unused-ignore]

from bench.measure import emit
from msgin5g_coap_edge import aiocoap_fix

WAIT = 120.0


class _Counter(resource.ObservableResource):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=b"%d" % self.value, transport_tuning=aiocoap.Reliable)


class _Observer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.notified = 0
        self.arrived = asyncio.Event()
        self.hold = False
        self.held: list[int] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        message = Message.decode(data)
        if message.mtype == CON:
            if self.hold:
                self.held.append(message.mid)
            else:
                self.ack(message.mid)
        if message.opt.observe is not None:
            self.notified += 1
            self.arrived.set()

    def ack(self, mid: int) -> None:
        message = Message(code=Code.EMPTY)
        message.mtype, message.mid = ACK, mid
        self.transport.sendto(message.encode())

    async def until(self, count: int) -> None:
        while self.notified < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), WAIT)


def _same(observer: _Observer) -> _Observer:
    return observer


def _cpu() -> float:
    usage = rlimit.getrusage(rlimit.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(observers: int, patched: bool) -> dict[str, Any]:
    if patched:
        aiocoap_fix.apply()
    site = resource.Site()
    counters = [_Counter() for _ in range(observers)]
    for i, counter in enumerate(counters):
        site.add_resource(["o", str(i)], counter)
    context = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", 0), transports=["udp6"]
    )
    (interface,) = context.request_interfaces
    manager = interface.token_interface
    port = manager.message_interface.transport.get_extra_info("socket").getsockname()[1]
    changed = asyncio.Event()
    remove_exchange = manager._remove_exchange

    def removed(message: Any) -> None:
        remove_exchange(message)
        changed.set()

    manager._remove_exchange = removed
    loop = asyncio.get_running_loop()
    devices = []
    try:
        for i in range(observers):
            device = _Observer()
            await loop.create_datagram_endpoint(
                functools.partial(_same, device), remote_addr=("127.0.0.1", port)
            )
            request = Message(code=Code.GET, uri_path=("o", str(i)), observe=0)
            request.mtype, request.mid, request.token = CON, 1, os.urandom(4)
            device.transport.sendto(request.encode())
            devices.append(device)
        for device in devices:
            await device.until(1)
            device.hold = True
        for counter in counters:
            counter.value += 1
            counter.updated_state()
        for device in devices:
            await device.until(2)
        outstanding = len(manager._active_exchanges)
        start, cpu = time.perf_counter(), _cpu()
        for i, device in enumerate(devices):
            device.hold = False
            for mid in device.held:
                device.ack(mid)
            if i % 50 == 49:
                await asyncio.sleep(0.005)  # pacing the senders, not waiting for a result
        deadline = start + WAIT
        while manager._active_exchanges and time.perf_counter() < deadline:
            changed.clear()
            # Woken by every acknowledgement; a retransmission's timeout ends exchanges too.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 1.0)
        return {
            "observers": observers,
            "patched": patched,
            "outstanding_before": outstanding,
            "left": len(manager._active_exchanges),
            "seconds": round(time.perf_counter() - start, 3),
            "cpu_s": round(_cpu() - cpu, 3),
        }
    finally:
        for device in devices:
            device.transport.close()
        await context.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observers", type=int, default=6000)
    parser.add_argument("--unpatched", action="store_true", help="stock aiocoap, no fix")
    args = parser.parse_args()
    soft, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    if soft < args.observers + 1000:
        rlimit.setrlimit(rlimit.RLIMIT_NOFILE, (min(hard, args.observers + 1000), hard))
    emit(asyncio.run(run(args.observers, not args.unpatched)))


if __name__ == "__main__":
    main()
