"""Load generator: the scale figures.

    python -m bench.scale redis-memory --redis-url R --registry-addr A --router-addr B --ues N
    python -m bench.scale observers --coap-port C --mqtt-port P --redis-url R \\
        --coap-edge-pid PID --metrics-url U --observers N

``redis-memory``: N UEs register, ``--concurrency`` at a time; Redis ``INFO memory``
``used_memory`` before and after, divided by N. The first ``--via-grpc`` of them through the
edges' own code path (``UplinkHandler``: the registry's Register, then the router's Attach,
as mqtt-edge does for a REG); the rest, to reach 100,000 in reasonable time, through the
registry's and router's own store code (the same writes, without the gRPC hops).

``observers``: N CoAP devices, each its own UDP socket, register (POST /reg) and observe
their inbox (GET /inbox/{id}, Observe 0) on one coap-edge; the edge's resident memory
(VmRSS) before and after, and its ``msgin5g_observe_relations`` gauge. Then a MQTT UE sends
one MSG to each of a sample of them: every sampled observer must get its notification, and
acknowledges it (POST /msg MSGRESP). With ``--cancel`` every observer then cancels its
observation (GET, Observe 1); without, the devices vanish (their sockets close). The CoAP
client is a minimal one on raw sockets (aiocoap's message codec, CON with retransmission),
because 10,000 aiocoap client contexts would measure the client.
Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
from aiocoap import ACK, CON, Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat
from redis.asyncio import Redis

from bench.measure import CpuMeter, Lost, emit, note, parse_pids, pending, progress, rss_bytes
from bench.measure import settle as settle_pending
from msgin5g.v1 import common_pb2 as pb
from msgin5g_client import MqttUe
from msgin5g_client.common import build_msg
from msgin5g_common import header as h
from msgin5g_common.keys import Keys
from msgin5g_common.uplink import UplinkHandler
from msgin5g_registry.store import RegistryStore
from msgin5g_router.store import RouterStore

TIMEOUT = 60.0


async def _bounded(
    items: list[Any], limit: int, job: Callable[[Any], Awaitable[None]], label: str
) -> None:
    slots = asyncio.Semaphore(limit)
    done = 0

    async def one(item: Any) -> None:
        nonlocal done
        async with slots:
            await job(item)
            done += 1

    async with progress(label, lambda: done, len(items)):
        await asyncio.gather(*(one(i) for i in items))


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


# -- Redis memory per registered UE -----------------------------------------------------------


async def _key_sizes(redis: Redis, ue: str) -> dict[str, int]:
    """``MEMORY USAGE`` of each key of one UE, by the key's last segment."""
    sizes: dict[str, int] = {}
    async for key in redis.scan_iter(match=f"*{{{ue}}}*", count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        sizes[name.rsplit(":", 1)[1]] = int(await redis.memory_usage(key) or 0)
    return sizes


async def redis_memory(args: argparse.Namespace) -> dict[str, Any]:
    """The first ``--via-grpc`` UEs register through the edges' code path; the rest, to
    reach ``--ues`` in reasonable time, through the same store code the registry and the
    router run for it (RegistryStore.register, RouterStore.touch_route). The key sizes of a
    UE of each path are compared: they must be the same data."""
    run_id = uuid.uuid4().hex[:6]
    ids = [f"mem{run_id}-{i:07d}" for i in range(args.ues)]
    via_grpc = min(args.via_grpc, len(ids))
    edge = pb.EdgeRef(kind=pb.EDGE_KIND_MQTT, edge_id=args.edge_id)
    handler = UplinkHandler(args.registry_addr, args.router_addr, edge, TIMEOUT)
    redis = Redis.from_url(args.redis_url, max_connections=args.concurrency + 10)
    registry = RegistryStore(redis, Keys())
    router = RouterStore(redis, Keys())
    cpu = CpuMeter(parse_pids(args.pids))
    before = await used_memory(redis)
    keys_before = int(await redis.dbsize())

    async def through_edge_path(ue: str) -> None:
        reply = await handler.handle(h.Reg(ue))
        if reply.cause is not None:
            raise Lost(f"REG of {ue} failed: {reply.cause.value} {reply.detail}")

    async def through_stores(ue: str) -> None:
        await registry.register(ue, transport="mqtt", lifetime=h.DEFAULT_LIFETIME)
        await router.touch_route(ue, "mqtt", args.edge_id, args.route_lease_ttl * 1000)

    cpu.start()
    start = time.perf_counter()
    await _bounded(ids[:via_grpc], args.concurrency, through_edge_path, "UEs registering (gRPC)")
    grpc_s = time.perf_counter() - start
    used = cpu.stop()
    middle = await used_memory(redis)
    start = time.perf_counter()
    await _bounded(ids[via_grpc:], args.concurrency, through_stores, "UEs registering (stores)")
    stores_s = time.perf_counter() - start
    after = await used_memory(redis)
    keys_after = int(await redis.dbsize())
    found = 0
    for chunk in range(0, len(ids), 10_000):
        async with redis.pipeline(transaction=False) as pipe:
            for ue in ids[chunk : chunk + 10_000]:
                pipe.exists(Keys().ue_reg(ue))
            found += sum(await pipe.execute())
    sizes_grpc = await _key_sizes(redis, ids[0])
    sizes_stores = await _key_sizes(redis, ids[-1]) if via_grpc < len(ids) else sizes_grpc
    await router.close()
    await redis.aclose()
    await handler.close()
    if found != len(ids):
        raise Lost(f"{len(ids) - found} of {len(ids)} registrations are not in Redis")
    if set(sizes_grpc) != set(sizes_stores):
        raise Lost(f"the two paths wrote different keys: {sizes_grpc} vs {sizes_stores}")
    return {
        "ues": len(ids),
        "registered": found,
        "via_grpc": via_grpc,
        "grpc_s": grpc_s,
        "registrations_per_s": via_grpc / grpc_s if via_grpc else 0.0,
        "stores_s": stores_s,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_ue": (after - before) / len(ids),
        "bytes_per_ue_grpc_part": (middle - before) / via_grpc if via_grpc else None,
        "keys_per_ue": (keys_after - keys_before) / len(ids),
        "sample_key_bytes": sizes_grpc,
        "sample_key_bytes_stores": sizes_stores,
        "cpu": used,
    }


# -- CoAP observers on one coap-edge ----------------------------------------------------------


class RawCoap(asyncio.DatagramProtocol):
    """One device: a UDP socket, CON requests with retransmission, and the notifications of
    its inbox observation (each CON notification is acknowledged)."""

    def __init__(self, ue: str) -> None:
        self.ue = ue
        self.transport: asyncio.DatagramTransport | None = None
        self.waiters: dict[bytes, asyncio.Future[Message]] = {}
        self.observe_token = b""
        self.notifications: list[bytes] = []
        self.notified = asyncio.Event()
        self.mid = random.randrange(0x10000)
        self.retransmissions = 0
        self.restarts = 0

    def itself(self) -> RawCoap:
        """The protocol factory of this device's socket."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            msg = Message.decode(data)
        except Exception:
            return
        if msg.mtype == CON and self.transport is not None:
            ack = Message(code=Code.EMPTY)
            ack.mtype, ack.mid = ACK, msg.mid
            self.transport.sendto(ack.encode())
        if msg.code == Code.EMPTY:
            return
        waiter = self.waiters.pop(msg.token, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)
        elif msg.token == self.observe_token and msg.opt.observe is not None:
            self.notifications.append(msg.payload)
            self.notified.set()

    def error_received(self, exc: Exception) -> None:
        pass

    async def request(self, msg: Message, attempts: int = 5) -> Message:
        """Sends a CON request and returns the response, piggybacked or separate. Without
        an answer it is retransmitted after 2 and 4 s (the same message ID, as CoAP does),
        then sent anew under a new message ID after 8 and 16 s more: in full runs, very
        rarely, a request got no answer through all its retransmissions (see
        docs/performance.md); a device would start over. Both are counted. The requests
        here are idempotent (REG, GET, the acknowledgement of a MSG)."""
        assert self.transport is not None
        msg.mtype = CON
        if not msg.token:
            msg.token = os.urandom(4)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.waiters[msg.token] = future
        delay = 2.0
        for attempt in range(attempts):
            if attempt == 0 or attempt >= 3:
                if attempt:
                    self.restarts += 1
                self.mid = (self.mid + 1) & 0xFFFF
                msg.mid = self.mid
            else:
                self.retransmissions += 1
            self.transport.sendto(msg.encode())
            try:
                return await asyncio.wait_for(asyncio.shield(future), delay)
            except TimeoutError:
                delay *= 2
        self.waiters.pop(msg.token, None)
        raise Lost(f"{self.ue}: no answer to {msg.code} {'/'.join(msg.opt.uri_path)}")

    async def post(self, path: str, doc: h.Document) -> Message:
        msg = Message(
            code=Code.POST,
            uri_path=(path,),
            payload=h.encode(doc),
            content_format=ContentFormat.JSON,
        )
        response = await self.request(msg)
        if not response.code.is_successful():
            raise Lost(f"{self.ue}: POST /{path} answered {response.code}: {response.payload!r}")
        return response

    async def observe(self, value: int = 0) -> None:
        msg = Message(code=Code.GET, uri_path=("inbox", self.ue), observe=value)
        if value == 0:
            self.observe_token = os.urandom(4)
        msg.token = self.observe_token
        response = await self.request(msg)
        if not response.code.is_successful():
            raise Lost(f"{self.ue}: observe answered {response.code}")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _metric(url: str, name: str) -> float | None:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(url)).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def observers(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.observers + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.observers + 1000), hard))
    run_id = uuid.uuid4().hex[:6]
    loop = asyncio.get_running_loop()
    server = ("127.0.0.1", args.coap_port)
    devices: list[RawCoap] = []
    cpu = CpuMeter(parse_pids(args.pids))
    redis = Redis.from_url(args.redis_url)
    rss_before = rss_bytes(args.coap_edge_pid)
    gauge_before = await _metric(args.metrics_url, "msgin5g_observe_relations") or 0.0
    try:
        for i in range(args.observers):
            device = RawCoap(f"obs{run_id}-{i:06d}")
            transport, _ = await loop.create_datagram_endpoint(device.itself, remote_addr=server)
            device.transport = transport
            devices.append(device)

        async def register(device: RawCoap) -> None:
            await device.post("reg", h.Reg(device.ue))

        async def observe(device: RawCoap) -> None:
            await device.observe()

        cpu.start()
        start = time.perf_counter()
        await _bounded(devices, args.concurrency, register, "observers registering")
        registered = time.perf_counter() - start
        rss_registered = rss_bytes(args.coap_edge_pid)
        start = time.perf_counter()
        await _bounded(devices, args.concurrency, observe, "observers observing")
        observing = time.perf_counter() - start
        used = cpu.stop()
        await asyncio.sleep(1)  # lets the edge settle what the burst left (tasks, buffers)
        rss_after = rss_bytes(args.coap_edge_pid)
        gauge = await _metric(args.metrics_url, "msgin5g_observe_relations") or 0.0
        held = int(gauge - gauge_before)
        note(f"coap-edge holds {held} observations, RSS {rss_after / 2**20:.0f} MiB")
        if held < args.observers:
            raise Lost(f"coap-edge holds {held} of {args.observers} observations")

        # A notification still reaches a sample of them.
        sample = random.Random(1).sample(devices, min(args.sample, len(devices)))
        baseline = await pending(redis)
        sent: dict[str, str] = {}
        async with MqttUe(
            f"obs{run_id}-sender", ("127.0.0.1", args.mqtt_port), timeout=TIMEOUT
        ) as sender:
            await sender.register()
            start = time.perf_counter()
            for device in sample:
                msg = build_msg(sender.ue_svc_id, device.ue, "to one observer of many")
                sent[device.ue] = msg.msg_id
                await sender.send_msg(msg, attempts=3)

            async def notified(device: RawCoap) -> float:
                msg_id = sent[device.ue].encode()
                while not any(msg_id in n for n in device.notifications):
                    device.notified.clear()
                    await asyncio.wait_for(device.notified.wait(), 30)
                return time.perf_counter() - start

            try:
                times = await asyncio.gather(*(notified(d) for d in sample))
            except TimeoutError:
                got = sum(any(sent[d.ue].encode() in n for n in d.notifications) for d in sample)
                raise Lost(f"only {got} of {len(sample)} sampled observers notified") from None
            for device in sample:
                ack = h.MsgResp(
                    sent[device.ue],
                    h.MsgResult.DELIVERED,
                    ue_svc_id=device.ue,
                    ori_addr=h.Address(h.AddrType.UE, sender.ue_svc_id),
                )
                await device.post("msg", ack)
        await settle_pending(redis, baseline)

        async def cancel(device: RawCoap) -> None:
            await device.observe(1)

        if args.cancel:
            await _bounded(devices, args.concurrency, cancel, "observers cancelling")
    finally:
        for device in devices:
            device.close()
        await redis.aclose()
    return {
        "observers": args.observers,
        "held": held,
        "register_s": registered,
        "observe_s": observing,
        "observes_per_s": args.observers / observing,
        "rss_before": rss_before,
        "rss_registered": rss_registered,
        "rss_after": rss_after,
        "rss_bytes_per_observer": (rss_after - rss_before) / args.observers,
        "sample": len(sample),
        "sample_notified": len(times),
        "sample_notify_max_s": max(times),
        "retransmissions": sum(d.retransmissions for d in devices),
        "restarts": sum(d.restarts for d in devices),
        "cpu": used,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("figure", choices=["redis-memory", "observers"])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--registry-addr", default="127.0.0.1:50051")
    parser.add_argument("--router-addr", default="127.0.0.1:50052")
    parser.add_argument("--edge-id", default="mqtt-edge-1", help="the mqtt-edge to attach to")
    parser.add_argument("--ues", type=int, default=100_000)
    parser.add_argument(
        "--via-grpc",
        type=int,
        default=5_000,
        help="of --ues, how many register through the edges' gRPC path",
    )
    parser.add_argument(
        "--route-lease-ttl", type=int, default=600, help="MSGIN5G_ROUTE_LEASE_TTL of the router (s)"
    )
    parser.add_argument("--coap-port", type=int, default=5683)
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--coap-edge-pid", type=int, default=0)
    parser.add_argument("--metrics-url", default="")
    parser.add_argument("--observers", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument(
        "--cancel",
        action="store_true",
        help="cancel every observation at the end (else the devices vanish)",
    )
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--pids", default="", help='JSON {"service": pid} to sample CPU of')
    args = parser.parse_args()
    job = redis_memory if args.figure == "redis-memory" else observers
    try:
        result = asyncio.run(job(args))
    except Lost as exc:
        sys.stderr.write(f"LOST: {exc}\n")
        sys.exit(3)
    emit(result)


if __name__ == "__main__":
    main()
