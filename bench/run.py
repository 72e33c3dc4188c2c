"""``make bench``: starts the system as ``make run`` does, runs each scenario's load generator
as a separate process next to its raw baseline, prints a table and writes
``bench/results/<date>.json``. Speed goals live here, never in the tests."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from msgin5g_devstack.stack import Ports, Stack, StackConfig

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(".run/bench")


async def _generator(module: str, *args: str) -> dict[str, Any]:
    """Runs one load generator as its own process; returns the JSON line it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"bench.{module}", *args,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator {module} {args[0]} failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def group_fanout(stack: Stack, members: int) -> dict[str, Any]:
    port = str(stack.ports.mqtt)
    sys.stderr.write(f"group fan-out: {members} members through the system ...\n")
    system = await _generator(
        "group_fanout", "system", "--mqtt-port", port, "--http-url", stack.http_url,
        "--members", str(members),
    )  # fmt: skip
    sys.stderr.write(f"group fan-out: {members} raw publishes through Mosquitto ...\n")
    raw = await _generator("group_fanout", "raw", "--mqtt-port", port, "--members", str(members))
    return {
        "system": system,
        "raw": raw,
        "ratio_system_to_raw_time": system["fanout_s"] / raw["publish_s"],
    }


def _rate(r: dict[str, Any]) -> str:
    return f"{r['delivered_per_s']:.0f} msg/s, p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms"


async def p2p_mqtt(stack: Stack) -> dict[str, Any]:
    port = str(stack.ports.mqtt)
    shape = ["--pairs", "20", "--messages", "200", "--window", "10"]
    sys.stderr.write("MQTT->MQTT P2P: 4,000 messages through the system ...\n")
    system = await _generator("p2p", "system", "--mqtt-port", port, *shape)
    sys.stderr.write("MQTT->MQTT P2P: 4,000 messages relayed by Mosquitto alone ...\n")
    raw = await _generator("p2p", "raw", "--mqtt-port", port, *shape)
    return {
        "system": system,
        "raw": raw,
        "ratio_system_to_raw_rate": system["delivered_per_s"] / raw["delivered_per_s"],
    }


async def main(members: int, rate: float) -> None:
    stamp = datetime.now(UTC)
    # A fresh Redis every run: what an earlier run left pending would be retried meanwhile.
    shutil.rmtree(DATA, ignore_errors=True)
    config = StackConfig(
        ports=Ports.ephemeral(),
        data_dir=DATA,
        env={"MSGIN5G_FANOUT_RATE": str(rate)},
    )
    async with Stack(config) as stack:
        p2p = await p2p_mqtt(stack)
        result = await group_fanout(stack, members)
    report = {
        "date": stamp.isoformat(),
        "scenarios": {"p2p_mqtt": p2p, "group_fanout_mqtt": result},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stamp:%Y-%m-%dT%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    s, r = result["system"], result["raw"]
    ps, pr = p2p["system"], p2p["raw"]
    rows = [
        ("scenario", "system", "raw Mosquitto", "system/raw"),
        (
            "MQTT->MQTT P2P, 20 pairs x 200",
            _rate(ps),
            _rate(pr),
            f"{p2p['ratio_system_to_raw_rate']:.2f}x rate",
        ),
        (
            f"1 MSG to a {members}-member MQTT group",
            f"{s['fanout_s']:.2f} s ({s['deliveries_per_s']:.0f}/s)",
            f"{r['publish_s']:.2f} s ({r['messages_per_s']:.0f}/s)",
            f"{result['ratio_system_to_raw_time']:.1f}x time",
        ),
        (
            f"{members - 1} MQTT registrations",
            f"{s['registration_s']:.2f} s ({s['registrations_per_s']:.0f}/s)",
            "-",
            "-",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        sys.stdout.write(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + "\n"
        )
    sys.stdout.write(f"fan-out pace limit: {rate:.0f} deliveries/s per router; results: {path}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100_000.0,
                        help="MSGIN5G_FANOUT_RATE for the run (default: unpaced)")  # fmt: skip
    args = parser.parse_args()
    asyncio.run(main(args.members, args.rate))
