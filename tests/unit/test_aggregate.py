"""Aggregation of downlink documents: HIGH alone and first, the rest packed within the limit."""

from __future__ import annotations

import json

from msgin5g_common import header as h
from msgin5g_common.aggregate import pack


def _msg(n: int, priority: h.Priority | None = None, size: int = 10) -> h.Msg:
    return h.Msg(
        msg_id=f"m{n}",
        ori_addr=h.Address(h.AddrType.UE, "a"),
        dest_addr=h.Address(h.AddrType.UE, "b"),
        payload="x" * size,
        priority=priority,
    )


def _ids(payload: bytes) -> list[str]:
    obj = json.loads(payload)
    return [d["msgId"] for d in obj] if isinstance(obj, list) else [obj["msgId"]]


def test_high_messages_go_alone_and_the_rest_are_packed_in_order() -> None:
    docs = [_msg(0, h.Priority.HIGH), _msg(1, h.Priority.HIGH)] + [_msg(n) for n in range(2, 8)]

    out = pack(docs, 4096)

    assert [_ids(p) for p in out] == [["m0"], ["m1"], ["m2", "m3", "m4", "m5", "m6", "m7"]]
    assert json.loads(out[0])["priority"] == "HIGH"  # a plain object, not an array


def test_arrays_stay_within_the_limit_and_a_lone_document_is_a_plain_object() -> None:
    docs = [_msg(n, h.Priority.LOW, size=100) for n in range(20)]

    out = pack(docs, 600)

    assert all(len(p) <= 600 for p in out)
    assert [i for p in out for i in _ids(p)] == [f"m{n}" for n in range(20)]
    assert len(out) < 20
    big = _msg(99, size=2000)
    (alone,) = pack([big], 600)
    assert json.loads(alone)["msgId"] == "m99"


def test_every_packed_document_decodes_as_it_was() -> None:
    docs: list[h.Msg | h.Imdn] = [_msg(n) for n in range(5)]
    docs.append(
        h.Imdn(
            ori_addr=h.Address(h.AddrType.UE, "b"),
            dest_addr=h.Address(h.AddrType.UE, "a"),
            msg_id="m0",
            deliv_st=h.DelivSt.REPT_DELY_SUCCESS,
        )
    )

    (packed,) = pack(docs, 4096)

    assert h.decode_downlink_list(packed) == docs
