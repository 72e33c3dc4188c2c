"""Process lifecycle shared by the four services: logging, signals, graceful shutdown.

A service provides ``serve(stop)``: it starts, logs one ``ready`` event with its addresses
(``make run`` and the tests read it), waits for ``stop`` and shuts down in order.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from msgin5g_common import logs

log = logging.getLogger("msgin5g.service")


def run(
    service: str,
    level: str,
    serve: Callable[[asyncio.Event], Awaitable[None]],
    *,
    uvloop: bool = True,
) -> None:
    """Runs ``serve`` until SIGINT/SIGTERM; on uvloop (faster) unless ``uvloop`` is False."""
    logs.configure(service, level)
    if uvloop:
        try:
            import uvloop as fast_loop

            fast_loop.install()
        except ImportError:
            pass

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)
        log.info("stopped")

    asyncio.run(main())


def ready(**addresses: object) -> None:
    """Logs the ``ready`` event; ``addresses`` say where the service listens."""
    log.info("ready", extra={"listen": addresses})
