"""Per-UE uplink rate limits of the edges: token buckets keyed by UE Service ID, in memory.

Each edge replica limits the UEs it serves on its own (no Redis round trip per document); a
UE spread over several replicas gets at most the replicas' sum, which is still bounded.

The key is the identity the transport vouches for, computed before the document reaches the
router: the uplink topic over MQTT (the bridge has checked that the document names the
same UE), the document's sender or the path's ``ueSvcId`` over CoAP.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from msgin5g_common import header as h
from msgin5g_common import metrics
from msgin5g_common.errors import Overloaded

Clock = Callable[[], float]

# Buckets kept per table at most. A bucket left idle until full is the same as none, so the
# least recently used ones are dropped first: memory stays bounded (a few MB) when an
# attacker sprays identities, and only more than this many identities active within
# burst/rate seconds on one replica can make a dropped bucket forgive a debt.
MAX_KEYS = 50_000

# Acknowledgements (MSGRESP) and delivery reports (IMDN) answer downlink the server sent:
# what a UE may send of them is bounded by what it received (a report is accepted once per
# message and recipient, an acknowledgement of nothing pending changes nothing). They draw on
# an allowance of their own, this many times the documents' one: a UE that acks a burst of
# downlink (a full inbox on reconnection, 1000 documents by default) neither exhausts the
# allowance for its own messages nor is refused its acknowledgements, and a UE that floods
# acknowledgements is still stopped.
REPLY_FACTOR = 10


class RateLimited(Overloaded):
    """A UE is over its rate; ``retry_after`` is whole seconds until it may send again."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class TokenBuckets:
    """Token buckets keyed by a string: ``rate`` tokens per second, up to ``burst``, at most
    ``max_keys`` buckets (least recently used dropped first). ``rate`` or ``burst`` 0: no limit."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = MAX_KEYS,
        clock: Clock = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.enabled = rate > 0 and burst > 0
        # At least one token, or a burst below 1 would never grant anything.
        self._capacity = max(1.0, burst)
        self.max_keys = max(1, max_keys)
        self._clock = clock
        # key -> (tokens, when they were counted); order = least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Takes a token from ``key``'s bucket: 0.0 when granted, else the seconds until a
        token is free (and nothing is taken)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        entry = self._buckets.pop(key, None)
        tokens = self._capacity if entry is None else self._refill(entry, now)
        granted = tokens >= 1.0
        if granted:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        self._forget_idle(now)
        return 0.0 if granted else (1.0 - tokens) / self.rate

    def _refill(self, entry: tuple[float, float], now: float) -> float:
        tokens, stamp = entry
        # max(): a clock that steps back must not drain the bucket.
        return min(self._capacity, tokens + max(0.0, now - stamp) * self.rate)

    def _forget_idle(self, now: float) -> None:
        """Drops the least recently used buckets over the bound, and up to two that have
        refilled (they mean nothing any more): the table shrinks back as UEs go quiet."""
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        for _ in range(2):
            oldest = next(iter(self._buckets.items()), None)
            if oldest is None or self._refill(oldest[1], now) < self._capacity:
                return
            del self._buckets[oldest[0]]


def is_reply(doc: h.Uplink) -> bool:
    """An acknowledgement or delivery report: an answer to downlink (see REPLY_FACTOR)."""
    return isinstance(doc, h.MsgResp | h.Imdn)


class UeLimits:
    """What one edge replica lets a UE send: ``rate`` documents per second with bursts of
    ``burst``, and REPLY_FACTOR times that of acknowledgements and reports."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = MAX_KEYS,
        clock: Clock = time.monotonic,
    ) -> None:
        self.documents = TokenBuckets(rate, burst, max_keys=max_keys, clock=clock)
        self.replies = TokenBuckets(
            rate * REPLY_FACTOR, burst * REPLY_FACTOR, max_keys=max_keys, clock=clock
        )

    @classmethod
    def unlimited(cls) -> UeLimits:
        return cls(0, 0)

    def admit(self, ue: str, doc: h.Uplink | None = None) -> None:
        """Counts one request of ``ue`` (``doc``: the document it carries; None for a request
        without one, such as a CoAP inbox GET); raises RateLimited when it is over."""
        reply = doc is not None and is_reply(doc)
        buckets = self.replies if reply else self.documents
        wait = buckets.take(ue)
        if wait <= 0:
            return
        metrics.LIMITED.labels("ue_replies" if reply else "ue_rate").inc()
        retry_after = max(1, math.ceil(wait))
        what = "acknowledgements and reports" if reply else "documents"
        raise RateLimited(
            f"{ue} sends more than {buckets.rate:g} {what}/s (bursts of {buckets.burst:g}); "
            f"retry in {retry_after} s",
            retry_after,
        )
