"""Translation between header documents and the protobuf model of msgin5g.v1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from msgin5g.v1 import common_pb2 as pb
from msgin5g_common import convert as c
from msgin5g_common import header as h

UE_A = h.Address(h.AddrType.UE, "ue-a")
UE_B = h.Address(h.AddrType.UE, "ue-b")
EXPR = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

FULL_MSG = h.Msg(
    msg_id="0f8e6c1e-msg-1",
    ori_addr=UE_A,
    dest_addr=h.Address(h.AddrType.GROUP, "group-1"),
    payload="hello \u00e9\U0001f600",
    app_id="app.1",
    priority=h.Priority.LOW,
    deliv_st_req_ind=True,
    sto_and_fw_ind=False,
    expr_time=EXPR,
    seg_ind=True,
    seg_params=h.SegParams("seg-1", 3, 2, True),
    rcpt_addr=UE_B,
)
MINIMAL_MSG = h.Msg("m-1", UE_A, UE_B)


def over_the_wire(msg: pb.Message) -> pb.Message:
    """The message as another service reads it (field presence must survive serialisation)."""
    return pb.Message.FromString(msg.SerializeToString())


@pytest.mark.parametrize("doc", [FULL_MSG, MINIMAL_MSG], ids=["all-fields", "minimal"])
def test_msg_round_trips_through_protobuf(doc: h.Msg) -> None:
    assert c.msg_from_pb(c.msg_to_pb(doc)) == doc
    assert c.msg_from_pb(over_the_wire(c.msg_to_pb(doc))) == doc


def test_msg_to_pb_fills_every_field() -> None:
    msg = c.msg_to_pb(FULL_MSG)
    assert msg.msg_id == "0f8e6c1e-msg-1"
    assert msg.ori_addr == pb.Address(addr_type=pb.ADDR_TYPE_UE, addr="ue-a")
    assert msg.dest_addr == pb.Address(addr_type=pb.ADDR_TYPE_GROUP, addr="group-1")
    assert msg.rcpt_addr == pb.Address(addr_type=pb.ADDR_TYPE_UE, addr="ue-b")
    assert msg.payload == "hello \u00e9\U0001f600"
    assert msg.app_id == "app.1"
    assert msg.priority == pb.PRIORITY_LOW
    assert msg.deliv_st_req_ind is True
    assert msg.HasField("sto_and_fw_ind")
    assert msg.sto_and_fw_ind is False
    assert msg.sto_and_fw_params.expr_time.ToDatetime(tzinfo=UTC) == EXPR
    assert msg.seg_ind is True
    assert msg.seg_params == pb.SegmentParams(
        seg_id="seg-1", total_seg_count=3, seg_numb=2, last_seg_flag=True
    )


def test_minimal_msg_leaves_optional_fields_unset() -> None:
    msg = over_the_wire(c.msg_to_pb(MINIMAL_MSG))
    assert not msg.HasField("payload")
    assert not msg.HasField("sto_and_fw_params")
    assert not msg.HasField("seg_params")
    assert not msg.HasField("rcpt_addr")
    assert msg.app_id == ""
    assert msg.priority == pb.PRIORITY_UNSPECIFIED


@pytest.mark.parametrize(
    ("payload", "present"),
    [(None, False), ("", True), ("x", True)],
    ids=["absent", "empty", "text"],
)
def test_absent_payload_and_empty_payload_are_distinguished(
    payload: str | None, present: bool
) -> None:
    doc = h.Msg("m-1", UE_A, UE_B, payload=payload)
    msg = over_the_wire(c.msg_to_pb(doc))
    assert msg.HasField("payload") is present
    assert c.msg_from_pb(msg).payload == payload


def test_sto_and_fw_ind_absent_from_protobuf_means_true() -> None:
    msg = pb.Message(
        msg_id="m-1",
        ori_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr="ue-a"),
        dest_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr="ue-b"),
    )
    assert not msg.HasField("sto_and_fw_ind")
    assert c.msg_from_pb(msg).sto_and_fw_ind is True
    assert c.msg_from_pb(over_the_wire(msg)) == MINIMAL_MSG


@pytest.mark.parametrize("value", [True, False])
def test_sto_and_fw_ind_is_always_sent_explicitly(value: bool) -> None:
    msg = over_the_wire(c.msg_to_pb(h.Msg("m-1", UE_A, UE_B, sto_and_fw_ind=value)))
    assert msg.HasField("sto_and_fw_ind")
    assert msg.sto_and_fw_ind is value
    assert c.msg_from_pb(msg).sto_and_fw_ind is value


@pytest.mark.parametrize(
    ("priority", "pb_priority"),
    [
        (None, pb.PRIORITY_UNSPECIFIED),
        (h.Priority.HIGH, pb.PRIORITY_HIGH),
        (h.Priority.MIDDLE, pb.PRIORITY_MIDDLE),
        (h.Priority.LOW, pb.PRIORITY_LOW),
    ],
)
def test_priority_maps_both_ways(priority: h.Priority | None, pb_priority: int) -> None:
    msg = c.msg_to_pb(h.Msg("m-1", UE_A, UE_B, priority=priority))
    assert msg.priority == pb_priority
    assert c.msg_from_pb(msg).priority == priority


def test_expr_time_keeps_the_instant_and_comes_back_in_utc() -> None:
    local = EXPR.astimezone(timezone(timedelta(hours=-5)))
    back = c.msg_from_pb(c.msg_to_pb(h.Msg("m-1", UE_A, UE_B, expr_time=local))).expr_time
    assert back == EXPR
    assert back is not None
    assert back.tzinfo is UTC


@pytest.mark.parametrize(
    ("addr_type", "pb_type"),
    [
        (h.AddrType.UE, pb.ADDR_TYPE_UE),
        (h.AddrType.AS, pb.ADDR_TYPE_AS),
        (h.AddrType.GROUP, pb.ADDR_TYPE_GROUP),
        (h.AddrType.TOPIC, pb.ADDR_TYPE_TOPIC),
        (h.AddrType.BC, pb.ADDR_TYPE_BC),
    ],
)
def test_every_address_type_maps_both_ways(
    addr_type: h.AddrType, pb_type: pb.AddrType.ValueType
) -> None:
    addr = h.Address(addr_type, "party-1")
    assert c.address_to_pb(addr) == pb.Address(addr_type=pb_type, addr="party-1")
    assert c.address_from_pb(c.address_to_pb(addr)) == addr
    doc = h.Msg("m-1", UE_A, addr, rcpt_addr=UE_B)
    assert c.msg_from_pb(over_the_wire(c.msg_to_pb(doc))) == doc


def test_address_mapping_covers_every_type_on_both_sides() -> None:
    mapped = {c.address_to_pb(h.Address(t, "x")).addr_type for t in h.AddrType}
    assert mapped == set(pb.AddrType.values()) - {pb.ADDR_TYPE_UNSPECIFIED}


def test_result_and_delivery_mode_tables_cover_every_value() -> None:
    assert set(c.RESULT_TO_PB) == set(h.MsgResult)
    assert set(c.RESULT_FROM_PB) == set(pb.MsgResult.values()) - {pb.MSG_RESULT_UNSPECIFIED}
    assert set(c.MODE_TO_PB) == set(h.DeliveryMode)
    assert set(c.MODE_FROM_PB) == set(pb.DeliveryMode.values()) - {pb.DELIVERY_MODE_UNSPECIFIED}


@pytest.mark.parametrize(
    "doc",
    [
        h.Imdn(UE_B, UE_A, "m-1", h.DelivSt.REPT_DELY_SUCCESS),
        h.Imdn(UE_B, UE_A, "m-1", h.DelivSt.REPT_DELY_FAILED, "RECIPIENT_UNREACHABLE"),
        h.Imdn(
            h.Address(h.AddrType.AS, "as-1"),
            h.Address(h.AddrType.TOPIC, "news"),
            "m-2",
            h.DelivSt.REPT_DELY_SUCCESS,
        ),
    ],
    ids=["success", "failed-with-cause", "other-address-types"],
)
def test_imdn_round_trips_through_protobuf(doc: h.Imdn) -> None:
    imdn = c.imdn_to_pb(doc)
    assert c.imdn_from_pb(imdn) == doc
    assert c.imdn_from_pb(pb.Imdn.FromString(imdn.SerializeToString())) == doc


def test_imdn_to_pb_fills_every_field() -> None:
    imdn = c.imdn_to_pb(h.Imdn(UE_B, UE_A, "m-1", h.DelivSt.REPT_DELY_FAILED, "EXPIRED"))
    assert imdn == pb.Imdn(
        ori_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr="ue-b"),
        dest_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr="ue-a"),
        msg_id="m-1",
        deliv_st=pb.DELIVERY_STATUS_REPT_DELY_FAILED,
        failure_cause="EXPIRED",
    )


@pytest.mark.parametrize("doc", [FULL_MSG, MINIMAL_MSG], ids=["all-fields", "minimal"])
def test_downlink_from_pb_returns_the_message(doc: h.Msg) -> None:
    downlink = pb.Downlink(msg=c.msg_to_pb(doc))
    assert c.downlink_from_pb(downlink) == doc
    assert c.downlink_from_pb(pb.Downlink.FromString(downlink.SerializeToString())) == doc


def test_downlink_from_pb_returns_the_imdn() -> None:
    doc = h.Imdn(UE_B, UE_A, "m-1", h.DelivSt.REPT_DELY_FAILED, "EXPIRED")
    downlink = pb.Downlink(imdn=c.imdn_to_pb(doc))
    assert c.downlink_from_pb(downlink) == doc
    assert c.downlink_from_pb(pb.Downlink.FromString(downlink.SerializeToString())) == doc


def test_decoded_header_survives_the_trip_to_protobuf_and_back_to_json() -> None:
    raw = h.encode(FULL_MSG)
    decoded = h.decode_any(raw)
    assert isinstance(decoded, h.Msg)
    back = c.downlink_from_pb(pb.Downlink(msg=c.msg_to_pb(decoded)))
    # JSON carries milliseconds only (format_time), so compare after the JSON trip.
    assert h.encode(back) == raw
