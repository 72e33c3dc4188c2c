"""The MSGin5G header: JSON documents of MSGin5G-1 (msgin5g.md section 4), decoded and encoded.

One codec serves every binding (CoAP payloads, MQTT publishes, the UE client library).
Decoding is strict: unknown fields, wrong types and out-of-range values raise
:class:`~msgin5g_common.errors.InvalidDocument` naming the field, and an oversize payload
raises :class:`~msgin5g_common.errors.PayloadTooLarge`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeAlias

from msgin5g_common.errors import InvalidDocument, PayloadTooLarge

DEFAULT_MAX_PAYLOAD = 2048
DEFAULT_LIFETIME = 86400
MAX_ID_LENGTH = 128
_ID_RE = re.compile(r"[A-Za-z0-9._~@:+\-]{1,128}")
_MSG_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")


class AddrType(StrEnum):
    UE = "UE"
    AS = "AS"
    GROUP = "GROUP"
    TOPIC = "TOPIC"
    BC = "BC"


class Priority(StrEnum):
    HIGH = "HIGH"
    MIDDLE = "MIDDLE"
    LOW = "LOW"


class MsgResult(StrEnum):
    ACCEPTED = "ACCEPTED"
    STORED = "STORED"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class Result(StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


class DelivSt(StrEnum):
    REPT_DELY_SUCCESS = "REPT_DELY_SUCCESS"
    REPT_DELY_FAILED = "REPT_DELY_FAILED"


class UpdAction(StrEnum):
    UPDATE = "UPDATE"
    DISCARD = "DISCARD"


class DeliveryMode(StrEnum):
    OBSERVE = "observe"
    PUSH = "push"


@dataclass(frozen=True, slots=True)
class Address:
    addr_type: AddrType
    addr: str

    def to_json(self) -> dict[str, str]:
        return {"addrType": self.addr_type.value, "addr": self.addr}

    def __str__(self) -> str:
        return f"{self.addr_type.value}:{self.addr}"


@dataclass(frozen=True, slots=True)
class SegParams:
    seg_id: str
    total_seg_count: int | None = None
    seg_numb: int | None = None
    last_seg_flag: bool | None = None


@dataclass(frozen=True, slots=True)
class Reg:
    ue_svc_id: str
    lifetime: int = DEFAULT_LIFETIME
    max_seg_size: int | None = None
    bc_area: str | None = None
    delivery_mode: DeliveryMode = DeliveryMode.OBSERVE


@dataclass(frozen=True, slots=True)
class RegResp:
    ue_svc_id: str
    result: Result
    failure_cause: str | None = None
    lifetime: int | None = None
    failure_detail: str | None = None


@dataclass(frozen=True, slots=True)
class Dereg:
    ue_svc_id: str


@dataclass(frozen=True, slots=True)
class DeregResp:
    ue_svc_id: str
    result: Result
    failure_cause: str | None = None
    failure_detail: str | None = None


@dataclass(frozen=True, slots=True)
class Msg:
    msg_id: str
    ori_addr: Address
    dest_addr: Address
    payload: str | None = None
    app_id: str | None = None
    priority: Priority | None = None
    deliv_st_req_ind: bool = False
    sto_and_fw_ind: bool = True
    expr_time: datetime | None = None
    seg_ind: bool = False
    seg_params: SegParams | None = None
    rcpt_addr: Address | None = None


@dataclass(frozen=True, slots=True)
class MsgResp:
    msg_id: str
    result: MsgResult
    failure_cause: str | None = None
    ue_svc_id: str | None = None
    ori_addr: Address | None = None
    failure_detail: str | None = None


@dataclass(frozen=True, slots=True)
class Imdn:
    ori_addr: Address
    dest_addr: Address
    msg_id: str
    deliv_st: DelivSt
    failure_cause: str | None = None


@dataclass(frozen=True, slots=True)
class SegRec:
    """The server asks the originator (``oriAddr``) of a message sent in segments for the
    segments it misses (TS 24.538 SEGREC); ``segId`` names the message."""

    ori_addr: Address
    dest_addr: Address
    seg_id: str
    missing: tuple[int, ...]

    @property
    def msg_id(self) -> str:
        """The message the request is about (its acknowledgement names it)."""
        return self.seg_id


@dataclass(frozen=True, slots=True)
class MsgUpd:
    """The originator changes the expiry of its stored message or discards it (a project
    extension implementing TS 23.554 8.3.6.1)."""

    msg_id: str
    ori_addr: Address
    action: UpdAction
    expr_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class MsgUpdResp:
    msg_id: str
    result: Result
    failure_cause: str | None = None
    failure_detail: str | None = None


@dataclass(frozen=True, slots=True)
class Sub:
    ue_svc_id: str
    msg_topics: tuple[str, ...]
    expr_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Unsub:
    ue_svc_id: str
    msg_topics: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class SubResp:
    ue_svc_id: str
    result: Result
    failure_cause: str | None = None
    unsub: bool = False
    failure_detail: str | None = None


Document: TypeAlias = (
    Reg
    | RegResp
    | Dereg
    | DeregResp
    | Msg
    | MsgResp
    | Imdn
    | Sub
    | Unsub
    | SubResp
    | MsgUpd
    | MsgUpdResp
    | SegRec
)
# What the server delivers to a UE (its inbox, its downlink topic).
Downlink: TypeAlias = Msg | Imdn | SegRec
Uplink: TypeAlias = Reg | Dereg | Msg | MsgResp | Imdn | Sub | Unsub | MsgUpd


def valid_id(value: str) -> bool:
    """True for a UE Service ID, group id, topic or area: 1-128 of ``[A-Za-z0-9._~@:+-]``."""
    return _ID_RE.fullmatch(value) is not None


def sender_of(doc: Uplink) -> str:
    """The UE Service ID an uplink document names as its sender."""
    if isinstance(doc, Msg | Imdn | MsgUpd):
        return doc.ori_addr.addr
    if isinstance(doc, MsgResp):
        if doc.ue_svc_id is None:
            raise InvalidDocument("ueSvcId: mandatory in an acknowledgement")
        return doc.ue_svc_id
    return doc.ue_svc_id


# ---------------------------------------------------------------------------------------------
# Decoding


class _Fields:
    """Reads the fields of one JSON object, remembering which were consumed."""

    def __init__(self, obj: Mapping[str, Any], where: str = "") -> None:
        self.obj = obj
        self.where = where
        self.seen: set[str] = {"msgType"} if not where else set()

    def _name(self, key: str) -> str:
        return f"{self.where}{key}"

    def get(self, key: str, kind: type | tuple[type, ...], *, required: bool = False) -> Any:
        self.seen.add(key)
        value = self.obj.get(key)
        if value is None:
            if required:
                raise InvalidDocument(f"{self._name(key)}: mandatory field missing")
            return None
        # bool is an int in Python: never accept true for a number, or 1 for a flag.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            raise InvalidDocument(f"{self._name(key)}: wrong type, expected {_kind_name(kind)}")
        if not isinstance(value, kind):
            raise InvalidDocument(f"{self._name(key)}: wrong type, expected {_kind_name(kind)}")
        if isinstance(value, str) and not _is_text(value):
            raise InvalidDocument(f"{self._name(key)}: not valid Unicode text (lone surrogate)")
        return value

    def ident(self, key: str, *, required: bool = True) -> str | None:
        value: str | None = self.get(key, str, required=required)
        if value is not None and not _ID_RE.fullmatch(value):
            raise InvalidDocument(
                f"{self._name(key)}: must be 1-128 characters of [A-Za-z0-9._~@:+-]"
            )
        return value

    def msg_id(self) -> str:
        value: str = self.get("msgId", str, required=True)
        if not valid_msg_id(value):
            raise InvalidDocument(
                f"{self._name('msgId')}: must be 1-128 printable ASCII characters"
            )
        return value

    def enum(self, key: str, enum: type[StrEnum], *, required: bool = False) -> Any:
        value = self.get(key, str, required=required)
        if value is None:
            return None
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            raise InvalidDocument(f"{self._name(key)}: must be one of {allowed}") from None

    def integer(self, key: str, low: int, high: int) -> int | None:
        value: int | None = self.get(key, int)
        if value is not None and not low <= value <= high:
            raise InvalidDocument(f"{self._name(key)}: must be between {low} and {high}")
        return value

    def address(self, key: str, *, required: bool = False) -> Address | None:
        value = self.get(key, dict, required=required)
        if value is None:
            return None
        sub = _Fields(value, f"{self._name(key)}.")
        addr_type = sub.enum("addrType", AddrType, required=True)
        addr = sub.ident("addr")
        sub.done()
        assert addr is not None
        return Address(addr_type, addr)

    def timestamp(self, key: str) -> datetime | None:
        value = self.get(key, str)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidDocument(f"{self._name(key)}: not an RFC 3339 date-time") from None
        if parsed.tzinfo is None:
            raise InvalidDocument(f"{self._name(key)}: RFC 3339 date-time needs a time zone")
        return parsed.astimezone(UTC)

    def done(self) -> None:
        unknown = sorted(set(self.obj) - self.seen)
        if unknown:
            raise InvalidDocument(f"{self._name(unknown[0])}: unknown field")


def _is_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", bool: "boolean", dict: "object", list: "array"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _reg(f: _Fields, max_payload: int) -> Reg:
    ue = f.ident("ueSvcId")
    assert ue is not None
    lifetime = f.integer("lifetime", 1, 10 * 365 * 86400)
    max_seg = f.integer("maxSegSize", 16, 1 << 20)
    bc_area = f.ident("bcArea", required=False)
    mode = f.enum("deliveryMode", DeliveryMode)
    return Reg(
        ue_svc_id=ue,
        lifetime=DEFAULT_LIFETIME if lifetime is None else lifetime,
        max_seg_size=max_seg,
        bc_area=bc_area,
        delivery_mode=mode or DeliveryMode.OBSERVE,
    )


def _dereg(f: _Fields, max_payload: int) -> Dereg:
    ue = f.ident("ueSvcId")
    assert ue is not None
    return Dereg(ue)


def _seg_params(f: _Fields) -> SegParams | None:
    value = f.get("segParams", dict)
    if value is None:
        return None
    sub = _Fields(value, "segParams.")
    seg_id = sub.get("segId", str, required=True)
    params = SegParams(
        seg_id=seg_id,
        total_seg_count=sub.integer("totalSegCount", 1, 65535),
        seg_numb=sub.integer("segNumb", 1, 65535),
        last_seg_flag=sub.get("lastSegFlag", bool),
    )
    sub.done()
    return params


def _msg(f: _Fields, max_payload: int) -> Msg:
    msg_id = f.msg_id()
    ori = f.address("oriAddr", required=True)
    dest = f.address("destAddr", required=True)
    assert ori is not None
    assert dest is not None
    payload = f.get("payload", str)
    if payload is not None and len(payload.encode()) > max_payload:
        raise PayloadTooLarge(f"payload: {len(payload.encode())} bytes, maximum {max_payload}")
    app_id = f.get("appId", str)
    if app_id is not None and not 1 <= len(app_id) <= MAX_ID_LENGTH:
        raise InvalidDocument("appId: must be 1-128 characters")
    priority = f.enum("priority", Priority)
    deliv = f.get("delivStReqInd", bool)
    sto = f.get("stoAndFwInd", bool)
    expr_time = None
    params = f.get("stoAndFwParams", dict)
    if params is not None:
        sub = _Fields(params, "stoAndFwParams.")
        expr_time = sub.timestamp("exprTime")
        sub.done()
    seg_ind = f.get("segInd", bool)
    seg_params = _seg_params(f)
    if seg_ind and seg_params is None:
        raise InvalidDocument("segParams: mandatory when segInd is true")
    rcpt = f.address("rcptAddr")
    return Msg(
        msg_id=msg_id,
        ori_addr=ori,
        dest_addr=dest,
        payload=payload,
        app_id=app_id,
        priority=priority,
        deliv_st_req_ind=bool(deliv),
        sto_and_fw_ind=True if sto is None else sto,
        expr_time=expr_time,
        seg_ind=bool(seg_ind),
        seg_params=seg_params,
        rcpt_addr=rcpt,
    )


def _msgresp(f: _Fields, max_payload: int, *, from_server: bool = False) -> MsgResp:
    result = f.enum("result", MsgResult, required=True)
    # The server refuses a document whose msgId it could not read with an empty msgId;
    # a UE's acknowledgement always names one.
    unreadable = from_server and result is MsgResult.FAILED and f.obj.get("msgId") == ""
    msg_id = "" if unreadable else f.msg_id()
    f.seen.add("msgId")
    cause = f.get("failureCause", str)
    ue = f.ident("ueSvcId", required=False)
    ori = f.address("oriAddr")
    return MsgResp(msg_id, result, cause, ue, ori, f.get("failureDetail", str))


def _imdn(f: _Fields, max_payload: int) -> Imdn:
    ori = f.address("oriAddr", required=True)
    dest = f.address("destAddr", required=True)
    assert ori is not None
    assert dest is not None
    msg_id = f.msg_id()
    st = f.enum("delivSt", DelivSt, required=True)
    cause = f.get("failureCause", str)
    return Imdn(ori, dest, msg_id, st, cause)


def _segrec(f: _Fields, max_payload: int) -> SegRec:
    ori = f.address("oriAddr", required=True)
    dest = f.address("destAddr", required=True)
    assert ori is not None
    assert dest is not None
    seg_id = f.get("segId", str, required=True)
    if not valid_msg_id(seg_id):
        raise InvalidDocument("segId: must be 1-128 printable ASCII characters")
    missing = f.get("missingSegs", list, required=True)
    if not missing or not all(
        isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 65535 for n in missing
    ):
        raise InvalidDocument("missingSegs: a non-empty list of segment numbers (1-65535)")
    return SegRec(ori, dest, seg_id, tuple(missing))


def _msgupd(f: _Fields, max_payload: int) -> MsgUpd:
    msg_id = f.msg_id()
    ori = f.address("oriAddr", required=True)
    assert ori is not None
    action = f.enum("action", UpdAction, required=True)
    expr_time = None
    params = f.get("stoAndFwParams", dict)
    if params is not None:
        sub = _Fields(params, "stoAndFwParams.")
        expr_time = sub.timestamp("exprTime")
        sub.done()
    if action is UpdAction.UPDATE and expr_time is None:
        raise InvalidDocument("stoAndFwParams.exprTime: mandatory for action UPDATE")
    return MsgUpd(msg_id, ori, action, expr_time)


def _msgupdresp(f: _Fields, max_payload: int) -> MsgUpdResp:
    result = f.enum("result", Result, required=True)
    unreadable = result is Result.FAILURE and f.obj.get("msgId") == ""
    msg_id = "" if unreadable else f.msg_id()
    f.seen.add("msgId")
    return MsgUpdResp(msg_id, result, f.get("failureCause", str), f.get("failureDetail", str))


def _topics(f: _Fields, *, required: bool) -> tuple[str, ...]:
    topics = f.get("msgTopics", list, required=required)
    if topics is None:
        return ()
    if not topics:
        raise InvalidDocument("msgTopics: needs at least one topic")
    for i, topic in enumerate(topics):
        if not isinstance(topic, str) or not _ID_RE.fullmatch(topic):
            raise InvalidDocument(f"msgTopics[{i}]: must be 1-128 characters of [A-Za-z0-9._~@:+-]")
    return tuple(topics)


def _sub(f: _Fields, max_payload: int) -> Sub:
    ue = f.ident("ueSvcId")
    assert ue is not None
    return Sub(ue, _topics(f, required=True), f.timestamp("exprTime"))


def _unsub(f: _Fields, max_payload: int) -> Unsub:
    ue = f.ident("ueSvcId")
    assert ue is not None
    return Unsub(ue, _topics(f, required=True))


_UPLINK: dict[str, Callable[[_Fields, int], Uplink]] = {
    "REG": _reg,
    "DEREG": _dereg,
    "MSG": _msg,
    "MSGRESP": _msgresp,
    "IMDN": _imdn,
    "SUB": _sub,
    "UNSUB": _unsub,
    "MSGUPD": _msgupd,
}

# The answers the server sends, decoded by the UE client library.
_DOWNLINK_ONLY = ("REGRESP", "DEREGRESP", "SUBRESP", "UNSUBRESP")


def _load(data: bytes | str) -> Any:
    """Parses JSON; every way it can fail is an invalid document (a hostile nesting depth
    included, which the parser reports as RecursionError)."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidDocument(f"not a JSON document: {exc}") from None
    except RecursionError:
        raise InvalidDocument("not a JSON document: nested too deeply") from None


