"""Pure routing rules of the router: no Redis, no gRPC."""

from __future__ import annotations

from msgin5g.v1 import common_pb2 as pb
from msgin5g_common import header as h
from msgin5g_common.keys import as_of, as_recipient

# Inbox order: HIGH, then MIDDLE (and unspecified), then LOW; within one priority by arrival.
_RANK: dict[int, int] = {
    pb.PRIORITY_HIGH: 0,
    pb.PRIORITY_MIDDLE: 1,
    pb.PRIORITY_UNSPECIFIED: 1,
    pb.PRIORITY_LOW: 2,
}
_SEQ_BITS = 40

ADDR_TYPE_NAME = {
    pb.ADDR_TYPE_UE: "UE",
    pb.ADDR_TYPE_AS: "AS",
    pb.ADDR_TYPE_GROUP: "GROUP",
    pb.ADDR_TYPE_TOPIC: "TOPIC",
    pb.ADDR_TYPE_BC: "BC",
}

FINAL_STATES = ("DELIVERED", "EXPIRED", "FAILED")


def priority_rank(priority: int) -> int:
    return _RANK.get(priority, 1)


def inbox_score(priority: int, seq: int) -> int:
    """Sorted-set score: priority rank in the high bits, arrival sequence in the low bits
    (exact in a double up to 2**53, i.e. 2**40 documents per inbox)."""
    return (priority_rank(priority) << _SEQ_BITS) + seq


def address_key(addr: pb.Address) -> str:
    """``UE:ue-1``: how an address names a message record's owner and an inbox entry."""
    return f"{ADDR_TYPE_NAME.get(addr.addr_type, 'UNSPECIFIED')}:{addr.addr}"


# Separates the parts of an inbox ref: a control character, in no msgId and no address.
SEP = "\x1f"


def msg_ref(ori: pb.Address, msg_id: str) -> str:
    """The inbox entry of a MSG: unique per (originator, msgId)."""
    return f"MSG{SEP}{address_key(ori)}{SEP}{msg_id}"


def imdn_ref(reporter: pb.Address, msg_id: str) -> str:
    """The inbox entry of a delivery report about ``msg_id`` from ``reporter``."""
    return f"IMDN{SEP}{address_key(reporter)}{SEP}{msg_id}"


def segrec_ref(ori: pb.Address, seg_id: str) -> str:
    """The inbox entry of a request for the missing segments of ``ori``'s message ``seg_id``."""
    return f"SEGREC{SEP}{address_key(ori)}{SEP}{seg_id}"


def backoff_ms(attempt: int, base_ms: int, max_ms: int) -> int:
    """Delay before re-sending after the ``attempt``-th unacknowledged forward: doubling."""
    return int(min(base_ms * (2 ** max(attempt - 1, 0)), max_ms))


def ref_msg_id(ref: str) -> str:
    return ref.rsplit(SEP, 1)[1]


def ack_refs(msg_id: str, ori: pb.Address | None) -> str:
    """The ref an acknowledgement names, or a suffix to match when it gives no originator."""
    if ori is not None and ori.addr:
        return msg_ref(ori, msg_id)
    return f"{SEP}{msg_id}"


def recipient_of(addr: pb.Address) -> str | None:
    """The recipient id of a UE or AS address (keys.py, "Recipients"); None for the others."""
    if addr.addr_type == pb.ADDR_TYPE_UE:
        return addr.addr
    if addr.addr_type == pb.ADDR_TYPE_AS:
        return as_recipient(addr.addr)
    return None


def rcpt_address(rcpt: str) -> pb.Address:
    """The address of a recipient id."""
    as_id = as_of(rcpt)
    if as_id is None:
        return pb.Address(addr_type=pb.ADDR_TYPE_UE, addr=rcpt)
    return pb.Address(addr_type=pb.ADDR_TYPE_AS, addr=as_id)


# Segmentation (TS 23.554 8.5): at most this many segments per message, both ways.
MAX_SEGMENTS = 64


def segment(msg: pb.Message, limit: int) -> list[pb.Message]:
    """The segments of a message whose payload is over a recipient's ``limit`` bytes."""
    parts = h.split_payload(msg.payload, limit)
    out = []
    for number, part in enumerate(parts, 1):
        copy = pb.Message()
        copy.CopyFrom(msg)
        copy.msg_id = h.segment_msg_id(msg.msg_id, number)
        copy.payload = part
        copy.seg_ind = True
        copy.seg_params.CopyFrom(
            pb.SegmentParams(
                seg_id=msg.msg_id,
                seg_numb=number,
                total_seg_count=len(parts) if number == 1 else 0,
                last_seg_flag=number == len(parts),
            )
        )
        out.append(copy)
    return out


def parent_msg_id(msg: pb.Message) -> str:
    """The msgId whose record tracks ``msg``: a server-made segment's whole message."""
    if msg.seg_ind and msg.seg_params.seg_id:
        return msg.seg_params.seg_id
    return msg.msg_id


def reassemble(parts: list[pb.Message]) -> pb.Message:
    """The whole message of an uplink's segments (in order): it takes its msgId from the
    segId, its payload from every segment, the rest from the first segment."""
    whole = pb.Message()
    whole.CopyFrom(parts[0])
    whole.msg_id = parts[0].seg_params.seg_id
    whole.payload = "".join(p.payload for p in parts)
    whole.seg_ind = False
    whole.ClearField("seg_params")
    return whole
