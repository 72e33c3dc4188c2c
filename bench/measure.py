"""What the load generators share: latency summaries, CPU and memory samples of processes,
progress lines on stderr, the "all acknowledged" check, and the one JSON line each prints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from msgin5g_common.keys import Keys

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Quantiles kept per latency pass for the CDF plot (0.0, 0.005, ..., 1.0).
CDF_POINTS = 200
# A payload of 100 characters, as in the field notes' measurements.
PAYLOAD = "x" * 100


class Lost(RuntimeError):
    """Messages went missing (or were never acknowledged): the scenario fails loudly."""


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: list[float], elapsed: float, expected: int) -> dict[str, Any]:
    """Delivered count and rate, latency quantiles (ms) and the CDF points of one pass."""
    ordered = sorted(latencies)
    delivered = len(ordered)
    result: dict[str, Any] = {
        "delivered": delivered,
        "expected": expected,
        "lost": expected - delivered,
        "elapsed_s": elapsed,
        "delivered_per_s": delivered / elapsed if elapsed > 0 else 0.0,
    }
    if ordered:
        result |= {
            "p50_ms": percentile(ordered, 0.5) * 1000,
            "p90_ms": percentile(ordered, 0.9) * 1000,
            "p99_ms": percentile(ordered, 0.99) * 1000,
            "max_ms": ordered[-1] * 1000,
            "mean_ms": sum(ordered) / delivered * 1000,
            "cdf_ms": [
                round(percentile(ordered, i / CDF_POINTS) * 1000, 3) for i in range(CDF_POINTS + 1)
            ],
        }
    return result


# -- processes -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may itself contain spaces and parentheses:
    # state is field 3, utime 14, stime 15 (proc(5)).
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (/proc/stat), to see what else ran."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def parse_pids(text: str) -> dict[str, int]:
    """``--pids`` of a generator: a JSON object {service name: pid}."""
    if not text:
        return {}
    value = json.loads(text)
    return {str(k): int(v) for k, v in value.items()}


class CpuMeter:
    """CPU seconds and % of one core per process between ``start`` and ``stop``; the load
    generator counts itself as ``generator``. ``others_pct_core`` is what the rest of the
    machine used meanwhile (other work on a shared machine makes a run noisy)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, "generator": os.getpid()}
        self._start: dict[str, float | None] = {}
        self._t0 = 0.0
        self._busy0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._busy0 = machine_busy_seconds()
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        busy = machine_busy_seconds() - self._busy0
        services: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            before, after = self._start.get(name), cpu_seconds(pid)
            if before is None or after is None:
                continue
            used = after - before
            services[name] = {"cpu_s": round(used, 3), "pct_core": round(100 * used / wall, 1)}
        ours = sum(s["cpu_s"] for s in services.values())
        return {
            "wall_s": wall,
            "services": services,
            "machine_pct_core": round(100 * busy / wall, 1),
            "others_pct_core": round(max(0.0, 100 * (busy - ours) / wall), 1),
        }


# -- progress ----------------------------------------------------------------------------------


def note(text: str) -> None:
    sys.stderr.write(f"  {text}\n")
    sys.stderr.flush()


@contextlib.asynccontextmanager
async def progress(label: str, done: Callable[[], int], total: int) -> AsyncIterator[None]:
    """Prints ``label: done/total`` on stderr every 2 s while the block runs."""

    async def report() -> None:
        start = time.perf_counter()
        while True:
            await asyncio.sleep(2)
            count = done()
            rate = count / (time.perf_counter() - start)
            note(f"{label}: {count}/{total} ({rate:.0f}/s)")

    task = asyncio.create_task(report())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- acknowledgements --------------------------------------------------------------------------


async def pending(redis: Redis) -> int:
    """Documents the router holds unacknowledged, all recipients together (its expiry
    schedule; the same figure as the msgin5g_pending_documents gauge)."""
    return int(await redis.zcard(Keys().expiry()))


async def settle(redis: Redis, baseline: int, within: float = 30.0) -> float:
    """Waits until the router holds no more unacknowledged documents than ``baseline``;
    returns the time at which it did. Raises :class:`Lost` when they stay."""
    deadline = time.perf_counter() + within
    while True:
        now = time.perf_counter()
        left = await pending(redis)
        if left <= baseline:
            return now
        if now > deadline:
            raise Lost(f"{left - baseline} documents still unacknowledged after {within:.0f} s")
        await asyncio.sleep(0.01)


async def until_done(
    done: asyncio.Event, count: Callable[[], int], what: str, stall: float = 60.0
) -> None:
    """Waits for ``done`` as long as ``count()`` keeps growing; raises :class:`Lost` when it
    stood still for ``stall`` seconds (a broken system fails fast, a slow one may finish)."""
    last, since = count(), time.perf_counter()
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)
        now, seen = time.perf_counter(), count()
        if seen != last:
            last, since = seen, now
        elif now - since > stall and not done.is_set():
            raise Lost(f"{what}: {seen} so far, none for {stall:.0f} s")


def emit(result: dict[str, Any]) -> None:
    """The generator's result: one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