def _parse_object(data: bytes | str) -> dict[str, Any]:
    obj = _load(data)
    if not isinstance(obj, dict):
        raise InvalidDocument("the document must be a JSON object")
    return obj


def valid_msg_id(value: str) -> bool:
    """A msgId (or segId): 1-128 printable ASCII characters."""
    return bool(_MSG_ID_RE.fullmatch(value))


def split_payload(payload: str, limit: int) -> list[str]:
    """``payload`` in chunks of at most ``limit`` UTF-8 bytes, never cutting a character
    (the payloads of a message's segments, TS 23.554 8.5)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for char in payload:
        width = len(char.encode())
        if current and size + width > limit:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(char)
        size += width
    if current or not chunks:
        chunks.append("".join(current))
    return chunks


def segment_msg_id(msg_id: str, number: int) -> str:
    """The msgId of segment ``number`` of message ``msg_id``: each segment is acknowledged
    on its own, the whole message keeps ``msg_id`` (its segId)."""
    return f"{msg_id}~{number}"


def document_limit(max_payload: int) -> int:
    """The largest document worth parsing for a payload limit: the payload can take six
    bytes per byte in JSON (``\\u00fc`` for one UTF-8 byte pair, escapes of controls), plus
    the header fields. The payload itself is checked exactly once parsed."""
    return 6 * max_payload + 4096


def decode_uplink(data: bytes | str, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Uplink:
    """Decodes one uplink document (REG, DEREG, MSG, MSGRESP, IMDN, SUB, UNSUB)."""
    doc: Uplink = _decode_object(_parse_object(data), max_payload, _UPLINK)
    return doc


def _decode_object(
    obj: dict[str, Any], max_payload: int, table: Mapping[str, Callable[[_Fields, int], Any]]
) -> Any:
    msg_type = obj.get("msgType")
    if msg_type is None:
        raise InvalidDocument("msgType: mandatory field missing")
    if not isinstance(msg_type, str):
        raise InvalidDocument("msgType: wrong type, expected string")
    parse = table.get(msg_type)
    if parse is None:
        raise InvalidDocument(f"msgType: unknown or not allowed here: {msg_type!r}")
    fields = _Fields(obj)
    doc = parse(fields, max_payload)
    fields.done()
    return doc


def _result_resp(kind: str) -> Callable[[_Fields, int], Document]:
    def parse(f: _Fields, max_payload: int) -> Document:
        ue = f.ident("ueSvcId")
        assert ue is not None
        result = f.enum("result", Result, required=True)
        cause = f.get("failureCause", str)
        detail = f.get("failureDetail", str)
        if kind == "REGRESP":
            return RegResp(ue, result, cause, f.integer("lifetime", 0, 1 << 31), detail)
        if kind == "DEREGRESP":
            return DeregResp(ue, result, cause, detail)
        return SubResp(ue, result, cause, unsub=kind == "UNSUBRESP", failure_detail=detail)

    return parse


_ANY: dict[str, Callable[[_Fields, int], Any]] = {
    **_UPLINK,
    "MSGRESP": lambda f, max_payload: _msgresp(f, max_payload, from_server=True),
    "MSGUPDRESP": _msgupdresp,
    "SEGREC": _segrec,
    **{kind: _result_resp(kind) for kind in _DOWNLINK_ONLY},
}


def decode_any(data: bytes | str, *, max_payload: int = 1 << 20) -> Document:
    """Decodes any document of the contract, including the server's answers."""
    return _decode_object(_parse_object(data), max_payload, _ANY)  # type: ignore[no-any-return]


