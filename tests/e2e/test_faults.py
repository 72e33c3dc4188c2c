"""End-to-end fault injection: a process of the system crashes (SIGKILL) or restarts while
messages are in flight, or between their acceptance and their delivery, and still every
message whose sender got ACCEPTED or STORED reaches its recipient's application, and none
reaches it twice (msgin5g.md section 8, guarantees 1 and 2).

The devices do what a real device would do, no more:

* A sender waits ``DEVICE_TIMEOUT`` for its answer and retries a timeout or OVERLOADED with
  the same msgId (``send_msg(attempts=...)``); the server suppresses the duplicates.
* A recipient's client hands each document to the application once (a redelivery is dropped);
  the tests record every msgId the application is handed and assert that none comes twice.
  An MQTT UE acknowledges in ``receive()``. A CoAP UE observes with ``auto_ack=False`` and
  acknowledges a document after its application has it; an acknowledgement that fails
  leaves the document pending, and the UE acknowledges it again when it next reads its
  inbox. (The client's own auto-ack is covered by its own test below.)
* After the fault a recipient shows up again (``Recipient.resync``), retrying a request that
  fails or goes unanswered: an MQTT UE refreshes its registration, which the server answers
  by re-sending everything the UE has not acknowledged; a CoAP UE observes its inbox again
  (an observation dies with the coap-edge) and, as a UE that wakes up does (msgin5g.md
  section 5), reads its inbox until nothing is pending.
* Every phase is bounded by a timeout, and every test by ``pytest.mark.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest

from msgin5g_client import CoapUe, MqttUe, RequestFailed
from msgin5g_client.common import DownlinkDoc, build_msg, with_retries
from msgin5g_common import header as h
from msgin5g_devstack.stack import Stack
from tests.conftest import new_ue_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

Ue = CoapUe | MqttUe

# How long a device waits for an answer before it retries (the clients' default is 10 s).
DEVICE_TIMEOUT = 3.0
# Tries per message: with the doubling back-off (0.2 s up to 5 s) over two minutes of outage.
ATTEMPTS = 30
ACCEPTED = (h.MsgResult.ACCEPTED, h.MsgResult.STORED)


def make_ue(stack: Stack, transport: str, label: str, ue_id: str | None = None) -> Ue:
    ue_id = ue_id or new_ue_id(f"{transport}-{label}")
    if transport == "coap":
        return CoapUe(ue_id, stack.coap_addr, timeout=DEVICE_TIMEOUT)
    return MqttUe(ue_id, stack.mqtt_addr, timeout=DEVICE_TIMEOUT)


async def entered(exits: AsyncExitStack, ue: Ue) -> Ue:
    """Connects the device for as long as ``exits`` lasts."""
    await exits.enter_async_context(ue)
    return ue


class Recipient:
    """A recipient device: the msgIds accepted for it, and every msgId its application was
    handed, in order (by ``receive()``, or by an inbox read when it wakes up)."""

    def __init__(self, ue: Ue, accepted: set[str] | None = None) -> None:
        self.ue = ue
        self.accepted: set[str] = accepted if accepted is not None else set()
        self.handed: list[str] = []
        # msgIds handed over and acknowledged (or whose acknowledgement failed): done with.
        self.settled: set[str] = set()
        self._changed = asyncio.Event()
        self._observing = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None

    @property
    def ue_id(self) -> str:
        return self.ue.ue_svc_id

    async def start(self, attempts: int = 1) -> None:
        """Registers, observes (CoAP) and collects what ``receive()`` returns; retries a
        request that fails or goes unanswered (``attempts`` tries in all)."""
        await retrying(self._show_up, attempts)
        self._collector = asyncio.create_task(self._collect())

    async def _show_up(self) -> None:
        try:
            await self.ue.register()
            await self._observe()
        except BaseException:
            if isinstance(self.ue, CoapUe):
                # A failed start_observing() leaves its dead task behind: clear it.
                await self.ue.stop_observing()
            raise

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None

    async def _observe(self) -> None:
        if isinstance(self.ue, CoapUe):
            # The device acknowledges each document itself, once its application has it.
            await self.ue.start_observing(auto_ack=False)
        self._observing.set()

    async def _collect(self) -> None:
        while True:
            try:
                doc = await self.ue.receive()
            except TimeoutError:
                continue
            except RuntimeError:
                # CoapUe.receive() between stop_observing() and start_observing() of a resync.
                if self._observing.is_set():
                    raise
                await self._observing.wait()
                continue
            self._hand(doc)
            await self._ack(doc)
            self._settle(doc)
            self._changed.set()

    def _hand(self, doc: DownlinkDoc) -> None:
        if isinstance(doc, h.Msg):
            self.handed.append(doc.msg_id)

    def _settle(self, doc: DownlinkDoc) -> None:
        if isinstance(doc, h.Msg):
            self.settled.add(doc.msg_id)

    async def _ack(self, doc: DownlinkDoc) -> None:
        if isinstance(self.ue, CoapUe):
            # A failed acknowledgement leaves the document pending: the device acknowledges it
            # again when it reads its inbox (drain_inbox).
            with contextlib.suppress(Exception):
                await self.ue.ack(doc)

    async def resync(self) -> None:
        """The device shows up again after the fault (see the module docstring); it retries
        a request that fails or goes unanswered (the edges may not have reconnected to a
        restarted router yet)."""
        if isinstance(self.ue, MqttUe):
            await retrying(self.ue.register)
            return
        self._observing.clear()
        await retrying(self._observe_again)
        await retrying(self.drain_inbox)

    async def _observe_again(self) -> None:
        assert isinstance(self.ue, CoapUe)
        await self.ue.stop_observing()
        await self._observe()

    async def drain_inbox(self) -> None:
        """Reads the inbox until nothing is pending (a CoAP UE that wakes up): hands the
        application what it has not seen yet, and acknowledges every document."""
        assert isinstance(self.ue, CoapUe)
        while docs := await self.ue.inbox():
            for doc in docs:
                if self.ue.seen.first_time(doc):
                    self._hand(doc)
                await self.ue.ack(doc)
                self._settle(doc)
            self._changed.set()

    async def until_all_accepted_arrived(self) -> None:
        while not self.accepted <= set(self.handed):
            self._changed.clear()
            await self._changed.wait()

    async def until_handed(self, msg_id: str) -> None:
        """Until the application has the message and the device has acknowledged it (the
        collector may hand a message over while an earlier wake-up is still on its way)."""
        while msg_id not in self.settled:
            self._changed.clear()
            await self._changed.wait()


async def retrying(action: Callable[[], Awaitable[object]], attempts: int = 6) -> None:
    """Runs a device's request again when it fails or goes unanswered, with the client
    library's own back-off (0.2 s, doubling)."""
    await with_retries(action, attempts, retryable=None)


