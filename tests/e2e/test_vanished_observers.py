"""End-to-end: UEs that vanish while observing their inbox (power loss, NAT rebinding) do not
disturb the observations of the others on the same coap-edge (aiocoap defect, fixed by
services/coap-edge/src/msgin5g_coap_edge/aiocoap_fix.py)."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack

import pytest

from msgin5g_client import CoapUe, MqttUe
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id

pytestmark = pytest.mark.e2e

OBSERVERS = 50
VANISHING = 20
ROUNDS = 3


async def test_live_observers_keep_receiving_when_others_vanish(stack: Stack) -> None:
    ids = [new_ue_id(f"obs{i}") for i in range(OBSERVERS)]
    # Interleaved: in every round, each vanished UE is notified right before a live one.
    vanishing = {ue for i, ue in enumerate(ids) if i % 5 in (0, 2)}
    assert len(vanishing) == VANISHING
    host, port = stack.coap_addr
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e._observer_process", host, str(port),
        *[ue for ue in ids if ue in vanishing],
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert doomed.stdout is not None
        assert await asyncio.wait_for(doomed.stdout.readline(), 30) == b"ready\n"
        async with AsyncExitStack() as exits:
            sender = await exits.enter_async_context(MqttUe(new_ue_id("sender"), stack.mqtt_addr))
            await sender.register()
            live: list[CoapUe] = []
            for ue_id in ids:
                if ue_id not in vanishing:
                    ue = await exits.enter_async_context(CoapUe(ue_id, stack.coap_addr))
                    await ue.register()
                    await ue.start_observing()
                    live.append(ue)

            doomed.kill()
            await doomed.wait()

            for round_ in range(ROUNDS):
                sent = {ue: (await sender.send(ue, f"round {round_}")).msg_id for ue in ids}
                got = await asyncio.gather(*(ue.receive() for ue in live), return_exceptions=True)
                missed = [
                    ue.ue_svc_id
                    for ue, doc in zip(live, got, strict=True)
                    if not isinstance(doc, h.Msg)
                ]
                assert missed == [], f"round {round_}: {len(missed)} live observers missed it"
                for ue, doc in zip(live, got, strict=True):
                    assert isinstance(doc, h.Msg)
                    assert (doc.msg_id, doc.payload) == (sent[ue.ue_svc_id], f"round {round_}")
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
