"""The router's Redis adapter against a real Redis: message records, inboxes, route leases,
edge liveness, and the key layout they share (one hash tag per UE)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from msgin5g.v1 import common_pb2 as pb
from msgin5g_common.edges import Heartbeat
from msgin5g_common.keys import Keys
from msgin5g_registry.store import RegistryStore
from msgin5g_router import domain
from msgin5g_router.store import Acked, Parties, Route, RouterStore

KEYS = Keys("m5g")
TTL_SLACK_MS = 5_000
RECORD_TTL_MS = 3_600_000
LEASE_MS = 600_000

UE = "ue-1"
ORI = "UE:ue-0"  # the originator as a message record names it
RCPT = f"UE:{UE}"
HIGH = domain.priority_rank(pb.PRIORITY_HIGH)
MIDDLE = domain.priority_rank(pb.PRIORITY_MIDDLE)
LOW = domain.priority_rank(pb.PRIORITY_LOW)


def now_ms() -> int:
    return int(time.time() * 1000)


def assert_ttl_close(pttl: int, ttl_ms: int) -> None:
    assert ttl_ms - TTL_SLACK_MS < pttl <= ttl_ms


def ue_addr(addr: str) -> pb.Address:
    return pb.Address(addr_type=pb.ADDR_TYPE_UE, addr=addr)


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the text between the first ``{`` and the
    first ``}`` after it, when that is not empty; else the whole key."""
    start = key.find("{")
    if start == -1:
        return key
    end = key.find("}", start + 1)
    if end in (-1, start + 1):
        return key
    return key[start + 1 : end]


def ue_keys(keys: Keys, ue: str) -> list[str]:
    return [
        keys.ue_known(ue),
        keys.ue_reg(ue),
        keys.route(ue),
        keys.inbox(ue),
        keys.docs(ue),
        keys.seq(ue),
    ]


@pytest_asyncio.fixture
async def store(redis: Redis) -> AsyncIterator[RouterStore]:
    store = RouterStore(redis, KEYS)
    yield store
    await store.close()


async def state_of(store: RouterStore, rcpt: str = RCPT) -> dict[str, Any]:
    record = await store.record(ORI, "m1")
    state: dict[str, Any] = json.loads(record[f"st:{rcpt}"])
    return state


# ---------------------------------------------------------------------------------------------
# Key layout


@pytest.mark.parametrize("ue", ["ue-1", "imsi:001010123456789", "A.b_c~d@e:f+g-0", "x" * 128])
@pytest.mark.parametrize("prefix", ["m5g", "tenant:a"])
def test_every_key_of_one_ue_shares_the_ue_hash_tag(prefix: str, ue: str) -> None:
    """Verifies that all of a UE's keys hash to one Redis Cluster slot: the UE id's."""
    keys = Keys(prefix)
    tags = {hash_tag(key) for key in ue_keys(keys, ue)}

    assert tags == {ue}
    assert all(key.startswith(f"{prefix}:ue:") for key in ue_keys(keys, ue))


def test_message_records_share_the_originator_hash_tag() -> None:
    """Verifies that a sender's message records are in the originator's slot."""
    assert hash_tag(KEYS.message(ORI, "m1")) == ORI
    assert hash_tag(KEYS.message(ORI, "m2")) == ORI