async def send_to(sender: Ue, rcpt: Recipient | str, payload: str) -> h.MsgResp:
    """Sends one message, riding over an outage; records its msgId as accepted for ``rcpt``."""
    dest = rcpt if isinstance(rcpt, str) else rcpt.ue_id
    msg = build_msg(sender.ue_svc_id, dest, payload)
    resp = await sender.send_msg(msg, attempts=ATTEMPTS)
    assert resp.result in ACCEPTED, f"{msg.msg_id} to {dest}: {resp}"
    if isinstance(rcpt, Recipient):
        rcpt.accepted.add(msg.msg_id)
    return resp


@dataclass
class Flood:
    sent: int
    answered_before_fault: int
    failures: list[str]


async def flood(
    senders: Sequence[Ue],
    recipients: Sequence[Recipient],
    per_sender: int,
    fault_after: int,
    fault: Callable[[], Awaitable[None]],
) -> Flood:
    """Every sender sends ``per_sender`` messages at once, spread over the recipients; the
    fault strikes once ``fault_after`` answers have come back."""
    total = len(senders) * per_sender
    answered = 0
    strike = asyncio.Event()
    failures: list[str] = []

    async def one(sender: Ue, rcpt: Recipient, payload: str) -> None:
        nonlocal answered
        try:
            await send_to(sender, rcpt, payload)
        except Exception as exc:
            failures.append(f"{sender.ue_svc_id} -> {rcpt.ue_id} {payload}: {exc!r}")
        answered += 1
        if answered >= fault_after:
            strike.set()

    async def inject() -> int:
        await strike.wait()
        before = answered
        await fault()
        return before

    jobs = [
        one(sender, recipients[(i + j) % len(recipients)], f"{i}/{j}")
        for i, sender in enumerate(senders)
        for j in range(per_sender)
    ]
    fault_done = asyncio.create_task(inject())
    try:
        await asyncio.gather(*jobs)
        return Flood(total, await fault_done, failures)
    finally:
        if not fault_done.done():
            fault_done.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fault_done


