"""Load generator: MQTT->MQTT point-to-point through the system, versus the same clients
relaying through Mosquitto alone.

    python -m bench.p2p system --mqtt-port P --pairs N --messages M --window W
    python -m bench.p2p raw --mqtt-port P --pairs N --messages M --window W

``system``: N sender UEs each send M MSGs to their own receiver UE, at most W unanswered at
a time; receivers acknowledge every copy (the client library does). ``raw``: the same number
of clients publish the same documents with QoS 1 straight to the receivers' topics. Both
report delivered messages per second and the send-to-receive latency (p50, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid

import aiomqtt

from bench.group_fanout import NODELAY
from msgin5g_client import MqttUe
from msgin5g_client.common import build_msg
from msgin5g_common import header as h


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(latencies: list[float], elapsed: float, total: int) -> dict[str, float]:
    return {
        "delivered": len(latencies),
        "expected": total,
        "elapsed_s": elapsed,
        "delivered_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 0.5) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


async def system(port: int, pairs: int, messages: int, window: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:6]
    broker = ("127.0.0.1", port)
    senders = [MqttUe(f"s{run}-{i}", broker, timeout=60) for i in range(pairs)]
    receivers = [MqttUe(f"r{run}-{i}", broker, timeout=60) for i in range(pairs)]
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    for ue in [*senders, *receivers]:
        await ue.__aenter__()
        await ue.register()

    async def send(sender: MqttUe, receiver: MqttUe) -> None:
        slots = asyncio.Semaphore(window)

        async def one(n: int) -> None:
            async with slots:
                msg = build_msg(sender.ue_svc_id, receiver.ue_svc_id, f"{n}")
                sent_at[msg.msg_id] = time.perf_counter()
                await sender.send_msg(msg, attempts=3)

        await asyncio.gather(*(one(n) for n in range(messages)))

    async def receive(receiver: MqttUe) -> None:
        for _ in range(messages):
            doc = await receiver.receive()
            latencies.append(time.perf_counter() - sent_at[doc.msg_id])

    start = time.perf_counter()
    await asyncio.gather(
        *(send(s, r) for s, r in zip(senders, receivers, strict=True)),
        *(receive(r) for r in receivers),
    )
    elapsed = time.perf_counter() - start
    for ue in [*senders, *receivers]:
        await ue.__aexit__(None, None, None)
    return _summary(latencies, elapsed, pairs * messages)


async def raw(port: int, pairs: int, messages: int, window: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:6]
    sent_at: dict[str, float] = {}
    latencies: list[float] = []

    def client(name: str) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", port, identifier=f"raw{run}-{name}",
                              protocol=aiomqtt.ProtocolVersion.V5,
                              socket_options=NODELAY)  # fmt: skip

    async def send(i: int, pub: aiomqtt.Client) -> None:
        slots = asyncio.Semaphore(window)

        async def one(n: int) -> None:
            async with slots:
                msg = build_msg(f"s{i}", f"r{i}", f"{n}")
                sent_at[msg.msg_id] = time.perf_counter()
                await pub.publish(f"raw/{run}/{i}", h.encode(msg), qos=1)

        await asyncio.gather(*(one(n) for n in range(messages)))

    async def receive(sub: aiomqtt.Client) -> None:
        count = 0
        async for message in sub.messages:
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            doc = h.decode_any(bytes(payload))
            assert isinstance(doc, h.Msg)
            latencies.append(time.perf_counter() - sent_at[doc.msg_id])
            count += 1
            if count == messages:
                return

    pubs = [client(f"p{i}") for i in range(pairs)]
    subs = [client(f"s{i}") for i in range(pairs)]
    for c in [*pubs, *subs]:
        await c.__aenter__()
    for i, sub in enumerate(subs):
        await sub.subscribe(f"raw/{run}/{i}", qos=1)
    start = time.perf_counter()
    await asyncio.gather(
        *(send(i, pub) for i, pub in enumerate(pubs)), *(receive(sub) for sub in subs)
    )
    elapsed = time.perf_counter() - start
    for c in [*pubs, *subs]:
        await c.__aexit__(None, None, None)
    return _summary(latencies, elapsed, pairs * messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["system", "raw"])
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args()
    run = system if args.mode == "system" else raw
    result = asyncio.run(run(args.mqtt_port, args.pairs, args.messages, args.window))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
