"""``msgin5g-devstack run``: the whole system on loopback until Ctrl-C / SIGINT / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from msgin5g_devstack.stack import Ports, Stack, StackConfig, StackError


def _console_line(name: str, line: str) -> None:
    """Shows warnings and errors of the services on the console (everything is in the logs)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return
    if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
        sys.stderr.write(f"[{name}] {entry.get('level')}: {entry.get('event')}\n")


def _banner(stack: Stack) -> str:
    coap_host, coap_port = stack.coap_addr
    coaps_host, coaps_port = stack.coaps_addr
    mqtt_host, mqtt_port = stack.mqtt_addr
    logs = stack.log_dir
    if stack.config.secure:
        mode = [
            "MSGin5G Server is running on loopback with device security on:",
            "  devices need credentials: POST /api/v1/ues/{ueSvcId}/credentials with the admin",
            f"  token below. CoAP: DTLS-PSK on {coaps_port} or OSCORE on {coap_port} (plain "
            "CoAP gets 4.01); MQTT: username = ueSvcId and its mqttPassword, own topics only.",
            f"  admin token         {stack.admin_token}",
        ]
    else:
        mode = [
            "MSGin5G Server is running on loopback in development mode: plain CoAP and MQTT take",
            "  any device without credentials (make run SECURE=1 turns device security on),",
            "  and the AS API and management API take requests WITHOUT tokens (OAuth2 is off;",
            "  the Helm chart turns it on, see docs/as-api.md).",
        ]
    return "\n".join(
        [
            *mode,
            f"  CoAP (UEs)          coap://{coap_host}:{coap_port}   /reg /msg /inbox/{{ueSvcId}}",
            f"  CoAP over DTLS      coaps://{coaps_host}:{coaps_port}  (PSK identity = ueSvcId)",
            f"  MQTT broker (UEs)   mqtt://{mqtt_host}:{mqtt_port}    "
            "msgin5g/up/{ueSvcId} msgin5g/ue/{ueSvcId}",
            f"  registry HTTP API   {stack.http_url}   (OpenAPI: {stack.http_url}/docs)",
            f"  Redis               {stack.redis_url}   (AOF in {stack.data_dir}/redis)",
            f"  internal gRPC       registry {stack.ports.registry_grpc}, router "
            f"{stack.ports.router_grpc}, coap-edge {stack.ports.coap_edge_grpc}, "
            f"mqtt-edge {stack.ports.mqtt_edge_grpc}",
            f"  logs                {logs}/<process>.log",
            "Ctrl-C stops everything.",
        ]
    )


async def _run(args: argparse.Namespace) -> int:
    config = StackConfig(
        ports=Ports(
            coap=args.coap_port,
            coaps=args.coaps_port,
            http=args.http_port,
            mqtt=args.mqtt_port,
            redis=args.redis_port,
        ),
        data_dir=Path(args.data_dir),
        on_line=_console_line,
        secure=args.secure,
        admin_token=os.environ.get("MSGIN5G_ADMIN_TOKEN", ""),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(config)
    try:
        start = asyncio.create_task(stack.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([start, stopping], return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            start.result()
            print(_banner(stack), flush=True)  # noqa: T201 - this is the command's output
            await stop.wait()
        else:
            start.cancel()
    except StackError as exc:
        print(f"msgin5g-devstack: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        print("stopping...", file=sys.stderr, flush=True)  # noqa: T201
        await stack.stop()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="msgin5g-devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start Redis, Mosquitto and the four services on loopback")
    run.add_argument("--coap-port", type=int, default=5683, help="CoAP UDP port (default 5683)")
    run.add_argument(
        "--coaps-port", type=int, default=5684, help="CoAP over DTLS UDP port (default 5684)"
    )
    run.add_argument(
        "--http-port", type=int, default=8080, help="registry HTTP port (default 8080)"
    )
    run.add_argument("--mqtt-port", type=int, default=1883, help="MQTT broker port (default 1883)")
    run.add_argument("--redis-port", type=int, default=6379, help="Redis port (default 6379)")
    run.add_argument("--data-dir", default=".run", help="Redis data, broker config, logs (.run)")
    run.add_argument(
        "--secure",
        action="store_true",
        help="device security on: DTLS/OSCORE only, broker authentication and ACLs, admin "
        "token (MSGIN5G_ADMIN_TOKEN, or generated)",
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(_run(args)))


if __name__ == "__main__":
    main()
