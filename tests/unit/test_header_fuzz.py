"""Property-based tests (hypothesis) of the MSGin5G header codec: whatever a device sends, the
decoder answers with a document or with a protocol error (Msgin5gError, which the edges turn
into a 4.xx or a response document), never with another exception; and every document the
server can build survives an encode/decode round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgin5g_common import aggregate
from msgin5g_common import header as h
from msgin5g_common.errors import Msgin5gError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.from_regex(r"[A-Za-z0-9._~@:+\-]{1,20}", fullmatch=True)
texts = st.text(max_size=40)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)
MSG_TYPES = ["REG", "DEREG", "MSG", "MSGRESP", "IMDN", "SEGREC", "MSGUPD", "SUB", "UNSUB"]
FIELDS = [
    "msgType", "ueSvcId", "lifetime", "maxSegSize", "bcArea", "deliveryMode", "msgId",
    "oriAddr", "destAddr", "payload", "appId", "priority", "delivStReqInd", "stoAndFwInd",
    "stoAndFwParams", "segInd", "segParams", "result", "failureCause", "delivSt", "msgTopics",
    "exprTime", "action", "segId", "missing",
]  # fmt: skip
addresses = st.fixed_dictionaries(
    {"addrType": st.sampled_from(["UE", "AS", "GROUP", "TOPIC", "AREA", "X"]) | texts},
    optional={"addr": ids | json_values},
)
# Objects that look like documents: the right keys, values right or wrong.
documents = st.fixed_dictionaries(
    {"msgType": st.sampled_from(MSG_TYPES) | texts},
    optional={
        name: (addresses if name.endswith("Addr") else (ids | json_values))
        for name in FIELDS
        if name != "msgType"
    },
)


def decodes_or_refuses(data: bytes | str) -> h.Document | None:
    try:
        return h.decode_uplink(data)
    except Msgin5gError:
        return None


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_document_or_a_protocol_error(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(json_values)
def test_any_json_decodes_to_a_document_or_a_protocol_error(value: Any) -> None:
    decodes_or_refuses(json.dumps(value))


@FUZZ
@given(documents)
def test_document_shaped_objects_decode_or_are_refused_and_decoded_ones_round_trip(
    doc: dict[str, Any],
) -> None:
    decoded = decodes_or_refuses(json.dumps(doc))
    if decoded is not None:
        assert h.decode_uplink(h.encode(decoded)) == decoded


@FUZZ
@given(st.binary(max_size=400))
def test_aggregated_uplink_splits_or_refuses(data: bytes) -> None:
    try:
        items = aggregate.split_uplink(data, 4096)
    except Msgin5gError:
        return
    if items is not None:
        for item in items:
            decodes_or_refuses(item)


@FUZZ
@given(st.binary(max_size=300))
def test_failure_responses_are_built_for_anything(data: bytes) -> None:
    doc = h.failure_response(data, "INVALID_REQUEST", "fuzz")
    json.loads(h.encode(doc))


expiry = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
messages = st.builds(
    h.Msg,
    msg_id=ids,
    ori_addr=st.builds(h.Address, st.just(h.AddrType.UE), ids),
    dest_addr=st.builds(h.Address, st.sampled_from(list(h.AddrType)), ids),
    payload=st.none() | st.text(max_size=200),
    app_id=st.none() | ids,
    priority=st.none() | st.sampled_from(list(h.Priority)),
    deliv_st_req_ind=st.booleans(),
    sto_and_fw_ind=st.booleans(),
    expr_time=st.none() | expiry,
)


@FUZZ
@given(messages)
def test_every_valid_msg_round_trips(msg: h.Msg) -> None:
    try:
        decoded = h.decode_uplink(h.encode(msg))
    except Msgin5gError:
        # Text the contract refuses (lone surrogates, control characters) is refused on the
        # way in: never a crash.
        return
    assert decoded == msg
