"""``msgin5g-registry``: runs the registry until SIGINT/SIGTERM."""

from __future__ import annotations

from functools import partial

from msgin5g_common import service
from msgin5g_registry.app import serve
from msgin5g_registry.settings import RegistrySettings


def main() -> None:
    settings = RegistrySettings()
    service.run("registry", settings.log_level, partial(serve, settings))


if __name__ == "__main__":
    main()
