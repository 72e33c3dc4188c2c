"""Prometheus metrics of every service, served on ``MSGIN5G_METRICS_PORT`` at ``/metrics``.

The names are shared so that one dashboard covers all four services; the ``service`` label
comes from the scrape target (the chart's ServiceMonitor), not from here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

MESSAGES = Counter(
    "msgin5g_documents_total",
    "MSGin5G documents handled, by direction (in = from UEs, out = to UEs), type and transport",
    ["direction", "type", "transport"],
)
ERRORS = Counter("msgin5g_errors_total", "Requests refused or failed, by failure cause", ["cause"])
DELIVERY_LATENCY = Histogram(
    "msgin5g_delivery_latency_seconds",
    "From acceptance of a message to the recipient's acknowledgement",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
PENDING = Gauge("msgin5g_pending_documents", "Documents stored and not yet acknowledged")
LIMITED = Counter(
    "msgin5g_limited_total",
    "Requests refused with OVERLOADED by a limit: ue_rate and ue_replies (a UE over its rate, "
    "edges), mqtt_backlog (a UE's or the replica's uplink backlog full, mqtt-edge), inbox "
    "(a recipient's inbox full, router)",
    ["limit"],
)
OBSERVERS = Gauge("msgin5g_observe_relations", "CoAP Observe relations held by this replica")
CALL_LATENCY = Histogram(
    "msgin5g_backend_call_seconds",
    "Latency of calls to other services (gRPC) and to Redis, by target and operation",
    ["target", "operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


@contextmanager
def timed(target: str, operation: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        CALL_LATENCY.labels(target, operation).observe(time.perf_counter() - start)


def serve(host: str, port: int) -> int:
    """Starts the /metrics endpoint (a thread); returns the bound port (``port`` 0 picks one)."""
    server, _ = start_http_server(port, addr=host)
    return int(server.server_address[1])
