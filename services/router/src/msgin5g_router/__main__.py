"""``msgin5g-router``: runs the router until SIGINT/SIGTERM."""

from __future__ import annotations

from functools import partial

from msgin5g_common import service
from msgin5g_router.app import serve
from msgin5g_router.settings import RouterSettings


def main() -> None:
    settings = RouterSettings()
    service.run("router", settings.log_level, partial(serve, settings))


if __name__ == "__main__":
    main()
