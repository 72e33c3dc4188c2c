"""End-to-end: every service serves Prometheus metrics, and they count what happened."""

from __future__ import annotations

import re

import httpx
import pytest

from msgin5g_client import CoapUe, MqttUe
from msgin5g_devstack.stack import SERVICES, Stack
from tests.conftest import new_ue_id

pytestmark = pytest.mark.e2e


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z0-9_:]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def _value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of a metric whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match["value"])
    return total


async def test_every_service_serves_metrics_that_count_traffic(stack: Stack) -> None:
    async with (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a,
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b,
        httpx.AsyncClient() as http,
    ):
        await a.register()
        await b.register()
        await a.start_observing()
        await b.send(a.ue_svc_id, "counted")
        await a.receive()
        scraped = {}
        for name in SERVICES:
            response = await http.get(stack.listen[name]["metrics"])
            assert response.status_code == 200, name
            scraped[name] = response.text
    coap, mqtt, router = scraped["coap-edge"], scraped["mqtt-edge"], scraped["router"]
    docs = "msgin5g_documents_total"
    assert _value(coap, docs, direction="in", type="REG", transport="coap") >= 1
    assert _value(coap, docs, direction="out", type="MSG", transport="coap") >= 1
    assert _value(coap, "msgin5g_observe_relations") >= 1
    assert _value(mqtt, docs, direction="in", type="MSG", transport="mqtt") >= 1
    assert _value(router, "msgin5g_delivery_latency_seconds_count") >= 1
    assert _value(router, "msgin5g_backend_call_seconds_count", operation="Deliver") >= 1
    assert "msgin5g_errors_total" in scraped["registry"]
