"""End-to-end: a service restarted between acceptance and delivery loses nothing and
duplicates nothing the application can see."""

from __future__ import annotations

import signal

import pytest

from msgin5g_client import CoapUe, MqttUe
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id, until_state

pytestmark = pytest.mark.e2e

# A graceful stop and a crash.
STOPS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])


@STOPS
async def test_router_restart_between_acceptance_and_delivery_loses_nothing(
    own_stack: Stack, sig: signal.Signals
) -> None:
    stack = own_stack
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
    ):
        await a.register()
        await b.register()
        # b does not observe: the message is accepted and stored, not yet delivered.
        first = await a.send(b.ue_svc_id, "survives the router")
        assert first.result is h.MsgResult.STORED

        await stack.stop_process("router", sig)
        await stack.start_service("router")

        await b.start_observing()
        got = await b.receive()
        assert isinstance(got, h.Msg)
        assert (got.msg_id, got.payload) == (first.msg_id, "survives the router")
        # Exactly once: the next document b's application sees is the next message.
        second = await a.send(b.ue_svc_id, "after the restart")
        assert (await b.receive()).msg_id == second.msg_id
        assert await b.inbox() == []


@STOPS
async def test_mqtt_edge_restart_between_acceptance_and_delivery_loses_nothing(
    own_stack: Stack, sig: signal.Signals
) -> None:
    stack = own_stack
    async with (
        CoapUe(new_ue_id("coap-a"), stack.coap_addr) as a,
        MqttUe(new_ue_id("mqtt-b"), stack.mqtt_addr) as b,
    ):
        await a.register()
        await b.register()
        await stack.stop_process("mqtt-edge", sig)
        # No mqtt-edge is alive (a crashed one still has a heartbeat for a few seconds, and
        # the router finds it unreachable): the message for the MQTT UE is stored.
        first = await a.send(b.ue_svc_id, "survives the edge")
        assert first.result in (h.MsgResult.STORED, h.MsgResult.ACCEPTED)

        await stack.start_service("mqtt-edge")
        # The UE shows up again (it re-registers): what it has not acknowledged is re-sent.
        await b.register()
        got = await b.receive()
        assert isinstance(got, h.Msg)
        assert (got.msg_id, got.payload) == (first.msg_id, "survives the edge")
        second = await a.send(b.ue_svc_id, "after the restart")
        assert (await b.receive()).msg_id == second.msg_id


async def test_coap_edge_restart_between_acceptance_and_delivery_loses_nothing(
    own_stack: Stack,
) -> None:
    stack = own_stack
    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
    ):
        await a.register()
        await b.register()
        await b.start_observing()
        await stack.stop_process("coap-edge")
        first = await a.send(b.ue_svc_id, "survives the edge")
        # STORED, or ACCEPTED while the router still remembers the replica's address (for a
        # second): either way the message is in Redis and its state ends up STORED.
        assert first.result in (h.MsgResult.STORED, h.MsgResult.ACCEPTED)
        await until_state(stack.http_url, first.msg_id, f"UE:{a.ue_svc_id}", "STORED", within=10)

        await stack.start_service("coap-edge")
        # The observation died with the edge; the UE observes again when it wakes up.
        await b.stop_observing()
        await b.start_observing()
        got = await b.receive()
        assert isinstance(got, h.Msg)
        assert (got.msg_id, got.payload) == (first.msg_id, "survives the edge")
        second = await a.send(b.ue_svc_id, "after the restart")
        assert (await b.receive()).msg_id == second.msg_id
        assert await b.inbox() == []
