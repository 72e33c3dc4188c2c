"""End-to-end: the TS 29.538 AS API takes exactly the documents its schemas describe, and
answers only what its OpenAPI document declares, on the running system with OAuth2 on.

For every request schema the API serves (ASRegistration, ASMessageDelivery,
DeliveryStatusReport, TopicSubscription on both topic paths), hypothesis-jsonschema
generates documents from the very schema the registry validates with (``spec.schema``):

1. valid documents, whose identity members alone are set to the client's own AS so that
   authorization passes, are never refused as INVALID_MSG_FORMAT and never get a 5xx; every
   answer has a status the operation documents in the live ``/openapi.json``, a 2xx body
   valid by the operation's response schema, and an error body that is a ProblemDetails
   whose ``status`` is the HTTP status. Where the outcome is decidable from the document
   (a message to a registered UE, a registration, topics with valid names) the exact answer
   is asserted, each semantic refusal with its cause and member;
2. valid documents broken on purpose (a required member dropped, a member of the wrong JSON
   type, any JSON value as the whole body) are judged by jsonschema's own Draft 4 validator
   with the registry's format checker: a schema-invalid one gets 400 INVALID_MSG_FORMAT with
   the offending member in invalidParams, a schema-valid one never INVALID_MSG_FORMAT;
3. bodies that are not JSON documents (another media type, broken or non-UTF-8 JSON, NaN,
   lone surrogates, over MSGIN5G_HTTP_MAX_BODY declared or chunked) get 415, 400 or 413.

Hypothesis with async tests: pytest-asyncio (1.x, auto mode) collects an ``async def``
wrapped by ``@given`` as its AsyncHypothesisTest item, which replaces hypothesis'
``inner_test`` by a function that runs each example's coroutine to completion on the
test's loop runner. That is the session loop here (``asyncio_default_test_loop_scope``), the
loop the module-scoped system, HTTP client and MQTT UE were made on, so one
``httpx.AsyncClient`` serves every example. Every fixture the properties use is
module-scoped (no function_scoped_fixture health check), and examples are drawn inside the
test with ``st.data()`` (strategies depend on the parametrized operation).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis_jsonschema import from_schema
from jsonschema import Draft4Validator

from msgin5g_client import MqttUe
from msgin5g_common import header as h
from msgin5g_registry import spec
from tests.conftest import new_ue_id
from tests.e2e.as_support import OWN_AS, WAIT, AppServer, System, system_fixture, token

pytestmark = pytest.mark.e2e

# No rate limit: the properties send a few hundred requests as fast as they can. Generated
# segments (segInd) of THE_AS mostly never complete: no cap on the messages it may have
# under reassembly at once (8 by default, then OVERLOADED).
system = system_fixture(MSGIN5G_AS_RATE_LIMIT="0", MSGIN5G_MAX_REASSEMBLIES="1000000")

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ASREG = "/msgs-asregistration/v1"
DELIVERY = "/msgs-msgdelivery/v1"
TOPICS = "/msgs-topiclistevent/v1"
PROBLEM_JSON = "application/problem+json"
MAX_BODY = 65536  # MSGIN5G_HTTP_MAX_BODY's default
MAX_PAYLOAD = 2048  # MSGIN5G_MAX_PAYLOAD's default
MAX_ID = 256  # as_api.MAX_ID: the longest appId of a registration the registry keeps

# The AS the registration property registers again and again, and the AS of every other
# request (registered once, with a real application server as its targetUri).
REG_AS = OWN_AS[0]
THE_AS = OWN_AS[1]
AS_ADDR = {"addrType": "AS", "addr": THE_AS}


def _as_svc_id(doc: dict[str, Any]) -> None:
    doc["asSvcId"] = REG_AS


def _ori_addr(doc: dict[str, Any]) -> None:
    doc["oriAddr"] = dict(AS_ADDR)


@dataclass(frozen=True)
class Operation:
    name: str
    path: str
    request: str
    # The 2xx answer and the schema of its body (None: no body).
    ok: int
    answer: str | None
    # Sets the document's identity members to the client's own AS.
    identity: Callable[[dict[str, Any]], None]


OPERATIONS = [
    Operation(
        "registrations",
        f"{ASREG}/registrations",
        "ASRegistration",
        201,
        "ASRegistrationAck",
        _as_svc_id,
    ),
    Operation(
        "deliver-as-message",
        f"{DELIVERY}/deliver-as-message",
        "ASMessageDelivery",
        200,
        "MessageDeliveryAck",
        _ori_addr,
    ),
    Operation(
        "deliver-report",
        f"{DELIVERY}/deliver-report",
        "DeliveryStatusReport",
        200,
        "MessageDeliveryAck",
        _ori_addr,
    ),
    Operation(
        "request-topic-subscription",
        f"{TOPICS}/request-topic-subscription",
        "TopicSubscription",
        200,
        "TopicSubscription",
        _ori_addr,
    ),
    Operation(
        "request-topic-unsubscription",
        f"{TOPICS}/request-topic-unsubscription",
        "TopicSubscription",
        204,
        None,
        _ori_addr,
    ),
]
BY_NAME = {op.name: op for op in OPERATIONS}
each_operation = pytest.mark.parametrize("op", OPERATIONS, ids=[op.name for op in OPERATIONS])


# --- the system under test ------------------------------------------------------------------


@dataclass
class Api:
    http: httpx.AsyncClient
    # Each operation's documented statuses, from the live OpenAPI document.
    documented: dict[str, set[int]]
    ue: MqttUe

    async def post(self, op: Operation, doc: Any) -> httpx.Response:
        body = json.dumps(doc, allow_nan=False).encode()
        return await self.http.post(
            op.path, content=body, headers={"Content-Type": "application/json"}
        )


@pytest_asyncio.fixture(scope="module")
async def target() -> AsyncIterator[AppServer]:
    """THE_AS's application server (topic messages may reach it)."""
    server = AppServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest_asyncio.fixture(scope="module")
