"""``make bench``: starts the system as ``make run`` does, runs each scenario's load generator
as a separate process next to its raw baseline, prints one table and writes
``bench/results/<date>.json`` and ``bench/results/<date>.png``. Speed goals live here, never
in the tests (docs/performance.md explains the method).

    python -m bench.run                       # everything, full size (several minutes)
    python -m bench.run --quick --out /tmp/b  # a smoke run: tiny loads, a few seconds
    python -m bench.run --scenarios p2p-mqtt-mqtt,fanout --members 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from msgin5g_devstack.stack import Ports, Stack, StackConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / ".run" / "bench"

P2P = {
    "p2p-mqtt-mqtt": ("mqtt", "mqtt"),
    "p2p-coap-coap": ("coap", "coap"),
    "p2p-coap-mqtt": ("coap", "mqtt"),
    "p2p-mqtt-coap": ("mqtt", "coap"),
}
STORM = {"storm-mqtt": "mqtt", "storm-coap": "coap"}
SCENARIOS = [*P2P, *STORM, "fanout", "redis-memory", "observers"]

# Full run, sized to finish within ~10 minutes on 2 cores; --quick: a smoke run.
FULL = {
    "pairs": 20,
    "messages": 100,
    "latency_messages": 1000,
    "window": 10,
    "ues": 10_000,
    "members": 10_000,
    "scale_ues": 100_000,
    "observers": 10_000,
}
QUICK = {
    "pairs": 2,
    "messages": 10,
    "latency_messages": 10,
    "window": 4,
    "ues": 20,
    "members": 20,
    "scale_ues": 200,
    "observers": 20,
}


class GeneratorFailed(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the runner dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def progress(text: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


async def _forward(stream: asyncio.StreamReader, tail: list[str]) -> None:
    """Copies a generator's stderr (its progress) to ours, keeping the last lines."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip("\n")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        tail.append(text)
        del tail[:-5]


