"""One error tree for the MSGin5G failure causes, each mapped once to every protocol.

Edges raise or receive these and render them on the protocol the request came in on:
a CoAP response code with a diagnostic payload, an MQTT ``*RESP`` document, an HTTP
ProblemDetails status, or a gRPC status code.
"""

from __future__ import annotations

from enum import StrEnum

import grpc


class Cause(StrEnum):
    """Failure causes of the contract (msgin5g.md section 4)."""

    INVALID_REQUEST = "INVALID_REQUEST"
    NOT_REGISTERED = "NOT_REGISTERED"
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    UNKNOWN_RECIPIENT = "UNKNOWN_RECIPIENT"
    RECIPIENT_UNREACHABLE = "RECIPIENT_UNREACHABLE"
    EXPIRED = "EXPIRED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    SEGMENT_TIMEOUT = "SEGMENT_TIMEOUT"
    OVERLOADED = "OVERLOADED"
    DUPLICATE = "DUPLICATE"
    UNKNOWN_MESSAGE = "UNKNOWN_MESSAGE"
    UNSUPPORTED_CONTENT_FORMAT = "UNSUPPORTED_CONTENT_FORMAT"
    INTERNAL_ERROR = "INTERNAL_ERROR"


# CoAP response codes as (class, detail), e.g. (4, 4) is 4.04.
COAP_CODE: dict[Cause, tuple[int, int]] = {
    Cause.INVALID_REQUEST: (4, 0),
    Cause.NOT_REGISTERED: (4, 4),
    Cause.NOT_AUTHORIZED: (4, 3),
    Cause.UNKNOWN_RECIPIENT: (4, 4),
    Cause.RECIPIENT_UNREACHABLE: (4, 4),
    Cause.EXPIRED: (4, 0),
    Cause.PAYLOAD_TOO_LARGE: (4, 13),
    Cause.SEGMENT_TIMEOUT: (4, 8),
    Cause.OVERLOADED: (5, 3),
    Cause.DUPLICATE: (2, 4),
    Cause.UNKNOWN_MESSAGE: (4, 4),
    Cause.UNSUPPORTED_CONTENT_FORMAT: (4, 15),
    Cause.INTERNAL_ERROR: (5, 0),
}

HTTP_STATUS: dict[Cause, int] = {
    Cause.INVALID_REQUEST: 400,
    Cause.NOT_REGISTERED: 404,
    Cause.NOT_AUTHORIZED: 403,
    Cause.UNKNOWN_RECIPIENT: 404,
    Cause.RECIPIENT_UNREACHABLE: 404,
    Cause.EXPIRED: 400,
    Cause.PAYLOAD_TOO_LARGE: 413,
    Cause.SEGMENT_TIMEOUT: 408,
    Cause.OVERLOADED: 503,
    Cause.DUPLICATE: 200,
    Cause.UNKNOWN_MESSAGE: 404,
    Cause.UNSUPPORTED_CONTENT_FORMAT: 415,
    Cause.INTERNAL_ERROR: 500,
}

GRPC_STATUS: dict[Cause, grpc.StatusCode] = {
    Cause.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Cause.NOT_REGISTERED: grpc.StatusCode.FAILED_PRECONDITION,
    Cause.NOT_AUTHORIZED: grpc.StatusCode.PERMISSION_DENIED,
    Cause.UNKNOWN_RECIPIENT: grpc.StatusCode.NOT_FOUND,
    Cause.RECIPIENT_UNREACHABLE: grpc.StatusCode.UNAVAILABLE,
    Cause.EXPIRED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cause.PAYLOAD_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    Cause.SEGMENT_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cause.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Cause.DUPLICATE: grpc.StatusCode.ALREADY_EXISTS,
    Cause.UNKNOWN_MESSAGE: grpc.StatusCode.NOT_FOUND,
    Cause.UNSUPPORTED_CONTENT_FORMAT: grpc.StatusCode.INVALID_ARGUMENT,
    Cause.INTERNAL_ERROR: grpc.StatusCode.INTERNAL,
}


class Msgin5gError(Exception):
    """A request failed for a reason the client should be told about."""

    cause: Cause = Cause.INTERNAL_ERROR

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def coap_code(self) -> tuple[int, int]:
        return COAP_CODE[self.cause]

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.cause]


class InvalidDocument(Msgin5gError):
    """The document is not valid JSON, misses a mandatory field, or has a wrong one."""

    cause = Cause.INVALID_REQUEST


class PayloadTooLarge(Msgin5gError):
    cause = Cause.PAYLOAD_TOO_LARGE


class NotAuthorized(Msgin5gError):
    cause = Cause.NOT_AUTHORIZED


class NotRegistered(Msgin5gError):
    cause = Cause.NOT_REGISTERED


class UnknownRecipient(Msgin5gError):
    cause = Cause.UNKNOWN_RECIPIENT


class UnknownMessage(Msgin5gError):
    cause = Cause.UNKNOWN_MESSAGE


class RecipientUnreachable(Msgin5gError):
    cause = Cause.RECIPIENT_UNREACHABLE


class Overloaded(Msgin5gError):
    cause = Cause.OVERLOADED


class UnsupportedContentFormat(Msgin5gError):
    cause = Cause.UNSUPPORTED_CONTENT_FORMAT


_BY_CAUSE: dict[Cause, type[Msgin5gError]] = {
    cls.cause: cls
    for cls in (
        InvalidDocument,
        PayloadTooLarge,
        NotAuthorized,
        NotRegistered,
        UnknownRecipient,
        UnknownMessage,
        RecipientUnreachable,
        Overloaded,
        UnsupportedContentFormat,
    )
}


def error_for(cause: str, detail: str) -> Msgin5gError:
    """The exception for a failure cause received over gRPC (unknown causes stay generic)."""
    try:
        known = Cause(cause)
    except ValueError:
        known = Cause.INTERNAL_ERROR
    err = _BY_CAUSE.get(known, Msgin5gError)(detail)
    err.cause = known
    return err
