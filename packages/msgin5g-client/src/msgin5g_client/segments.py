"""Segmentation for UEs (TS 23.554 8.5): sending a long message in segments, and putting
back together a message the server delivers in segments.

A segment is a MSG with ``segInd: true`` and ``segParams``: ``segId`` (the whole message's
msgId; the server routes the whole message under it), ``segNumb`` (1..n), ``totalSegCount``
(in the first) and ``lastSegFlag`` (in the last). Each segment has its own msgId
(``<msgId>~<n>``) and is acknowledged on its own.
"""

from __future__ import annotations

from dataclasses import replace

from msgin5g_common import header as h


def split(msg: h.Msg, size: int) -> list[h.Msg]:
    """``msg`` as segments whose payloads are at most ``size`` UTF-8 bytes (never cutting a
    character); a message that fits stays whole."""
    payload = msg.payload or ""
    if len(payload.encode()) <= size:
        return [msg]
    chunks = h.split_payload(payload, size)
    total = len(chunks)
    return [
        replace(
            msg,
            msg_id=h.segment_msg_id(msg.msg_id, n),
            payload=chunk,
            seg_ind=True,
            seg_params=h.SegParams(
                seg_id=msg.msg_id,
                total_seg_count=total if n == 1 else None,
                seg_numb=n,
                last_seg_flag=True if n == total else None,
            ),
        )
        for n, chunk in enumerate(chunks, 1)
    ]


class Reassembler:
    """Collects delivered segments; gives back each message once all its segments came."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str], dict[int, h.Msg]] = {}
        self._totals: dict[tuple[str, str], int] = {}

    def add(self, doc: h.Msg) -> h.Msg | None:
        """The whole message when ``doc`` completes one, ``doc`` itself when it is not a
        segment, otherwise None."""
        sp = doc.seg_params
        if not doc.seg_ind or sp is None or sp.seg_numb is None:
            return doc
        key = (doc.ori_addr.addr, sp.seg_id)
        parts = self._parts.setdefault(key, {})
        parts[sp.seg_numb] = doc
        if sp.total_seg_count:
            self._totals[key] = sp.total_seg_count
        if sp.last_seg_flag:
            self._totals[key] = sp.seg_numb
        total = self._totals.get(key)
        if total is None or len(parts) < total:
            return None
        del self._parts[key], self._totals[key]
        first = parts[1]
        return replace(
            first,
            msg_id=sp.seg_id,
            payload="".join(parts[n].payload or "" for n in range(1, total + 1)),
            seg_ind=False,
            seg_params=None,
        )


class Outbox:
    """The segments a UE sent, kept so that it can answer the server's SEGREC (a request for
    the segments that did not arrive) by sending them again."""

    def __init__(self, capacity: int = 64) -> None:
        self._sent: dict[str, dict[int, h.Msg]] = {}
        self.capacity = capacity

    def remember(self, parts: list[h.Msg]) -> None:
        for part in parts:
            if part.seg_params is not None and part.seg_params.seg_numb is not None:
                sent = self._sent.setdefault(part.seg_params.seg_id, {})
                sent[part.seg_params.seg_numb] = part
        while len(self._sent) > self.capacity:
            del self._sent[next(iter(self._sent))]

    def asked(self, request: h.SegRec) -> list[h.Msg]:
        """The segments ``request`` asks for, as they were sent (those still known)."""
        sent = self._sent.get(request.seg_id, {})
        return [sent[n] for n in request.missing if n in sent]
