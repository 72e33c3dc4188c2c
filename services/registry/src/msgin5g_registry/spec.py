"""The TS 29.538 AS API's request and response schemas, as the registry checks and describes them.

The OpenAPI files in ``openapi/`` (the 3GPP TS 29.538 V18.4.0 ones unchanged, plus this
project's models of the TS 29.571 common types and of topic subscription) are the contract.
This module reads them once, inlines every ``$ref`` (across files) into standalone JSON Schemas,
and validates documents with a JSON Schema Draft 4 validator (OpenAPI 3.0 schema objects are a
Draft 4 dialect) whose format checker really checks ``date-time`` (RFC 3339) and ``uri``
(RFC 3986, absolute). A document is accepted or refused exactly as the schema says: unknown
members are allowed (no ``additionalProperties: false``) and the ``anyOf [enum, string]``
enumerations take any string.

- :func:`schema` gives a schema for ``jsonschema``, ``hypothesis-jsonschema`` or FastAPI;
- :func:`validate` lists what is wrong with a document as TS 29.571 ``InvalidParam``s;
- :func:`openapi_request` is the ``openapi_extra`` of a route whose body is such a document.
"""

from __future__ import annotations

import copy
import functools
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import resources
from typing import Any, Final

import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators
from jsonschema.protocols import Validator
from rfc3339_validator import validate_rfc3339  # type: ignore[import-untyped]
from rfc3986_validator import validate_rfc3986  # type: ignore[import-untyped]

from msgin5g_registry.problems import InvalidParam

log = logging.getLogger("msgin5g.registry.spec")

PACKAGE: Final = "msgin5g_registry"
DIRECTORY: Final = "openapi"

# The files of the 3GPP TS 29.538 V18.4.0 OpenAPI definition, shipped unchanged.
GPP_FILES: Final = (
    "TS29538_MSGG_BGDelivery.yaml",
    "TS29538_MSGG_L3GDelivery.yaml",
    "TS29538_MSGG_N3GDelivery.yaml",
    "TS29538_MSGS_ASRegistration.yaml",
    "TS29538_MSGS_MSGDelivery.yaml",
)
# This project's files: the TS 29.571 types the 3GPP files reference, and topic subscription.
OWN_FILES: Final = ("TS29571_CommonData.yaml", "TS29538_MSGS_TopicListEvent.yaml")
FILES: Final = GPP_FILES + OWN_FILES

# Each served schema and the file whose components.schemas defines it.
_HOME: Final[Mapping[str, str]] = {
    "ASRegistration": "TS29538_MSGS_ASRegistration.yaml",
    "ASRegistrationAck": "TS29538_MSGS_ASRegistration.yaml",
    "ASMessageDelivery": "TS29538_MSGS_MSGDelivery.yaml",
    "UEMessageDelivery": "TS29538_MSGS_MSGDelivery.yaml",
    "MessageDeliveryAck": "TS29538_MSGS_MSGDelivery.yaml",
    "DeliveryStatusReport": "TS29538_MSGS_MSGDelivery.yaml",
    "TopicSubscription": "TS29538_MSGS_TopicListEvent.yaml",
    "ProblemDetails": "TS29571_CommonData.yaml",
}
SCHEMA_NAMES: Final[tuple[str, ...]] = tuple(_HOME)

# At most this many InvalidParams for one document (a huge wrong array must not make a huge
# answer, nor take long to list).
MAX_INVALID: Final = 20

# Schema keywords of OpenAPI 3.0 that JSON Schema Draft 4 would read differently or not at all;
# none of the files uses them, and validation would silently ignore them if one did.
_UNSUPPORTED: Final = frozenset({"nullable", "discriminator", "readOnly", "writeOnly"})


# --- Loading and $ref inlining -------------------------------------------------------------


@functools.cache
def document(file: str) -> Mapping[str, Any]:
    """One of :data:`FILES`, parsed (read once from the installed package)."""
    if file not in FILES:
        raise KeyError(f"not one of the OpenAPI files: {file!r}")
    text = resources.files(PACKAGE).joinpath(DIRECTORY, file).read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise TypeError(f"{file}: not an OpenAPI document")
    return doc


