"""The TS 29.538 AS API schemas the registry validates with (msgin5g_registry.spec).

Documents are accepted or refused exactly as the 3GPP OpenAPI schemas say: generated valid
documents pass, targeted mutations are refused with the offending member's path, the valid
edge cases (unknown members, unknown enumeration strings, empty strings, huge integers) pass,
and the shipped copies of the 3GPP files are the published ones.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft4Validator

from msgin5g_registry import spec
from msgin5g_registry.problems import InvalidParam

REPO = Path(__file__).resolve().parents[2]
OPENAPI = REPO / "services" / "registry" / "src" / "msgin5g_registry" / "openapi"
# The shared folder sits next to the checkout on developer and CI machines.
_CANDIDATES = [REPO.parent / "shared" / "3gpp", Path("/work/shared/3gpp")]
SHARED_3GPP = next((p for p in _CANDIDATES if p.is_dir()), None)

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

UE_A = {"addrType": "UE", "addr": "ue-a"}
AS_1 = {"addrType": "AS", "addr": "as-1"}
EXPR = "2030-01-02T03:04:05Z"

VALID: dict[str, dict[str, Any]] = {
    "ASRegistration": {
        "asSvcId": "as-1",
        "appId": "app.1",
        "targetUri": "https://as.example.com/callback?x=1",
        "asProf": {"appName": "n", "appProviders": ["p"], "appSenarios": ["s"]},
    },
    "ASRegistrationAck": {"asSvcId": "as-1", "result": {"title": "Created", "status": 201}},
    "ASMessageDelivery": {
        "oriAddr": AS_1,
        "destAddr": UE_A,
        "msgId": "m-1",
        "stoAndFwInd": True,
        "stoAndFwParams": {"exprTime": EXPR},
        "priority": "HIGH",
        "payload": "hello",
        "segInd": True,
        "segParams": {"segId": "s", "totalSegCount": 2, "segNumb": 1, "lastSegFlag": False},
        "latency": 20,
    },
    "UEMessageDelivery": {
        "oriAddr": UE_A,
        "destAddr": AS_1,
        "msgId": "m-2",
        "stoAndFwInd": False,
        "stoAndFwParams": {"exprTime": EXPR},
    },
    "MessageDeliveryAck": {"oriAddr": AS_1, "msgId": "m-1", "status": "DELY_STORED"},
    "DeliveryStatusReport": {
        "oriAddr": UE_A,
        "destAddr": AS_1,
        "msgId": "m-1",
        "delivSt": "REPT_DELY_SUCCESS",
    },
    "TopicSubscription": {"oriAddr": UE_A, "msgTopics": ["news"], "exprTime": EXPR},
    "ProblemDetails": {
        "type": "https://example.com/problems/bad",
        "title": "Bad Request",
        "status": 400,
        "detail": "msgId: must be a string",
        "cause": "INVALID_REQUEST",
        "invalidParams": [{"param": "msgId", "reason": "must be a string"}],
        "supportedFeatures": "0aF",
    },
}

REMOVE = object()


def mutated(doc: Mapping[str, Any], path: str | tuple[str | int, ...], value: object) -> Any:
    """``doc`` with the member at ``path`` (dotted, or a tuple of keys and indices) set to
    ``value`` (or removed)."""
    out = copy.deepcopy(dict(doc))
    *parents, last = path.split(".") if isinstance(path, str) else path
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key = int(last) if isinstance(node, list) else last
    if value is REMOVE:
        del node[key]
    else:
        node[key] = value
    return out


def params(found: list[InvalidParam]) -> list[str]:
    return [p.param for p in found]


# --- the API ----------------------------------------------------------------------------------


def test_schema_names_are_the_served_request_and_response_bodies() -> None:
    assert set(spec.SCHEMA_NAMES) == set(VALID)
    assert len(spec.SCHEMA_NAMES) == 8


@pytest.mark.parametrize("name", spec.SCHEMA_NAMES)
def test_schema_is_standalone_draft4_and_a_fresh_copy(name: str) -> None:
    schema = spec.schema(name)
    Draft4Validator.check_schema(schema)
    assert "$ref" not in json.dumps(schema)
    assert schema["type"] == "object"
    schema["properties"].clear()
    assert spec.schema(name)["properties"], "changing a returned schema changed the next one"


def test_unknown_schema_name_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        spec.schema("NoSuchThing")
    with pytest.raises(KeyError):
        spec.validate("NoSuchThing", {})


def test_openapi_request_embeds_into_fastapi_openapi() -> None:
    app = FastAPI()

    @app.post("/deliver-as-message", openapi_extra=spec.openapi_request("ASMessageDelivery"))
    async def deliver() -> None:
        return None

    assert spec.openapi_request("TopicSubscription") == {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": spec.schema("TopicSubscription")}},
        }
    }
    body = app.openapi()["paths"]["/deliver-as-message"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == spec.schema("ASMessageDelivery")
    json.dumps(app.openapi())


def test_our_models_of_topic_subscription_and_problem_details() -> None:
    topic = spec.schema("TopicSubscription")
    assert topic["required"] == ["oriAddr", "msgTopics"]
    assert (
        topic["properties"]["oriAddr"] == spec.schema("ASMessageDelivery")["properties"]["oriAddr"]
    )
    assert topic["properties"]["msgTopics"]["items"] == {"type": "string"}
    assert topic["properties"]["msgTopics"]["minItems"] == 1
    assert topic["properties"]["exprTime"]["format"] == "date-time"

    problem = spec.schema("ProblemDetails")
    props = problem["properties"]
    assert "required" not in problem
    assert {k: props[k]["type"] for k in props} == {
        "type": "string",
        "title": "string",
        "status": "integer",
        "detail": "string",
        "instance": "string",
        "cause": "string",
        "invalidParams": "array",
        "supportedFeatures": "string",
    }
    assert props["type"]["format"] == props["instance"]["format"] == "uri"
    assert props["invalidParams"]["minItems"] == 1
    assert props["invalidParams"]["items"]["required"] == ["param"]
    assert props["supportedFeatures"]["pattern"] == "^[A-Fa-f0-9]*$"


# --- generated documents ------------------------------------------------------------------------


@functools.cache
def documents_of(name: str) -> st.SearchStrategy[Any]:
    return from_schema(spec.schema(name))


JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def paths_in(doc: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every member path of ``doc`` (keys and list indices)."""
    children: list[tuple[str | int, Any]] = []
    if isinstance(doc, dict):
        children = list(doc.items())
    elif isinstance(doc, list):
        children = list(enumerate(doc))
    out: list[tuple[str | int, ...]] = []
    for key, value in children:
        out += [(*prefix, key), *paths_in(value, (*prefix, key))]
    return out


