"""The router's pure routing rules: inbox order and the refs acknowledgements match."""

from __future__ import annotations

import pytest

from msgin5g.v1 import common_pb2 as pb
from msgin5g_router import domain

HIGH, MIDDLE, LOW, UNSPECIFIED = (
    pb.PRIORITY_HIGH,
    pb.PRIORITY_MIDDLE,
    pb.PRIORITY_LOW,
    pb.PRIORITY_UNSPECIFIED,
)
MAX_SEQ = (1 << 40) - 1  # the largest arrival sequence the score keeps apart from the rank
LUA_RANK_FACTOR = 1099511627776  # the multiplier store.py's _ENQUEUE script uses


def ue(addr: str) -> pb.Address:
    return pb.Address(addr_type=pb.ADDR_TYPE_UE, addr=addr)


def lua_ack(refs: list[str], arg: str, exact: bool) -> str | None:
    """What store.py's _ACK script picks: with ``exact`` the ref itself if it is in the inbox,
    otherwise the first ref (in inbox order) whose last ``#arg`` bytes equal ``arg``."""
    if exact:
        return arg if arg in refs else None
    n = len(arg.encode())
    # Lua's string.sub(r, -n) is the whole string when n exceeds its length, as r[-n:] is.
    return next((r for r in refs if r.encode()[-n:] == arg.encode()), None)


# ---------------------------------------------------------------------------------------------
# Inbox order


@pytest.mark.parametrize(("priority", "rank"), [(HIGH, 0), (MIDDLE, 1), (UNSPECIFIED, 1), (LOW, 2)])
def test_priority_rank(priority: int, rank: int) -> None:
    assert domain.priority_rank(priority) == rank


def test_unknown_priority_ranks_as_middle() -> None:
    assert domain.priority_rank(99) == domain.priority_rank(MIDDLE)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param((HIGH, MAX_SEQ), (MIDDLE, 0), id="high-before-middle"),
        pytest.param((HIGH, MAX_SEQ), (UNSPECIFIED, 0), id="high-before-unspecified"),
        pytest.param((MIDDLE, MAX_SEQ), (LOW, 0), id="middle-before-low"),
        pytest.param((UNSPECIFIED, MAX_SEQ), (LOW, 0), id="unspecified-before-low"),
        pytest.param((HIGH, MAX_SEQ), (LOW, 0), id="high-before-low"),
    ],
)
def test_higher_priority_comes_first_regardless_of_sequence(
    before: tuple[int, int], after: tuple[int, int]
) -> None:
    assert domain.inbox_score(*before) < domain.inbox_score(*after)


@pytest.mark.parametrize("seq", [0, 1, 12345, MAX_SEQ])
def test_middle_and_unspecified_priority_share_a_rank(seq: int) -> None:
    assert domain.inbox_score(MIDDLE, seq) == domain.inbox_score(UNSPECIFIED, seq)


@pytest.mark.parametrize("priority", [HIGH, MIDDLE, UNSPECIFIED, LOW])
def test_within_one_priority_arrival_order_is_kept(priority: int) -> None:
    seqs = [0, 1, 2, 1000, MAX_SEQ - 1, MAX_SEQ]
    scores = [domain.inbox_score(priority, s) for s in seqs]
    assert scores == sorted(scores)
    assert len(set(scores)) == len(scores)


def test_mixed_inbox_sorts_by_priority_then_arrival() -> None:
    arrivals = [
        (LOW, 1),
        (MIDDLE, 2),
        (HIGH, 3),
        (UNSPECIFIED, 4),
        (LOW, 5),
        (HIGH, 6),
        (MIDDLE, 7),
    ]
    ordered = sorted(arrivals, key=lambda a: domain.inbox_score(*a))
    assert ordered == [
        (HIGH, 3),
        (HIGH, 6),
        (MIDDLE, 2),
        (UNSPECIFIED, 4),
        (MIDDLE, 7),
        (LOW, 1),
        (LOW, 5),
    ]


@pytest.mark.parametrize("priority", [HIGH, MIDDLE, UNSPECIFIED, LOW])
@pytest.mark.parametrize("seq", [1, 77, MAX_SEQ])
def test_inbox_score_is_the_score_the_enqueue_script_computes(priority: int, seq: int) -> None:
    score = domain.inbox_score(priority, seq)
    assert score == domain.priority_rank(priority) * LUA_RANK_FACTOR + seq
    assert float(score) == score  # exact in a Redis sorted-set score (a double)


# ---------------------------------------------------------------------------------------------
# Refs


