"""The mqtt-edge's bounded uplink backlog (msgin5g_mqtt_edge.backlog): bounds, order, turns;
and how the bridge sheds what does not fit."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from msgin5g_common import header as h
from msgin5g_common.uplink import UplinkHandler
from msgin5g_mqtt_edge.backlog import OVERHEAD, Backlog
from msgin5g_mqtt_edge.bridge import MqttBridge
from msgin5g_mqtt_edge.settings import MqttEdgeSettings


def _backlog(
    per_key: int = 100, per_key_bytes: int = 1 << 20, total: int = 1 << 30
) -> Backlog[str]:
    return Backlog(per_key, per_key_bytes, total)


async def _drain(backlog: Backlog[str], count: int) -> list[tuple[str, str]]:
    """What one worker takes, in order, finishing each item before the next."""
    taken = []
    for _ in range(count):
        key, item = await asyncio.wait_for(backlog.take(), 1)
        taken.append((key, item))
        backlog.done(key)
    return taken


async def test_a_ue_over_its_count_is_refused_and_others_are_not() -> None:
    backlog = _backlog(per_key=3)
    assert [backlog.offer("noisy", f"n{i}", 10) for i in range(3)] == [None] * 3
    refused = backlog.offer("noisy", "n3", 10)
    assert refused == "3 documents of noisy are waiting"
    assert backlog.offer("quiet", "q0", 10) is None
    assert backlog.waiting("noisy") == 3


async def test_a_ue_over_its_bytes_is_refused_but_its_first_document_always_fits() -> None:
    backlog = _backlog(per_key_bytes=1000)
    assert backlog.offer("big", "b0", 5000) is None  # nothing waiting: it fits
    assert backlog.offer("big", "b1", 10) is not None
    assert backlog.offer("small", "s0", 500) is None
    assert backlog.offer("small", "s1", 10) is not None  # 756 + 266 bytes > 1000


async def test_the_total_bounds_every_ue_together() -> None:
    backlog = _backlog(total=3 * (100 + OVERHEAD))
    for ue in ("a", "b", "c"):
        assert backlog.offer(ue, ue, 100) is None
    assert (
        backlog.offer("d", "d", 100)
        == f"this server holds {3 * (100 + OVERHEAD)} bytes of uplink waiting"
    )
    await _drain(backlog, 1)
    assert backlog.offer("d", "d", 100) is None


async def test_each_ue_keeps_its_order_and_ues_take_turns() -> None:
    backlog = _backlog()
    for i in range(4):
        backlog.offer("noisy", f"n{i}", 10)
    backlog.offer("quiet", "q0", 10)
    backlog.offer("other", "o0", 10)
    backlog.offer("quiet", "q1", 10)
    taken = [item for _, item in await _drain(backlog, 7)]
    # One document per UE per turn: the noisy UE's backlog does not hold the others up.
    assert taken == ["n0", "q0", "o0", "n1", "q1", "n2", "n3"]


async def test_a_ue_in_a_workers_hands_is_not_given_to_another() -> None:
    backlog = _backlog()
    backlog.offer("ue", "first", 10)
    backlog.offer("ue", "second", 10)
    key, item = await backlog.take()
    assert (key, item) == ("ue", "first")
    other = asyncio.ensure_future(backlog.take())
    await asyncio.sleep(0)
    assert not other.done()  # "second" waits until "first" is done
    backlog.offer("ue", "third", 10)  # arriving meanwhile: after "second"
    backlog.done("ue")
    assert await asyncio.wait_for(other, 1) == ("ue", "second")
    backlog.done("ue")
    assert await _drain(backlog, 1) == [("ue", "third")]


async def test_drained_waits_for_what_is_waiting_and_in_hand() -> None:
    backlog = _backlog()
    await asyncio.wait_for(backlog.drained(), 1)
    backlog.offer("ue", "x", 10)
    drained = asyncio.ensure_future(backlog.drained())
    key, _ = await backlog.take()
    await asyncio.sleep(0)
    assert not drained.done()
    backlog.done(key)
    await asyncio.wait_for(drained, 1)
    assert backlog.bytes == 0


async def test_the_bridge_answers_a_flooding_ues_shed_publishes_and_queues_the_others() -> None:
    bridge = MqttBridge(MqttEdgeSettings(mqtt_ue_backlog=2), cast(UplinkHandler, None), "e-1")
    published: list[tuple[str, h.Document]] = []

    async def publish(ue: str, payload: bytes) -> bool:
        published.append((ue, h.decode_any(payload)))
        return True

    bridge.publish = publish  # type: ignore[method-assign]
    flood = [
        h.encode(h.Msg(f"m-{n}", h.Address(h.AddrType.UE, "noisy"), h.Address(h.AddrType.UE, "x")))
        for n in range(5)
    ]
    # The reader never waits: what is over the UE's backlog is shed at once.
    assert [bridge.admit("msgin5g/up/noisy", doc) for doc in flood] == [True] * 2 + [False] * 3
    assert bridge.admit("msgin5g/up/quiet", flood[0]) is True
    refuser = asyncio.create_task(bridge._refuse())
    try:
        await asyncio.wait_for(bridge._refusals.join(), 1)
    finally:
        refuser.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refuser
    assert [ue for ue, _ in published] == ["noisy"] * 3
    answers = [doc for _, doc in published]
    assert all(isinstance(a, h.MsgResp) for a in answers)
    assert [(a.msg_id, a.failure_cause) for a in answers if isinstance(a, h.MsgResp)] == [
        (f"m-{n}", "OVERLOADED") for n in (2, 3, 4)
    ]
    assert all(
        a.failure_detail == "uplink backlog full (2 documents of noisy are waiting); retry later"
        for a in answers
        if isinstance(a, h.MsgResp)
    )
