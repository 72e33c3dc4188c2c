"""The per-UE rate limits of the edges (msgin5g_common.ratelimit), on an injected clock."""

from __future__ import annotations

import pytest

from msgin5g_common import header as h
from msgin5g_common.ratelimit import REPLY_FACTOR, RateLimited, TokenBuckets, UeLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _msg(ue: str) -> h.Msg:
    return h.Msg("m-1", h.Address(h.AddrType.UE, ue), h.Address(h.AddrType.UE, "other"), "x")


def _ack(ue: str) -> h.MsgResp:
    return h.MsgResp("m-1", h.MsgResult.DELIVERED, ue_svc_id=ue)


def test_a_burst_is_granted_then_the_next_token_is_a_rate_period_away() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=5, burst=5, clock=clock)
    assert [buckets.take("ue-1") for _ in range(5)] == [0.0] * 5
    assert buckets.take("ue-1") == pytest.approx(0.2)
    clock.now += 0.1
    # Half a token back: half the period still to wait, and a refusal takes nothing.
    assert buckets.take("ue-1") == pytest.approx(0.1)
    assert buckets.take("ue-1") == pytest.approx(0.1)
    clock.now += 0.1
    assert buckets.take("ue-1") == 0.0
    assert buckets.take("ue-1") == pytest.approx(0.2)


def test_buckets_refill_up_to_the_burst_and_no_further() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=3, clock=clock)
    for _ in range(3):
        buckets.take("ue-1")
    clock.now += 3600
    assert [buckets.take("ue-1") for _ in range(3)] == [0.0] * 3
    assert buckets.take("ue-1") > 0


def test_each_key_has_its_own_bucket() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=2, clock=clock)
    buckets.take("noisy")
    buckets.take("noisy")
    assert buckets.take("noisy") > 0
    assert buckets.take("quiet") == 0.0


def test_a_clock_stepping_back_does_not_drain_a_bucket() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=2, clock=clock)
    buckets.take("ue-1")
    clock.now -= 100
    assert buckets.take("ue-1") == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (10, 0), (0, 0)])
def test_a_zero_rate_or_burst_turns_the_limit_off(rate: float, burst: float) -> None:
    buckets = TokenBuckets(rate=rate, burst=burst, clock=Clock())
    assert all(buckets.take("ue-1") == 0.0 for _ in range(10_000))
    assert len(buckets) == 0


def test_a_burst_below_one_still_grants_one_document() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=0.1, burst=0.5, clock=clock)
    assert buckets.take("ue-1") == 0.0
    assert buckets.take("ue-1") == pytest.approx(10.0)


def test_memory_stays_bounded_when_identities_are_sprayed() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=5, max_keys=100, clock=clock)
    for n in range(10_000):
        buckets.take(f"spray-{n}")
    assert len(buckets) == 100


def test_the_least_recently_used_bucket_goes_first() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=1, max_keys=2, clock=clock)
    buckets.take("a")
    buckets.take("b")
    buckets.take("a")  # refused, but used: "b" is now the oldest
    buckets.take("c")
    assert buckets.take("a") > 0  # still remembered, still empty
    assert buckets.take("b") == 0.0  # forgotten: a fresh bucket


def test_buckets_that_refilled_are_forgotten_as_ues_go_quiet() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=10, clock=clock)
    for n in range(50):
        buckets.take(f"ue-{n}")
    clock.now += 1.0  # every bucket is full again
    for _ in range(30):
        buckets.take("busy")
    assert len(buckets) == 1


def test_ue_limits_refuse_with_a_retry_hint_in_whole_seconds() -> None:
    clock = Clock()
    limits = UeLimits(rate=0.25, burst=1, clock=clock)
    limits.admit("ue-1", _msg("ue-1"))
    with pytest.raises(RateLimited) as refused:
        limits.admit("ue-1", _msg("ue-1"))
    assert refused.value.cause.value == "OVERLOADED"
    assert refused.value.retry_after == 4
    assert "ue-1 sends more than 0.25 documents/s" in refused.value.detail
    clock.now += 3.9
    with pytest.raises(RateLimited) as again:
        limits.admit("ue-1")  # a request without a document (an inbox GET) counts too
    assert again.value.retry_after == 1  # 0.1 s rounds up to the smallest hint, 1 s


def test_acknowledgements_have_their_own_allowance() -> None:
    clock = Clock()
    limits = UeLimits(rate=5, burst=5, clock=clock)
    # Acknowledging a burst of downlink leaves the allowance for the UE's own messages...
    for _ in range(5 * REPLY_FACTOR):
        limits.admit("ue-1", _ack("ue-1"))
    for _ in range(5):
        limits.admit("ue-1", _msg("ue-1"))
    with pytest.raises(RateLimited):
        limits.admit("ue-1", _msg("ue-1"))
    # ... and a UE out of that allowance can still acknowledge.
    report = h.Imdn(
        h.Address(h.AddrType.UE, "ue-1"),
        h.Address(h.AddrType.UE, "other"),
        "m-1",
        h.DelivSt.REPT_DELY_SUCCESS,
    )
    with pytest.raises(RateLimited) as flood:
        limits.admit("ue-1", report)
    assert "acknowledgements and reports" in flood.value.detail
    clock.now += 0.025  # a little more than one token at 50/s
    limits.admit("ue-1", _ack("ue-1"))


def test_unlimited_ue_limits_never_refuse() -> None:
    limits = UeLimits.unlimited()
    for _ in range(10_000):
        limits.admit("ue-1", _msg("ue-1"))
