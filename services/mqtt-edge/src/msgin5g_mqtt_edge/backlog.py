"""The uplink waiting for a worker, per UE, in bounded memory.

The bridge's reader must never wait: paho acknowledges a QoS 1 PUBLISH as it reads it, so a
reader that waits for room does not slow the broker down, it only piles messages up in
aiomqtt's unbounded queue, and every UE waits behind the one that filled the room. Instead
the reader offers each publish here and sheds what does not fit (the bridge answers it with
OVERLOADED):

- a UE holds at most ``per_key`` publishes and ``per_key_bytes`` bytes (the first publish of
  a UE with nothing waiting always fits them);
- all UEs together hold at most ``total_bytes``.

Each UE's publishes are handled in arrival order, one at a time; UEs take turns, one publish
per turn, so a UE with a long backlog delays each other UE by at most one publish per worker.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

# Bytes counted per publish besides its payload (the bookkeeping around it), so that empty
# publishes are bounded too.
OVERHEAD = 256


class Backlog(Generic[T]):
    def __init__(self, per_key: int, per_key_bytes: int, total_bytes: int) -> None:
        self.per_key = per_key
        self.per_key_bytes = per_key_bytes
        self.total_bytes = total_bytes
        # Keys with something waiting or in a worker's hands: their items and byte sizes.
        self._items: dict[str, deque[tuple[T, int]]] = {}
        self._key_bytes: dict[str, int] = {}
        # Keys with an item waiting and no worker on them, each at most once, in turn order.
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._bytes = 0
        self._in_hand = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def bytes(self) -> int:
        """Bytes waiting (an item in a worker's hands no longer counts)."""
        return self._bytes

    def waiting(self, key: str) -> int:
        """Items of ``key`` waiting (not counting one in a worker's hands)."""
        items = self._items.get(key)
        return 0 if items is None else len(items)

    def offer(self, key: str, item: T, size: int) -> str | None:
        """Queues ``item`` (``size`` bytes of payload) for ``key``; None when queued, else
        why it was refused (nothing is queued then)."""
        cost = size + OVERHEAD
        items = self._items.get(key)
        if self._bytes + cost > self.total_bytes:
            return f"this server holds {self._bytes} bytes of uplink waiting"
        if items:
            if len(items) >= self.per_key:
                return f"{len(items)} documents of {key} are waiting"
            if self._key_bytes[key] + cost > self.per_key_bytes:
                return f"{self._key_bytes[key]} bytes of documents of {key} are waiting"
        if items is None:
            items = self._items[key] = deque()
            self._key_bytes[key] = 0
            self._ready.put_nowait(key)
        items.append((item, cost))
        self._key_bytes[key] += cost
        self._bytes += cost
        self._idle.clear()
        return None

    async def take(self) -> tuple[str, T]:
        """The next key's oldest item; the key gets no other worker until ``done(key)``."""
        key = await self._ready.get()
        item, cost = self._items[key].popleft()
        self._key_bytes[key] -= cost
        self._bytes -= cost
        self._in_hand += 1
        return key, item

    def done(self, key: str) -> None:
        """The worker finished with ``key``'s item: the key's turn ends."""
        self._in_hand -= 1
        if self._items[key]:
            self._ready.put_nowait(key)
        else:
            del self._items[key]
            del self._key_bytes[key]
        if not self._items and self._in_hand == 0:
            self._idle.set()

    async def drained(self) -> None:
        """Returns once nothing is waiting and no worker holds anything."""
        await self._idle.wait()
