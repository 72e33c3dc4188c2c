"""RFC 9457 / TS 29.571 ProblemDetails: the one error shape of every registry HTTP answer.

Handlers raise :class:`ProblemError` (or return :func:`problem`); :func:`install` turns it,
FastAPI's validation errors and Starlette's HTTP errors into ``application/problem+json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from msgin5g_common.errors import HTTP_STATUS, Cause

log = logging.getLogger("msgin5g.registry.http")

PROBLEM_JSON = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# The cause of an answer that names none: the MSGin5G failure cause where one fits (one
# vocabulary on CoAP, MQTT and HTTP), otherwise a TS 29.500-style name.
HTTP_CAUSE = {
    400: Cause.INVALID_REQUEST.value,
    401: "UNAUTHORIZED",
    403: "NOT_AUTHORIZED",
    404: "RESOURCE_NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    411: "LENGTH_REQUIRED",
    413: Cause.PAYLOAD_TOO_LARGE.value,
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
    500: Cause.INTERNAL_ERROR.value,
    503: Cause.OVERLOADED.value,
}


class InvalidParam(BaseModel):
    param: str
    reason: str | None = None


class ProblemDetails(BaseModel):
    """TS 29.571 ProblemDetails (the members this server sets)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    cause: str | None = None
    invalidParams: list[InvalidParam] | None = None


class ProblemError(Exception):
    """Raised by a handler or dependency: answered as a ProblemDetails document."""

    def __init__(
        self,
        status: int,
        detail: str,
        cause: Cause | str | None = None,
        *,
        invalid: list[InvalidParam] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.cause = str(cause) if cause is not None else HTTP_CAUSE.get(status)
        self.invalid = invalid
        self.headers = dict(headers or {})

    @classmethod
    def of(cls, cause: Cause, detail: str) -> ProblemError:
        """The error for a MSGin5G failure cause, with its HTTP status."""
        return cls(HTTP_STATUS.get(cause, 500), detail, cause)


def problem(
    status: int,
    title: str | None,
    detail: str | None,
    cause: Cause | str | None,
    instance: str,
    *,
    invalid: list[InvalidParam] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ProblemDetails(
        title=title or TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        cause=str(cause) if cause is not None else HTTP_CAUSE.get(status),
        instance=instance,
        invalidParams=invalid,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


# What RFC 3986 allows in a path segment besides unreserved characters (and "/").
_PATH_SAFE = "/:@!$&'()*+,;="


def instance_of(request: Request) -> str:
    """The ProblemDetails ``instance``: the request's absolute URI (TS 29.571 types it Uri).

    The path is percent-encoded again (the server sees it decoded): a request for
    ``/registrations/%C3%A9%20x`` must not get an instance with a space or an "é" in it,
    which would not be a URI.
    """
    path = quote(request.scope["path"], safe=_PATH_SAFE)
    return str(request.url.replace(path=path, query=None, fragment=None))


def _param(loc: tuple[object, ...]) -> str:
    """A validation error's location as a JSON pointer-ish path: ``body.destAddr.addr`` ->
    ``destAddr.addr``."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    """Registers the handlers that render every error as ProblemDetails."""

    @app.exception_handler(ProblemError)
    async def problem_error(request: Request, exc: ProblemError) -> JSONResponse:
        return problem(
            exc.status,
            None,
            exc.detail,
            exc.cause,
            instance_of(request),
            invalid=exc.invalid,
            headers=exc.headers,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(
            exc.status_code,
            TITLES.get(exc.status_code, str(exc.detail)),
            str(exc.detail),
            None,
            instance_of(request),
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        invalid = [
            InvalidParam(param=_param(tuple(e.get("loc", ()))), reason=str(e.get("msg", "")))
            for e in errors[:20]
        ]
        first = invalid[0] if invalid else InvalidParam(param="body", reason="invalid")
        return problem(
            400,
            None,
            f"{first.param}: {first.reason}",
            Cause.INVALID_REQUEST,
            instance_of(request),
            invalid=invalid,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", extra={"path": request.url.path})
        return problem(500, None, "internal error", Cause.INTERNAL_ERROR, instance_of(request))
