"""End-to-end: the mqtt-edge reconnects to the broker by itself after the broker restarts."""

from __future__ import annotations

import asyncio

import pytest

from msgin5g_client import CoapUe, MqttUe
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id

pytestmark = pytest.mark.e2e


async def test_mqtt_edge_reconnects_after_a_broker_restart_and_serves_again(
    own_stack: Stack,
) -> None:
    stack = own_stack
    lost = stack.expect_event("mqtt-edge", "broker connection lost")
    back = stack.expect_event("mqtt-edge", "broker connected")
    await stack.stop_process("mosquitto")
    await asyncio.wait_for(lost, 20)
    await stack.start_mosquitto()
    await asyncio.wait_for(back, 30)

    async with (
        MqttUe(new_ue_id("mqtt-a"), stack.mqtt_addr) as a,
        CoapUe(new_ue_id("coap-b"), stack.coap_addr) as b,
    ):
        await a.register()
        await b.register()
        await b.start_observing()
        await a.start_observing()
        sent = await a.send(b.ue_svc_id, "after the broker came back")
        got = await b.receive()
        assert isinstance(got, h.Msg)
        assert (got.msg_id, got.payload) == (sent.msg_id, "after the broker came back")
        back_again = await b.send(a.ue_svc_id, "and the downlink works too")
        assert (await a.receive()).msg_id == back_again.msg_id
