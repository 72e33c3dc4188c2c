"""Load generator: one message to a large MQTT group, versus the broker alone.

    python -m bench.group_fanout system --mqtt-port P --http-url U --redis-url R --members N
    python -m bench.group_fanout raw --mqtt-port P --members N

``system``: N MQTT UEs register (one connection publishes their REGs, as a gateway would), a
group of all of them is created, one member sends one MSG to the group, and a wildcard
subscriber on ``msgin5g/ue/+`` waits until every other member's copy has been published by
the server, acknowledging each copy for its UE as the device would (QoS 1); the fan-out is
done when the router holds none of them unacknowledged. ``raw``: one client publishes N
QoS 1 messages to N topics and the same kind of subscriber waits for all of them.
Each prints one JSON line with its measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

import aiomqtt
import httpx
from redis.asyncio import Redis

from bench.measure import (
    NODELAY,
    CpuMeter,
    Lost,
    emit,
    parse_pids,
    pending,
    progress,
    settle,
    until_done,
)
from bench.measure import summary as latency_summary
from msgin5g_client import MqttUe
from msgin5g_common import header as h


def _client(port: int, name: str) -> aiomqtt.Client:
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
        max_queued_incoming_messages=0,
    )
    # The acknowledgements are many publishes in flight on purpose: no warning for each.
    client.pending_calls_threshold = 1_000_000
    return client


class Counter:
    """Distinct topics that received a document containing ``match`` (redeliveries count
    once), with the time each first arrived; with ``acker``, only MSG copies count, and
    every copy (a redelivery too) is acknowledged for its UE as the device would."""

    def __init__(self, wanted: int, match: bytes, acker: aiomqtt.Client | None = None) -> None:
        self.wanted = wanted
        self.match = match
        self.acker = acker
        self.seen: dict[str, float] = {}
        self.done = asyncio.Event()
        self.acks: set[asyncio.Task[None]] = set()

    async def run(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray) or self.match not in payload:
                continue
            topic = message.topic.value
            if self.acker is not None:
                doc = h.decode_any(bytes(payload))
                if not isinstance(doc, h.Msg):
                    continue  # the sender's own MSGRESP
                ue = topic.rsplit("/", 1)[1]
                ack = h.MsgResp(
                    doc.msg_id, h.MsgResult.DELIVERED, ue_svc_id=ue, ori_addr=doc.ori_addr
                )
                task = asyncio.create_task(
                    self.acker.publish(f"msgin5g/up/{ue}", h.encode(ack), qos=1)
                )
                self.acks.add(task)
                task.add_done_callback(self.acks.discard)
            self.seen.setdefault(topic, time.perf_counter())
            if len(self.seen) >= self.wanted:
                self.done.set()
                return

    async def acked(self) -> None:
        while self.acks:
            await asyncio.gather(*list(self.acks))


async def system(
    port: int, http_url: str, redis_url: str, members: int, cpu: CpuMeter
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    ids = [f"b{run}-{i:06d}" for i in range(members)]
    group = f"g{run}"
    redis = Redis.from_url(redis_url)
    async with _client(port, "sub") as sub, _client(port, "gw") as gateway:
        await sub.subscribe("msgin5g/ue/+", qos=1)
        regs = Counter(members - 1, b'"REGRESP"')
        counting = asyncio.create_task(regs.run(sub))
        start = time.perf_counter()
        async with progress("group members registering", lambda: len(regs.seen), members - 1):
            for ue in ids[1:]:
                await gateway.publish(f"msgin5g/up/{ue}", h.encode(h.Reg(ue)), qos=1)
            await until_done(regs.done, lambda: len(regs.seen), "REGRESPs")
        await counting
        registration = time.perf_counter() - start

        async with httpx.AsyncClient(base_url=http_url, timeout=60) as http:
            response = await http.put(f"/api/v1/groups/{group}", json={"members": ids})
            response.raise_for_status()

        msg_id = f"fanout-{run}"
        copies = Counter(members - 1, msg_id.encode(), acker=gateway)
        counting = asyncio.create_task(copies.run(sub))
        async with MqttUe(ids[0], ("127.0.0.1", port), timeout=60) as sender:
            await sender.register()
            baseline = await pending(redis)
            msg = h.Msg(
                msg_id,
                h.Address(h.AddrType.UE, ids[0]),
                h.Address(h.AddrType.GROUP, group),
                payload="to everyone",
            )
            cpu.start()
            start = time.perf_counter()
            accepted = await sender.send_msg(msg, attempts=3)
            acceptance = time.perf_counter() - start
            async with progress("group fan-out copies", lambda: len(copies.seen), members - 1):
                await until_done(copies.done, lambda: len(copies.seen), "copies of the MSG")
            fanout = time.perf_counter() - start
            await asyncio.wait_for(copies.acked(), 60)
            acked = await settle(redis, baseline, within=120) - start
            used = cpu.stop()
        await counting
    await redis.aclose()
    times = [t - start for t in copies.seen.values()]
    delivered = latency_summary(times, max(fanout, acked), members - 1)
    return {
        "members": members,
        "registration_s": registration,
        "registrations_per_s": (members - 1) / registration,
        "acceptance_s": acceptance,
        "fanout_s": fanout,
        "acked_s": acked,
        "deliveries_per_s": (members - 1) / max(fanout, acked),
        "accepted": accepted.result is h.MsgResult.ACCEPTED,
        "max": delivered,
        "cpu": used,
    }


async def raw(port: int, members: int, cpu: CpuMeter) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    async with _client(port, "sub") as sub, _client(port, "pub") as pub:
        await sub.subscribe(f"bench/{run}/+", qos=1)
        got = Counter(members, run.encode())
        counting = asyncio.create_task(got.run(sub))
        payload = json.dumps({"run": run, "payload": "to everyone"}).encode()
        cpu.start()
        start = time.perf_counter()
        async with progress("raw publishes", lambda: len(got.seen), members):
            for i in range(members):
                await pub.publish(f"bench/{run}/{i}", payload, qos=1)
            await until_done(got.done, lambda: len(got.seen), "raw publishes")
        elapsed = time.perf_counter() - start
        used = cpu.stop()
        await counting
    times = [t - start for t in got.seen.values()]
    return {
        "members": members,
        "publish_s": elapsed,
        "messages_per_s": members / elapsed,
        "max": latency_summary(times, elapsed, members),
        "cpu": used,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["system", "raw"])
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--http-url", default="")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--pids", default="", help='JSON {"service": pid} to sample CPU of')
    args = parser.parse_args()
    cpu = CpuMeter(parse_pids(args.pids))
    try:
        if args.mode == "system":
            result = asyncio.run(
                system(args.mqtt_port, args.http_url, args.redis_url, args.members, cpu)
            )
        else:
            result = asyncio.run(raw(args.mqtt_port, args.members, cpu))
    except Lost as exc:
        sys.stderr.write(f"LOST: {exc}\n")
        sys.exit(3)
    emit(result)


if __name__ == "__main__":
    main()