def decode_downlink_list(data: bytes | str) -> list[Document]:
    """Decodes an inbox: a JSON array of downlink documents."""
    items = _load(data)
    if not isinstance(items, list):
        raise InvalidDocument("an inbox is a JSON array")
    return [_decode_object(_require_object(item), 1 << 20, _ANY) for item in items]


def _require_object(item: object) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidDocument("every inbox entry must be a JSON object")
    return item


# ---------------------------------------------------------------------------------------------
# Encoding


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _drop_none(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None}


def to_json(doc: Document) -> dict[str, Any]:
    """The JSON object of a document, without absent optional fields."""
    match doc:
        case Reg():
            return _drop_none(
                {
                    "msgType": "REG",
                    "ueSvcId": doc.ue_svc_id,
                    "lifetime": doc.lifetime,
                    "maxSegSize": doc.max_seg_size,
                    "bcArea": doc.bc_area,
                    "deliveryMode": doc.delivery_mode.value,
                }
            )
        case RegResp():
            return _drop_none(
                {
                    "msgType": "REGRESP",
                    "ueSvcId": doc.ue_svc_id,
                    "result": doc.result.value,
                    "failureCause": doc.failure_cause,
                    "failureDetail": doc.failure_detail,
                    "lifetime": doc.lifetime,
                }
            )
        case Dereg():
            return {"msgType": "DEREG", "ueSvcId": doc.ue_svc_id}
        case DeregResp():
            return _drop_none(
                {
                    "msgType": "DEREGRESP",
                    "ueSvcId": doc.ue_svc_id,
                    "result": doc.result.value,
                    "failureCause": doc.failure_cause,
                    "failureDetail": doc.failure_detail,
                }
            )
        case Msg():
            return _msg_json(doc)
        case MsgResp():
            return _drop_none(
                {
                    "msgType": "MSGRESP",
                    "msgId": doc.msg_id,
                    "result": doc.result.value,
                    "failureCause": doc.failure_cause,
                    "ueSvcId": doc.ue_svc_id,
                    "oriAddr": doc.ori_addr.to_json() if doc.ori_addr else None,
                    "failureDetail": doc.failure_detail,
                }
            )
        case Imdn():
            return _drop_none(
                {
                    "msgType": "IMDN",
                    "oriAddr": doc.ori_addr.to_json(),
                    "destAddr": doc.dest_addr.to_json(),
                    "msgId": doc.msg_id,
                    "delivSt": doc.deliv_st.value,
                    "failureCause": doc.failure_cause,
                }
            )
        case SegRec():
            return {
                "msgType": "SEGREC",
                "oriAddr": doc.ori_addr.to_json(),
                "destAddr": doc.dest_addr.to_json(),
                "segId": doc.seg_id,
                "missingSegs": list(doc.missing),
            }
        case Sub():
            return _drop_none(
                {
                    "msgType": "SUB",
                    "ueSvcId": doc.ue_svc_id,
                    "msgTopics": list(doc.msg_topics),
                    "exprTime": format_time(doc.expr_time) if doc.expr_time else None,
                }
            )
        case Unsub():
            return {"msgType": "UNSUB", "ueSvcId": doc.ue_svc_id, "msgTopics": list(doc.msg_topics)}
        case MsgUpd():
            return _drop_none(
                {
                    "msgType": "MSGUPD",
                    "msgId": doc.msg_id,
                    "oriAddr": doc.ori_addr.to_json(),
                    "action": doc.action.value,
                    "stoAndFwParams": (
                        {"exprTime": format_time(doc.expr_time)} if doc.expr_time else None
                    ),
                }
            )
        case MsgUpdResp():
            return _drop_none(
                {
                    "msgType": "MSGUPDRESP",
                    "msgId": doc.msg_id,
                    "result": doc.result.value,
                    "failureCause": doc.failure_cause,
                    "failureDetail": doc.failure_detail,
                }
            )
        case SubResp():
            return _drop_none(
                {
                    "msgType": "UNSUBRESP" if doc.unsub else "SUBRESP",
                    "ueSvcId": doc.ue_svc_id,
                    "result": doc.result.value,
                    "failureCause": doc.failure_cause,
                    "failureDetail": doc.failure_detail,
                }
            )
    raise TypeError(f"not a document: {doc!r}")