async def assert_exactly_once(recipients: Sequence[Recipient], sender: Ue) -> None:
    """Every accepted message reaches its recipient's application; then a fresh message for
    each recipient is the next and only new thing the application is handed (the system
    serves again); no msgId is handed over twice."""
    try:
        await asyncio.wait_for(
            asyncio.gather(*(r.until_all_accepted_arrived() for r in recipients)), 20
        )
    except TimeoutError:
        missing = {
            r.ue_id: sorted(r.accepted - set(r.handed))
            for r in recipients
            if not r.accepted <= set(r.handed)
        }
        pytest.fail(
            "accepted messages never arrived: "
            + "; ".join(f"{ue}: {len(ids)}, e.g. {ids[:2]}" for ue, ids in missing.items())
        )

    async def fresh_one(r: Recipient) -> None:
        before = len(r.handed)
        fresh = await send_to(sender, r, "after the fault")
        await r.until_handed(fresh.msg_id)
        assert r.handed[before:] == [fresh.msg_id], f"{r.ue_id}: unexpected documents"

    await asyncio.wait_for(asyncio.gather(*(fresh_one(r) for r in recipients)), 20)
    for r in recipients:
        twice = sorted(msg_id for msg_id, n in Counter(r.handed).items() if n > 1)
        assert twice == [], f"{r.ue_id}: handed to the application more than once: {twice}"
        assert set(r.handed) == r.accepted, f"{r.ue_id}: handed messages that were not accepted"
        if isinstance(r.ue, CoapUe):
            assert await r.ue.inbox() == [], f"{r.ue_id}: documents left unacknowledged"


@asynccontextmanager
async def devices(
    stack: Stack, senders: Sequence[str], recipients: Sequence[str]
) -> AsyncIterator[tuple[list[Ue], list[Recipient]]]:
    """Registered senders and recipients (of the transports given), recipients collecting."""
    async with AsyncExitStack() as exits:
        tx = [await entered(exits, make_ue(stack, t, f"tx{i}")) for i, t in enumerate(senders)]
        rx = [
            Recipient(await entered(exits, make_ue(stack, t, f"rx{i}")))
            for i, t in enumerate(recipients)
        ]
        await asyncio.gather(*(ue.register() for ue in tx))
        await asyncio.gather(*(r.start() for r in rx))
        try:
            yield tx, rx
        finally:
            for r in rx:
                await r.stop()


def crash_and_restart(stack: Stack, name: str) -> Callable[[], Awaitable[None]]:
    async def fault() -> None:
        await stack.stop_process(name, signal.SIGKILL)
        await stack.start_service(name)

    return fault


async def flood_crash_and_check(
    stack: Stack,
    senders: Sequence[str],
    recipients: Sequence[str],
    per_sender: int,
    fault_after: int,
    crashing: str,
) -> None:
    async with devices(stack, senders, recipients) as (tx, rx):
        total = len(tx) * per_sender
        result = await asyncio.wait_for(
            flood(tx, rx, per_sender, fault_after, crash_and_restart(stack, crashing)), 40
        )
        assert result.failures == [], f"{len(result.failures)} sends failed for good"
        # The crash hit messages in flight.
        assert result.answered_before_fault < total
        assert sum(len(r.accepted) for r in rx) == total
        await asyncio.wait_for(asyncio.gather(*(r.resync() for r in rx)), 20)
        await assert_exactly_once(rx, tx[0])


# -- 1. the router -------------------------------------------------------------------------------


async def test_router_killed_with_1000_messages_in_flight_loses_and_duplicates_nothing(
    own_stack: Stack,
) -> None:
    # 10 MQTT senders send 100 messages each at once to 10 recipients (5 MQTT, 5 CoAP
    # observers); the router is killed when about 300 answers are back, and restarted.
    await flood_crash_and_check(own_stack, ["mqtt"] * 10, ["mqtt", "coap"] * 5, 100, 300, "router")


# -- 2. the edges --------------------------------------------------------------------------------


@pytest.mark.parametrize("edge", ["mqtt-edge", "coap-edge"])
async def test_edge_killed_with_messages_in_flight_loses_and_duplicates_nothing(
    own_stack: Stack, edge: str
) -> None:
    # 2 MQTT and 2 CoAP senders send 50 messages each at once to 2 MQTT and 2 CoAP
    # recipients; the edge is killed when about 60 answers are back, and restarted.
    mix = ["mqtt", "coap"] * 2
    await flood_crash_and_check(own_stack, mix, mix, 50, 60, edge)


# -- 3. Redis ------------------------------------------------------------------------------------