def resolve(node: Any, file: str, load: Callable[[str], Mapping[str, Any]] = document) -> Any:
    """``node`` of ``file`` with every ``$ref`` replaced by a copy of what it points at.

    References are ``[other.yaml]#/json/pointer``; other files are read with ``load``. As in
    OpenAPI 3.0, a ``$ref`` object's other members are ignored. Raises ValueError on a cycle
    or a reference to nothing.
    """
    return _inline(node, file, load, ())


def _inline(
    node: Any, file: str, load: Callable[[str], Mapping[str, Any]], active: tuple[str, ...]
) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target_file, target = _follow(ref, file, load)
            key = f"{target_file}#{ref.partition('#')[2]}"
            if key in active:
                raise ValueError(f"circular $ref: {' -> '.join((*active, key))}")
            return _inline(target, target_file, load, (*active, key))
        return {k: _inline(v, file, load, active) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, file, load, active) for v in node]
    return node


def _follow(ref: str, file: str, load: Callable[[str], Mapping[str, Any]]) -> tuple[str, Any]:
    """The file and the node that ``ref`` (met in ``file``) points at."""
    where, _, pointer = ref.partition("#")
    target_file = (
        posixpath.normpath(posixpath.join(posixpath.dirname(file), where)) if where else file
    )
    node: Any = load(target_file)
    for raw in pointer.split("/")[1:] if pointer else ():
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ValueError(f"{file}: $ref {ref!r} points at nothing")
    return target_file, node