async def test_keys_written_for_one_ue_all_carry_its_hash_tag(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that what the registry and the router really write for a UE stays in its slot."""
    await RegistryStore(redis, KEYS).register(UE, transport="coap", lifetime=600)
    await store.enqueue(UE, "ref-1", b"doc", MIDDLE)
    await store.touch_route(UE, "coap", "coap-edge-1", LEASE_MS)

    written = [k.decode() if isinstance(k, bytes) else k for k in await redis.keys("*")]
    assert sorted(written) == sorted(ue_keys(KEYS, UE))
    assert {hash_tag(key) for key in written} == {UE}


async def test_router_reads_what_the_registry_writes(store: RouterStore, redis: Redis) -> None:
    """Verifies that the router sees registrations and provisioning through the same keys."""
    registry = RegistryStore(redis, KEYS)
    await registry.register("ue-ori", transport="mqtt", lifetime=600)
    await registry.provision("ue-provisioned")

    def seen(p: Parties) -> tuple[bool, bool, str | None]:
        return p.ori_registered, p.rcpt_known, p.transport

    assert seen(await store.parties("ue-ori", "ue-provisioned")) == (True, True, None)
    assert seen(await store.parties("ue-provisioned", "ue-ori")) == (False, True, "mqtt")
    assert seen(await store.parties("ue-none", "ue-none-either")) == (False, False, None)
    assert await store.registered_transport("ue-ori") == "mqtt"
    assert await store.registered_transport("ue-provisioned") is None


# ---------------------------------------------------------------------------------------------
# Message records


async def test_accept_creates_the_record_with_its_ttl(store: RouterStore, redis: Redis) -> None:
    """Verifies that the first accept writes the document, the recipient's ACCEPTED state
    and the record's TTL."""
    before = now_ms()
    created, outcome, finished = await store.accept(ORI, "m1", b"doc-1", RCPT, RECORD_TTL_MS)
    after = now_ms()

    assert (created, outcome, finished) == (True, "", False)
    record = await store.record(ORI, "m1")
    assert record["doc"] == b"doc-1"
    assert record["rcpt"] == RCPT.encode()
    assert before <= int(record["acceptedAt"]) <= after
    state = await state_of(store)
    assert state["state"] == "ACCEPTED"
    assert before <= state["times"]["ACCEPTED"] <= after
    assert_ttl_close(await redis.pttl(KEYS.message(ORI, "m1")), RECORD_TTL_MS)


async def test_accept_of_a_duplicate_returns_the_earlier_outcome(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that a second accept of (originator, msgId) creates nothing, keeps the first
    document, and reports the first copy's outcome once it has one."""
    assert await store.accept(ORI, "m1", b"first", RCPT, RECORD_TTL_MS) == (True, "", False)
    assert await store.accept(ORI, "m1", b"second", RCPT, RECORD_TTL_MS) == (False, "", False)

    await store.set_outcome(ORI, "m1", "STORED")

    assert await store.accept(ORI, "m1", b"third", RCPT, RECORD_TTL_MS) == (False, "STORED", False)
    record = await store.record(ORI, "m1")
    assert record["doc"] == b"first"
    assert record["outcome"] == b"STORED"
    assert (await state_of(store))["state"] == "ACCEPTED"

    # Once delivered, a duplicate says so: the router must not put it in the inbox again.
    assert await store.set_state(ORI, "m1", RCPT, "DELIVERED")
    assert await store.accept(ORI, "m1", b"fourth", RCPT, RECORD_TTL_MS) == (False, "STORED", True)


async def test_accept_keys_records_by_originator_and_msg_id(store: RouterStore) -> None:
    """Verifies that the same msgId from two originators makes two records."""
    assert (await store.accept(ORI, "m1", b"a", RCPT, RECORD_TTL_MS))[0] is True
    assert (await store.accept("UE:ue-9", "m1", b"b", RCPT, RECORD_TTL_MS))[0] is True
    assert (await store.accept(ORI, "m2", b"c", RCPT, RECORD_TTL_MS))[0] is True


async def test_set_state_moves_through_the_delivery_states_with_timestamps(
    store: RouterStore,
) -> None:
    """Verifies ACCEPTED -> STORED -> FORWARDED -> DELIVERED, each state's time kept."""
    await store.accept(ORI, "m1", b"doc", RCPT, RECORD_TTL_MS)

    for state in ("STORED", "FORWARDED", "DELIVERED"):
        assert await store.set_state(ORI, "m1", RCPT, state) != 0
        assert (await state_of(store))["state"] == state

    final = await state_of(store)
    times = final["times"]
    assert set(times) == {"ACCEPTED", "STORED", "FORWARDED", "DELIVERED"}
    ordered = [times[s] for s in ("ACCEPTED", "STORED", "FORWARDED", "DELIVERED")]
    assert ordered == sorted(ordered)
    assert "cause" not in final


async def test_set_state_to_the_current_state_is_no_change(store: RouterStore) -> None:
    """Verifies that repeating a state reports no change and keeps its first time."""
    await store.accept(ORI, "m1", b"doc", RCPT, RECORD_TTL_MS)
    assert await store.set_state(ORI, "m1", RCPT, "STORED") != 0
    first = (await state_of(store))["times"]["STORED"]

    assert await store.set_state(ORI, "m1", RCPT, "STORED") == 0
    assert (await state_of(store))["times"]["STORED"] == first


@pytest.mark.parametrize(
    ("final", "cause"), [("DELIVERED", ""), ("EXPIRED", "EXPIRED"), ("FAILED", "NOT_AUTHORIZED")]
)
async def test_set_state_never_leaves_a_final_state(
    store: RouterStore, final: str, cause: str
) -> None:
    """Verifies that DELIVERED, EXPIRED and FAILED are final: no later state replaces them."""
    await store.accept(ORI, "m1", b"doc", RCPT, RECORD_TTL_MS)
    assert await store.set_state(ORI, "m1", RCPT, "FORWARDED") != 0
    # A final state returns the acceptance time (for the delivery latency metric).
    assert await store.set_state(ORI, "m1", RCPT, final, cause) > 1
    settled = await state_of(store)
    assert settled["state"] == final
    assert settled.get("cause", "") == cause

    for later in ("ACCEPTED", "STORED", "FORWARDED", "DELIVERED", "EXPIRED", "FAILED"):
        assert await store.set_state(ORI, "m1", RCPT, later, "OVERLOADED") == 0

    assert await state_of(store) == settled


async def test_set_state_of_a_recipient_the_record_does_not_name_is_refused(
    store: RouterStore,
) -> None:
    """Verifies that a state for a recipient without a state field writes nothing."""
    await store.accept(ORI, "m1", b"doc", RCPT, RECORD_TTL_MS)

    assert await store.set_state(ORI, "m1", "UE:someone-else", "DELIVERED") == 0

    record = await store.record(ORI, "m1")
    assert "st:UE:someone-else" not in record
    assert (await state_of(store))["state"] == "ACCEPTED"


async def test_set_state_of_a_missing_record_creates_nothing(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that a state change for a record never accepted leaves no key behind."""
    assert await store.set_state(ORI, "never", RCPT, "FORWARDED") == 0

    assert await redis.exists(KEYS.message(ORI, "never")) == 0


async def test_set_state_of_an_expired_record_does_not_revive_it(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that a late state change (say, an ack after expiry) does not recreate the
    record as a key without TTL."""
    await store.accept(ORI, "m1", b"doc", RCPT, RECORD_TTL_MS)
    await redis.delete(KEYS.message(ORI, "m1"))  # what the TTL does at expiry

    assert await store.set_state(ORI, "m1", RCPT, "DELIVERED") == 0

    assert await redis.exists(KEYS.message(ORI, "m1")) == 0


async def test_set_state_keeps_the_record_ttl(store: RouterStore, redis: Redis) -> None:
    """Verifies that a state change does not make the record live forever."""
    await store.accept(ORI, "m1", b"doc", RCPT, RECORD_TTL_MS)
    await redis.pexpire(KEYS.message(ORI, "m1"), 10_000)

    assert await store.set_state(ORI, "m1", RCPT, "FORWARDED") != 0

    assert 0 < await redis.pttl(KEYS.message(ORI, "m1")) <= 10_000


async def test_set_state_does_not_move_a_forwarded_recipient_back_to_stored(
    store: RouterStore,
) -> None:
    """Verifies that the per-recipient state only moves forward: once FORWARDED, a late
    STORED does not make the message look undelivered to the edge again."""
    await store.accept(ORI, "m1", b"doc", RCPT, RECORD_TTL_MS)
    assert await store.set_state(ORI, "m1", RCPT, "FORWARDED") != 0

    assert await store.set_state(ORI, "m1", RCPT, "STORED") == 0
    assert (await state_of(store))["state"] == "FORWARDED"


# ---------------------------------------------------------------------------------------------
# Inboxes


async def test_enqueue_is_idempotent_for_the_same_ref(store: RouterStore, redis: Redis) -> None:
    """Verifies that enqueueing one ref twice keeps one entry with the first document."""
    assert await store.enqueue(UE, "ref-1", b"first", MIDDLE) is True
    assert await store.enqueue(UE, "ref-1", b"second", HIGH) is False

    assert await store.inbox(UE, None) == ([("ref-1", b"first")], 1)
    assert await redis.zcard(KEYS.inbox(UE)) == 1
    assert await redis.hlen(KEYS.docs(UE)) == 1
    assert await redis.get(KEYS.seq(UE)) == b"1"


async def test_inbox_orders_by_priority_then_arrival(store: RouterStore) -> None:
    """Verifies HIGH first, then MIDDLE, then LOW, and oldest first within one priority."""
    arrivals = [
        ("low-1", LOW),
        ("mid-1", MIDDLE),
        ("high-1", HIGH),
        ("mid-2", MIDDLE),
        ("high-2", HIGH),
        ("low-2", LOW),
        ("unspecified-1", domain.priority_rank(pb.PRIORITY_UNSPECIFIED)),
    ]
    for ref, rank in arrivals:
        assert await store.enqueue(UE, ref, ref.encode(), rank) is True

    docs, pending = await store.inbox(UE, None)

    assert [ref for ref, _ in docs] == [
        "high-1",
        "high-2",
        "mid-1",
        "mid-2",
        "unspecified-1",
        "low-1",
        "low-2",
    ]
    assert all(doc == ref.encode() for ref, doc in docs)
    assert pending == len(arrivals)


async def test_inbox_scores_match_the_domain_rule(store: RouterStore, redis: Redis) -> None:
    """Verifies that the Lua script scores entries as domain.inbox_score does."""
    await store.enqueue(UE, "a", b"a", domain.priority_rank(pb.PRIORITY_LOW))
    await store.enqueue(UE, "b", b"b", domain.priority_rank(pb.PRIORITY_HIGH))

    assert await redis.zscore(KEYS.inbox(UE), "a") == domain.inbox_score(pb.PRIORITY_LOW, 1)
    assert await redis.zscore(KEYS.inbox(UE), "b") == domain.inbox_score(pb.PRIORITY_HIGH, 2)


async def test_inbox_limit_bounds_the_documents_and_reports_all_pending(
    store: RouterStore,
) -> None:
    """Verifies that a bounded read returns the first documents and the full pending count."""
    for i in range(5):
        await store.enqueue(UE, f"ref-{i}", f"doc-{i}".encode(), MIDDLE)

    assert await store.inbox(UE, 2) == ([("ref-0", b"doc-0"), ("ref-1", b"doc-1")], 5)
    assert await store.inbox(UE, 1) == ([("ref-0", b"doc-0")], 5)
    assert len((await store.inbox(UE, 5))[0]) == 5
    assert len((await store.inbox(UE, 50))[0]) == 5
    assert len((await store.inbox(UE, None))[0]) == 5


async def test_inbox_of_a_ue_without_documents_is_empty(store: RouterStore) -> None:
    """Verifies that an empty inbox reads as nothing pending."""
    assert await store.inbox("ue-empty", None) == ([], 0)
    assert await store.inbox("ue-empty", 3) == ([], 0)


async def test_inbox_with_limit_zero_returns_no_documents(store: RouterStore) -> None:
    """Verifies that ``limit`` is an upper bound even at 0 (e.g. MSGIN5G_INBOX_LIMIT=0)."""
    for i in range(3):
        await store.enqueue(UE, f"ref-{i}", b"doc", MIDDLE)

    assert await store.inbox(UE, 0) == ([], 3)


async def test_ack_by_exact_ref_removes_that_document(store: RouterStore, redis: Redis) -> None:
    """Verifies that an exact ack removes the named entry and returns its document."""
    first = domain.msg_ref(ue_addr("ue-a"), "m1")
    second = domain.msg_ref(ue_addr("ue-b"), "m1")
    await store.enqueue(UE, first, b"from-a", MIDDLE)
    await store.enqueue(UE, second, b"from-b", MIDDLE)

    acked = await store.ack(UE, [domain.ack_refs("m1", ue_addr("ue-b"))], exact=True)

    assert acked == Acked(matched=True, remaining=1, ref=second, doc=b"from-b")
    assert await store.inbox(UE, None) == ([(first, b"from-a")], 1)
    assert await redis.hexists(KEYS.docs(UE), second) == 0


async def test_ack_by_msg_id_suffix_takes_the_first_in_inbox_order(store: RouterStore) -> None:
    """Verifies that an ack naming only the msgId removes the first matching entry in inbox
    order (HIGH before an older LOW), then the next one."""
    older_low = domain.msg_ref(ue_addr("ue-a"), "m1")
    newer_high = domain.msg_ref(ue_addr("ue-b"), "m1")
    other = domain.msg_ref(ue_addr("ue-a"), "m2")
    await store.enqueue(UE, older_low, b"low", LOW)
    await store.enqueue(UE, other, b"other", MIDDLE)
    await store.enqueue(UE, newer_high, b"high", HIGH)

    first = await store.ack(UE, [domain.ack_refs("m1", None)], exact=False)
    second = await store.ack(UE, [domain.ack_refs("m1", None)], exact=False)
    third = await store.ack(UE, [domain.ack_refs("m1", None)], exact=False)

    assert first == Acked(True, 2, newer_high, b"high")
    assert second == Acked(True, 1, older_low, b"low")
    assert third == Acked(False, 1)
    assert await store.inbox(UE, None) == ([(other, b"other")], 1)


async def test_ack_by_suffix_does_not_match_a_longer_msg_id(store: RouterStore) -> None:
    """Verifies that acking msgId "1" leaves a message with msgId "m-11" alone."""
    ref = domain.msg_ref(ue_addr("ue-a"), "m-11")
    await store.enqueue(UE, ref, b"doc", MIDDLE)

    assert await store.ack(UE, [domain.ack_refs("1", None)], exact=False) == Acked(False, 1)
    assert await store.ack(UE, [domain.ack_refs("11", None)], exact=False) == Acked(False, 1)
    assert await store.inbox(UE, None) == ([(ref, b"doc")], 1)


async def test_ack_of_an_unknown_ref_reports_no_match_and_what_remains(
    store: RouterStore,
) -> None:
    """Verifies that an ack that names nothing pending changes nothing and reports the count."""
    await store.enqueue(UE, domain.msg_ref(ue_addr("ue-a"), "m1"), b"a", MIDDLE)
    await store.enqueue(UE, domain.msg_ref(ue_addr("ue-a"), "m2"), b"b", MIDDLE)

    missing = domain.ack_refs("m9", ue_addr("ue-a"))
    assert await store.ack(UE, [missing], exact=True) == Acked(False, 2)
    assert await store.ack(UE, [domain.ack_refs("m9", None)], exact=False) == Acked(False, 2)
    assert await store.ack("ue-empty", [missing], exact=True) == Acked(False, 0)
    assert (await store.inbox(UE, None))[1] == 2


async def test_ack_twice_matches_once(store: RouterStore) -> None:
    """Verifies that a repeated acknowledgement (a retransmission) finds nothing the second
    time."""
    ref = domain.msg_ref(ue_addr("ue-a"), "m1")
    await store.enqueue(UE, ref, b"doc", MIDDLE)

    assert (await store.ack(UE, [ref], exact=True)).matched is True
    assert await store.ack(UE, [ref], exact=True) == Acked(False, 0)


# ---------------------------------------------------------------------------------------------
# Route leases


async def test_touch_route_reports_changes_and_counts_epochs(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that a lease reports True when it is new or moves (kind or replica), False
    when it stays, and that each move increments its epoch."""
    key = KEYS.route(UE)

    assert await store.touch_route(UE, "coap", "coap-edge-1", LEASE_MS) is True
    assert await redis.hgetall(key) == {b"kind": b"coap", b"edge": b"coap-edge-1", b"epoch": b"1"}
    assert_ttl_close(await redis.pttl(key), LEASE_MS)
    assert await store.route(UE) == Route("coap", "coap-edge-1")

    assert await store.touch_route(UE, "coap", "coap-edge-1", LEASE_MS) is False
    assert await redis.hget(key, "epoch") == b"1"

    assert await store.touch_route(UE, "coap", "coap-edge-2", LEASE_MS) is True
    assert await redis.hget(key, "epoch") == b"2"
    assert await store.route(UE) == Route("coap", "coap-edge-2")

    assert await store.touch_route(UE, "mqtt", "coap-edge-2", LEASE_MS) is True
    assert await redis.hget(key, "epoch") == b"3"
    assert await store.route(UE) == Route("mqtt", "coap-edge-2")


async def test_touch_route_without_change_still_refreshes_the_lease(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that an unchanged touch extends the lease's TTL."""
    await store.touch_route(UE, "coap", "coap-edge-1", LEASE_MS)
    await redis.pexpire(KEYS.route(UE), 10_000)

    assert await store.touch_route(UE, "coap", "coap-edge-1", LEASE_MS) is False

    assert_ttl_close(await redis.pttl(KEYS.route(UE)), LEASE_MS)


async def test_touch_route_after_lease_expiry_is_a_change(store: RouterStore, redis: Redis) -> None:
    """Verifies that a UE coming back after its lease expired counts as a new route (so
    its stored documents are sent again)."""
    await store.touch_route(UE, "coap", "coap-edge-1", LEASE_MS)
    await redis.delete(KEYS.route(UE))  # what the TTL does at expiry
    assert await store.route(UE) is None

    assert await store.touch_route(UE, "coap", "coap-edge-1", LEASE_MS) is True
    assert await store.route(UE) == Route("coap", "coap-edge-1")


async def test_renew_routes_extends_only_the_leases_of_the_given_edge(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that a replica renews its own leases, not another replica's, and creates
    none for UEs without a lease."""
    await store.touch_route("ue-mine", "coap", "edge-a", LEASE_MS)
    await store.touch_route("ue-theirs", "coap", "edge-b", LEASE_MS)
    await redis.pexpire(KEYS.route("ue-mine"), 10_000)
    await redis.pexpire(KEYS.route("ue-theirs"), 10_000)

    await store.renew_routes(["ue-mine", "ue-theirs", "ue-none"], "edge-a", LEASE_MS)

    assert_ttl_close(await redis.pttl(KEYS.route("ue-mine")), LEASE_MS)
    assert 0 < await redis.pttl(KEYS.route("ue-theirs")) <= 10_000
    assert await redis.exists(KEYS.route("ue-none")) == 0
    assert await store.route("ue-mine") == Route("coap", "edge-a")
    assert await store.route("ue-theirs") == Route("coap", "edge-b")
    assert await redis.hget(KEYS.route("ue-mine"), "epoch") == b"1"


async def test_renew_routes_of_no_ues_is_harmless(store: RouterStore, redis: Redis) -> None:
    """Verifies that an empty renewal (a replica holding no UE) does nothing."""
    await store.renew_routes([], "edge-a", LEASE_MS)

    assert await redis.dbsize() == 0


async def test_detach_route_deletes_only_the_callers_lease(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that a replica that lost a UE's observation cannot drop the lease another
    replica took over meanwhile."""
    await store.touch_route(UE, "coap", "edge-a", LEASE_MS)
    await store.touch_route(UE, "coap", "edge-b", LEASE_MS)  # the UE moved to edge-b

    await store.detach_route(UE, "edge-a")

    assert await redis.exists(KEYS.route(UE)) == 1
    assert await store.route(UE) == Route("coap", "edge-b")

    await store.detach_route(UE, "edge-b")

    assert await redis.exists(KEYS.route(UE)) == 0
    assert await store.route(UE) is None


async def test_detach_route_without_a_lease_creates_nothing(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that detaching a UE that holds no lease is harmless."""
    await store.detach_route(UE, "edge-a")

    assert await redis.dbsize() == 0


# ---------------------------------------------------------------------------------------------
# Edge liveness


async def test_heartbeat_publishes_the_edge_and_stop_removes_it(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that a running heartbeat makes the replica live, with its address and a
    TTL of three intervals, and that stopping it withdraws both entries."""
    interval = 60.0  # long: the test reads the first beat only
    beat = Heartbeat(redis, KEYS, "mqtt", "mqtt-edge-1", "127.0.0.1:7001", interval)
    before = now_ms()
    await beat.start()
    after = now_ms()
    try:
        assert await redis.get(KEYS.edge("mqtt", "mqtt-edge-1")) == b"127.0.0.1:7001"
        assert_ttl_close(await redis.pttl(KEYS.edge("mqtt", "mqtt-edge-1")), 180_000)
        score = await redis.zscore(KEYS.edges("mqtt"), "mqtt-edge-1")
        assert score is not None
        assert before + 180_000 <= score <= after + 180_000
        assert await store.live_edges("mqtt") == ["mqtt-edge-1"]
        assert await store.edge_address("mqtt", "mqtt-edge-1") == "127.0.0.1:7001"
        assert await store.live_edges("coap") == []
    finally:
        await beat.stop()

    assert await redis.exists(KEYS.edge("mqtt", "mqtt-edge-1")) == 0
    assert await redis.zscore(KEYS.edges("mqtt"), "mqtt-edge-1") is None
    assert await store.live_edges("mqtt") == []
    assert await store.edge_address("mqtt", "mqtt-edge-1") is None


async def test_live_edges_lists_only_edges_whose_heartbeat_is_in_the_future(
    store: RouterStore, redis: Redis
) -> None:
    """Verifies that replicas whose heartbeat ran out are not offered for dispatch, and
    that a beat prunes entries dead for over a minute."""
    now = now_ms()
    await redis.zadd(
        KEYS.edges("mqtt"),
        {"lapsed": now - 1_000, "long-dead": now - 120_000, "other-live": now + 60_000},
    )
    beats = [
        Heartbeat(redis, KEYS, "mqtt", "mqtt-edge-1", "127.0.0.1:7001", 60.0),
        Heartbeat(redis, KEYS, "mqtt", "mqtt-edge-2", "127.0.0.1:7002", 60.0),
    ]
    for beat in beats:
        await beat.start()
    try:
        assert set(await store.live_edges("mqtt")) == {"mqtt-edge-1", "mqtt-edge-2", "other-live"}
        assert await redis.zscore(KEYS.edges("mqtt"), "lapsed") is not None
        assert await redis.zscore(KEYS.edges("mqtt"), "long-dead") is None

        await beats[0].stop()

        assert set(await store.live_edges("mqtt")) == {"mqtt-edge-2", "other-live"}
        assert await redis.exists(KEYS.edge("mqtt", "mqtt-edge-2")) == 1
    finally:
        for beat in beats:
            await beat.stop()

    assert await store.live_edges("mqtt") == ["other-live"]