@pytest.mark.parametrize(
    ("addr_type", "name"),
    [
        (pb.ADDR_TYPE_UE, "UE"),
        (pb.ADDR_TYPE_AS, "AS"),
        (pb.ADDR_TYPE_GROUP, "GROUP"),
        (pb.ADDR_TYPE_TOPIC, "TOPIC"),
        (pb.ADDR_TYPE_BC, "BC"),
        (pb.ADDR_TYPE_UNSPECIFIED, "UNSPECIFIED"),
    ],
)
def test_address_key_names_type_and_address(addr_type: pb.AddrType.ValueType, name: str) -> None:
    assert domain.address_key(pb.Address(addr_type=addr_type, addr="x-1")) == f"{name}:x-1"


def test_msg_ref_format() -> None:
    assert domain.msg_ref(ue("ue-a"), "m-1") == f"MSG{domain.SEP}UE:ue-a{domain.SEP}m-1"


def test_msg_ref_is_unique_per_originator_and_msg_id() -> None:
    pairs = [
        (ue("ue-a"), "m-1"),
        (ue("ue-a"), "m-2"),
        (ue("ue-b"), "m-1"),
        (pb.Address(addr_type=pb.ADDR_TYPE_AS, addr="ue-a"), "m-1"),
        (ue("ue-a:m"), "1"),
        (ue("ue"), "a:m-1"),
    ]
    refs = [domain.msg_ref(ori, msg_id) for ori, msg_id in pairs]
    assert len(set(refs)) == len(refs)
    assert domain.msg_ref(ue("ue-a"), "m-1") == domain.msg_ref(ue("ue-a"), "m-1")


@pytest.mark.parametrize("msg_id", ["m-1", "550e8400-e29b-41d4-a716-446655440000", "a:b@c~d"])
def test_ref_msg_id_reads_the_msg_id_back(msg_id: str) -> None:
    assert domain.ref_msg_id(domain.msg_ref(ue("ue-a"), msg_id)) == msg_id


def test_ack_with_originator_names_the_exact_ref() -> None:
    ref = domain.msg_ref(ue("ue-a"), "m-1")
    assert domain.ack_refs("m-1", ue("ue-a")) == ref
    inbox = [domain.msg_ref(ue("ue-b"), "m-1"), ref]
    assert lua_ack(inbox, domain.ack_refs("m-1", ue("ue-a")), exact=True) == ref
    assert lua_ack(inbox, domain.ack_refs("m-1", ue("ue-c")), exact=True) is None


@pytest.mark.parametrize("ori", [None, pb.Address(), pb.Address(addr_type=pb.ADDR_TYPE_UE)])
def test_ack_without_originator_is_a_suffix_of_the_ref(ori: pb.Address | None) -> None:
    suffix = domain.ack_refs("m-1", ori)
    assert suffix == f"{domain.SEP}m-1"
    for sender in ("ue-a", "ue-b"):
        assert domain.msg_ref(ue(sender), "m-1").endswith(suffix)


def test_ack_suffix_matches_the_first_ref_in_inbox_order_with_that_msg_id() -> None:
    inbox = [
        domain.msg_ref(ue("ue-a"), "m-11"),
        domain.msg_ref(ue("ue-a"), "xm-1"),
        domain.msg_ref(ue("ue-b"), "m-1"),
        domain.msg_ref(ue("ue-a"), "m-1"),
    ]
    assert (
        lua_ack(inbox, domain.ack_refs("m-1", None), exact=False)
        == f"MSG{domain.SEP}UE:ue-b{domain.SEP}m-1"
    )


@pytest.mark.parametrize("other", ["m-11", "xm-1", "m-1x", "1"])
def test_ack_suffix_does_not_match_a_different_msg_id(other: str) -> None:
    inbox = [domain.msg_ref(ue("ue-a"), other)]
    assert lua_ack(inbox, domain.ack_refs("m-1", None), exact=False) is None


# ---------------------------------------------------------------------------------------------
# msgIds may contain '/': refs must still be unambiguous


@pytest.mark.parametrize("msg_id", ["a/b", "m-1/", "/m-1"])
def test_ref_msg_id_reads_back_a_msg_id_containing_a_slash(msg_id: str) -> None:
    assert domain.ref_msg_id(domain.msg_ref(ue("ue-a"), msg_id)) == msg_id


def test_ack_without_originator_does_not_match_a_msg_id_containing_a_slash() -> None:
    inbox = [domain.msg_ref(ue("ue-b"), "x/m-1")]
    assert lua_ack(inbox, domain.ack_refs("m-1", None), exact=False) is None
