"""The MSGin5G JSON header codec (msgin5g.md sections 3 and 4): decoding, encoding, failures."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from msgin5g_common import header as h
from msgin5g_common.errors import Cause, InvalidDocument, PayloadTooLarge

UPLINK_TYPES = ("REG", "DEREG", "MSG", "MSGRESP", "IMDN", "SUB", "UNSUB")
ANSWER_TYPES = ("REGRESP", "DEREGRESP", "SUBRESP", "UNSUBRESP")
ID_CHARSET = "AZaz09._~@:+-"
EXPR = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
UE_A = h.Address(h.AddrType.UE, "ue-a")
UE_B = h.Address(h.AddrType.UE, "ue-b")

# One document of every msgType with every field the contract gives it, in canonical encoding
# (so encoding the decoded document reproduces it exactly).
_FULL: dict[str, dict[str, Any]] = {
    "REG": {
        "msgType": "REG",
        "ueSvcId": "ue-a",
        "lifetime": 3600,
        "maxSegSize": 512,
        "bcArea": "area-1",
        "deliveryMode": "push",
    },
    "DEREG": {"msgType": "DEREG", "ueSvcId": "ue-a"},
    "MSG": {
        "msgType": "MSG",
        "msgId": "0f8e6c1e-msg-1",
        "oriAddr": {"addrType": "UE", "addr": "ue-a"},
        "destAddr": {"addrType": "GROUP", "addr": "group-1"},
        "rcptAddr": {"addrType": "UE", "addr": "ue-b"},
        "appId": "app.1",
        "payload": "hello",
        "priority": "HIGH",
        "delivStReqInd": True,
        "stoAndFwInd": False,
        "stoAndFwParams": {"exprTime": "2030-01-02T03:04:05.678Z"},
        "segInd": True,
        "segParams": {"segId": "seg-1", "totalSegCount": 3, "segNumb": 1, "lastSegFlag": False},
    },
    "MSGRESP": {
        "msgType": "MSGRESP",
        "msgId": "m-1",
        "result": "FAILED",
        "failureCause": "EXPIRED",
        "ueSvcId": "ue-b",
        "oriAddr": {"addrType": "UE", "addr": "ue-a"},
        "failureDetail": "too late",
    },
    "IMDN": {
        "msgType": "IMDN",
        "oriAddr": {"addrType": "UE", "addr": "ue-b"},
        "destAddr": {"addrType": "UE", "addr": "ue-a"},
        "msgId": "m-1",
        "delivSt": "REPT_DELY_FAILED",
        "failureCause": "RECIPIENT_UNREACHABLE",
    },
    "SUB": {
        "msgType": "SUB",
        "ueSvcId": "ue-a",
        "msgTopics": ["news", "sport.live"],
        "exprTime": "2030-01-02T03:04:05.678Z",
    },
    "UNSUB": {"msgType": "UNSUB", "ueSvcId": "ue-a", "msgTopics": ["news", "sport.live"]},
    "REGRESP": {
        "msgType": "REGRESP",
        "ueSvcId": "ue-a",
        "result": "FAILURE",
        "failureCause": "NOT_AUTHORIZED",
        "failureDetail": "no credentials",
        "lifetime": 3600,
    },
    "DEREGRESP": {
        "msgType": "DEREGRESP",
        "ueSvcId": "ue-a",
        "result": "FAILURE",
        "failureCause": "NOT_REGISTERED",
        "failureDetail": "unknown UE",
    },
    "SUBRESP": {
        "msgType": "SUBRESP",
        "ueSvcId": "ue-a",
        "result": "FAILURE",
        "failureCause": "INVALID_REQUEST",
        "failureDetail": "msgTopics[0]: bad",
    },
    "UNSUBRESP": {
        "msgType": "UNSUBRESP",
        "ueSvcId": "ue-a",
        "result": "FAILURE",
        "failureCause": "INVALID_REQUEST",
        "failureDetail": "msgTopics[0]: bad",
    },
}

_EXPECTED: dict[str, h.Document] = {
    "REG": h.Reg("ue-a", 3600, 512, "area-1", h.DeliveryMode.PUSH),
    "DEREG": h.Dereg("ue-a"),
    "MSG": h.Msg(
        msg_id="0f8e6c1e-msg-1",
        ori_addr=UE_A,
        dest_addr=h.Address(h.AddrType.GROUP, "group-1"),
        payload="hello",
        app_id="app.1",
        priority=h.Priority.HIGH,
        deliv_st_req_ind=True,
        sto_and_fw_ind=False,
        expr_time=EXPR,
        seg_ind=True,
        seg_params=h.SegParams("seg-1", 3, 1, False),
        rcpt_addr=UE_B,
    ),
    "MSGRESP": h.MsgResp("m-1", h.MsgResult.FAILED, "EXPIRED", "ue-b", UE_A, "too late"),
    "IMDN": h.Imdn(UE_B, UE_A, "m-1", h.DelivSt.REPT_DELY_FAILED, "RECIPIENT_UNREACHABLE"),
    "SUB": h.Sub("ue-a", ("news", "sport.live"), EXPR),
    "UNSUB": h.Unsub("ue-a", ("news", "sport.live")),
    "REGRESP": h.RegResp("ue-a", h.Result.FAILURE, "NOT_AUTHORIZED", 3600, "no credentials"),
    "DEREGRESP": h.DeregResp("ue-a", h.Result.FAILURE, "NOT_REGISTERED", "unknown UE"),
    "SUBRESP": h.SubResp(
        "ue-a", h.Result.FAILURE, "INVALID_REQUEST", failure_detail="msgTopics[0]: bad"
    ),
    "UNSUBRESP": h.SubResp(
        "ue-a", h.Result.FAILURE, "INVALID_REQUEST", unsub=True, failure_detail="msgTopics[0]: bad"
    ),
}

# Documents with only their mandatory fields (and the defaults the dataclasses give).
_MINIMAL: list[h.Document] = [
    h.Reg("ue-a"),
    h.Msg("m-1", UE_A, UE_B),
    h.MsgResp("m-1", h.MsgResult.ACCEPTED),
    h.Imdn(UE_B, UE_A, "m-1", h.DelivSt.REPT_DELY_SUCCESS),
    h.Sub("ue-a", ("news",)),
    h.Unsub("ue-a", ("news",)),
    h.RegResp("ue-a", h.Result.SUCCESS),
    h.DeregResp("ue-a", h.Result.SUCCESS),
    h.SubResp("ue-a", h.Result.SUCCESS),
    h.SubResp("ue-a", h.Result.SUCCESS, unsub=True),
]

_DELETE = object()


def full(msg_type: str) -> dict[str, Any]:
    """A fresh copy of the fully populated document of ``msg_type``."""
    return copy.deepcopy(_FULL[msg_type])


def changed(msg_type: str, path: str, value: Any = _DELETE) -> dict[str, Any]:
    """The full document of ``msg_type`` with the dotted ``path`` set to ``value`` (or removed)."""
    doc = full(msg_type)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


def lookup(obj: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        obj = obj[key]
    return obj


def decode(raw: dict[str, Any] | str | bytes) -> h.Document:
    """Decodes as the server does (decode_uplink), or as the client does for the answers."""
    if isinstance(raw, dict):
        data = json.dumps(raw)
        if raw.get("msgType") in ANSWER_TYPES:
            return h.decode_any(data)
        return h.decode_uplink(data)
    return h.decode_uplink(raw)


def refused(raw: dict[str, Any] | str | bytes) -> str:
    """The detail of the InvalidDocument that decoding ``raw`` raises."""
    with pytest.raises(InvalidDocument) as info:
        decode(raw)
    assert info.value.cause is Cause.INVALID_REQUEST
    return info.value.detail


def msg_with_payload(payload: str) -> str:
    doc = changed("MSG", "payload", payload)
    return json.dumps(doc, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Decoding and encoding every document


@pytest.mark.parametrize("msg_type", UPLINK_TYPES)
def test_every_uplink_type_decodes_with_every_field(msg_type: str) -> None:
    data = json.dumps(full(msg_type))
    assert h.decode_uplink(data) == _EXPECTED[msg_type]
    assert h.decode_uplink(data.encode()) == _EXPECTED[msg_type]
    assert h.decode_any(data) == _EXPECTED[msg_type]


@pytest.mark.parametrize("msg_type", ANSWER_TYPES)
def test_every_answer_type_decodes_with_every_field_through_decode_any(msg_type: str) -> None:
    assert h.decode_any(json.dumps(full(msg_type))) == _EXPECTED[msg_type]


@pytest.mark.parametrize("msg_type", [*UPLINK_TYPES, *ANSWER_TYPES])
def test_encoding_a_fully_populated_document_reproduces_its_json(msg_type: str) -> None:
    assert h.to_json(_EXPECTED[msg_type]) == _FULL[msg_type]
    assert json.loads(h.encode(_EXPECTED[msg_type])) == _FULL[msg_type]


@pytest.mark.parametrize("doc", [*_EXPECTED.values(), *_MINIMAL], ids=lambda d: type(d).__name__)
def test_documents_round_trip_through_encode_and_decode(doc: h.Document) -> None:
    assert h.decode_any(h.encode(doc)) == doc
    if not isinstance(doc, h.RegResp | h.DeregResp | h.SubResp):
        assert h.decode_uplink(h.encode(doc)) == doc


def test_encode_is_compact_json() -> None:
    assert h.encode(h.Dereg("ue-a")) == b'{"msgType":"DEREG","ueSvcId":"ue-a"}'


def test_minimal_reg_gets_default_lifetime_and_observe_mode() -> None:
    reg = h.decode_uplink('{"msgType":"REG","ueSvcId":"ue-a"}')
    assert reg == h.Reg("ue-a", h.DEFAULT_LIFETIME, None, None, h.DeliveryMode.OBSERVE)
    assert reg == h.Reg("ue-a", 86400)


def test_minimal_msg_gets_contract_defaults_and_encodes_only_mandatory_fields() -> None:
    raw = {
        "msgType": "MSG",
        "msgId": "m-1",
        "oriAddr": {"addrType": "UE", "addr": "ue-a"},
        "destAddr": {"addrType": "UE", "addr": "ue-b"},
    }
    msg = h.decode_uplink(json.dumps(raw))
    assert isinstance(msg, h.Msg)
    assert msg.payload is None
    assert msg.priority is None
    assert msg.deliv_st_req_ind is False
    assert msg.sto_and_fw_ind is True
    assert msg.seg_ind is False
    assert msg.expr_time is None
    assert msg.seg_params is None
    assert msg.rcpt_addr is None
    assert h.to_json(msg) == raw


def test_empty_payload_is_kept_distinct_from_absent_payload() -> None:
    msg = h.decode_uplink(msg_with_payload(""))
    assert isinstance(msg, h.Msg)
    assert msg.payload == ""
    assert h.to_json(msg)["payload"] == ""
    assert h.decode_uplink(h.encode(msg)) == msg


@pytest.mark.parametrize(
    ("raw_value", "decoded", "encoded"),
    [
        pytest.param(_DELETE, True, _DELETE, id="absent-means-true-and-stays-absent"),
        pytest.param(True, True, _DELETE, id="explicit-true-is-the-default"),
        pytest.param(False, False, False, id="explicit-false-round-trips"),
    ],
)
def test_sto_and_fw_ind_defaults_to_true_and_false_round_trips(
    raw_value: Any, decoded: bool, encoded: Any
) -> None:
    msg = decode(changed("MSG", "stoAndFwInd", raw_value))
    assert isinstance(msg, h.Msg)
    assert msg.sto_and_fw_ind is decoded
    assert h.to_json(msg).get("stoAndFwInd", _DELETE) is encoded
    assert h.decode_uplink(h.encode(msg)) == msg


def test_to_json_refuses_what_is_not_a_document() -> None:
    with pytest.raises(TypeError):
        h.to_json(h.Address(h.AddrType.UE, "ue-a"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Envelope errors: JSON, object, msgType


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("{", id="truncated"),
        pytest.param("msgType=REG", id="not-json"),
        pytest.param("{'msgType': 'REG'}", id="single-quotes"),
        pytest.param(b"\xff\xfe\xfd", id="not-utf8"),
    ],
)
def test_input_that_is_not_json_is_refused(raw: str | bytes) -> None:
    assert refused(raw).startswith("not a JSON document")


@pytest.mark.parametrize(
    "raw", ["[]", '[{"msgType":"DEREG","ueSvcId":"ue-a"}]', "1", '"REG"', "null"]
)
def test_json_that_is_not_an_object_is_refused(raw: str) -> None:
    assert refused(raw) == "the document must be a JSON object"


@pytest.mark.parametrize("raw", ["{}", '{"ueSvcId":"ue-a"}', '{"msgType":null,"ueSvcId":"ue-a"}'])
def test_missing_msg_type_is_refused(raw: str) -> None:
    assert refused(raw) == "msgType: mandatory field missing"


@pytest.mark.parametrize("value", [1, True, ["REG"], {"type": "REG"}])
def test_msg_type_that_is_not_a_string_is_refused(value: Any) -> None:
    assert refused({"msgType": value, "ueSvcId": "ue-a"}) == "msgType: wrong type, expected string"


@pytest.mark.parametrize("value", ["FOO", "reg", "", "SEGREC", "SEGCONFIR", " REG"])
def test_unknown_msg_type_is_refused(value: str) -> None:
    assert refused({"msgType": value, "ueSvcId": "ue-a"}).startswith(
        "msgType: unknown or not allowed here"
    )


@pytest.mark.parametrize("msg_type", ANSWER_TYPES)
def test_decode_uplink_refuses_the_servers_answer_types(msg_type: str) -> None:
    with pytest.raises(InvalidDocument) as info:
        h.decode_uplink(json.dumps(full(msg_type)))
    assert info.value.detail == f"msgType: unknown or not allowed here: {msg_type!r}"


# ---------------------------------------------------------------------------------------------
# Field errors


@pytest.mark.parametrize(
    ("msg_type", "path"),
    [
        ("REG", "ueSvcId"),
        ("DEREG", "ueSvcId"),
        ("MSG", "msgId"),
        ("MSG", "oriAddr"),
        ("MSG", "destAddr"),
        ("MSG", "oriAddr.addr"),
        ("MSG", "oriAddr.addrType"),
        ("MSG", "destAddr.addr"),
        ("MSG", "destAddr.addrType"),
        ("MSG", "rcptAddr.addr"),
        ("MSG", "rcptAddr.addrType"),
        ("MSG", "segParams.segId"),
        ("MSGRESP", "msgId"),
        ("MSGRESP", "result"),
        ("MSGRESP", "oriAddr.addr"),
        ("IMDN", "oriAddr"),
        ("IMDN", "destAddr"),
        ("IMDN", "msgId"),
        ("IMDN", "delivSt"),
        ("IMDN", "oriAddr.addrType"),
        ("IMDN", "destAddr.addr"),
        ("SUB", "ueSvcId"),
        ("SUB", "msgTopics"),
        ("UNSUB", "ueSvcId"),
        ("UNSUB", "msgTopics"),
        ("REGRESP", "ueSvcId"),
        ("REGRESP", "result"),
        ("DEREGRESP", "ueSvcId"),
        ("DEREGRESP", "result"),
        ("SUBRESP", "ueSvcId"),
        ("SUBRESP", "result"),
        ("UNSUBRESP", "ueSvcId"),
        ("UNSUBRESP", "result"),
    ],
)
def test_missing_mandatory_field_is_refused_naming_the_field(msg_type: str, path: str) -> None:
    assert refused(changed(msg_type, path)) == f"{path}: mandatory field missing"


@pytest.mark.parametrize(("msg_type", "path"), [("REG", "ueSvcId"), ("MSG", "oriAddr.addr")])
def test_null_mandatory_field_counts_as_missing(msg_type: str, path: str) -> None:
    assert refused(changed(msg_type, path, None)) == f"{path}: mandatory field missing"


@pytest.mark.parametrize(
    ("msg_type", "path", "value", "expected"),
    [
        ("REG", "lifetime", "3600", "integer"),
        ("REG", "lifetime", True, "integer"),
        ("REG", "maxSegSize", 512.0, "integer"),
        ("REG", "ueSvcId", 7, "string"),
        ("REG", "bcArea", {"area": "a"}, "string"),
        ("REG", "deliveryMode", 1, "string"),
        ("DEREG", "ueSvcId", ["ue-a"], "string"),
        ("MSG", "msgId", {}, "string"),
        ("MSG", "payload", {"text": "hi"}, "string"),
        ("MSG", "payload", 5, "string"),
        ("MSG", "appId", ["app"], "string"),
        ("MSG", "priority", 1, "string"),
        ("MSG", "delivStReqInd", 1, "boolean"),
        ("MSG", "stoAndFwInd", "false", "boolean"),
        ("MSG", "segInd", 0, "boolean"),
        ("MSG", "oriAddr", "ue-a", "object"),
        ("MSG", "destAddr", ["UE", "ue-b"], "object"),
        ("MSG", "oriAddr.addr", {}, "string"),
        ("MSG", "oriAddr.addrType", 1, "string"),
        ("MSG", "rcptAddr.addr", True, "string"),
        ("MSG", "stoAndFwParams", "2030-01-01T00:00:00Z", "object"),
        ("MSG", "stoAndFwParams.exprTime", 1893456000, "string"),
        ("MSG", "segParams", True, "object"),
        ("MSG", "segParams.segId", 1, "string"),
        ("MSG", "segParams.totalSegCount", True, "integer"),
        ("MSG", "segParams.segNumb", "1", "integer"),
        ("MSG", "segParams.lastSegFlag", 1, "boolean"),
        ("MSGRESP", "result", True, "string"),
        ("MSGRESP", "failureCause", {}, "string"),
        ("MSGRESP", "failureDetail", 1, "string"),
        ("MSGRESP", "ueSvcId", {"id": "ue-b"}, "string"),
        ("IMDN", "delivSt", {}, "string"),
        ("IMDN", "failureCause", False, "string"),
        ("SUB", "msgTopics", "news", "array"),
        ("SUB", "msgTopics", {"news": True}, "array"),
        ("SUB", "exprTime", True, "string"),
        ("UNSUB", "msgTopics", "news", "array"),
        ("REGRESP", "lifetime", "3600", "integer"),
        ("REGRESP", "result", 1, "string"),
        ("SUBRESP", "failureDetail", [], "string"),
    ],
)
def test_wrong_type_is_refused_naming_field_and_expected_type(
    msg_type: str, path: str, value: Any, expected: str
) -> None:
    assert refused(changed(msg_type, path, value)) == f"{path}: wrong type, expected {expected}"


@pytest.mark.parametrize(
    ("msg_type", "path"),
    [
        *[(t, "extra") for t in (*UPLINK_TYPES, *ANSWER_TYPES)],
        ("REG", "msgId"),
        ("DEREG", "lifetime"),
        ("SUB", "payload"),
        ("UNSUB", "exprTime"),
        ("MSG", "ueSvcId"),
        ("MSG", "msgtype"),
        ("DEREGRESP", "lifetime"),
        ("MSG", "oriAddr.extra"),
        ("MSG", "destAddr.extra"),
        ("MSG", "rcptAddr.extra"),
        ("MSG", "stoAndFwParams.extra"),
        ("MSG", "segParams.extra"),
        ("MSGRESP", "oriAddr.extra"),
        ("IMDN", "destAddr.extra"),
    ],
)
def test_unknown_field_is_refused_naming_it(msg_type: str, path: str) -> None:
    assert refused(changed(msg_type, path, 1)) == f"{path}: unknown field"


def test_unknown_field_is_refused_even_when_null() -> None:
    assert refused(changed("DEREG", "extra", None)) == "extra: unknown field"


_ID_FIELDS = [
    ("REG", "ueSvcId"),
    ("REG", "bcArea"),
    ("DEREG", "ueSvcId"),
    ("MSG", "oriAddr.addr"),
    ("MSG", "destAddr.addr"),
    ("MSG", "rcptAddr.addr"),
    ("MSGRESP", "ueSvcId"),
    ("MSGRESP", "oriAddr.addr"),
    ("IMDN", "oriAddr.addr"),
    ("IMDN", "destAddr.addr"),
    ("SUB", "ueSvcId"),
    ("UNSUB", "ueSvcId"),
    ("REGRESP", "ueSvcId"),
]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("ue/1", id="slash"),
        pytest.param("ue#1", id="hash"),
        pytest.param("ue 1", id="space"),
        pytest.param("ue-\u00e9", id="non-ascii"),
        pytest.param("ue-1\n", id="trailing-newline"),
    ],
)
@pytest.mark.parametrize(("msg_type", "path"), _ID_FIELDS)
def test_bad_identifier_is_refused(msg_type: str, path: str, value: str) -> None:
    assert (
        refused(changed(msg_type, path, value))
        == f"{path}: must be 1-128 characters of [A-Za-z0-9._~@:+-]"
    )


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a" * 128, id="128-chars"),
        pytest.param("ue+1", id="plus"),
        pytest.param(ID_CHARSET, id="whole-charset"),
        pytest.param("1", id="one-char"),
    ],
)
@pytest.mark.parametrize(("msg_type", "path"), _ID_FIELDS)
def test_good_identifier_is_accepted_and_round_trips(msg_type: str, path: str, value: str) -> None:
    doc = decode(changed(msg_type, path, value))
    assert lookup(h.to_json(doc), path) == value


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("ue-1", True),
        ("ue+1", True),
        ("a" * 128, True),
        (ID_CHARSET, True),
        ("", False),
        ("a" * 129, False),
        ("ue/1", False),
        ("ue#1", False),
        ("ue 1", False),
        ("ue-1\n", False),
    ],
)
def test_valid_id_follows_the_identifier_charset(value: str, valid: bool) -> None:
    assert h.valid_id(value) is valid


@pytest.mark.parametrize("msg_type", ["MSG", "MSGRESP", "IMDN"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("m" * 129, id="129-chars"),
        pytest.param("m 1", id="space"),
        pytest.param("m-\u00e9", id="non-ascii"),
        pytest.param("m\t1", id="control"),
    ],
)
def test_bad_msg_id_is_refused(msg_type: str, value: str) -> None:
    raw = changed(msg_type, "msgId", value)
    if msg_type == "MSGRESP":
        raw["result"] = "DELIVERED"  # a FAILED answer may carry an empty msgId (tested below)
    detail = refused(raw)
    assert detail == "msgId: must be 1-128 printable ASCII characters"


@pytest.mark.parametrize(
    "value", ["m" * 128, "a/b#c?d", "!~", "550e8400-e29b-41d4-a716-446655440000"]
)
def test_msg_id_accepts_any_printable_ascii(value: str) -> None:
    msg = decode(changed("MSG", "msgId", value))
    assert isinstance(msg, h.Msg)
    assert msg.msg_id == value


@pytest.mark.parametrize(("value", "ok"), [("", False), ("a" * 129, False), ("a" * 128, True)])
def test_app_id_must_be_1_to_128_characters(value: str, ok: bool) -> None:
    raw = changed("MSG", "appId", value)
    if ok:
        assert lookup(h.to_json(decode(raw)), "appId") == value
    else:
        assert refused(raw) == "appId: must be 1-128 characters"


@pytest.mark.parametrize(
    ("msg_type", "path", "value"),
    [
        ("REG", "deliveryMode", "OBSERVE"),
        ("REG", "deliveryMode", "poll"),
        ("MSG", "priority", "high"),
        ("MSG", "priority", "URGENT"),
        ("MSG", "priority", ""),
        ("MSG", "oriAddr.addrType", "ue"),
        ("MSG", "destAddr.addrType", "NODE"),
        ("MSG", "rcptAddr.addrType", "UNSPECIFIED"),
        ("MSGRESP", "result", "SUCCESS"),
        ("MSGRESP", "result", "accepted"),
        ("IMDN", "delivSt", "DELIVERED"),
        ("IMDN", "delivSt", "REPT_DELY_SUCCESS "),
        ("REGRESP", "result", "DELIVERED"),
        ("SUBRESP", "result", "success"),
    ],
)
def test_bad_enum_value_is_refused_listing_the_allowed_values(
    msg_type: str, path: str, value: str
) -> None:
    assert refused(changed(msg_type, path, value)).startswith(f"{path}: must be one of ")


def test_bad_priority_detail_lists_every_priority() -> None:
    assert refused(changed("MSG", "priority", "URGENT")) == (
        "priority: must be one of HIGH, MIDDLE, LOW"
    )


@pytest.mark.parametrize(
    ("msg_type", "path", "value", "attr", "expected"),
    [
        *[("MSG", "priority", p.value, "priority", p) for p in h.Priority],
        *[
            ("MSG", "destAddr.addrType", a.value, "dest_addr", h.Address(a, "group-1"))
            for a in h.AddrType
        ],
        *[("MSGRESP", "result", r.value, "result", r) for r in h.MsgResult],
        *[("IMDN", "delivSt", s.value, "deliv_st", s) for s in h.DelivSt],
        *[("REG", "deliveryMode", m.value, "delivery_mode", m) for m in h.DeliveryMode],
        *[("REGRESP", "result", r.value, "result", r) for r in h.Result],
    ],
)
def test_every_enum_value_is_accepted(
    msg_type: str, path: str, value: str, attr: str, expected: Any
) -> None:
    doc = decode(changed(msg_type, path, value))
    assert getattr(doc, attr) == expected
    assert lookup(h.to_json(doc), path) == value


_RANGES = [
    ("REG", "lifetime", 1, 10 * 365 * 86400),
    ("REG", "maxSegSize", 16, 1 << 20),
    ("MSG", "segParams.totalSegCount", 1, 65535),
    ("MSG", "segParams.segNumb", 1, 65535),
    ("REGRESP", "lifetime", 0, 1 << 31),
]


@pytest.mark.parametrize(("msg_type", "path", "low", "high"), _RANGES)
def test_range_limits_are_inclusive(msg_type: str, path: str, low: int, high: int) -> None:
    for value in (low, high):
        assert lookup(h.to_json(decode(changed(msg_type, path, value))), path) == value


@pytest.mark.parametrize(("msg_type", "path", "low", "high"), _RANGES)
def test_values_outside_the_range_are_refused(
    msg_type: str, path: str, low: int, high: int
) -> None:
    for value in (low - 1, high + 1, -(10**20), 10**20):
        detail = refused(changed(msg_type, path, value))
        assert detail == f"{path}: must be between {low} and {high}"


_TIME_FIELDS = [("MSG", "stoAndFwParams.exprTime"), ("SUB", "exprTime")]


@pytest.mark.parametrize(
    "value", ["tomorrow", "", "2030-13-01T00:00:00Z", "2030-01-01T25:00:00Z", "1893456000"]
)
@pytest.mark.parametrize(("msg_type", "path"), _TIME_FIELDS)
def test_expr_time_that_is_not_rfc3339_is_refused(msg_type: str, path: str, value: str) -> None:
    assert refused(changed(msg_type, path, value)) == f"{path}: not an RFC 3339 date-time"


@pytest.mark.parametrize("value", ["2030-01-01T00:00:00", "2030-01-01", "2030-01-01T00:00:00.123"])
@pytest.mark.parametrize(("msg_type", "path"), _TIME_FIELDS)
def test_expr_time_without_time_zone_is_refused(msg_type: str, path: str, value: str) -> None:
    detail = refused(changed(msg_type, path, value))
    assert detail == f"{path}: RFC 3339 date-time needs a time zone"


_NEW_YEAR = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2030-01-01T00:00:00Z", _NEW_YEAR),
        ("2030-01-01T00:00:00z", _NEW_YEAR),
        ("2030-01-01T00:00:00+00:00", _NEW_YEAR),
        ("2030-01-01T02:00:00+02:00", _NEW_YEAR),
        ("2029-12-31T19:00:00-05:00", _NEW_YEAR),
        ("2030-01-01T00:00:00.250Z", _NEW_YEAR + timedelta(milliseconds=250)),
    ],
)
@pytest.mark.parametrize(("msg_type", "path"), _TIME_FIELDS)
def test_expr_time_with_time_zone_is_accepted_as_utc(
    msg_type: str, path: str, value: str, expected: datetime
) -> None:
    doc = decode(changed(msg_type, path, value))
    assert isinstance(doc, h.Msg | h.Sub)
    assert doc.expr_time == expected
    assert doc.expr_time is not None
    assert doc.expr_time.utcoffset() == timedelta(0)
    assert lookup(h.to_json(doc), path) == h.format_time(expected)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (_NEW_YEAR, "2030-01-01T00:00:00.000Z"),
        (datetime(2030, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), "2030-01-01T00:00:00.000Z"),
        (EXPR, "2030-01-02T03:04:05.678Z"),
    ],
)
def test_times_are_encoded_in_utc_with_milliseconds_and_z(value: datetime, text: str) -> None:
    assert h.format_time(value) == text


def test_seg_ind_true_without_seg_params_is_refused() -> None:
    assert refused(changed("MSG", "segParams")) == "segParams: mandatory when segInd is true"


@pytest.mark.parametrize("msg_type", ["SUB", "UNSUB"])
@pytest.mark.parametrize(
    ("topics", "field"),
    [
        pytest.param([], "msgTopics", id="empty-list"),
        pytest.param([1], "msgTopics[0]", id="number"),
        pytest.param([None], "msgTopics[0]", id="null"),
        pytest.param([["news"]], "msgTopics[0]", id="nested-list"),
        pytest.param(["news", ""], "msgTopics[1]", id="empty-topic"),
        pytest.param(["news", "sport/live"], "msgTopics[1]", id="slash"),
        pytest.param(["news/#"], "msgTopics[0]", id="wildcard"),
        pytest.param(["a" * 129], "msgTopics[0]", id="129-chars"),
    ],
)
def test_bad_msg_topics_are_refused_naming_the_item(
    msg_type: str, topics: list[Any], field: str
) -> None:
    assert refused(changed(msg_type, "msgTopics", topics)).startswith(f"{field}: ")


# ---------------------------------------------------------------------------------------------
# Payload size


_WIDTHS = pytest.mark.parametrize(
    "char",
    [
        pytest.param("a", id="1-byte"),
        pytest.param("\u00e9", id="2-byte"),
        pytest.param("\u20ac", id="3-byte"),
        pytest.param("\U0001f600", id="4-byte"),
    ],
)


def utf8_payload(char: str, size: int) -> str:
    """``size`` UTF-8 bytes of ``char`` (made up with ASCII where ``char`` does not divide)."""
    width = len(char.encode())
    payload = char * (size // width) + "a" * (size % width)
    assert len(payload.encode()) == size
    return payload


@_WIDTHS
def test_payload_of_exactly_the_maximum_utf8_bytes_is_accepted(char: str) -> None:
    payload = utf8_payload(char, h.DEFAULT_MAX_PAYLOAD)
    for data in (msg_with_payload(payload), msg_with_payload(payload).encode()):
        msg = h.decode_uplink(data)
        assert isinstance(msg, h.Msg)
        assert msg.payload == payload


@_WIDTHS
def test_payload_one_utf8_byte_over_the_maximum_is_too_large(char: str) -> None:
    payload = utf8_payload(char, h.DEFAULT_MAX_PAYLOAD) + "a"
    with pytest.raises(PayloadTooLarge) as info:
        h.decode_uplink(msg_with_payload(payload))
    assert info.value.cause is Cause.PAYLOAD_TOO_LARGE
    assert not isinstance(info.value, InvalidDocument)
    assert info.value.detail == f"payload: {h.DEFAULT_MAX_PAYLOAD + 1} bytes, maximum 2048"


def test_payload_limit_counts_utf8_bytes_not_characters() -> None:
    payload = "\u00e9" * (h.DEFAULT_MAX_PAYLOAD // 2 + 1)  # 1025 characters, 2050 bytes
    assert len(payload) < h.DEFAULT_MAX_PAYLOAD
    with pytest.raises(PayloadTooLarge):
        h.decode_uplink(msg_with_payload(payload))


def test_escaped_multibyte_payload_counts_decoded_utf8_bytes() -> None:
    # json.dumps escapes to \u00e9 (6 ASCII bytes each): the limit is on the decoded payload.
    payload = "\u00e9" * (h.DEFAULT_MAX_PAYLOAD // 2)
    data = json.dumps(changed("MSG", "payload", payload))
    assert "\\u00e9" in data
    assert h.decode_uplink(data) == h.decode_uplink(msg_with_payload(payload))
    with pytest.raises(PayloadTooLarge):
        h.decode_uplink(json.dumps(changed("MSG", "payload", payload + "a")))


def test_max_payload_is_configurable() -> None:
    assert isinstance(h.decode_uplink(msg_with_payload("\u00e9" * 5), max_payload=10), h.Msg)
    with pytest.raises(PayloadTooLarge):
        h.decode_uplink(msg_with_payload("\u00e9" * 5 + "a"), max_payload=10)


def test_decode_any_has_a_larger_default_payload_limit_than_decode_uplink() -> None:
    data = msg_with_payload("a" * (4 * h.DEFAULT_MAX_PAYLOAD))
    with pytest.raises(PayloadTooLarge):
        h.decode_uplink(data)
    assert isinstance(h.decode_any(data), h.Msg)
    with pytest.raises(PayloadTooLarge):
        h.decode_any(data, max_payload=h.DEFAULT_MAX_PAYLOAD)


# ---------------------------------------------------------------------------------------------
# Inbox lists


def test_downlink_list_decodes_every_entry_in_order() -> None:
    docs: list[h.Document] = [_EXPECTED["MSG"], _EXPECTED["IMDN"], _EXPECTED["REGRESP"]]
    assert h.decode_downlink_list(h.encode_list(docs)) == docs
    assert h.decode_downlink_list(b"[]") == []


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("[", "not a JSON document"),
        ('{"msgType":"MSG"}', "an inbox is a JSON array"),
        ('[{"msgType":"DEREG","ueSvcId":"ue-a"}, 1]', "every inbox entry must be a JSON object"),
        ('[{"msgType":"DEREG"}]', "ueSvcId: mandatory field missing"),
    ],
)
def test_bad_downlink_list_is_refused(raw: str, detail: str) -> None:
    with pytest.raises(InvalidDocument) as info:
        h.decode_downlink_list(raw)
    assert info.value.detail.startswith(detail)


# ---------------------------------------------------------------------------------------------
# failure_response and sender_of

_CAUSE = "INVALID_REQUEST"
_DETAIL = "something: wrong"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            '{"msgType":"REG","ueSvcId":"ue-a","lifetime":"x"}',
            h.RegResp("ue-a", h.Result.FAILURE, _CAUSE, failure_detail=_DETAIL),
            id="REG",
        ),
        pytest.param(
            '{"msgType":"DEREG","ueSvcId":"ue-a","extra":1}',
            h.DeregResp("ue-a", h.Result.FAILURE, _CAUSE, failure_detail=_DETAIL),
            id="DEREG",
        ),
        pytest.param(
            '{"msgType":"SUB","ueSvcId":"ue-a","msgTopics":[]}',
            h.SubResp("ue-a", h.Result.FAILURE, _CAUSE, unsub=False, failure_detail=_DETAIL),
            id="SUB",
        ),
        pytest.param(
            '{"msgType":"UNSUB","ueSvcId":"ue-a"}',
            h.SubResp("ue-a", h.Result.FAILURE, _CAUSE, unsub=True, failure_detail=_DETAIL),
            id="UNSUB",
        ),
        pytest.param(
            '{"msgType":"MSG","msgId":"m-1"}',
            h.MsgResp("m-1", h.MsgResult.FAILED, _CAUSE, failure_detail=_DETAIL),
            id="MSG",
        ),
        pytest.param(
            '{"msgType":"MSGRESP","msgId":"m-1","result":"NOPE"}',
            h.MsgResp("m-1", h.MsgResult.FAILED, _CAUSE, failure_detail=_DETAIL),
            id="MSGRESP",
        ),
        pytest.param(
            '{"msgType":"IMDN","msgId":"m-1"}',
            h.MsgResp("m-1", h.MsgResult.FAILED, _CAUSE, failure_detail=_DETAIL),
            id="IMDN",
        ),
        pytest.param(
            '{"msgType":"REGRESP","ueSvcId":"ue-a","msgId":"m-1"}',
            h.MsgResp("m-1", h.MsgResult.FAILED, _CAUSE, failure_detail=_DETAIL),
            id="answer-type-gets-MSGRESP",
        ),
        pytest.param(
            '{"msgType":5,"msgId":"m-1"}',
            h.MsgResp("m-1", h.MsgResult.FAILED, _CAUSE, failure_detail=_DETAIL),
            id="msgType-not-a-string",
        ),
    ],
)
def test_failure_response_answers_with_the_matching_resp_type(
    raw: str, expected: h.Document
) -> None:
    assert h.failure_response(raw, _CAUSE, _DETAIL) == expected
    assert h.failure_response(raw.encode(), _CAUSE, _DETAIL) == expected
    # The document's own readable ueSvcId wins over the transport's sender.
    assert h.failure_response(raw, _CAUSE, _DETAIL, sender="ue-x") == expected
    assert h.decode_any(h.encode(expected)) == expected


@pytest.mark.parametrize("msg_type", ["REG", "DEREG", "SUB", "UNSUB"])
@pytest.mark.parametrize(
    "ue_svc_id",
    [
        pytest.param(_DELETE, id="absent"),
        pytest.param(5, id="not-a-string"),
        pytest.param("", id="empty"),
        pytest.param("ue/1", id="bad-charset"),
        pytest.param("a" * 129, id="too-long"),
    ],
)
def test_failure_response_names_the_transport_sender_for_an_unreadable_ue_svc_id(
    msg_type: str, ue_svc_id: Any
) -> None:
    raw = json.dumps(changed(msg_type, "ueSvcId", ue_svc_id))
    with_sender = h.failure_response(raw, _CAUSE, _DETAIL, sender="ue-x")
    assert isinstance(with_sender, h.RegResp | h.DeregResp | h.SubResp)
    assert with_sender.ue_svc_id == "ue-x"
    assert h.to_json(with_sender)["msgType"] == f"{msg_type}RESP"
    assert h.decode_any(h.encode(with_sender)) == with_sender
    without_sender = h.failure_response(raw, _CAUSE, _DETAIL)
    assert isinstance(without_sender, h.RegResp | h.DeregResp | h.SubResp)
    assert without_sender.ue_svc_id == ""


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe\xfd", "not json", "", "[1,2]", '"MSG"', "{}", '{"msgType":"MSG","msgId":7}'],
)
def test_failure_response_to_garbage_is_a_failed_msgresp_without_msg_id(raw: str | bytes) -> None:
    response = h.failure_response(raw, "PAYLOAD_TOO_LARGE", _DETAIL, sender="ue-x")
    assert response == h.MsgResp(
        "", h.MsgResult.FAILED, "PAYLOAD_TOO_LARGE", failure_detail=_DETAIL
    )
    # The client library can read it: an empty msgId is allowed in a FAILED MSGRESP.
    assert h.decode_any(h.encode(response)) == response


@pytest.mark.parametrize("result", [r.value for r in h.MsgResult if r is not h.MsgResult.FAILED])
def test_empty_msg_id_is_allowed_only_in_a_failed_msgresp(result: str) -> None:
    raw = {"msgType": "MSGRESP", "msgId": "", "result": result}
    assert refused(raw) == "msgId: must be 1-128 printable ASCII characters"
    failed = h.decode_any(json.dumps({**raw, "result": "FAILED"}))
    assert failed == h.MsgResp("", h.MsgResult.FAILED)
    assert refused({**raw, "result": "FAILED", "msgId": "m 1"}).startswith("msgId: must be")


@pytest.mark.parametrize(
    ("msg_type", "sender"),
    [
        ("REG", "ue-a"),
        ("DEREG", "ue-a"),
        ("MSG", "ue-a"),
        ("MSGRESP", "ue-b"),  # the acknowledging UE, not the original sender in oriAddr
        ("IMDN", "ue-b"),  # the reporter
        ("SUB", "ue-a"),
        ("UNSUB", "ue-a"),
    ],
)
def test_sender_of_names_the_ue_the_document_names(msg_type: str, sender: str) -> None:
    doc = h.decode_uplink(json.dumps(full(msg_type)))
    assert h.sender_of(doc) == sender


def test_sender_of_msgresp_without_ue_svc_id_is_refused() -> None:
    doc = h.decode_uplink(json.dumps(changed("MSGRESP", "ueSvcId")))
    with pytest.raises(InvalidDocument) as info:
        h.sender_of(doc)
    assert info.value.detail == "ueSvcId: mandatory in an acknowledgement"


# ---------------------------------------------------------------------------------------------
# Hostile and broken input found by review: each once escaped the InvalidDocument contract

_DEEP = '{"msgType":"MSG","msgId":"m-1","x":' + "[" * 1500 + "]" * 1500 + "}"


def test_deeply_nested_document_is_refused_as_invalid() -> None:
    assert len(_DEEP) < h.DEFAULT_MAX_PAYLOAD + 4096  # within what the edges let through
    refused(_DEEP)


def test_failure_response_to_deeply_nested_document_is_a_failed_msgresp() -> None:
    # Unparseable, so no msgId can be read back: the answer says so with an empty one.
    assert h.failure_response(_DEEP, _CAUSE, _DETAIL) == h.MsgResp(
        "", h.MsgResult.FAILED, _CAUSE, failure_detail=_DETAIL
    )


@pytest.mark.parametrize(
    ("msg_type", "path"),
    [
        ("MSG", "payload"),
        ("MSG", "appId"),
        ("MSG", "segParams.segId"),
        ("MSGRESP", "failureCause"),
    ],
)
def test_lone_surrogate_in_a_text_field_is_refused_as_invalid(msg_type: str, path: str) -> None:
    refused(changed(msg_type, path, "ok\ud800"))


@pytest.mark.parametrize(
    "msg_id",
    [
        pytest.param("m 1", id="space"),
        pytest.param("m" * 129, id="129-chars"),
        pytest.param("m-\u00e9", id="non-ascii"),
    ],
)
def test_failure_response_to_an_invalid_msg_id_is_decodable_by_the_client(msg_id: str) -> None:
    raw = json.dumps(changed("MSG", "msgId", msg_id))
    response = h.failure_response(raw, _CAUSE, _DETAIL, sender="ue-a")
    assert h.decode_any(h.encode(response)) == response
