"""Device security costs: DTLS handshakes and requests inside a DTLS session or over OSCORE,
against the system as ``make run SECURE=1`` starts it (docs/security.md).

    .venv/bin/python -m bench.security [--devices 200] [--requests 1000] [--in-flight 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiocoap
import httpx
from aiocoap.numbers.codes import Code

from msgin5g_client import write_oscore_context
from msgin5g_devstack.stack import Ports, Stack, StackConfig


async def _dtls_context(base: str, ue: str, psk: str) -> Any:
    context = await aiocoap.Context.create_client_context(transports=["tinydtls"])
    context.client_credentials.load_from_dict(
        {f"{base}/*": {"dtls": {"psk": psk.encode(), "client-identity": ue.encode()}}}
    )
    return context


async def _get(context: Any, uri: str) -> None:
    response = await context.request(aiocoap.Message(code=Code.GET, uri=uri)).response
    if response.code != Code.CONTENT:
        raise RuntimeError(f"{uri}: {response.code}")


async def run(devices: int, requests: int, in_flight: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-security-"))
    # No per-UE rate limit: one device sends all the requests here.
    config = StackConfig(
        ports=Ports.ephemeral(), data_dir=folder, secure=True, env={"MSGIN5G_UE_RATE": "0"}
    )
    async with Stack(config) as stack:
        headers = {"Authorization": f"Bearer {stack.admin_token}"}
        async with httpx.AsyncClient(base_url=stack.http_url, headers=headers) as http:
            creds = [
                (f"bench-{i}", (await http.post(f"/api/v1/ues/bench-{i}/credentials")).json())
                for i in range(devices)
            ]
        host, port = stack.coaps_addr
        base = f"coaps://{host}:{port}"
        limit = asyncio.Semaphore(in_flight)

        async def handshake(ue: str, cred: dict[str, Any]) -> Any:
            async with limit:
                context = await _dtls_context(base, ue, cred["psk"])
                await _get(context, f"{base}/inbox/{ue}")
                return context

        started = time.perf_counter()
        contexts = await asyncio.gather(*(handshake(ue, cred) for ue, cred in creds))
        took = time.perf_counter() - started
        print(  # noqa: T201 - the benchmark's output
            f"DTLS handshake + GET, {devices} devices, {in_flight} in flight: "
            f"{devices / took:,.0f}/s (keys fetched from the registry at each first handshake)"
        )
        ue, cred = creds[0]
        started = time.perf_counter()
        for _ in range(requests):
            await _get(contexts[0], f"{base}/inbox/{ue}")
        took = time.perf_counter() - started
        print(f"GET /inbox in one DTLS session, one at a time: {requests / took:,.0f}/s")  # noqa: T201
        for context in contexts:
            await context.shutdown()

        chost, cport = stack.coap_addr
        plain = f"coap://{chost}:{cport}"
        oscore = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
        ctx_dir = write_oscore_context(folder / "oscore", cred["oscore"])
        oscore.client_credentials.load_from_dict({f"{plain}/*": {"oscore": {"basedir": ctx_dir}}})
        await _get(oscore, f"{plain}/inbox/{ue}")  # the Echo exchange
        started = time.perf_counter()
        for _ in range(requests):
            await _get(oscore, f"{plain}/inbox/{ue}")
        took = time.perf_counter() - started
        print(f"GET /inbox over OSCORE, one at a time: {requests / took:,.0f}/s")  # noqa: T201
        await oscore.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.security", description=__doc__)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.devices, args.requests, args.in_flight))


if __name__ == "__main__":
    main()
