"""The registry's HTTP API (FastAPI): management of UEs, health, OpenAPI at ``/docs``.

Errors are RFC 9457 ProblemDetails (``application/problem+json``) with a ``cause``.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from msgin5g_common.errors import Cause
from msgin5g_registry.store import RegistryStore, UeRecord

READY_TIMEOUT = 0.5
UE_ID_PATTERN = r"^[A-Za-z0-9._~@:+\-]{1,128}$"
_UE_ID_RE = re.compile(UE_ID_PATTERN)


class ProblemDetails(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    cause: str | None = None


class UePublic(BaseModel):
    ueSvcId: str  # noqa: N815 - the contract's field names
    known: bool
    registered: bool
    transport: str | None = Field(default=None, description="coap or mqtt, while registered")
    lifetime: int | None = None
    registeredAt: datetime | None = None  # noqa: N815
    expiresAt: datetime | None = None  # noqa: N815
    bcArea: str | None = None  # noqa: N815
    deliveryMode: str | None = None  # noqa: N815
    maxSegSize: int | None = None  # noqa: N815


def problem(
    status: int, title: str, detail: str | None, cause: Cause | None, instance: str
) -> JSONResponse:
    body = ProblemDetails(
        title=title,
        status=status,
        detail=detail,
        cause=cause.value if cause else None,
        instance=instance,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type="application/problem+json",
    )


def _ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def ue_public(record: UeRecord) -> UePublic:
    reg = record.registration
    if reg is None:
        return UePublic(ueSvcId=record.ue_svc_id, known=record.known, registered=False)
    return UePublic(
        ueSvcId=record.ue_svc_id,
        known=True,
        registered=True,
        transport=reg.transport,
        lifetime=reg.lifetime,
        registeredAt=_ms(reg.registered_at_ms),
        expiresAt=_ms(reg.expires_at_ms),
        bcArea=reg.bc_area or None,
        deliveryMode=reg.delivery_mode,
        maxSegSize=reg.max_seg_size,
    )


def get_store(request: Request) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


StoreDep = Annotated[RegistryStore, Depends(get_store)]
UeId = Annotated[str, Path(description="UE Service ID")]


def create_app(store: RegistryStore, redis: Redis) -> FastAPI:
    app = FastAPI(
        title="MSGin5G registry",
        version="0.1.0",
        description="UE registrations and management API of the MSGin5G Server.",
    )

    app.state.store = store

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), None, None, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem(
            400,
            "Bad Request",
            f"{where}: {first.get('msg', 'invalid')}",
            Cause.INVALID_REQUEST,
            request.url.path,
        )

    def check_id(ue: str, request: Request) -> JSONResponse | None:
        if _UE_ID_RE.fullmatch(ue):
            return None
        return problem(
            400,
            "Bad Request",
            "ueSvcId: must be 1-128 characters of [A-Za-z0-9._~@:+-]",
            Cause.INVALID_REQUEST,
            request.url.path,
        )

    @app.get(
        "/api/v1/ues/{ueSvcId}",
        response_model=UePublic,
        responses={404: {"model": ProblemDetails}, 400: {"model": ProblemDetails}},
        summary="A UE's registration state",
    )
    async def get_ue(ueSvcId: UeId, store: StoreDep, request: Request) -> UePublic | JSONResponse:  # noqa: N803
        bad = check_id(ueSvcId, request)
        if bad is not None:
            return bad
        record = await store.get(ueSvcId)
        if not record.known:
            return problem(
                404,
                "Not Found",
                f"UE {ueSvcId} is not known",
                Cause.UNKNOWN_RECIPIENT,
                request.url.path,
            )
        return ue_public(record)

    @app.put(
        "/api/v1/ues/{ueSvcId}",
        response_model=UePublic,
        status_code=200,
        responses={201: {"model": UePublic}, 400: {"model": ProblemDetails}},
        summary="Provision a UE: it becomes known, so messages to it are stored until it registers",
    )
    async def put_ue(ueSvcId: UeId, store: StoreDep, request: Request) -> UePublic | JSONResponse:  # noqa: N803
        bad = check_id(ueSvcId, request)
        if bad is not None:
            return bad
        created = await store.provision(ueSvcId)
        body = ue_public(await store.get(ueSvcId))
        return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz", summary="Readiness: Redis answers", responses={503: {"model": ProblemDetails}}
    )
    async def readyz(request: Request) -> JSONResponse:
        try:
            # Bounded: a probe must get its 503 quickly, not after redis-py's retries.
            await asyncio.wait_for(redis.ping(), READY_TIMEOUT)
        except Exception as exc:  # any Redis failure (or slowness) means not ready
            return problem(
                503, "Service Unavailable", f"redis: {exc}", Cause.OVERLOADED, request.url.path
            )
        return JSONResponse({"status": "ready"})

    return app