# One property test per schema (generating documents is what takes the time): a generated
# document is valid; without a required member it is refused, naming that member; with any
# JSON value put anywhere it is judged as jsonschema's own Draft 4 validator judges it (so the
# repr-free keywords of spec change no verdict).
@pytest.mark.parametrize("name", spec.SCHEMA_NAMES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_generated_documents_are_valid_and_their_mutations_judged_right(
    name: str, data: st.DataObject
) -> None:
    doc = data.draw(documents_of(name), label="document")
    assert spec.validate(name, doc) == []
    assert spec.validate(name, json.loads(json.dumps(doc))) == []

    required = spec.schema(name).get("required", [])
    if required:
        member = data.draw(st.sampled_from(required), label="removed")
        assert params(spec.validate(name, mutated(doc, member, REMOVE))) == [member]

    value = data.draw(JSON_VALUES, label="value")
    where = paths_in(doc)
    inside: bool = data.draw(st.booleans(), label="inside")
    if where and inside:
        changed = mutated(doc, data.draw(st.sampled_from(where), label="at"), value)
    else:
        changed = value
    found = spec.validate(name, changed)
    assert all(isinstance(p, InvalidParam) and p.param and p.reason for p in found)
    stock = Draft4Validator(spec.schema(name), format_checker=spec.FORMATS)
    assert (found == []) == stock.is_valid(changed)


# --- refused mutations ------------------------------------------------------------------------

REFUSED = [
    ("ASMessageDelivery", "msgId", REMOVE, "msgId"),
    ("ASMessageDelivery", "oriAddr", REMOVE, "oriAddr"),
    ("ASMessageDelivery", "destAddr.addr", REMOVE, "destAddr.addr"),
    ("ASMessageDelivery", "stoAndFwInd", REMOVE, "stoAndFwInd"),
    ("ASMessageDelivery", "msgId", 5, "msgId"),
    ("ASMessageDelivery", "stoAndFwInd", "yes", "stoAndFwInd"),
    ("ASMessageDelivery", "priority", 3, "priority"),
    ("ASMessageDelivery", "priority", None, "priority"),
    ("ASMessageDelivery", "destAddr", "x", "destAddr"),
    ("ASMessageDelivery", "destAddr.addrType", 7, "destAddr.addrType"),
    ("ASMessageDelivery", "stoAndFwParams.exprTime", "tomorrow", "stoAndFwParams.exprTime"),
    ("ASMessageDelivery", "stoAndFwParams", [], "stoAndFwParams"),
    ("ASMessageDelivery", "latency", 1.5, "latency"),
    ("ASMessageDelivery", "latency", 20.0, "latency"),
    ("ASMessageDelivery", "latency", True, "latency"),
    ("ASMessageDelivery", "latency", "20", "latency"),
    ("ASMessageDelivery", "segParams.totalSegCount", "2", "segParams.totalSegCount"),
    ("ASMessageDelivery", "segInd", 0, "segInd"),
    ("UEMessageDelivery", "stoAndFwInd", REMOVE, "stoAndFwInd"),
    ("UEMessageDelivery", "oriAddr.addrType", REMOVE, "oriAddr.addrType"),
    ("ASRegistration", "asSvcId", REMOVE, "asSvcId"),
    ("ASRegistration", "targetUri", "not a uri", "targetUri"),
    ("ASRegistration", "targetUri", "http//x", "targetUri"),
    ("ASRegistration", "targetUri", "/relative/callback", "targetUri"),
    ("ASRegistration", "targetUri", "https://as.example.com/caf\u00e9", "targetUri"),
    ("ASRegistration", "asProf.appProviders", [], "asProf.appProviders"),
    ("ASRegistration", "asProf.appSenarios", ["ok", 1], "asProf.appSenarios.1"),
    ("ASRegistrationAck", "result", REMOVE, "result"),
    ("ASRegistrationAck", "result.status", "201", "result.status"),
    ("MessageDeliveryAck", "msgId", REMOVE, "msgId"),
    ("MessageDeliveryAck", "status", False, "status"),
    ("DeliveryStatusReport", "delivSt", REMOVE, "delivSt"),
    ("DeliveryStatusReport", "delivSt", 1, "delivSt"),
    ("TopicSubscription", "msgTopics", [], "msgTopics"),
    ("TopicSubscription", "msgTopics", REMOVE, "msgTopics"),
    ("TopicSubscription", "msgTopics", "news", "msgTopics"),
    ("TopicSubscription", "msgTopics", ["news", None], "msgTopics.1"),
    ("TopicSubscription", "oriAddr", REMOVE, "oriAddr"),
    ("TopicSubscription", "exprTime", "tomorrow", "exprTime"),
    ("TopicSubscription", "exprTime", "2030-02-30T00:00:00Z", "exprTime"),
    ("TopicSubscription", "exprTime", "2030-01-02T03:04:05", "exprTime"),
    ("TopicSubscription", "exprTime", "2030-01-02", "exprTime"),
    ("TopicSubscription", "exprTime", 1893553445, "exprTime"),
    ("ProblemDetails", "type", "not a uri", "type"),
    ("ProblemDetails", "status", "400", "status"),
    ("ProblemDetails", "invalidParams", [], "invalidParams"),
    ("ProblemDetails", "invalidParams.0.param", REMOVE, "invalidParams.0.param"),
    ("ProblemDetails", "supportedFeatures", "xyz", "supportedFeatures"),
]


@pytest.mark.parametrize(("name", "path", "value", "param"), REFUSED)
def test_mutation_is_refused_with_its_param(
    name: str, path: str, value: object, param: str
) -> None:
    found = spec.validate(name, mutated(VALID[name], path, value))
    assert params(found) == [param], found
    assert found[0].reason


@pytest.mark.parametrize("doc", [None, True, 0, 1.5, "x", [], [VALID["TopicSubscription"]]])
def test_a_body_that_is_not_an_object_is_refused_as_body(doc: object) -> None:
    assert spec.validate("TopicSubscription", doc) == [
        InvalidParam(param="body", reason="must be an object")
    ]


def test_reasons_say_what_is_expected_without_echoing_the_value() -> None:
    doc = mutated(VALID["ASMessageDelivery"], "msgId", ["s3cr3t"])
    doc = mutated(doc, "priority", {"s3cr3t": 1})
    doc = mutated(doc, "stoAndFwParams.exprTime", "s3cr3t")
    doc = mutated(doc, "destAddr.addr", REMOVE)
    found = {p.param: p.reason for p in spec.validate("ASMessageDelivery", doc)}
    assert found == {
        "destAddr.addr": "is required",
        "msgId": "must be a string",
        "priority": "must be a string",
        "stoAndFwParams.exprTime": "must be an RFC 3339 date-time such as 2030-01-02T03:04:05Z",
    }
    assert spec.validate("ASRegistration", {"asSvcId": "a", "targetUri": "x"})[0].reason == (
        "must be an absolute URI (RFC 3986) such as https://as.example.com/cb"
    )
    assert spec.validate("TopicSubscription", {"oriAddr": UE_A, "msgTopics": []})[0].reason == (
        "must have at least 1 item"
    )


def test_every_problem_of_a_document_is_listed_once_and_the_list_is_bounded() -> None:
    doc = {"oriAddr": {}, "destAddr": 1, "msgId": 2, "stoAndFwInd": 3, "priority": 4}
    assert params(spec.validate("ASMessageDelivery", doc)) == [
        "oriAddr.addrType",
        "oriAddr.addr",
        "destAddr",
        "msgId",
        "priority",
        "stoAndFwInd",
    ]
    many = {"oriAddr": UE_A, "msgTopics": list(range(1000))}
    found = spec.validate("TopicSubscription", many)
    assert params(found) == [f"msgTopics.{i}" for i in range(spec.MAX_INVALID)]


# --- accepted edge cases ------------------------------------------------------------------------

ACCEPTED = [
    ("ASMessageDelivery", "vendorExtension", {"any": ["thing", 1, None]}),
    ("ASMessageDelivery", "destAddr.extra", True),
    ("ASMessageDelivery", "priority", "URGENT"),
    ("ASMessageDelivery", "priority", ""),
    ("ASMessageDelivery", "destAddr.addrType", "FUTURE"),
    ("ASMessageDelivery", "msgId", ""),
    ("ASMessageDelivery", "destAddr.addr", ""),
    ("ASMessageDelivery", "payload", ""),
    ("ASMessageDelivery", "appId", ""),
    ("ASMessageDelivery", "latency", 10**40),
    ("ASMessageDelivery", "latency", -(10**40)),
    ("ASMessageDelivery", "latency", 0),
    ("ASMessageDelivery", "stoAndFwParams", {}),
    ("ASMessageDelivery", "segParams", {}),
    ("ASMessageDelivery", "stoAndFwParams.exprTime", "2030-01-02t03:04:05.123456z"),
    ("ASMessageDelivery", "stoAndFwParams.exprTime", "2028-02-29T23:59:59-12:00"),
    ("ASRegistration", "targetUri", "urn:example:as-1"),
    ("ASRegistration", "targetUri", "http://[::1]:8080/cb"),
    ("ASRegistration", "targetUri", "https://as.example.com/caf%C3%A9#frag"),
    ("ASRegistration", "asProf", {}),
    ("ASRegistration", "asSvcId", ""),
    ("ASRegistrationAck", "result", {}),
    ("MessageDeliveryAck", "status", "DELY_SOMEDAY"),
    ("MessageDeliveryAck", "failureCause", ""),
    ("DeliveryStatusReport", "delivSt", "REPT_DELY_LATER"),
    ("TopicSubscription", "msgTopics", [""]),
    ("TopicSubscription", "msgTopics", ["a", "a"]),
    ("TopicSubscription", "exprTime", REMOVE),
    ("TopicSubscription", "oriAddr.addrType", "TOPIC"),
    ("ProblemDetails", "supportedFeatures", ""),
    ("ProblemDetails", "type", "about:blank"),
    ("ProblemDetails", "invalidParams.0.reason", REMOVE),
]


@pytest.mark.parametrize(("name", "path", "value"), ACCEPTED)
def test_valid_edge_case_is_accepted(name: str, path: str, value: object) -> None:
    assert spec.validate(name, mutated(VALID[name], path, value)) == []


@pytest.mark.parametrize("name", spec.SCHEMA_NAMES)
def test_the_example_documents_are_valid(name: str) -> None:
    assert spec.validate(name, VALID[name]) == []


def test_problem_details_has_no_required_member() -> None:
    assert spec.validate("ProblemDetails", {}) == []


# --- robustness and speed ---------------------------------------------------------------------


def _deep(levels: int, wrap: Callable[[Any], Any]) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = wrap(value)
    return value


@pytest.mark.parametrize(
    "value",
    [
        _deep(100_000, lambda v: [v]),
        _deep(100_000, lambda v: {"k": v}),
        10**5000,  # more digits than str(int) allows by default
        float("inf"),
        float("nan"),
        -0.0,
        None,
        False,
        "x" * 1_000_000,
    ],
    ids=["deep-list", "deep-object", "huge-int", "inf", "nan", "neg-zero", "null", "false", "1MB"],
)
@pytest.mark.parametrize(
    "path", ["", "destAddr", "priority", "msgId", "latency", "stoAndFwParams.exprTime", "zzz"]
)
def test_never_raises_on_extreme_values(value: object, path: str) -> None:
    doc = value if not path else mutated(VALID["ASMessageDelivery"], path, value)
    found = spec.validate("ASMessageDelivery", doc)
    assert all(p.param and p.reason for p in found)
    if path == "zzz":  # an unknown member is never looked into
        assert found == []
    if path == "latency" and isinstance(value, int) and not isinstance(value, bool):
        assert found == []


def test_validation_is_fast() -> None:
    good = VALID["ASMessageDelivery"]
    bad = mutated(mutated(good, "priority", 3), "destAddr.addrType", REMOVE)
    for doc in (good, bad):
        spec.validate("ASMessageDelivery", doc)  # compiles and warms the cache
        rounds = 300
        start = time.perf_counter()
        for _ in range(rounds):
            spec.validate("ASMessageDelivery", doc)
        mean = (time.perf_counter() - start) / rounds
        assert mean < 0.001, f"{mean * 1e6:.0f} us per document"


# --- the OpenAPI files ------------------------------------------------------------------------


def test_the_package_ships_the_seven_files_and_says_where_they_come_from() -> None:
    assert sorted(p.name for p in OPENAPI.glob("*.yaml")) == sorted(spec.FILES)
    readme = (OPENAPI / "README.md").read_text()
    assert all(f in readme for f in spec.FILES)
    pyproject = (REPO / "services" / "registry" / "pyproject.toml").read_text()
    assert "openapi/*.yaml" in pyproject


@pytest.mark.parametrize("file", spec.FILES)
def test_every_ref_of_every_file_resolves(file: str) -> None:
    resolved = spec.resolve(spec.document(file), file)
    assert "$ref" not in json.dumps(resolved)


@pytest.mark.parametrize("file", spec.OWN_FILES)
def test_our_own_files_say_they_are_not_3gpp_files(file: str) -> None:
    doc = spec.document(file)
    assert doc["openapi"] == "3.0.0"
    assert "NOT a 3GPP file" in doc["info"]["description"]


def test_topic_list_event_api() -> None:
    doc = spec.document("TS29538_MSGS_TopicListEvent.yaml")
    assert doc["info"]["title"] == "MSGS_TopicListEvent"
    assert doc["servers"][0]["url"] == "{apiRoot}/msgs-topiclistevent/v1"
    paths = spec.resolve(doc["paths"], "TS29538_MSGS_TopicListEvent.yaml")
    sub = paths["/request-topic-subscription"]["post"]
    unsub = paths["/request-topic-unsubscription"]["post"]
    topic = spec.schema("TopicSubscription")
    for op in (sub, unsub):
        assert op["requestBody"]["content"]["application/json"]["schema"] == topic
        problem = op["responses"]["400"]["content"]["application/problem+json"]["schema"]
        assert problem == spec.schema("ProblemDetails")
    assert sub["responses"]["200"]["content"]["application/json"]["schema"] == topic
    assert "content" not in unsub["responses"]["204"]


def _shared_3gpp() -> Path:
    if SHARED_3GPP is None:
        pytest.skip("no shared/3gpp folder beside the checkout (the published TS 29.538 files)")
    return SHARED_3GPP


@pytest.mark.parametrize("file", spec.GPP_FILES)
def test_shipped_3gpp_files_are_the_published_ones(file: str) -> None:
    published = _shared_3gpp() / file
    assert (OPENAPI / file).read_bytes() == published.read_bytes()


def test_served_schemas_are_what_the_published_3gpp_files_say() -> None:
    shared = _shared_3gpp()
    originals = {f: yaml.safe_load((shared / f).read_text()) for f in spec.GPP_FILES}

    def load(file: str) -> Mapping[str, Any]:
        return originals[file] if file in originals else spec.document(file)

    compared = set()
    for file, doc in originals.items():
        for name, node in doc["components"]["schemas"].items():
            if name in spec.SCHEMA_NAMES:
                assert spec.resolve(node, file, load) == spec.schema(name), name
                compared.add(name)
    assert compared == set(spec.SCHEMA_NAMES) - {"TopicSubscription", "ProblemDetails"}