@asynccontextmanager
async def stored_for_offline_recipients(
    stack: Stack, per_pair: int
) -> AsyncIterator[tuple[list[Ue], dict[str, set[str]]]]:
    """An MQTT and a CoAP sender; an MQTT and a CoAP recipient that registered once and went
    offline (the MQTT UE deregistered and disconnected, the CoAP UE does not observe); every
    sender has sent ``per_pair`` messages to every recipient, all STORED."""
    async with AsyncExitStack() as exits:
        tx = [await entered(exits, make_ue(stack, t, "tx")) for t in ("mqtt", "coap")]
        await asyncio.gather(*(ue.register() for ue in tx))
        mqtt_id, coap_id = new_ue_id("mqtt-rx"), new_ue_id("coap-rx")
        async with make_ue(stack, "mqtt", "rx", mqtt_id) as sleeper:
            await sleeper.register()
            await sleeper.deregister()
        async with make_ue(stack, "coap", "rx", coap_id) as sleeper:
            await sleeper.register()
        accepted: dict[str, set[str]] = {mqtt_id: set(), coap_id: set()}

        async def stored(sender: Ue, rcpt: str, payload: str) -> None:
            resp = await send_to(sender, rcpt, payload)
            assert resp.result is h.MsgResult.STORED
            accepted[rcpt].add(resp.msg_id)

        await asyncio.gather(
            *(stored(s, r, f"stored {i}") for s in tx for r in accepted for i in range(per_pair))
        )
        yield tx, accepted


async def test_redis_restart_between_acceptance_and_delivery_loses_and_duplicates_nothing(
    own_stack: Stack,
) -> None:
    stack = own_stack
    async with (
        stored_for_offline_recipients(stack, 10) as (tx, accepted),
        AsyncExitStack() as exits,
    ):
        # Redis stops (SIGTERM) and starts again on its port and data directory: the
        # append-only file brings back registrations, message records and inboxes.
        await stack.stop_process("redis")
        await stack.start_redis()

        # The recipients wake up: the MQTT UE connects and registers (the server re-sends
        # what is pending), the CoAP UE observes its inbox and reads it until it is empty.
        # Each retries a request that fails or goes unanswered, as a device does.
        mqtt_id, coap_id = accepted
        rx = [
            Recipient(await entered(exits, make_ue(stack, t, "rx", ue_id)), accepted[ue_id])
            for t, ue_id in (("mqtt", mqtt_id), ("coap", coap_id))
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(r.start(attempts=5) for r in rx)), 20)
            await asyncio.wait_for(retrying(rx[1].drain_inbox), 20)
            # The fresh messages of assert_exactly_once show that the services serve again.
            await assert_exactly_once(rx, tx[0])
            await assert_exactly_once(rx, tx[1])
        finally:
            for r in rx:
                await r.stop()


async def test_first_requests_after_a_redis_restart_are_served(own_stack: Stack) -> None:
    stack = own_stack
    async with stored_for_offline_recipients(stack, 1) as (tx, accepted):
        await stack.stop_process("redis")
        await stack.start_redis()
        # Redis is back with all its data: a device that wakes up now is served at once.
        _, coap_id = accepted
        async with make_ue(stack, "coap", "rx", coap_id) as ue:
            assert isinstance(ue, CoapUe)
            await ue.register()
            assert {d.msg_id for d in await ue.inbox()} == accepted[coap_id]
            await send_to(ue, tx[0].ue_svc_id, "served at once")


# -- 4. the broker -------------------------------------------------------------------------------


