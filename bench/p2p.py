"""Load generator: point-to-point MSGs between UEs, through the system or a raw baseline.

    python -m bench.p2p system --sender mqtt|coap --receiver mqtt|coap \\
        --mqtt-port P --coap-port C --redis-url R [--pairs N --messages M ...]
    python -m bench.p2p raw --sender mqtt --receiver mqtt --mqtt-port P ...
    python -m bench.p2p raw --sender coap --receiver coap --coap-port RAW ...

N sender UEs each send MSGs to their own receiver UE. Senders are the client library's
``MqttUe``/``CoapUe`` (``send_msg``: the MSG and its MSGRESP); receivers take each MSG with
the library's ``receive()``, which acknowledges it (MQTT: MSGRESP on the uplink topic; CoAP:
the receiver observes its inbox and POSTs the MSGRESP).

Two passes, each counted exactly (a missing MSG, or one the router still holds
unacknowledged afterwards, fails the run):

1. ``max``: closed loop, every sender keeps ``--window`` MSGs on their way (sent, not yet
   arrived at the receiver); delivered msg/s counts up to the moment the last MSG arrived
   and the router holds none unacknowledged.
2. ``latency``: open loop at half the rate of pass 1, sends paced on a fixed schedule;
   latency runs from each MSG's scheduled send time to its arrival (no coordinated
   omission).

Raw baselines: MQTT, the same number of aiomqtt clients publish the same documents with
QoS 1 straight to the receivers' topics on Mosquitto; CoAP, the same ``CoapUe`` clients
against ``bench.raw_coap`` (a trivial aiocoap relay with an in-memory inbox). Prints one
JSON line: {"max": ..., "latency": ..., "cpu": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiomqtt
from redis.asyncio import Redis

from bench.measure import (
    NODELAY,
    PAYLOAD,
    CpuMeter,
    Lost,
    emit,
    note,
    parse_pids,
    pending,
    progress,
    settle,
    summary,
)
from msgin5g_client import CoapUe, MqttUe
from msgin5g_client.common import build_msg
from msgin5g_common import header as h

RECEIVE_TIMEOUT = 30.0


class Pair(Protocol):
    """One sender and its receiver."""

    sender_id: str
    receiver_id: str

    async def send(self, msg: h.Msg) -> None: ...

    async def receive(self) -> h.Msg: ...


class UePair:
    """Client-library UEs: through the system, or CoAP against the raw relay."""

    def __init__(self, sender: MqttUe | CoapUe, receiver: MqttUe | CoapUe) -> None:
        self.sender = sender
        self.receiver = receiver
        self.sender_id = sender.ue_svc_id
        self.receiver_id = receiver.ue_svc_id

    async def send(self, msg: h.Msg) -> None:
        resp = await self.sender.send_msg(msg, attempts=3)
        if resp.result not in (h.MsgResult.ACCEPTED, h.MsgResult.STORED):
            raise Lost(f"MSG {msg.msg_id} refused: {resp}")

    async def receive(self) -> h.Msg:
        while True:
            doc = await self.receiver.receive()
            if isinstance(doc, h.Msg):
                return doc


class RawMqttPair:
    """Two aiomqtt clients: QoS 1 publish straight to the receiver's topic."""

    def __init__(self, pub: aiomqtt.Client, sub: aiomqtt.Client, name: str) -> None:
        self.pub = pub
        self.sub = sub
        self.topic = f"raw/{name}"
        self.sender_id, self.receiver_id = f"s{name}", f"r{name}"
        self.queue: asyncio.Queue[h.Msg] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sub.subscribe(self.topic, qos=1)
        self.reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self.reader

    async def _read(self) -> None:
        async for message in self.sub.messages:
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            doc = h.decode_any(bytes(payload))
            assert isinstance(doc, h.Msg)
            await self.queue.put(doc)

    async def send(self, msg: h.Msg) -> None:
        await self.pub.publish(self.topic, h.encode(msg), qos=1)

    async def receive(self) -> h.Msg:
        if self.reader is not None and self.reader.done():
            self.reader.result()  # raises what stopped the reader
            raise Lost(f"{self.topic}: the subscription ended")
        return await asyncio.wait_for(self.queue.get(), RECEIVE_TIMEOUT)


