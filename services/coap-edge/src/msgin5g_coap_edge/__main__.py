"""``msgin5g-coap-edge``: runs the CoAP edge until SIGINT/SIGTERM."""

from __future__ import annotations

from functools import partial

from msgin5g_coap_edge.app import serve
from msgin5g_coap_edge.settings import CoapEdgeSettings
from msgin5g_common import service


def main() -> None:
    settings = CoapEdgeSettings()
    service.run("coap-edge", settings.log_level, partial(serve, settings))


if __name__ == "__main__":
    main()
