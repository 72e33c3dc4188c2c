"""Translation between MSGin5G header documents and the protobuf model of ``msgin5g.v1``."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from msgin5g.v1 import common_pb2 as pb
from msgin5g_common import header as h

_ADDR_TO_PB = {
    h.AddrType.UE: pb.ADDR_TYPE_UE,
    h.AddrType.AS: pb.ADDR_TYPE_AS,
    h.AddrType.GROUP: pb.ADDR_TYPE_GROUP,
    h.AddrType.TOPIC: pb.ADDR_TYPE_TOPIC,
    h.AddrType.BC: pb.ADDR_TYPE_BC,
}
_ADDR_FROM_PB = {v: k for k, v in _ADDR_TO_PB.items()}
_PRIO_TO_PB = {
    h.Priority.HIGH: pb.PRIORITY_HIGH,
    h.Priority.MIDDLE: pb.PRIORITY_MIDDLE,
    h.Priority.LOW: pb.PRIORITY_LOW,
}
_PRIO_FROM_PB = {v: k for k, v in _PRIO_TO_PB.items()}
RESULT_TO_PB = {
    h.MsgResult.ACCEPTED: pb.MSG_RESULT_ACCEPTED,
    h.MsgResult.STORED: pb.MSG_RESULT_STORED,
    h.MsgResult.DELIVERED: pb.MSG_RESULT_DELIVERED,
    h.MsgResult.FAILED: pb.MSG_RESULT_FAILED,
}
RESULT_FROM_PB = {v: k for k, v in RESULT_TO_PB.items()}
_DELIV_TO_PB = {
    h.DelivSt.REPT_DELY_SUCCESS: pb.DELIVERY_STATUS_REPT_DELY_SUCCESS,
    h.DelivSt.REPT_DELY_FAILED: pb.DELIVERY_STATUS_REPT_DELY_FAILED,
}
_DELIV_FROM_PB = {v: k for k, v in _DELIV_TO_PB.items()}
MODE_TO_PB = {
    h.DeliveryMode.OBSERVE: pb.DELIVERY_MODE_OBSERVE,
    h.DeliveryMode.PUSH: pb.DELIVERY_MODE_PUSH,
}
MODE_FROM_PB = {v: k for k, v in MODE_TO_PB.items()}


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def timestamp_ms(ms: int) -> Timestamp:
    """A Timestamp from milliseconds since the epoch (how Redis records keep times)."""
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def address_key_to_pb(key: str) -> pb.Address:
    """``UE:ue-1`` (an address as records and queries write it) as an Address."""
    kind, _, addr = key.partition(":")
    return address_to_pb(h.Address(h.AddrType(kind), addr))


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def address_to_pb(addr: h.Address) -> pb.Address:
    return pb.Address(addr_type=_ADDR_TO_PB[addr.addr_type], addr=addr.addr)


def address_from_pb(addr: pb.Address) -> h.Address:
    return h.Address(_ADDR_FROM_PB[addr.addr_type], addr.addr)


def msg_to_pb(doc: h.Msg) -> pb.Message:
    msg = pb.Message(
        msg_id=doc.msg_id,
        ori_addr=address_to_pb(doc.ori_addr),
        dest_addr=address_to_pb(doc.dest_addr),
        app_id=doc.app_id or "",
        priority=_PRIO_TO_PB[doc.priority] if doc.priority else pb.PRIORITY_UNSPECIFIED,
        deliv_st_req_ind=doc.deliv_st_req_ind,
        sto_and_fw_ind=doc.sto_and_fw_ind,
        seg_ind=doc.seg_ind,
    )
    if doc.payload is not None:
        msg.payload = doc.payload
    if doc.expr_time is not None:
        msg.sto_and_fw_params.expr_time.CopyFrom(timestamp(doc.expr_time))
    if doc.seg_params is not None:
        sp = doc.seg_params
        msg.seg_params.CopyFrom(
            pb.SegmentParams(
                seg_id=sp.seg_id,
                total_seg_count=sp.total_seg_count or 0,
                seg_numb=sp.seg_numb or 0,
                last_seg_flag=bool(sp.last_seg_flag),
            )
        )
    if doc.rcpt_addr is not None:
        msg.rcpt_addr.CopyFrom(address_to_pb(doc.rcpt_addr))
    return msg


def msg_from_pb(msg: pb.Message) -> h.Msg:
    seg = None
    if msg.HasField("seg_params"):
        sp = msg.seg_params
        seg = h.SegParams(
            seg_id=sp.seg_id,
            total_seg_count=sp.total_seg_count or None,
            seg_numb=sp.seg_numb or None,
            last_seg_flag=sp.last_seg_flag or None,
        )
    return h.Msg(
        msg_id=msg.msg_id,
        ori_addr=address_from_pb(msg.ori_addr),
        dest_addr=address_from_pb(msg.dest_addr),
        payload=msg.payload if msg.HasField("payload") else None,
        app_id=msg.app_id or None,
        priority=_PRIO_FROM_PB.get(msg.priority),
        deliv_st_req_ind=msg.deliv_st_req_ind,
        sto_and_fw_ind=msg.sto_and_fw_ind if msg.HasField("sto_and_fw_ind") else True,
        expr_time=(
            from_timestamp(msg.sto_and_fw_params.expr_time)
            if msg.sto_and_fw_params.HasField("expr_time")
            else None
        ),
        seg_ind=msg.seg_ind,
        seg_params=seg,
        rcpt_addr=address_from_pb(msg.rcpt_addr) if msg.HasField("rcpt_addr") else None,
    )


def imdn_to_pb(doc: h.Imdn) -> pb.Imdn:
    return pb.Imdn(
        ori_addr=address_to_pb(doc.ori_addr),
        dest_addr=address_to_pb(doc.dest_addr),
        msg_id=doc.msg_id,
        deliv_st=_DELIV_TO_PB[doc.deliv_st],
        failure_cause=doc.failure_cause or "",
    )


def imdn_from_pb(imdn: pb.Imdn) -> h.Imdn:
    return h.Imdn(
        ori_addr=address_from_pb(imdn.ori_addr),
        dest_addr=address_from_pb(imdn.dest_addr),
        msg_id=imdn.msg_id,
        deliv_st=_DELIV_FROM_PB[imdn.deliv_st],
        failure_cause=imdn.failure_cause or None,
    )


def segrec_from_pb(rec: pb.SegRec) -> h.SegRec:
    return h.SegRec(
        ori_addr=address_from_pb(rec.ori_addr),
        dest_addr=address_from_pb(rec.dest_addr),
        seg_id=rec.seg_id,
        missing=tuple(rec.missing),
    )


def downlink_from_pb(doc: pb.Downlink) -> h.Downlink:
    kind = doc.WhichOneof("doc")
    if kind == "imdn":
        return imdn_from_pb(doc.imdn)
    if kind == "segrec":
        return segrec_from_pb(doc.segrec)
    return msg_from_pb(doc.msg)