class Pass:
    """The bookkeeping of one pass: send times, arrivals (distinct msgIds) and latencies."""

    def __init__(self, pairs: int, per_pair: int, window: int = 0) -> None:
        self.sent_at: dict[str, float] = {}
        self.got: list[set[str]] = [set() for _ in range(pairs)]
        self.latencies: list[float] = []
        self.per_pair = per_pair
        self.last_arrival = 0.0
        # Closed loop: MSGs of a pair sent and not yet arrived, at most ``window``.
        self.slots = [asyncio.Semaphore(window) for _ in range(pairs)] if window else []

    def delivered(self) -> int:
        return len(self.latencies)

    async def receive_all(self, i: int, pair: Pair) -> None:
        got = self.got[i]
        while len(got) < self.per_pair:
            try:
                doc = await pair.receive()
            except TimeoutError:
                raise Lost(
                    f"{pair.receiver_id}: {len(got)}/{self.per_pair} MSGs arrived, then nothing "
                    f"for {RECEIVE_TIMEOUT:.0f} s"
                ) from None
            sent = self.sent_at.get(doc.msg_id)
            if sent is None or doc.msg_id in got:
                continue  # a copy from an earlier pass, or a duplicate
            now = time.perf_counter()
            got.add(doc.msg_id)
            self.latencies.append(now - sent)
            self.last_arrival = now
            if self.slots:
                self.slots[i].release()


def _msg(pair: Pair, n: int) -> h.Msg:
    return build_msg(pair.sender_id, pair.receiver_id, f"{n:06d}{PAYLOAD}")


async def closed_loop(pairs: list[Pair], per_pair: int, window: int, label: str) -> Pass:
    """Every sender keeps ``window`` MSGs on their way: a slot frees when its MSG arrives at
    the receiver (not when the server accepts it), so no backlog builds up anywhere."""
    state = Pass(len(pairs), per_pair, window)

    async def send_all(i: int, pair: Pair) -> None:
        async def one(n: int) -> None:
            await state.slots[i].acquire()
            msg = _msg(pair, n)
            state.sent_at[msg.msg_id] = time.perf_counter()
            await pair.send(msg)

        await asyncio.gather(*(one(n) for n in range(per_pair)))

    async with progress(label, state.delivered, len(pairs) * per_pair):
        await asyncio.gather(
            *(send_all(i, p) for i, p in enumerate(pairs)),
            *(state.receive_all(i, p) for i, p in enumerate(pairs)),
        )
    return state


async def open_loop(pairs: list[Pair], per_pair: int, rate: float, label: str) -> Pass:
    """Sends at ``rate`` msg/s in all, each pair on its own fixed schedule (staggered)."""
    state = Pass(len(pairs), per_pair)
    per_pair_rate = rate / len(pairs)

    async def send_all(i: int, pair: Pair, t0: float) -> None:
        tasks: list[asyncio.Task[None]] = []
        for n in range(per_pair):
            at = t0 + (i / rate) + n / per_pair_rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            msg = _msg(pair, n)
            state.sent_at[msg.msg_id] = at
            tasks.append(asyncio.create_task(pair.send(msg)))
        await asyncio.gather(*tasks)

    t0 = time.perf_counter() + 0.05
    async with progress(label, state.delivered, len(pairs) * per_pair):
        await asyncio.gather(
            *(send_all(i, p, t0) for i, p in enumerate(pairs)),
            *(state.receive_all(i, p) for i, p in enumerate(pairs)),
        )
    return state


