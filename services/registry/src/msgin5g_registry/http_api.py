"""The registry's HTTP API (FastAPI): management of UEs, health, OpenAPI at ``/docs``.

Errors are RFC 9457 ProblemDetails (``application/problem+json``) with a ``cause``.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import router_pb2 as rpb
from msgin5g.v1 import router_pb2_grpc as rgrpc
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


class StateTimePublic(BaseModel):
    state: str
    at: datetime


class RecipientStatePublic(BaseModel):
    rcptAddr: dict[str, str]  # noqa: N815
    state: str
    failureCause: str | None = None  # noqa: N815
    attempts: int = 0
    deliveryReport: str | None = None  # noqa: N815
    history: list[StateTimePublic]


class MessageStatePublic(BaseModel):
    msgId: str  # noqa: N815
    oriAddr: dict[str, str]  # noqa: N815
    destAddr: dict[str, str]  # noqa: N815
    result: str
    acceptedAt: datetime  # noqa: N815
    expiresAt: datetime | None = None  # noqa: N815
    recipients: list[RecipientStatePublic]
    summary: dict[str, int]


class MessageUpdate(BaseModel):
    exprTime: datetime  # noqa: N815


_ADDR_NUMBER: dict[str, pb.AddrType.ValueType] = {
    "UE": pb.ADDR_TYPE_UE,
    "AS": pb.ADDR_TYPE_AS,
    "GROUP": pb.ADDR_TYPE_GROUP,
    "TOPIC": pb.ADDR_TYPE_TOPIC,
    "BC": pb.ADDR_TYPE_BC,
}
_ADDR_NAME = {v: k for k, v in _ADDR_NUMBER.items()}
_RESULT_NAME = {1: "ACCEPTED", 2: "STORED", 3: "DELIVERED", 4: "FAILED"}
_ORI_PATTERN = r"^(UE|AS):[A-Za-z0-9._~@:+\-]{1,128}$"


def _addr(addr: pb.Address) -> dict[str, str]:
    return {"addrType": _ADDR_NAME.get(addr.addr_type, "UE"), "addr": addr.addr}


def message_public(state: rpb.MessageState) -> MessageStatePublic:
    recipients = [
        RecipientStatePublic(
            rcptAddr=_addr(r.rcpt_addr),
            state=r.state,
            failureCause=r.failure_cause or None,
            attempts=r.attempts,
            deliveryReport=r.report or None,
            history=[
                StateTimePublic(state=t.state, at=t.at.ToDatetime(tzinfo=UTC)) for t in r.history
            ],
        )
        for r in state.recipients
    ]
    summary: dict[str, int] = {}
    for r in recipients:
        summary[r.state] = summary.get(r.state, 0) + 1
    return MessageStatePublic(
        msgId=state.msg_id,
        oriAddr=_addr(state.ori_addr),
        destAddr=_addr(state.dest_addr),
        result=_RESULT_NAME.get(state.result, "ACCEPTED"),
        acceptedAt=state.accepted_at.ToDatetime(tzinfo=UTC),
        expiresAt=state.expires_at.ToDatetime(tzinfo=UTC) if state.HasField("expires_at") else None,
        recipients=recipients,
        summary=summary,
    )


def _ori(ori: str) -> pb.Address:
    kind, _, addr = ori.partition(":")
    return pb.Address(addr_type=_ADDR_NUMBER[kind], addr=addr)


def get_store(request: Request) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


StoreDep = Annotated[RegistryStore, Depends(get_store)]
UeId = Annotated[str, Path(description="UE Service ID")]


def get_router(request: Request) -> Any:
    """The router's async gRPC stub (typed Any: FastAPI evaluates this signature at run time,
    and the stub's class exists for the type checker only)."""
    return request.app.state.router


# The async stub class exists for the type checker only, so FastAPI sees Any here.
RouterDep = Annotated[Any, Depends(get_router)]
OriQuery = Annotated[
    str,
    Query(
        pattern=_ORI_PATTERN,
        description="The originator, as UE:{ueSvcId} (or AS:{asSvcId})",
        examples=["UE:ue-1"],
    ),
]
MsgIdPath = Annotated[str, Path(min_length=1, max_length=128, description="The msgId")]


def create_app(
    store: RegistryStore, redis: Redis, router: rgrpc.RouterServiceAsyncStub | None = None
) -> FastAPI:
    app = FastAPI(
        title="MSGin5G registry",
        version="0.1.0",
        description="UE registrations and management API of the MSGin5G Server.",
    )

    app.state.store = store
    app.state.router = router

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

    @app.get(
        "/api/v1/messages/{msgId}",
        response_model=MessageStatePublic,
        responses={404: {"model": ProblemDetails}, 400: {"model": ProblemDetails}},
        summary="A message's state per recipient, with the time of each step",
    )
    async def get_message(
        msgId: MsgIdPath,  # noqa: N803
        ori: OriQuery,
        router: RouterDep,
        request: Request,
    ) -> MessageStatePublic | JSONResponse:
        state = await router.GetMessageState(
            rpb.GetMessageStateRequest(ori_addr=_ori(ori), msg_id=msgId), timeout=5
        )
        if not state.found:
            return problem(
                404,
                "Not Found",
                f"no message {msgId} from {ori} (or its state has expired)",
                Cause.UNKNOWN_MESSAGE,
                request.url.path,
            )
        return message_public(state)

    async def _update(
        router: rgrpc.RouterServiceAsyncStub, update: rpb.UpdateMessageRequest, path: str
    ) -> JSONResponse | None:
        reply = await router.UpdateMessage(update, timeout=5)
        if reply.ok:
            return None
        cause = Cause(reply.failure_cause) if reply.failure_cause in Cause.__members__ else None
        status = {Cause.UNKNOWN_MESSAGE: 404, Cause.EXPIRED: 400}.get(cause, 409) if cause else 409
        return problem(status, "Not changed", reply.failure_detail, cause, path)

    @app.patch(
        "/api/v1/messages/{msgId}",
        response_model=MessageStatePublic,
        responses={404: {"model": ProblemDetails}, 409: {"model": ProblemDetails}},
        summary="Change the expiry of a stored message (TS 23.554 8.3.6.1)",
    )
    async def patch_message(
        msgId: MsgIdPath,  # noqa: N803
        ori: OriQuery,
        body: MessageUpdate,
        router: RouterDep,
        request: Request,
    ) -> MessageStatePublic | JSONResponse:
        update = rpb.UpdateMessageRequest(
            ori_addr=_ori(ori), msg_id=msgId, action=rpb.UPDATE_ACTION_UPDATE
        )
        update.expr_time.FromDatetime(body.exprTime.astimezone(UTC))
        failed = await _update(router, update, request.url.path)
        if failed is not None:
            return failed
        return await get_message(msgId, ori, router, request)

    @app.delete(
        "/api/v1/messages/{msgId}",
        status_code=204,
        responses={404: {"model": ProblemDetails}, 409: {"model": ProblemDetails}},
        summary="Discard a stored message that has not been delivered yet",
    )
    async def delete_message(
        msgId: MsgIdPath,  # noqa: N803
        ori: OriQuery,
        router: RouterDep,
        request: Request,
    ) -> Response:
        update = rpb.UpdateMessageRequest(
            ori_addr=_ori(ori), msg_id=msgId, action=rpb.UPDATE_ACTION_DISCARD
        )
        failed = await _update(router, update, request.url.path)
        return failed if failed is not None else Response(status_code=204)

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
