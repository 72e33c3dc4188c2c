"""Load generator: one message to a large MQTT group, versus the broker alone.

    python -m bench.group_fanout system --mqtt-port P --http-url U --members N
    python -m bench.group_fanout raw --mqtt-port P --members N

``system``: N MQTT UEs register (one connection publishes their REGs, as a gateway would), a
group of all of them is created, one member sends one MSG to the group, and a wildcard
subscriber on ``msgin5g/ue/+`` waits until every other member's copy has been published by
the server, acknowledging each copy for its UE as the device would. ``raw``: one client
publishes N QoS 1 messages to N topics and the same kind of subscriber waits for all of them.
Each prints one JSON line with its measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import uuid

import aiomqtt
import httpx

from msgin5g_client import MqttUe
from msgin5g_common import header as h

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def _client(port: int, name: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
        max_queued_incoming_messages=0,
    )


async def _count(
    client: aiomqtt.Client,
    wanted: int,
    match: bytes,
    done: asyncio.Event,
    seen: set[str],
    acker: aiomqtt.Client | None = None,
) -> None:
    """Counts distinct topics that received a document containing ``match`` (redeliveries
    count once); with ``acker``, only MSG copies count, and each is acknowledged for its UE
    as the device would."""
    async for message in client.messages:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray) or match not in payload:
            continue
        topic = message.topic.value
        if acker is not None:
            doc = h.decode_any(bytes(payload))
            if not isinstance(doc, h.Msg):
                continue  # the sender's own MSGRESP
            if topic not in seen:
                ue = topic.rsplit("/", 1)[1]
                ack = h.MsgResp(doc.msg_id, h.MsgResult.DELIVERED, ue_svc_id=ue,
                                ori_addr=doc.ori_addr)  # fmt: skip
                await acker.publish(f"msgin5g/up/{ue}", h.encode(ack), qos=0)
        seen.add(topic)
        if len(seen) >= wanted:
            done.set()
            return


async def system(port: int, http_url: str, members: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    ids = [f"b{run}-{i:06d}" for i in range(members)]
    group = f"g{run}"
    async with _client(port, "sub") as sub, _client(port, "gw") as gateway:
        await sub.subscribe("msgin5g/ue/+", qos=1)
        registered: set[str] = set()
        reg_done = asyncio.Event()
        counting = asyncio.create_task(_count(sub, members - 1, b'"REGRESP"', reg_done, registered))
        start = time.perf_counter()
        for ue in ids[1:]:
            await gateway.publish(f"msgin5g/up/{ue}", h.encode(h.Reg(ue)), qos=1)
        await asyncio.wait_for(reg_done.wait(), 600)
        await counting
        registration = time.perf_counter() - start

        async with httpx.AsyncClient(base_url=http_url, timeout=60) as http:
            response = await http.put(f"/api/v1/groups/{group}", json={"members": ids})
            response.raise_for_status()

        got: set[str] = set()
        delivered = asyncio.Event()
        msg_id = f"fanout-{run}"
        counting = asyncio.create_task(
            _count(sub, members - 1, msg_id.encode(), delivered, got, acker=gateway)
        )
        async with MqttUe(ids[0], ("127.0.0.1", port), timeout=60) as sender:
            await sender.register()
            msg = h.Msg(msg_id, h.Address(h.AddrType.UE, ids[0]),
                        h.Address(h.AddrType.GROUP, group), payload="to everyone")  # fmt: skip
            start = time.perf_counter()
            accepted = await sender.send_msg(msg, attempts=3)
            acceptance = time.perf_counter() - start
            await asyncio.wait_for(delivered.wait(), 600)
            fanout = time.perf_counter() - start
        await counting
    return {
        "members": members,
        "registration_s": registration,
        "registrations_per_s": (members - 1) / registration,
        "acceptance_s": acceptance,
        "fanout_s": fanout,
        "deliveries_per_s": (members - 1) / fanout,
        "accepted": accepted.result is h.MsgResult.ACCEPTED,
    }


async def raw(port: int, members: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    async with _client(port, "sub") as sub, _client(port, "pub") as pub:
        await sub.subscribe(f"bench/{run}/+", qos=1)
        got: set[str] = set()
        done = asyncio.Event()
        counting = asyncio.create_task(_count(sub, members, run.encode(), done, got))
        payload = json.dumps({"run": run, "payload": "to everyone"}).encode()
        start = time.perf_counter()
        for i in range(members):
            await pub.publish(f"bench/{run}/{i}", payload, qos=1)
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - start
        await counting
    return {"members": members, "publish_s": elapsed, "messages_per_s": members / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["system", "raw"])
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--http-url", default="")
    parser.add_argument("--members", type=int, default=10_000)
    args = parser.parse_args()
    if args.mode == "system":
        result = asyncio.run(system(args.mqtt_port, args.http_url, args.members))
    else:
        result = asyncio.run(raw(args.mqtt_port, args.members))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