async def test_broker_restart_while_mqtt_ues_are_offline_loses_and_duplicates_nothing(
    own_stack: Stack,
) -> None:
    stack = own_stack
    async with AsyncExitStack() as exits:
        # The sender is a CoAP UE: it keeps sending while the broker is down.
        tx = await entered(exits, make_ue(stack, "coap", "tx"))
        await tx.register()
        # Two MQTT UEs go offline. "asleep" deregisters first: its messages are STORED.
        # "gone" just disconnects (it lost coverage): its registration and route still
        # stand, so the server answers ACCEPTED and publishes its messages to the broker,
        # where nobody takes them (or, while the broker is down, cannot publish them);
        # either way they stay pending until the UE acknowledges them.
        asleep_id, gone_id = new_ue_id("mqtt-asleep"), new_ue_id("mqtt-gone")
        async with make_ue(stack, "mqtt", "rx", asleep_id) as ue:
            await ue.register()
            await ue.deregister()
        async with make_ue(stack, "mqtt", "rx", gone_id) as ue:
            await ue.register()
        accepted: dict[str, set[str]] = {asleep_id: set(), gone_id: set()}

        async def batch(label: str) -> None:
            async def one(rcpt: str, i: int) -> None:
                resp = await send_to(tx, rcpt, f"{label} {i}")
                if rcpt == asleep_id:
                    assert resp.result is h.MsgResult.STORED
                accepted[rcpt].add(resp.msg_id)

            await asyncio.gather(*(one(r, i) for r in accepted for i in range(10)))

        await batch("before the broker restart")
        lost = stack.expect_event("mqtt-edge", "broker connection lost")
        back = stack.expect_event("mqtt-edge", "broker connected")
        await stack.stop_process("mosquitto")
        await asyncio.wait_for(lost, 20)
        await batch("while the broker is down")
        await stack.start_mosquitto()
        await asyncio.wait_for(back, 30)
        await batch("after the broker restart")

        # The UEs come back: they connect and register; the server re-sends what is pending.
        rx = [
            Recipient(
                await entered(exits, make_ue(stack, "mqtt", "rx", ue_id)),
                accepted[ue_id],
            )
            for ue_id in (asleep_id, gone_id)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(r.start() for r in rx)), 20)
            await assert_exactly_once(rx, tx)
        finally:
            for r in rx:
                await r.stop()


# -- behaviours these faults once broke (each was a defect, now fixed) --------------------------


def restart_observing(ue: CoapUe) -> Callable[[], Awaitable[None]]:
    async def again() -> None:
        await ue.stop_observing()
        await ue.start_observing()

    return again


async def test_coap_ue_application_gets_what_it_acknowledged_before_the_router_crashed(
    own_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = own_stack
    async with AsyncExitStack() as exits:
        tx = await entered(exits, make_ue(stack, "mqtt", "tx"))
        ue = await entered(exits, make_ue(stack, "coap", "rx"))
        assert isinstance(ue, CoapUe)
        await tx.register()
        await ue.register()
        sent = [(await send_to(tx, ue.ue_svc_id, f"m{i}")).msg_id for i in range(3)]

        # The router crashes right after the UE acknowledged the first document of the
        # notification that carries all three.
        crashed = asyncio.Event()
        ack = ue.ack

        async def ack_then_crash(doc: DownlinkDoc) -> None:
            await ack(doc)
            if not crashed.is_set():
                await stack.stop_process("router", signal.SIGKILL)
                crashed.set()

        monkeypatch.setattr(ue, "ack", ack_then_crash)
        got: list[str] = []

        async def receive_all() -> None:
            while len(got) < len(sent):
                doc = await ue.receive()
                assert isinstance(doc, h.Msg)
                got.append(doc.msg_id)

        await ue.start_observing()
        await asyncio.wait_for(crashed.wait(), 10)
        await stack.start_service("router")
        # The UE observes again (its observation ended with the failed acknowledgement).
        await retrying(restart_observing(ue))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receive_all(), 2 * DEVICE_TIMEOUT)
        assert sorted(got) == sorted(sent)


async def test_observer_is_shown_all_its_stored_messages_without_waiting_for_a_retry(
    stack: Stack,
) -> None:
    async with (
        make_ue(stack, "mqtt", "tx") as tx,
        CoapUe(new_ue_id("coap-rx"), stack.coap_addr, timeout=10) as ue,
    ):
        await tx.register()
        await ue.register()
        sent = [(await send_to(tx, ue.ue_svc_id, f"stored {i}")).msg_id for i in range(12)]
        await ue.start_observing()
        got: list[str] = []

        async def receive_all() -> None:
            while len(got) < len(sent):
                got.append((await ue.receive()).msg_id)

        # Well within the router's first retry (5 s): each notification follows the
        # acknowledgement of the previous one.
        await asyncio.wait_for(receive_all(), 3)
        assert got == sent


async def test_inbox_read_while_the_router_is_down_is_refused_as_overloaded(
    own_stack: Stack,
) -> None:
    stack = own_stack
    async with make_ue(stack, "coap", "rx") as ue:
        assert isinstance(ue, CoapUe)
        await ue.register()
        await stack.stop_process("router", signal.SIGKILL)
        with pytest.raises(RequestFailed) as refused:
            await ue.inbox()
        assert (refused.value.cause, refused.value.code) == (
            "OVERLOADED",
            "5.03 Service Unavailable",
        )