async def _bounded(jobs: list[Callable[[], Awaitable[Any]]], limit: int) -> None:
    slots = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> None:
        async with slots:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    label = f"{args.sender}->{args.receiver} {args.mode}"
    cpu = CpuMeter(parse_pids(args.pids))
    redis = Redis.from_url(args.redis_url) if args.mode == "system" else None
    pairs: list[Pair] = []
    async with contextlib.AsyncExitStack() as stack:
        if args.mode == "raw" and args.sender == "mqtt":
            for i in range(args.pairs):
                pub, sub = (
                    aiomqtt.Client(
                        "127.0.0.1",
                        args.mqtt_port,
                        identifier=f"raw{run_id}-{k}{i}",
                        protocol=aiomqtt.ProtocolVersion.V5,
                        socket_options=NODELAY,
                    )
                    for k in ("p", "s")
                )
                await stack.enter_async_context(pub)
                await stack.enter_async_context(sub)
                pair = RawMqttPair(pub, sub, f"{run_id}-{i}")
                await pair.start()
                stack.push_async_callback(pair.stop)
                pairs.append(pair)
        else:

            def ue(kind: str, name: str) -> MqttUe | CoapUe:
                if kind == "mqtt":
                    return MqttUe(name, ("127.0.0.1", args.mqtt_port), timeout=RECEIVE_TIMEOUT)
                return CoapUe(name, ("127.0.0.1", args.coap_port), timeout=RECEIVE_TIMEOUT)

            ues: list[tuple[MqttUe | CoapUe, MqttUe | CoapUe]] = []
            for i in range(args.pairs):
                sender = ue(args.sender, f"s{run_id}-{i}")
                receiver = ue(args.receiver, f"r{run_id}-{i}")
                for client in (sender, receiver):
                    await stack.enter_async_context(client)
                ues.append((sender, receiver))
            everyone = [u for pair in ues for u in pair]
            try:
                await _bounded([u.register for u in everyone], 50)
                await _bounded([r.start_observing for _, r in ues], 50)
            except TimeoutError:
                raise Lost(f"{label}: the UEs did not register or observe in time") from None
            pairs = [UePair(s, r) for s, r in ues]
        note(f"{label}: {len(pairs)} pairs ready")

        baseline = await pending(redis) if redis is not None else 0
        start = time.perf_counter()
        cpu.start()
        first = await closed_loop(pairs, args.messages, args.window, f"{label} max")
        done = await settle(redis, baseline) if redis is not None else first.last_arrival
        cpu_max = cpu.stop()
        elapsed = max(done, first.last_arrival) - start
        result_max = summary(first.latencies, elapsed, len(pairs) * args.messages)
        result_max["acked_after_last_s"] = max(0.0, done - first.last_arrival)

        rate = args.latency_rate or result_max["delivered_per_s"] / 2
        per_pair = max(1, args.latency_messages // len(pairs))
        start = time.perf_counter()
        cpu.start()
        second = await open_loop(pairs, per_pair, rate, f"{label} latency at {rate:.0f}/s")
        done = await settle(redis, baseline) if redis is not None else second.last_arrival
        cpu_latency = cpu.stop()
        result_latency = summary(
            second.latencies, max(done, second.last_arrival) - start, len(pairs) * per_pair
        )
        result_latency["offered_per_s"] = rate
    if redis is not None:
        await redis.aclose()
    for result in (result_max, result_latency):
        if result["lost"]:
            raise Lost(f"{label}: {result['lost']} of {result['expected']} MSGs lost")
    return {
        "sender": args.sender,
        "receiver": args.receiver,
        "mode": args.mode,
        "pairs": len(pairs),
        "window": args.window,
        "max": result_max,
        "latency": result_latency,
        "cpu": cpu_max,
        "cpu_latency": cpu_latency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["system", "raw"])
    parser.add_argument("--sender", choices=["mqtt", "coap"], default="mqtt")
    parser.add_argument("--receiver", choices=["mqtt", "coap"], default="mqtt")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--coap-port", type=int, default=5683)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=100, help="per pair, max-rate pass")
    parser.add_argument("--latency-messages", type=int, default=1000, help="in all, latency pass")
    parser.add_argument("--window", type=int, default=10, help="MSGs on their way per pair")
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="offered msg/s of the latency pass (default: half of what the max pass reached)",
    )
    parser.add_argument("--pids", default="", help='JSON {"service": pid} to sample CPU of')
    args = parser.parse_args()
    if args.mode == "raw" and args.sender != args.receiver:
        parser.error("raw baselines are per transport: --sender and --receiver must match")
    try:
        result = asyncio.run(run(args))
    except Lost as exc:
        sys.stderr.write(f"LOST: {exc}\n")
        sys.exit(3)
    emit(result)


if __name__ == "__main__":
    main()
