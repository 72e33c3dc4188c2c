"""Segmentation rules of the router (pure): splitting, segment documents, reassembly."""

from __future__ import annotations

from msgin5g.v1 import common_pb2 as pb
from msgin5g_common import header as h
from msgin5g_router import domain


def _msg(payload: str) -> pb.Message:
    return pb.Message(
        msg_id="m1",
        ori_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr="a"),
        dest_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr="b"),
        payload=payload,
        priority=pb.PRIORITY_LOW,
    )


def test_split_keeps_every_chunk_within_the_limit_without_cutting_characters() -> None:
    text = "é€😀a" * 100  # 2, 3, 4 and 1 bytes

    chunks = h.split_payload(text, 10)

    assert "".join(chunks) == text
    assert all(len(c.encode()) <= 10 for c in chunks)
    assert h.split_payload("", 10) == [""]


def test_segments_carry_their_numbers_and_reassemble_to_the_message() -> None:
    msg = _msg("x" * 1000)

    parts = domain.segment(msg, 256)

    assert [p.msg_id for p in parts] == ["m1~1", "m1~2", "m1~3", "m1~4"]
    assert [p.seg_params.seg_numb for p in parts] == [1, 2, 3, 4]
    assert parts[0].seg_params.total_seg_count == 4
    assert [p.seg_params.last_seg_flag for p in parts] == [False, False, False, True]
    assert all(len(p.payload.encode()) <= 256 and p.seg_ind for p in parts)
    assert {domain.parent_msg_id(p) for p in parts} == {"m1"}
    whole = domain.reassemble(parts)
    assert whole == msg