def _msg_json(doc: Msg) -> dict[str, Any]:
    seg = None
    if doc.seg_params is not None:
        seg = _drop_none(
            {
                "segId": doc.seg_params.seg_id,
                "totalSegCount": doc.seg_params.total_seg_count,
                "segNumb": doc.seg_params.seg_numb,
                "lastSegFlag": doc.seg_params.last_seg_flag,
            }
        )
    return _drop_none(
        {
            "msgType": "MSG",
            "msgId": doc.msg_id,
            "oriAddr": doc.ori_addr.to_json(),
            "destAddr": doc.dest_addr.to_json(),
            "rcptAddr": doc.rcpt_addr.to_json() if doc.rcpt_addr else None,
            "appId": doc.app_id,
            "payload": doc.payload,
            "priority": doc.priority.value if doc.priority else None,
            "delivStReqInd": doc.deliv_st_req_ind or None,
            "stoAndFwInd": None if doc.sto_and_fw_ind else False,
            "stoAndFwParams": {"exprTime": format_time(doc.expr_time)} if doc.expr_time else None,
            "segInd": doc.seg_ind or None,
            "segParams": seg,
        }
    )


def encode(doc: Document) -> bytes:
    return json.dumps(to_json(doc), separators=(",", ":")).encode()


def encode_list(docs: list[Document]) -> bytes:
    return json.dumps([to_json(d) for d in docs], separators=(",", ":")).encode()


