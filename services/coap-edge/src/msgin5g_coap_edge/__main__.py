"""``msgin5g-coap-edge``: runs the CoAP edge until SIGINT/SIGTERM."""

from __future__ import annotations

from functools import partial

from msgin5g_coap_edge.app import serve
from msgin5g_coap_edge.settings import CoapEdgeSettings
from msgin5g_common import service


def main() -> None:
    settings = CoapEdgeSettings()
    # Not on uvloop: aiocoap's UDP transport reads ICMP errors from the socket's error queue
    # through loop.add_reader, and under uvloop the reader of the CoAP socket stops firing
    # after the first ICMP error (a vanished observer): the edge then never reads a datagram
    # again (measured; tests/e2e/test_vanished_observers.py fails on uvloop).
    service.run("coap-edge", settings.log_level, partial(serve, settings), uvloop=False)


if __name__ == "__main__":
    main()
