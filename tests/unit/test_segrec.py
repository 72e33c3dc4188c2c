"""The SEGREC document: the server asking for missing segments, as JSON and back."""

from __future__ import annotations

import json

import pytest

from msgin5g.v1 import common_pb2 as pb
from msgin5g_common import convert
from msgin5g_common import header as h
from msgin5g_common.errors import InvalidDocument


def test_segrec_round_trips_through_json_and_protobuf() -> None:
    rec = h.SegRec(
        ori_addr=h.Address(h.AddrType.UE, "ue-1"),
        dest_addr=h.Address(h.AddrType.UE, "ue-2"),
        seg_id="m-1",
        missing=(2, 5),
    )

    encoded = h.encode(rec)

    assert json.loads(encoded)["missingSegs"] == [2, 5]
    assert h.decode_any(encoded) == rec
    assert h.decode_downlink_list(b"[" + encoded + b"]") == [rec]
    assert rec.msg_id == "m-1"
    as_pb = pb.Downlink(
        segrec=pb.SegRec(
            ori_addr=convert.address_to_pb(rec.ori_addr),
            dest_addr=convert.address_to_pb(rec.dest_addr),
            seg_id="m-1",
            missing=[2, 5],
        )
    )
    assert convert.downlink_from_pb(as_pb) == rec


@pytest.mark.parametrize("missing", [[], [0], [True], ["2"], [70000]])
def test_segrec_with_bad_segment_numbers_is_refused(missing: list[object]) -> None:
    doc = {
        "msgType": "SEGREC",
        "oriAddr": {"addrType": "UE", "addr": "ue-1"},
        "destAddr": {"addrType": "UE", "addr": "ue-2"},
        "segId": "m-1",
        "missingSegs": missing,
    }
    with pytest.raises(InvalidDocument, match="missingSegs"):
        h.decode_any(json.dumps(doc).encode())
