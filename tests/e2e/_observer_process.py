"""A process of UEs that register and observe their inboxes, then wait to be killed:
``python -m tests.e2e._observer_process <host> <port> <ueSvcId>...``. It prints ``ready`` once
every observation is established; SIGKILL makes all of them vanish at once, as devices that
lose power do (no deregistration, no Observe cancellation)."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack

from msgin5g_client import CoapUe


async def main(host: str, port: int, ue_ids: list[str]) -> None:
    async with AsyncExitStack() as stack:
        for ue_id in ue_ids:
            ue = await stack.enter_async_context(CoapUe(ue_id, (host, port)))
            await ue.register()
            await ue.start_observing()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