async def api(system: System, target: AppServer) -> AsyncIterator[Api]:
    """The module's one HTTP client, holding app-1's token, with THE_AS registered and a UE
    registered over MQTT."""
    async with httpx.AsyncClient(base_url=system.url, timeout=WAIT) as http:
        http.headers["Authorization"] = f"Bearer {await token(http)}"
        registered = await http.post(
            f"{ASREG}/registrations", json={"asSvcId": THE_AS, "targetUri": target.url}
        )
        assert registered.status_code == 201, registered.text
        openapi = (await http.get("/openapi.json")).json()
        documented = {
            op.name: {int(s) for s in openapi["paths"][op.path]["post"]["responses"]}
            for op in OPERATIONS
        }
        async with MqttUe(new_ue_id("conformance"), system.stack.mqtt_addr) as ue:
            await ue.register()
            yield Api(http, documented, ue)


# --- generated documents --------------------------------------------------------------------


@functools.cache
def documents(name: str) -> st.SearchStrategy[Any]:
    return from_schema(spec.schema(name))


@functools.cache
def judge(name: str) -> Draft4Validator:
    """jsonschema's own Draft 4 validator of the schema, with the registry's format checker
    (date-time: RFC 3339; uri: RFC 3986 absolute), independent of the registry's messages."""
    return Draft4Validator(spec.schema(name), format_checker=spec.FORMATS)


JSON_SCALARS: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


# A value of each JSON type (Python's int and float apart: Draft 4's integer is an int).
OF_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.integers(-(2**70), 2**70),
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "string": st.text(max_size=12),
    "array": st.lists(JSON_SCALARS, max_size=3),
    "object": st.dictionaries(st.text(max_size=6), JSON_SCALARS, max_size=3),
}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def wire(doc: Any) -> Any:
    """``doc`` as the server parses it."""
    return json.loads(json.dumps(doc, allow_nan=False))


MemberPath = tuple[str | int, ...]


def member_paths(doc: Any, prefix: MemberPath = ()) -> Iterator[MemberPath]:
    """Every member of ``doc`` (object members and array items), at any depth."""
    children: list[tuple[str | int, Any]] = []
    if isinstance(doc, dict):
        children = list(doc.items())
    elif isinstance(doc, list):
        children = list(enumerate(doc))
    for key, value in children:
        yield (*prefix, key)
        yield from member_paths(value, (*prefix, key))


def required_paths(
    doc: Any, schema: dict[str, Any], prefix: MemberPath = ()
) -> Iterator[MemberPath]:
    """The members of ``doc`` its schema requires, at any depth."""
    if not isinstance(doc, dict):
        return
    for member in schema.get("required", []):
        if member in doc:
            yield (*prefix, member)
    for member, sub in schema.get("properties", {}).items():
        if member in doc:
            yield from required_paths(doc[member], sub, (*prefix, member))