def _check_supported(node: Any, where: str) -> None:
    if isinstance(node, dict):
        found = _UNSUPPORTED.intersection(node)
        if found:
            raise ValueError(f"{where}: OpenAPI keyword(s) {sorted(found)} not supported")
        for key, value in node.items():
            _check_supported(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_supported(value, f"{where}/{index}")


@functools.cache
def _schema(name: str) -> Mapping[str, Any]:
    file = _HOME.get(name)
    if file is None:
        raise KeyError(f"unknown schema {name!r} (one of {', '.join(SCHEMA_NAMES)})")
    node = resolve(document(file)["components"]["schemas"][name], file)
    _check_supported(node, f"{file}#/components/schemas/{name}")
    assert isinstance(node, dict)
    return node


def schema(name: str) -> dict[str, Any]:
    """The standalone JSON Schema (no ``$ref`` left) of one of :data:`SCHEMA_NAMES`.

    A fresh copy each call: the caller may change it.
    """
    return copy.deepcopy(dict(_schema(name)))


def openapi_request(name: str) -> dict[str, Any]:
    """FastAPI's ``openapi_extra`` for a route whose JSON body is the schema ``name``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema(name)}},
        }
    }


# --- Validation ------------------------------------------------------------------------------

FORMATS: Final = FormatChecker(formats=())


@FORMATS.checks("date-time")
def is_date_time(instance: object) -> bool:
    """RFC 3339 ``date-time`` (``T`` and ``Z`` may be lower case, as RFC 3339 allows)."""
    if not isinstance(instance, str):
        return True
    return bool(validate_rfc3339(instance.replace("t", "T").replace("z", "Z")))


@FORMATS.checks("uri")
def is_uri(instance: object) -> bool:
    """RFC 3986 ``URI``: absolute (a scheme), ASCII only, percent-encoded where needed."""
    if not isinstance(instance, str):
        return True
    return instance.isascii() and validate_rfc3986(instance, rule="URI") is not None


# jsonschema's own "type", "enum" and "anyOf" put repr(instance) in their messages: costly
# for a big value, and it raises on a deeply nested one or on an int of more than 4300
# digits. These do the same checks with messages that never show the instance.
def _type(validator: Any, types: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    names = [types] if isinstance(types, str) else list(types)
    if not any(validator.is_type(instance, t) for t in names):
        yield ValidationError(f"is not of type {', '.join(names)}")


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values (true is not 1; 1 is 1.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_json_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _enum(validator: Any, enums: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not any(_json_equal(each, instance) for each in enums):
        yield ValidationError("is not one of the enumerated values")


def _any_of(
    validator: Any, subschemas: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    errors: list[ValidationError] = []
    for index, subschema in enumerate(subschemas):
        found = list(validator.descend(instance, subschema, schema_path=index))
        if not found:
            return
        errors.extend(found)
    yield ValidationError("is not valid under any of the given schemas", context=errors)


_Validator: Final[type[Validator]] = validators.extend(  # type: ignore[no-untyped-call]
    Draft4Validator, validators={"type": _type, "enum": _enum, "anyOf": _any_of}
)


@functools.cache
def _validator(name: str) -> Validator:
    compiled = _schema(name)
    Draft4Validator.check_schema(compiled)
    return _Validator(compiled, format_checker=FORMATS)


def validate(name: str, doc: object) -> list[InvalidParam]:
    """What is wrong with ``doc`` (a parsed JSON value) as a ``name`` document: [] if nothing.

    ``param`` is the path of the offending member (``destAddr.addrType``, ``msgTopics.0``;
    for a missing member, the member's path) or ``body`` for the document itself; one entry
    per member, at most :data:`MAX_INVALID`.
    """
    out: list[InvalidParam] = []
    seen: set[str] = set()
    try:
        checked: Any = doc
        for error in _validator(name).iter_errors(checked):
            for param, reason in _explain(error):
                if param not in seen:
                    seen.add(param)
                    out.append(InvalidParam(param=param, reason=reason))
            if len(out) >= MAX_INVALID:
                break
    except (RecursionError, ValueError):
        # Not expected (no check descends further than the schema does, and no message
        # shows the value), but a request must never turn into a 500.
        log.warning("schema check of a %s document failed", name, exc_info=True)
        if not out:
            out.append(InvalidParam(param="body", reason="cannot be checked"))
    return out[:MAX_INVALID]


def _path(parts: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in parts)


_ARTICLE: Final = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}
_FORMAT_REASON: Final = {
    "date-time": "must be an RFC 3339 date-time such as 2030-01-02T03:04:05Z",
    "uri": "must be an absolute URI (RFC 3986) such as https://as.example.com/cb",
}


def _explain(error: ValidationError) -> Iterator[tuple[str, str]]:
    """(param, reason) pairs for one error of the validator."""
    where = _path(error.absolute_path)
    if error.validator == "required":
        instance, required = error.instance, error.validator_value
        assert isinstance(required, list)
        for member in required:
            if isinstance(instance, dict) and member not in instance:
                yield (f"{where}.{member}" if where else str(member)), "is required"
        return
    yield where or "body", _reason(error)


def _reason(error: ValidationError) -> str:
    keyword: Any = error.validator
    value: Any = error.validator_value
    if keyword == "type":
        names = [value] if isinstance(value, str) else list(value)
        return "must be " + " or ".join(_ARTICLE.get(n, n) for n in names)
    if keyword == "format":
        return _FORMAT_REASON.get(str(value), f"must be a valid {value}")
    if keyword == "minItems":
        return f"must have at least {value} item{'s' if value != 1 else ''}"
    if keyword == "pattern":
        return f"must match {value}"
    if keyword == "enum":
        return "must be one of " + ", ".join(str(v) for v in value)
    if keyword in ("anyOf", "oneOf"):
        # Why the value itself fails each alternative: for "anyOf [enum, string]", it is not
        # a string.
        branches: dict[object, list[ValidationError]] = {}
        for sub in error.context or ():
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        types: list[Any] = [
            next((e.validator_value for e in subs if e.validator == "type" and not e.path), None)
            for subs in branches.values()
        ]
        if types and all(isinstance(t, str) for t in types):
            return "must be " + " or ".join(_ARTICLE.get(t, t) for t in dict.fromkeys(types))
        return "does not match any allowed form"
    return f"does not satisfy {keyword}"
