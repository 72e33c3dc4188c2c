"""Aggregation of small downlink documents (TS 23.554 8.4), as this server does it.

Several documents waiting for one recipient may leave as one *aggregated document*: a JSON
array of the documents, each exactly as it would be sent alone. The rules:

- A HIGH priority MSG always goes alone, and first (inbox order puts it first): it is never
  held back, and never waits for others to fill an array.
- Other documents (MIDDLE, LOW, unspecified priority, IMDNs), in inbox order, are packed into
  arrays of at most ``limit`` bytes. One that does not fit with others goes alone.
- A group of one goes as a plain object, so that a single pending document looks the same
  whether or not the recipient understands arrays.
- Nothing is ever delayed to wait for a fuller array: only what is pending at dispatch time
  is packed.

A UE may send an aggregated uplink document the same way (a JSON array of the documents it
would send one by one, at most MAX_UPLINK_ITEMS): each is handled as if sent alone, in order,
and the answers come back as one JSON array, one answer per document that has one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from msgin5g_common import header as h
from msgin5g_common.errors import InvalidDocument, PayloadTooLarge


def pack(docs: Sequence[h.Downlink], limit: int) -> list[bytes]:
    """The payloads to send, in order, for ``docs`` (in inbox order)."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 2  # the brackets

    def flush() -> None:
        nonlocal group, size
        if len(group) == 1:
            out.append(group[0])
        elif group:
            out.append(b"[" + b",".join(group) + b"]")
        group, size = [], 2

    for doc in docs:
        item = h.encode(doc)
        if isinstance(doc, h.Msg) and doc.priority is h.Priority.HIGH:
            flush()
            out.append(item)
            continue
        if group and size + len(item) + 1 > limit:
            flush()
        group.append(item)
        size += len(item) + (1 if len(group) > 1 else 0)
    flush()
    return out


# An aggregated uplink document carries at most this many documents.
MAX_UPLINK_ITEMS = 32


def split_uplink(payload: bytes, max_bytes: int) -> list[bytes] | None:
    """The documents of an aggregated uplink document (a JSON array of documents, each
    re-encoded on its own), or None when ``payload`` is a single document. A malformed array
    raises InvalidDocument (PayloadTooLarge over ``max_bytes``); each item is checked later
    like a document sent alone."""
    if payload.lstrip()[:1] != b"[":
        return None
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"aggregated document of {len(payload)} bytes (at most {max_bytes})")
    try:
        items = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise InvalidDocument(f"not a JSON array of documents: {exc}") from exc
    if not isinstance(items, list) or not items:
        raise InvalidDocument("an aggregated document is a non-empty JSON array")
    if len(items) > MAX_UPLINK_ITEMS:
        raise InvalidDocument(
            f"an aggregated document carries at most {MAX_UPLINK_ITEMS} documents"
        )
    if not all(isinstance(item, dict) for item in items):
        raise InvalidDocument("every item of an aggregated document must be a JSON object")
    return [json.dumps(item).encode() for item in items]


def join(payloads: list[bytes]) -> bytes:
    """The answers to an aggregated uplink document, as one JSON array."""
    return b"[" + b",".join(payloads) + b"]"