def changed(doc: Any, path: MemberPath, value: Any = None, *, drop: bool = False) -> Any:
    out = wire(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    if drop:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def dotted(path: MemberPath) -> str:
    return ".".join(str(p) for p in path)


def fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    return text.encode()[:limit].decode(errors="ignore")


# --- RFC 3339 instants, independently of the registry's parser ------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))\Z"
)


def instant(value: str) -> datetime | None:
    """The UTC instant of a schema-valid RFC 3339 date-time; None when it falls outside the
    years 1-9999 once in UTC (0001-01-01T00:30:00+01:00 is in year 0)."""
    match = _RFC3339.fullmatch(value)
    assert match is not None, value
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    micro = int(((match.group(7) or "") + "000000")[:6])
    local = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    sign, off_h, off_m = match.group(8), match.group(9), match.group(10)
    offset = timedelta(hours=int(off_h), minutes=int(off_m)) if sign else timedelta(0)
    try:
        return local - offset if sign == "+" else local + offset
    except OverflowError:
        return None


# --- what every answer must be --------------------------------------------------------------


def note(what: str) -> None:
    """Counts an outcome for ``--hypothesis-show-statistics`` (in a property only)."""
    if currently_in_test_context():
        event(what)


def check_answer(api: Api, op: Operation, response: httpx.Response) -> Any:
    """The checks that hold for any request: no 5xx, a documented status, a 2xx body valid
    by the operation's response schema, an error body that is a ProblemDetails of the same
    status. Returns the parsed body (None if empty)."""
    status = response.status_code
    note(f"{op.name}: {status}")
    assert status < 500, response.text
    assert status in api.documented[op.name], (status, response.text)
    if 200 <= status < 300:
        assert status == op.ok, response.text
        if op.answer is None:
            assert response.content == b""
            return None
        assert response.headers["content-type"].split(";")[0] == "application/json"
        body = response.json()
        assert spec.validate(op.answer, body) == [], body
        if status == 201:
            location = response.headers["Location"]
            base = str(api.http.base_url).rstrip("/")
            assert location.startswith(f"{base}{ASREG}/registrations/"), location
        return body
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON, response.text
    body = response.json()
    note(f"{op.name}: {status} {body.get('cause')}")
    assert spec.validate("ProblemDetails", body) == [], body
    assert body["status"] == status, body
    return body


def check_refused(
    api: Api, op: Operation, response: httpx.Response, status: int, cause: str, param: str
) -> None:
    body = check_answer(api, op, response)
    assert response.status_code == status, response.text
    assert body["cause"] == cause, body
    assert param in [p["param"] for p in body.get("invalidParams", [])], body


# --- 1. valid documents ---------------------------------------------------------------------


@each_operation
@SETTINGS
@given(data=st.data())
async def test_valid_documents_are_never_refused_as_malformed(
    api: Api, op: Operation, data: st.DataObject
) -> None:
    doc = data.draw(documents(op.request), label="document")
    op.identity(doc)
    assert judge(op.request).is_valid(wire(doc))
    response = await api.post(op, doc)
    body = check_answer(api, op, response)
    if response.status_code == 400:
        assert body["cause"] != "INVALID_MSG_FORMAT", body


@SETTINGS
@given(data=st.data())
async def test_a_registration_of_ones_own_as_is_taken_unless_a_member_is_unusable(
    api: Api, data: st.DataObject
) -> None:
    op = BY_NAME["registrations"]
    doc = data.draw(documents(op.request), label="document")
    op.identity(doc)
    response = await api.post(op, doc)
    target = doc.get("targetUri", "")
    if target and not target.lower().startswith(("http://", "https://")):
        check_refused(api, op, response, 400, "OPTIONAL_IE_INCORRECT", "targetUri")
    elif len(doc.get("appId", "")) > MAX_ID:
        check_refused(api, op, response, 400, "OPTIONAL_IE_INCORRECT", "appId")
    else:
        ack = check_answer(api, op, response)
        assert response.status_code == 201, response.text
        assert ack["asSvcId"] == REG_AS
        assert ack["result"]["status"] == 201
        assert ack["result"]["title"] in ("Created", "Updated")


MSG_ID = re.compile(r"[\x21-\x7e]{1,128}")  # MSGin5G-1: 1-128 printable ASCII characters
MSG_IDS = st.from_regex(r"\A[\x21-\x7e]{1,128}\Z")


