"""Load generator: a registration storm, through the system or a raw baseline.

    python -m bench.storm system --transport mqtt --mqtt-port P --redis-url R --ues N
    python -m bench.storm raw --transport mqtt --mqtt-port P --ues N
    python -m bench.storm system --transport coap --coap-port C --redis-url R --ues N
    python -m bench.storm raw --transport coap --coap-port RAW --ues N

Every UE is its own client (its own TCP connection or UDP socket), ``--concurrency`` of
them at a time: an MQTT UE connects, subscribes to its downlink topic, sends REG and waits
for REGRESP (``MqttUe.register``), then disconnects; a CoAP UE POSTs REG to ``/reg``
(``CoapUe.register``). Raw MQTT: the same connect and subscribe on Mosquitto alone, no
REG. Raw CoAP: the same ``CoapUe.register`` against ``bench.raw_coap``. Through the system,
every registration is then checked in Redis (0 lost). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

import aiomqtt
from redis.asyncio import Redis

from bench.measure import NODELAY, CpuMeter, Lost, emit, parse_pids, progress, summary
from msgin5g_client import CoapUe, MqttUe
from msgin5g_common import header as h
from msgin5g_common.keys import Keys

TIMEOUT = 60.0
# A CoAP UE that got no answer tries again from a new socket (see register_coap).
COAP_TIMEOUT = 10.0
COAP_ATTEMPTS = 3


async def register_coap(args: argparse.Namespace, ue: str) -> int:
    """``CoapUe.register`` from a new client; returns how many restarts it took. In full
    runs, very rarely, a REG got no answer through all of aiocoap's retransmissions (see
    docs/performance.md); a device would give up and start over from a new socket, and so
    does this one after ``COAP_TIMEOUT``. Restarts are counted and reported."""
    for attempt in range(COAP_ATTEMPTS):
        try:
            async with CoapUe(ue, ("127.0.0.1", args.coap_port), timeout=COAP_TIMEOUT) as coap:
                reply = await coap.register()
        except TimeoutError:
            if attempt == COAP_ATTEMPTS - 1:
                raise Lost(f"REG of {ue}: no answer in {COAP_ATTEMPTS} attempts") from None
            continue
        if reply.result is not h.Result.SUCCESS:
            raise Lost(f"REG of {ue} refused: {reply}")
        return attempt
    raise AssertionError("unreachable")


async def register_one(args: argparse.Namespace, ue: str) -> int:
    if args.transport == "coap":
        return await register_coap(args, ue)
    if args.mode == "system":
        async with MqttUe(ue, ("127.0.0.1", args.mqtt_port), timeout=TIMEOUT) as mqtt:
            await mqtt.register()
    else:
        client = aiomqtt.Client(
            "127.0.0.1",
            args.mqtt_port,
            identifier=ue,
            protocol=aiomqtt.ProtocolVersion.V5,
            socket_options=NODELAY,
        )
        async with client:
            await client.subscribe(f"msgin5g/ue/{ue}", qos=1)
    return 0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    ids = [f"reg{run_id}-{i:06d}" for i in range(args.ues)]
    latencies: list[float] = []
    slots = asyncio.Semaphore(args.concurrency)
    cpu = CpuMeter(parse_pids(args.pids))

    retries = 0

    async def one(ue: str) -> None:
        nonlocal retries
        async with slots:
            start = time.perf_counter()
            retries += await register_one(args, ue)
            latencies.append(time.perf_counter() - start)

    label = f"{args.transport} registration storm {args.mode}"
    start = time.perf_counter()
    cpu.start()
    async with progress(label, lambda: len(latencies), len(ids)):
        await asyncio.gather(*(one(ue) for ue in ids))
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = {
        "transport": args.transport,
        "mode": args.mode,
        "ues": len(ids),
        "concurrency": args.concurrency,
        "restarts": retries,
        "cpu": cpu.stop(),
    }
    result["max"] = summary(latencies, elapsed, len(ids))
    if args.mode == "system":
        redis = Redis.from_url(args.redis_url)
        keys = Keys()
        async with redis.pipeline(transaction=False) as pipe:
            for ue in ids:
                pipe.exists(keys.ue_reg(ue))
            found = sum(await pipe.execute())
        await redis.aclose()
        result["max"]["lost"] = len(ids) - found
        if found != len(ids):
            raise Lost(f"{len(ids) - found} of {len(ids)} registrations are not in Redis")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["system", "raw"])
    parser.add_argument("--transport", choices=["mqtt", "coap"], required=True)
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--coap-port", type=int, default=5683)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--ues", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--pids", default="", help='JSON {"service": pid} to sample CPU of')
    args = parser.parse_args()
    try:
        result = asyncio.run(run(args))
    except Lost as exc:
        sys.stderr.write(f"LOST: {exc}\n")
        sys.exit(3)
    emit(result)


if __name__ == "__main__":
    main()