async def generator(module: str, *args: str) -> dict[str, Any]:
    """Runs one load generator as its own process; returns the JSON line it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"bench.{module}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    tail: list[str] = []
    forward = asyncio.create_task(_forward(proc.stderr, tail))
    try:
        out = await proc.stdout.read()
        await proc.wait()
        await forward
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        last = next((t for t in reversed(tail) if t.strip()), "")
        raise GeneratorFailed(f"bench.{module} {args[0]} failed ({proc.returncode}): {last}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


class RawCoapServer:
    """``bench.raw_coap`` as its own process, for the CoAP baselines."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.pid = 0

    async def __aenter__(self) -> RawCoapServer:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.raw_coap",
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise GeneratorFailed("bench.raw_coap did not start")
        ready = json.loads(line)
        self.port, self.pid = int(ready["port"]), int(ready["pid"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class Bench:
    def __init__(
        self,
        stack: Stack,
        raw_coap: RawCoapServer,
        sizes: dict[str, int],
        latency_rate: float = 0.0,
    ) -> None:
        self.stack = stack
        self.raw_coap = raw_coap
        self.sizes = sizes
        self.latency_rate = latency_rate
        self.results: dict[str, dict[str, Any]] = {}
        self._raw_p2p: dict[str, dict[str, Any]] = {}
        pids = {name: entry.proc.pid for name, entry in stack.procs.items()}
        pids["runner"] = os.getpid()  # copies the services' logs
        self.system_pids = json.dumps(pids)
        self.raw_pids = json.dumps({"mosquitto": pids["mosquitto"], "raw-coap": raw_coap.pid})

    @property
    def ports(self) -> Ports:
        return self.stack.ports

    def _p2p_args(self) -> list[str]:
        s = self.sizes
        rate = ["--latency-rate", str(self.latency_rate)] if self.latency_rate else []
        return [
            *("--pairs", str(s["pairs"]), "--messages", str(s["messages"])),
            *("--latency-messages", str(s["latency_messages"]), "--window", str(s["window"])),
            *rate,
        ]

    async def raw_p2p(self, kind: str) -> dict[str, Any]:
        """The raw baseline of one transport (run once, shared by the mixed scenarios)."""
        if kind not in self._raw_p2p:
            port = self.ports.mqtt if kind == "mqtt" else self.raw_coap.port
            progress(f"  raw {kind}->{kind}: the same clients on the bare transport")
            self._raw_p2p[kind] = await generator(
                "p2p",
                "raw",
                "--sender",
                kind,
                "--receiver",
                kind,
                f"--{kind}-port",
                str(port),
                "--pids",
                self.raw_pids,
                *self._p2p_args(),
            )
        return self._raw_p2p[kind]

    async def p2p(self, name: str) -> dict[str, Any]:
        sender, receiver = P2P[name]
        progress(f"  system {sender}->{receiver}")
        system = await generator(
            "p2p",
            "system",
            "--sender",
            sender,
            "--receiver",
            receiver,
            "--mqtt-port",
            str(self.ports.mqtt),
            "--coap-port",
            str(self.ports.coap),
            "--redis-url",
            self.stack.redis_url,
            "--pids",
            self.system_pids,
            *self._p2p_args(),
        )
        if sender == receiver:
            raw = await self.raw_p2p(sender)
            baseline = f"raw {sender}"
        else:
            raws = [await self.raw_p2p("mqtt"), await self.raw_p2p("coap")]
            raw = min(raws, key=lambda r: r["max"]["delivered_per_s"])
            baseline = f"raw {raw['sender']} (the slower of the two raw baselines)"
        return {
            "title": f"P2P {sender.upper()}->{receiver.upper()}",
            "unit": "msg/s",
            "system": system,
            "raw": raw,
            "raw_baseline": baseline,
            "ratio_rate": system["max"]["delivered_per_s"] / raw["max"]["delivered_per_s"],
            "ratio_p99": system["latency"]["p99_ms"] / raw["latency"]["p99_ms"],
        }

    async def storm(self, name: str) -> dict[str, Any]:
        kind = STORM[name]
        ues = str(self.sizes["ues"])
        progress(f"  system: {ues} {kind.upper()} UEs register")
        system = await generator(
            "storm",
            "system",
            "--transport",
            kind,
            "--ues",
            ues,
            "--mqtt-port",
            str(self.ports.mqtt),
            "--coap-port",
            str(self.ports.coap),
            "--redis-url",
            self.stack.redis_url,
            "--pids",
            self.system_pids,
        )
        what = "connect + subscribe on Mosquitto" if kind == "mqtt" else "POST /reg to raw aiocoap"
        progress(f"  raw: {ues} x {what}")
        raw = await generator(
            "storm",
            "raw",
            "--transport",
            kind,
            "--ues",
            ues,
            "--mqtt-port",
            str(self.ports.mqtt),
            "--coap-port",
            str(self.raw_coap.port),
            "--pids",
            self.raw_pids,
        )
        return {
            "title": f"{kind.upper()} registration storm",
            "unit": "reg/s",
            "system": system,
            "raw": raw,
            "raw_baseline": f"raw {what}",
            "ratio_rate": system["max"]["delivered_per_s"] / raw["max"]["delivered_per_s"],
        }

    async def fanout(self, name: str) -> dict[str, Any]:
        members = str(self.sizes["members"])
        progress(f"  system: 1 MSG to a {members}-member MQTT group")
        system = await generator(
            "group_fanout",
            "system",
            "--mqtt-port",
            str(self.ports.mqtt),
            "--http-url",
            self.stack.http_url,
            "--redis-url",
            self.stack.redis_url,
            "--members",
            members,
            "--pids",
            self.system_pids,
        )
        progress(f"  raw: {members} QoS 1 publishes through Mosquitto")
        raw = await generator(
            "group_fanout",
            "raw",
            "--mqtt-port",
            str(self.ports.mqtt),
            "--members",
            members,
            "--pids",
            self.raw_pids,
        )
        return {
            "title": f"{self.sizes['members']:,}-member group fan-out",
            "unit": "copies/s",
            "system": system,
            "raw": raw,
            "raw_baseline": "raw QoS 1 publishes, one per member",
            "ratio_rate": system["deliveries_per_s"] / raw["messages_per_s"],
        }

    async def redis_memory(self, name: str) -> dict[str, Any]:
        ues = str(self.sizes["scale_ues"])
        progress(f"  {ues} UEs register (the first via registry Register + router Attach)")
        system = await generator(
            "scale",
            "redis-memory",
            "--redis-url",
            self.stack.redis_url,
            "--registry-addr",
            f"127.0.0.1:{self.ports.registry_grpc}",
            "--router-addr",
            f"127.0.0.1:{self.ports.router_grpc}",
            "--ues",
            ues,
            "--pids",
            self.system_pids,
        )
        return {"title": f"Redis per registered UE ({int(ues):,} UEs)", "system": system}

    async def observers(self, name: str) -> dict[str, Any]:
        count = str(self.sizes["observers"])
        progress(f"  {count} CoAP devices register and observe their inbox on one coap-edge")
        system = await generator(
            "scale",
            "observers",
            "--coap-port",
            str(self.ports.coap),
            "--mqtt-port",
            str(self.ports.mqtt),
            "--redis-url",
            self.stack.redis_url,
            "--coap-edge-pid",
            str(self.stack.procs["coap-edge"].proc.pid),
            "--metrics-url",
            str(self.stack.listen["coap-edge"]["metrics"]),
            "--observers",
            count,
            "--sample",
            str(min(20, int(count))),
            "--pids",
            self.system_pids,
        )
        return {"title": f"CoAP observers on one coap-edge ({int(count):,})", "system": system}

    def runner(self, name: str) -> Callable[[str], Any]:
        if name in P2P:
            return self.p2p
        if name in STORM:
            return self.storm
        return {
            "fanout": self.fanout,
            "redis-memory": self.redis_memory,
            "observers": self.observers,
        }[name]


# -- report -------------------------------------------------------------------------------------


def counts(entry: dict[str, Any]) -> dict[str, int]:
    """Delivered, expected and lost over every pass of a scenario (system and raw)."""
    total = {"delivered": 0, "expected": 0, "lost": 0}
    for side in ("system", "raw"):
        result = entry.get(side)
        if result is None:
            continue
        passes = [result[p] for p in ("max", "latency") if p in result]
        if "registered" in result:
            passes.append({"delivered": result["registered"], "expected": result["ues"]})
        if "sample_notified" in result:
            passes.append({"delivered": result["sample_notified"], "expected": result["sample"]})
        for p in passes:
            total["delivered"] += int(p["delivered"])
            total["expected"] += int(p["expected"])
            total["lost"] += int(p["expected"]) - int(p["delivered"])
    return total


SHORT = {
    "mqtt-edge": "mqtt-edge",
    "coap-edge": "coap-edge",
    "router": "router",
    "registry": "registry",
    "redis": "redis",
    "mosquitto": "mosquitto",
    "raw-coap": "raw-coap",
    "generator": "load",
    "runner": "runner",
}


def cpu_cell(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "-"
    services = sorted(cpu["services"].items(), key=lambda kv: -kv[1]["pct_core"])
    shown = [f"{SHORT.get(n, n)} {v['pct_core']:.0f}%" for n, v in services if v["pct_core"] >= 1]
    if cpu.get("others_pct_core", 0) >= 10:
        shown.append(f"[other work on the machine {cpu['others_pct_core']:.0f}%]")
    return ", ".join(shown) or "-"


def _rate_cell(result: dict[str, Any], unit: str, latency: bool) -> str:
    text = f"{result['max']['delivered_per_s']:,.0f} {unit}"
    if latency:
        lat = result["latency"]
        text += f"; p50 {lat['p50_ms']:.1f} / p99 {lat['p99_ms']:.1f} ms"
    return text


def _restarts(result: dict[str, Any]) -> str:
    """CoAP requests a client had to start over (see bench.storm.register_coap)."""
    count = int(result.get("restarts", 0))
    return f" ({count} restarted)" if count else ""


def rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    table = [("scenario", "system", "raw", "system/raw", "CPU (% of one core, system)")]
    for name, entry in results.items():
        title = entry.get("title", name)
        if "error" in entry:
            table.append((title, "FAILED", "-", "-", entry["error"]))
            continue
        system, raw = entry["system"], entry.get("raw", {})
        if name in P2P:
            ratio = f"{entry['ratio_rate']:.2f}x rate, {entry['ratio_p99']:.1f}x p99"
            raw_cell = _rate_cell(raw, "msg/s", True)
            if system["sender"] != system["receiver"]:
                raw_cell += f" ({raw['sender']})"
            table.append(
                (title, _rate_cell(system, "msg/s", True), raw_cell, ratio, cpu_cell(system["cpu"]))
            )
        elif name in STORM:
            table.append(
                (
                    f"{title}, {system['ues']:,} UEs",
                    _rate_cell(system, "reg/s", False) + _restarts(system),
                    _rate_cell(raw, "conn/s" if system["transport"] == "mqtt" else "req/s", False)
                    + _restarts(raw),
                    f"{entry['ratio_rate']:.2f}x rate",
                    cpu_cell(system["cpu"]),
                )
            )
        elif name == "fanout":
            sys_cell = (
                f"{system['acked_s']:.2f} s ({system['deliveries_per_s']:,.0f} copies/s), "
                f"{system['members'] - 1:,} regs in {system['registration_s']:.1f} s"
            )
            raw_cell = f"{raw['publish_s']:.2f} s ({raw['messages_per_s']:,.0f} msg/s)"
            table.append(
                (
                    title,
                    sys_cell,
                    raw_cell,
                    f"{entry['ratio_rate']:.2f}x rate",
                    cpu_cell(system["cpu"]),
                )
            )
        elif name == "redis-memory":
            cell = (
                f"{system['bytes_per_ue']:,.0f} B/UE ({system['keys_per_ue']:.1f} keys); "
                f"{system['via_grpc']:,} of them via gRPC at {system['registrations_per_s']:,.0f}"
                " reg/s"
            )
            table.append((title, cell, "-", "target <= 1,024 B", cpu_cell(system["cpu"])))
        elif name == "observers":
            cell = (
                f"{system['held']:,} held, RSS {system['rss_before'] / 2**20:.0f} -> "
                f"{system['rss_after'] / 2**20:.0f} MiB "
                f"({system['rss_bytes_per_observer'] / 1024:.1f} KiB each), "
                f"{system['sample_notified']}/{system['sample']} sampled notified"
                f"{_restarts(system)}"
            )
            table.append((title, cell, "-", "target 10,000", cpu_cell(system["cpu"])))
    return table


def print_table(table: list[tuple[str, str, str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for n, row in enumerate(table):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")
        if n == 0:
            sys.stdout.write("  ".join("-" * w for w in widths) + "\n")


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput system vs raw per scenario, and the latency CDFs of the latency passes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {k: v for k, v in report["scenarios"].items() if "raw" in v and "error" not in v}
    fig, (bars, cdfs) = plt.subplots(1, 2, figsize=(15, 6))
    names = list(results)
    system_rates = [_throughput(results[n], "system") for n in names]
    raw_rates = [_throughput(results[n], "raw") for n in names]
    x = range(len(names))
    bars.bar([i - 0.2 for i in x], system_rates, 0.4, label="system", color="tab:blue")
    bars.bar([i + 0.2 for i in x], raw_rates, 0.4, label="raw baseline", color="tab:gray")
    for i, name in enumerate(names):
        bars.annotate(
            f"{results[name]['ratio_rate']:.2f}x",
            (i, max(system_rates[i], raw_rates[i])),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    bars.set_xticks(list(x))
    bars.set_xticklabels(
        [f"{results[n]['title']}\n({results[n]['unit']})" for n in names],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    bars.set_yscale("log")
    bars.set_ylabel("delivered per second (all acknowledged, 0 lost)")
    bars.set_title("Throughput: system vs raw transport")
    if names:
        bars.legend()

    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    drawn_raw: set[str] = set()
    for color, name in zip(colors, [n for n in names if n in P2P], strict=False):
        entry = results[name]
        for side, style in (("system", "-"), ("raw", "--")):
            lat = entry[side]["latency"]
            if side == "raw":
                kind = entry["raw"]["sender"]
                if kind in drawn_raw:
                    continue
                drawn_raw.add(kind)
                label = f"raw {kind.upper()} ({lat['offered_per_s']:,.0f} msg/s)"
            else:
                label = f"{entry['title']} ({lat['offered_per_s']:,.0f} msg/s)"
            points = lat["cdf_ms"]
            ys = [i / (len(points) - 1) for i in range(len(points))]
            if side == "raw":
                color = "black" if entry["raw"]["sender"] == "coap" else "gray"
            cdfs.plot(points, ys, style, color=color, label=label)
    cdfs.set_xscale("log")
    cdfs.set_xlabel("end-to-end latency (ms), open loop at half the max rate")
    cdfs.set_ylabel("fraction of MSGs")
    cdfs.set_title("P2P latency CDF")
    cdfs.grid(True, which="both", alpha=0.3)
    if cdfs.lines:
        cdfs.legend(fontsize=8)
    notes = []
    memory = report["scenarios"].get("redis-memory", {}).get("system")
    if memory:
        notes.append(
            f"Redis: {memory['bytes_per_ue']:,.0f} B per registered UE at {memory['ues']:,} UEs"
        )
    held = report["scenarios"].get("observers", {}).get("system")
    if held:
        notes.append(
            f"coap-edge: {held['held']:,} observers, RSS {held['rss_before'] / 2**20:.0f} -> "
            f"{held['rss_after'] / 2**20:.0f} MiB"
        )
    if notes:
        fig.text(0.01, 0.01, "   |   ".join(notes), fontsize=9)
    fig.suptitle(f"MSGin5G benchmark {report['date'][:19]}Z, commit {report['commit']}")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _throughput(entry: dict[str, Any], side: str) -> float:
    result = entry[side]
    if "deliveries_per_s" in result:
        return float(result["deliveries_per_s"])
    if "messages_per_s" in result:
        return float(result["messages_per_s"])
    return float(result["max"]["delivered_per_s"])


def write(report: dict[str, Any], out: Path, name: str) -> tuple[Path, Path]:
    """Writes ``<out>/<name>.json`` and ``<out>/<name>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, png_path)
    return json_path, png_path


def commit() -> str:
    """The checked-out commit, read from .git without running git."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:7]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line[:7]
    except OSError:
        pass
    return "unknown"


# -- main -------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC)
    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        value = getattr(args, key)
        if value is not None:
            sizes[key] = value
    selected = args.scenarios.split(",") if args.scenarios else SCENARIOS
    unknown = set(selected) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    # A fresh Redis every run: what an earlier run left pending would be retried meanwhile.
    data = Path(args.data_dir)
    shutil.rmtree(data, ignore_errors=True)
    config = StackConfig(
        ports=Ports.ephemeral(),
        data_dir=data,
        env={"MSGIN5G_FANOUT_RATE": str(args.rate)},
    )
    progress(f"starting the system ({data}) and the raw CoAP relay")
    started = time.perf_counter()
    async with Stack(config) as stack, RawCoapServer() as raw_coap:
        bench = Bench(stack, raw_coap, sizes, args.latency_rate)
        for n, name in enumerate(selected, 1):
            progress(f"[{n}/{len(selected)}] {name}")
            try:
                bench.results[name] = await bench.runner(name)(name)
            except GeneratorFailed as exc:
                progress(f"FAILED {name}: {exc}")
                bench.results[name] = {"title": name, "error": str(exc)}
        results = bench.results
    for entry in results.values():
        if "error" not in entry:
            entry["counts"] = counts(entry)
    report = {
        "date": stamp.isoformat(),
        "commit": commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "sizes": sizes,
        "fanout_rate": args.rate,
        "latency_rate": args.latency_rate or None,
        "duration_s": time.perf_counter() - started,
        "scenarios": results,
    }
    json_path, png_path = write(report, Path(args.out), f"{stamp:%Y-%m-%dT%H%M%S}")
    print_table(rows(results))
    sys.stdout.write(
        f"\n{report['duration_s']:.0f} s, commit {report['commit']}, "
        f"{os.cpu_count()} cores; results: {json_path}, plot: {png_path}\n"
    )
    failed = [n for n, e in results.items() if "error" in e]
    if failed:
        sys.stdout.write(f"FAILED: {', '.join(failed)}\n")
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny loads: a smoke run")
    parser.add_argument(
        "--scenarios",
        default="",
        help=f"comma-separated, of: {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON and PNG go")
    parser.add_argument("--data-dir", default=str(DATA), help="the system's Redis and logs")
    parser.add_argument("--pairs", type=int, help="P2P sender/receiver pairs")
    parser.add_argument("--messages", type=int, help="P2P MSGs per pair in the max-rate pass")
    parser.add_argument("--latency-messages", type=int, help="P2P MSGs in the latency pass")
    parser.add_argument("--window", type=int, help="P2P unanswered MSGs per sender")
    parser.add_argument("--ues", type=int, help="UEs per registration storm")
    parser.add_argument("--members", type=int, help="group size of the fan-out")
    parser.add_argument("--scale-ues", type=int, help="registered UEs for Redis memory")
    parser.add_argument("--observers", type=int, help="CoAP observers on one coap-edge")
    parser.add_argument(
        "--rate",
        type=float,
        default=100_000.0,
        help="MSGIN5G_FANOUT_RATE for the run (default: unpaced)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="P2P latency pass at this many msg/s, system and raw alike (default: each at "
        "half of its own max)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