def message_refusal(doc: dict[str, Any]) -> tuple[int, str, str | None] | None:
    """The refusal (status, cause, member) that a schema-valid ASMessageDelivery from one's
    own AS to a registered UE gets, in the order as_api.message_of and the router check;
    None when it must be taken. Besides what the schema says, a UE must be able to read the
    MSG it is sent (MSGin5G-1, docs/protocol.md)."""
    if not MSG_ID.fullmatch(doc["msgId"]):
        return 400, "MANDATORY_IE_INCORRECT", "msgId"
    if len(doc.get("appId", "")) > 128:
        return 400, "OPTIONAL_IE_INCORRECT", "appId"
    expires = None
    expr = doc.get("stoAndFwParams", {}).get("exprTime")
    if expr is not None:
        expires = instant(expr)
        if expires is None:
            return 400, "OPTIONAL_IE_INCORRECT", "stoAndFwParams.exprTime"
    if "latency" in doc and doc["latency"] <= 0:
        return 400, "OPTIONAL_IE_INCORRECT", "latency"
    if doc.get("segInd") and "segParams" not in doc:
        return 400, "OPTIONAL_IE_INCORRECT", "segParams"
    for name in ("totalSegCount", "segNumb"):
        if not 0 <= doc.get("segParams", {}).get(name, 0) <= 65535:
            return 400, "OPTIONAL_IE_INCORRECT", f"segParams.{name}"
    if expires is not None and expires <= datetime.now(UTC):
        return 400, "EXPIRED", None
    return None


@SETTINGS
@given(data=st.data())
async def test_a_message_to_a_registered_ue_is_delivered_unless_a_member_is_unusable(
    api: Api, data: st.DataObject
) -> None:
    op = BY_NAME["deliver-as-message"]
    doc = data.draw(documents(op.request), label="document")
    op.identity(doc)
    doc["destAddr"] = {"addrType": "UE", "addr": api.ue.ue_svc_id}
    # Mostly a msgId a UE can read (printable ASCII), so that most examples go all the way.
    if data.draw(st.integers(0, 3), label="keep msgId") > 0:
        doc["msgId"] = data.draw(MSG_IDS, label="msgId")
    if "payload" in doc:
        doc["payload"] = fit(doc["payload"], MAX_PAYLOAD)
    response = await api.post(op, doc)
    refusal = message_refusal(doc)
    if refusal is not None:
        status, cause, param = refusal
        body = check_answer(api, op, response)
        assert response.status_code == status, (refusal, response.text)
        assert body["cause"] == cause, (refusal, body)
        if param is not None:
            assert param in [p["param"] for p in body["invalidParams"]], body
        return
    if doc.get("segInd"):
        # A segment: the router holds it until its message is whole (TS 23.554 8.5), and
        # judges the segment parameters the schema leaves open (segId, numbering).
        body = check_answer(api, op, response)
        if response.status_code != 200:
            assert response.status_code == 400, response.text
            assert body["cause"] in ("INVALID_REQUEST", "EXPIRED"), body
        return
    ack = check_answer(api, op, response)
    assert response.status_code == 200, response.text
    assert ack["oriAddr"] == AS_ADDR
    assert ack["msgId"] == doc["msgId"]
    if ack.get("failureCause") == "DUPLICATE":
        return  # a msgId drawn before: the first one was delivered
    # The UE is registered and connected: the message goes out at once...
    assert "status" not in ack, ack
    assert "failureCause" not in ack, ack
    # ...and arrives, as the AS sent it (unless its deadline is so close that it may expire
    # on the way: that is what a deadline means).
    soon = datetime.now(UTC) + timedelta(seconds=2 * WAIT)
    expr = doc.get("stoAndFwParams", {}).get("exprTime")
    expires = instant(expr) if expr is not None else None
    if doc.get("latency", 2 * WAIT) < 2 * WAIT or (expires is not None and expires < soon):
        return
    note("received by the UE")
    got = await _received(api.ue, doc["msgId"])
    assert got.ori_addr == h.Address(h.AddrType.AS, THE_AS)
    assert got.dest_addr == h.Address(h.AddrType.UE, api.ue.ue_svc_id)
    assert (got.payload or "") == doc.get("payload", "")
    assert (got.app_id or "") == doc.get("appId", "")
    assert got.sto_and_fw_ind is doc["stoAndFwInd"]
    assert got.deliv_st_req_ind is doc.get("delivStReqInd", False)


async def _received(ue: MqttUe, msg_id: str) -> h.Msg:
    """The UE's next message with ``msg_id`` (skipping earlier ones it was sent)."""
    while True:
        doc = await ue.receive()
        if isinstance(doc, h.Msg) and doc.msg_id == msg_id:
            return doc