def failure_response(raw: bytes | str, cause: str, detail: str, sender: str = "") -> Document:
    """The response a failed uplink document gets: the ``*RESP`` matching its ``msgType``
    (``MSGRESP`` when the type cannot be told), naming what identifiers it could read;
    ``sender`` (the UE the transport vouches for) stands in for an unreadable ``ueSvcId``."""
    obj: dict[str, Any] = {}
    try:
        parsed = _load(raw)
        if isinstance(parsed, dict):
            obj = parsed
    except InvalidDocument:
        pass

    def text(key: str) -> str:
        value = obj.get(key)
        return value if isinstance(value, str) else ""

    ue = text("ueSvcId") if valid_id(text("ueSvcId")) else sender
    match obj.get("msgType"):
        case "REG":
            return RegResp(ue, Result.FAILURE, cause, failure_detail=detail)
        case "DEREG":
            return DeregResp(ue, Result.FAILURE, cause, failure_detail=detail)
        case "SUB" | "UNSUB" as kind:
            return SubResp(ue, Result.FAILURE, cause, unsub=kind == "UNSUB", failure_detail=detail)
        case "MSGUPD":
            upd_id = text("msgId") if _MSG_ID_RE.fullmatch(text("msgId")) else ""
            return MsgUpdResp(upd_id, Result.FAILURE, cause, detail)
    msg_id = text("msgId") if _MSG_ID_RE.fullmatch(text("msgId")) else ""
    return MsgResp(msg_id, MsgResult.FAILED, cause, failure_detail=detail)