TOPIC_NAMES = st.from_regex(r"\A[A-Za-z0-9._~@:+\-]{1,128}\Z")


@pytest.mark.parametrize("name", ["request-topic-subscription", "request-topic-unsubscription"])
@SETTINGS
@given(data=st.data())
async def test_topics_with_valid_names_are_subscribed_and_unsubscribed(
    api: Api, name: str, data: st.DataObject
) -> None:
    op = BY_NAME[name]
    doc = data.draw(documents(op.request), label="document")
    op.identity(doc)
    doc["msgTopics"] = data.draw(st.lists(TOPIC_NAMES, min_size=1, max_size=4), label="topics")
    response = await api.post(op, doc)
    if op.ok == 204:
        check_answer(api, op, response)
        assert response.status_code == 204, response.text
        return
    expires = instant(doc["exprTime"]) if "exprTime" in doc else datetime.max.replace(tzinfo=UTC)
    if expires is None or expires <= datetime.now(UTC):
        check_refused(api, op, response, 400, "OPTIONAL_IE_INCORRECT", "exprTime")
    else:
        answer = check_answer(api, op, response)
        assert response.status_code == 200, response.text
        assert answer["msgTopics"] == list(dict.fromkeys(doc["msgTopics"]))
        assert answer["oriAddr"] == AS_ADDR
        assert answer.get("exprTime") == doc.get("exprTime")


# --- 2. invalid documents -------------------------------------------------------------------


@each_operation
@SETTINGS
@given(data=st.data())
async def test_broken_documents_are_refused_exactly_when_the_schema_refuses_them(
    api: Api, op: Operation, data: st.DataObject
) -> None:
    doc = data.draw(documents(op.request), label="document")
    op.identity(doc)
    how = data.draw(st.sampled_from(["drop", "retype", "root"]), label="how")
    blamed: str | None = None
    if how == "drop":
        path = data.draw(st.sampled_from(list(required_paths(doc, spec.schema(op.request)))))
        broken = changed(doc, path, drop=True)
        blamed = dotted(path)
    elif how == "retype":
        path = data.draw(st.sampled_from(list(member_paths(doc))), label="path")
        old = json_type(_at(doc, path))
        other = data.draw(st.sampled_from(sorted(set(OF_TYPE) - {old})), label="type")
        value = data.draw(OF_TYPE[other], label="value")
        broken = changed(doc, path, value)
        blamed = dotted(path)
    else:
        broken = wire(data.draw(JSON_VALUES, label="body"))
    response = await api.post(op, broken)
    body = check_answer(api, op, response)
    if judge(op.request).is_valid(broken):
        assert response.status_code != 400 or body["cause"] != "INVALID_MSG_FORMAT", body
        return
    assert response.status_code == 400, response.text
    assert body["cause"] == "INVALID_MSG_FORMAT", body
    params = [p["param"] for p in body["invalidParams"]]
    assert params, body
    if blamed is not None:
        # The document was valid before: what is wrong is the changed member, or the object
        # that holds it (an anyOf, a type) - never anything else.
        assert any(blamed == p or blamed.startswith(f"{p}.") for p in params), (blamed, body)
        assert all(blamed == p or blamed.startswith(f"{p}.") for p in params), (blamed, body)


def _at(doc: Any, path: MemberPath) -> Any:
    node = doc
    for key in path:
        node = node[key]
    return node


# --- 3. bodies that are not JSON documents --------------------------------------------------

EXAMPLES: dict[str, dict[str, Any]] = {
    "ASRegistration": {"asSvcId": REG_AS, "appId": "conformance"},
    "ASMessageDelivery": {
        "oriAddr": AS_ADDR,
        "destAddr": {"addrType": "UE", "addr": "nobody"},
        "msgId": "m-1",
        "stoAndFwInd": True,
    },
    "DeliveryStatusReport": {
        "oriAddr": AS_ADDR,
        "destAddr": {"addrType": "UE", "addr": "nobody"},
        "msgId": "m-1",
        "delivSt": "REPT_DELY_SUCCESS",
    },
    "TopicSubscription": {"oriAddr": AS_ADDR, "msgTopics": ["news"]},
}


def check_problem(
    api: Api, op: Operation, response: httpx.Response, status: int, cause: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = check_answer(api, op, response)
    assert response.status_code == status, response.text
    if cause is not None:
        assert body["cause"] == cause, body
    return body


@each_operation
async def test_a_body_of_another_media_type_is_415(api: Api, op: Operation) -> None:
    doc = json.dumps(EXAMPLES[op.request]).encode()
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/xml"}, {}):
        response = await api.http.post(op.path, content=doc, headers=headers)
        check_problem(api, op, response, 415, "UNSUPPORTED_MEDIA_TYPE")


BROKEN_JSON = [
    b"",
    b"{",
    b'{"oriAddr": ',
    b"{'msgId': 'm-1'}",
    b'{"msgId": "m-1",}',
    b"\xff\xfe{}",
    b'{"msgId": "\xc3("}',
    b'{"msgId": "m-1", "latency": NaN}',
    b'{"msgId": "m-1", "latency": -Infinity}',
    b"[" * 5000,
]


@each_operation
@pytest.mark.parametrize("body", BROKEN_JSON, ids=range(len(BROKEN_JSON)))
async def test_a_body_that_is_not_json_is_400(api: Api, op: Operation, body: bytes) -> None:
    response = await api.http.post(op.path, content=body, headers=_json())
    problem = check_problem(api, op, response, 400, "INVALID_MSG_FORMAT")
    assert problem["detail"].startswith("the body is not JSON")


@each_operation
async def test_json_in_utf_16_is_400(api: Api, op: Operation) -> None:
    """RFC 8259 section 8.1: JSON between systems is UTF-8."""
    body = json.dumps(EXAMPLES[op.request]).encode("utf-16")
    response = await api.http.post(op.path, content=body, headers=_json())
    check_problem(api, op, response, 400, "INVALID_MSG_FORMAT")


@each_operation
async def test_a_string_with_a_lone_surrogate_is_400(api: Api, op: Operation) -> None:
    """``"\\ud800"`` is JSON syntax but no Unicode text: refused as malformed, naming the
    member, whichever member (or member name) holds it."""
    doc = EXAMPLES[op.request]
    first = next(iter(doc))
    for text, param in [
        (json.dumps({**doc, first: "\udc00"}), first),
        (json.dumps({**doc, "vendorExt": ["ok", "a\ud800b"]}), "vendorExt.1"),
        (json.dumps({**doc, "vendorExt": {"x\ud800": 1}}), "vendorExt.x\\ud800"),
    ]:
        assert "\\ud" in text  # json.dumps escapes them (ensure_ascii)
        response = await api.http.post(op.path, content=text.encode(), headers=_json())
        body = check_problem(api, op, response, 400, "INVALID_MSG_FORMAT")
        assert [p["param"] for p in body["invalidParams"]] == [param], body
    # A surrogate pair is one character, and fine.
    paired = json.dumps({**doc, "vendorExt": "\U0001f600"})
    assert "\\ud83d\\ude00" in paired
    response = await api.http.post(op.path, content=paired.encode(), headers=_json())
    assert response.status_code != 400 or response.json()["cause"] != "INVALID_MSG_FORMAT"


@each_operation
async def test_a_body_over_the_limit_is_413_declared_or_chunked(api: Api, op: Operation) -> None:
    doc = {**EXAMPLES[op.request], "padding": "x" * MAX_BODY}
    body = json.dumps(doc).encode()
    response = await api.http.post(op.path, content=body, headers=_json())
    check_problem(api, op, response, 413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = await api.http.post(op.path, content=chunks(), headers=_json())
    assert "content-length" not in response.request.headers
    check_problem(api, op, response, 413, "PAYLOAD_TOO_LARGE")
    # Just within the limit it is read, and judged.
    empty = json.dumps({**EXAMPLES[op.request], "padding": ""}).encode()
    fits = empty[:-2] + b"x" * (MAX_BODY - len(empty)) + b'"}'
    assert len(fits) == MAX_BODY
    response = await api.http.post(op.path, content=fits, headers=_json())
    assert response.status_code != 413, response.text
    check_answer(api, op, response)


@each_operation
@SETTINGS
@given(body=st.binary(max_size=64))
async def test_arbitrary_bytes_are_judged_as_json_or_refused_as_not_json(
    api: Api, op: Operation, body: bytes
) -> None:
    response = await api.http.post(op.path, content=body, headers=_json())
    result = check_answer(api, op, response)
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        # Strings must be Unicode text: no lone surrogate escapes.
        json.dumps(doc, ensure_ascii=False).encode()
    except ValueError:  # UnicodeError included
        assert response.status_code == 400, response.text
        assert result["cause"] == "INVALID_MSG_FORMAT", result
        return
    valid = judge(op.request).is_valid(doc)
    assert (response.status_code == 400 and result["cause"] == "INVALID_MSG_FORMAT") != valid


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}
