"""The registry's HTTP API (FastAPI): management of UEs, health, OpenAPI at ``/docs``.

Errors are RFC 9457 ProblemDetails (``application/problem+json``) with a ``cause``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import router_pb2 as rpb
from msgin5g.v1 import router_pb2_grpc as rgrpc
from msgin5g_common import convert
from msgin5g_common import header as h
from msgin5g_common.errors import Cause
from msgin5g_registry import as_api, credentials, problems
from msgin5g_registry.as_api import problem_responses
from msgin5g_registry.auth import (
    ADMIN_SCOPE,
    Authenticator,
    install_openapi_security,
    require,
    token_router,
)
from msgin5g_registry.problems import InvalidParam, problem
from msgin5g_registry.problems import instance_of as _instance
from msgin5g_registry.settings import RegistrySettings
from msgin5g_registry.store import AsStore, GroupStore, RegistryStore, UeRecord

log = logging.getLogger("msgin5g.registry.http")

READY_TIMEOUT = 0.5
UE_ID_PATTERN = r"^[A-Za-z0-9._~@:+\-]{1,128}$"
_UE_ID_RE = re.compile(UE_ID_PATTERN)
# The id rule, documented in OpenAPI (json_schema_extra) and checked by the handlers, which
# answer their own ProblemDetails for a bad id.
_ID_SCHEMA: dict[str, Any] = {"pattern": UE_ID_PATTERN}


class UePublic(BaseModel):
    ueSvcId: str
    known: bool
    registered: bool
    transport: str | None = Field(default=None, description="coap or mqtt, while registered")
    lifetime: int | None = None
    registeredAt: datetime | None = None
    expiresAt: datetime | None = None
    bcArea: str | None = None
    deliveryMode: str | None = None
    maxSegSize: int | None = None


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
    rcptAddr: dict[str, str]
    state: str
    failureCause: str | None = None
    attempts: int = 0
    deliveryReport: str | None = None
    history: list[StateTimePublic]


class MessageStatePublic(BaseModel):
    msgId: str
    oriAddr: dict[str, str]
    destAddr: dict[str, str]
    result: str
    acceptedAt: datetime
    expiresAt: datetime | None = None
    recipients: list[RecipientStatePublic]
    summary: dict[str, int] = Field(description="recipients per state, over all of them")
    next: str | None = Field(default=None, description="pass as ?after= for more recipients")


class MessageUpdate(BaseModel):
    exprTime: datetime


_ORI_PATTERN = r"^(UE|AS):[A-Za-z0-9._~@:+\-]{1,128}$"


def _addr(addr: pb.Address) -> dict[str, str]:
    return convert.address_from_pb(addr).to_json()


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
    summary = dict(state.summary)
    return MessageStatePublic(
        msgId=state.msg_id,
        oriAddr=_addr(state.ori_addr),
        destAddr=_addr(state.dest_addr),
        result=convert.RESULT_FROM_PB.get(state.result, h.MsgResult.ACCEPTED).value,
        acceptedAt=state.accepted_at.ToDatetime(tzinfo=UTC),
        expiresAt=state.expires_at.ToDatetime(tzinfo=UTC) if state.HasField("expires_at") else None,
        recipients=recipients,
        summary=summary,
        next=state.next or None,
    )


def _ori(ori: str) -> pb.Address:
    return convert.address_key_to_pb(ori)


MAX_MEMBERS = 100_000


class SubscriberPublic(BaseModel):
    ueSvcId: str
    exprTime: datetime | None = None


class TopicPublic(BaseModel):
    topic: str
    subscribers: list[SubscriberPublic]


class GroupMembers(BaseModel):
    members: list[Annotated[str, Field(json_schema_extra=_ID_SCHEMA)]] = Field(
        min_length=1, max_length=MAX_MEMBERS
    )


class GroupPublic(BaseModel):
    groupSvcId: str
    memberCount: int
    members: list[str]
    next: str | None = Field(default=None, description="pass as ?after= for the next page")


def _bad_members(members: list[str]) -> str | None:
    for i, member in enumerate(members):
        if not _UE_ID_RE.fullmatch(member):
            return f"members[{i}]: {member[:40]!r} is not a UE Service ID"
    return None


def get_groups(request: Request) -> GroupStore:
    groups: GroupStore = request.app.state.groups
    return groups


GroupsDep = Annotated[GroupStore, Depends(get_groups)]
GroupId = Annotated[str, Path(description="Group Service ID", json_schema_extra=_ID_SCHEMA)]


def get_store(request: Request) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


StoreDep = Annotated[RegistryStore, Depends(get_store)]
UeId = Annotated[str, Path(description="UE Service ID", json_schema_extra=_ID_SCHEMA)]


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
    store: RegistryStore,
    redis: Redis,
    router: rgrpc.RouterServiceAsyncStub | None = None,
    settings: RegistrySettings | None = None,
) -> FastAPI:
    settings = settings or RegistrySettings()
    auth = Authenticator.from_settings(settings)
    app = FastAPI(
        title="MSGin5G registry",
        version="0.1.0",
        description=(
            "The MSGin5G Server's HTTP API: the TS 29.538 application server API "
            "(/msgs-asregistration, /msgs-msgdelivery, /msgs-topiclistevent; OAuth2 "
            "client-credentials tokens from /oauth2/token) and the management API (/api/v1; "
            "admin token)."
        ),
    )

    app.state.store = store
    app.state.groups = GroupStore(store.redis, store.keys)
    app.state.as_store = AsStore(store.redis, store.keys)
    app.state.router = router
    app.state.auth = auth
    app.state.max_body = settings.http_max_body
    app.state.max_payload = settings.max_payload
    app.state.grpc_timeout = settings.grpc_timeout
    # None without a key-encryption key: the credential endpoints then answer 503.
    app.state.credentials = credentials.CredentialStore.from_settings(
        store.redis, store.keys, settings
    )
    problems.install(app)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def router_down(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        log.warning("router call failed", extra={"code": exc.code().name, "path": request.url.path})
        return problem(
            503,
            None,
            f"the router did not answer ({exc.code().name}); retry",
            Cause.OVERLOADED,
            _instance(request),
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(RedisError)
    async def redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis call failed", extra={"error": str(exc), "path": request.url.path})
        return problem(
            503,
            None,
            "the store did not answer; retry",
            Cause.OVERLOADED,
            _instance(request),
            headers={"Retry-After": "1"},
        )

    mgmt = APIRouter(dependencies=[Depends(require(ADMIN_SCOPE))])

    def check_id(ue: str, request: Request) -> JSONResponse | None:
        if _UE_ID_RE.fullmatch(ue):
            return None
        return problem(
            400,
            "Bad Request",
            "ueSvcId: must be 1-128 characters of [A-Za-z0-9._~@:+-]",
            Cause.INVALID_REQUEST,
            _instance(request),
        )

    @mgmt.get(
        "/api/v1/ues/{ueSvcId}",
        response_model=UePublic,
        responses=problem_responses(400, 404),
        summary="A UE's registration state",
    )
    async def get_ue(ueSvcId: UeId, store: StoreDep, request: Request) -> UePublic | JSONResponse:
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
                _instance(request),
            )
        return ue_public(record)

    @mgmt.put(
        "/api/v1/ues/{ueSvcId}",
        response_model=UePublic,
        status_code=200,
        responses={201: {"model": UePublic}, **problem_responses(400)},
        summary="Provision a UE: it becomes known, so messages to it are stored until it registers",
    )
    async def put_ue(ueSvcId: UeId, store: StoreDep, request: Request) -> UePublic | JSONResponse:
        bad = check_id(ueSvcId, request)
        if bad is not None:
            return bad
        created = await store.provision(ueSvcId)
        body = ue_public(await store.get(ueSvcId))
        return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)

    @mgmt.get(
        "/api/v1/messages/{msgId}",
        response_model=MessageStatePublic,
        responses=problem_responses(400, 404),
        summary="A message's state per recipient, with the time of each step",
    )
    async def get_message(
        msgId: MsgIdPath,
        ori: OriQuery,
        router: RouterDep,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        after: str = "",
    ) -> MessageStatePublic | JSONResponse:
        query = rpb.GetMessageStateRequest(
            ori_addr=_ori(ori), msg_id=msgId, limit=limit, after=after
        )
        state = await router.GetMessageState(query, timeout=5)
        if not state.found:
            return problem(
                404,
                "Not Found",
                f"no message {msgId} from {ori} (or its state has expired)",
                Cause.UNKNOWN_MESSAGE,
                _instance(request),
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

    @mgmt.patch(
        "/api/v1/messages/{msgId}",
        response_model=MessageStatePublic,
        responses=problem_responses(400, 404, 409),
        summary="Change the expiry of a stored message (TS 23.554 8.3.6.1)",
    )
    async def patch_message(
        msgId: MsgIdPath,
        ori: OriQuery,
        body: MessageUpdate,
        router: RouterDep,
        request: Request,
    ) -> MessageStatePublic | JSONResponse:
        update = rpb.UpdateMessageRequest(
            ori_addr=_ori(ori), msg_id=msgId, action=rpb.UPDATE_ACTION_UPDATE
        )
        try:
            update.expr_time.FromDatetime(body.exprTime.astimezone(UTC))
        except (OverflowError, ValueError):
            # 0001-01-01T00:00:00+01:00 is in year 0 once in UTC.
            return problem(
                400,
                "Bad Request",
                "exprTime: out of range",
                Cause.INVALID_REQUEST,
                _instance(request),
                invalid=[InvalidParam(param="exprTime", reason="out of range")],
            )
        failed = await _update(router, update, _instance(request))
        if failed is not None:
            return failed
        return await get_message(msgId, ori, router, request)

    @mgmt.delete(
        "/api/v1/messages/{msgId}",
        status_code=204,
        responses=problem_responses(400, 404, 409),
        summary="Discard a stored message that has not been delivered yet",
    )
    async def delete_message(
        msgId: MsgIdPath,
        ori: OriQuery,
        router: RouterDep,
        request: Request,
    ) -> Response:
        update = rpb.UpdateMessageRequest(
            ori_addr=_ori(ori), msg_id=msgId, action=rpb.UPDATE_ACTION_DISCARD
        )
        failed = await _update(router, update, _instance(request))
        return failed if failed is not None else Response(status_code=204)

    def bad_group(group: str, request: Request) -> JSONResponse | None:
        if _UE_ID_RE.fullmatch(group):
            return None
        return problem(
            400,
            "Bad Request",
            "groupSvcId: must be 1-128 characters of [A-Za-z0-9._~@:+-]",
            Cause.INVALID_REQUEST,
            _instance(request),
        )

    def no_group(group: str, request: Request) -> JSONResponse:
        return problem(
            404,
            "Not Found",
            f"group {group} does not exist",
            Cause.UNKNOWN_RECIPIENT,
            _instance(request),
        )

    async def group_page(
        groups: GroupStore, group: str, after: str | None, limit: int
    ) -> GroupPublic:
        members = await groups.page(group, after, limit)
        return GroupPublic(
            groupSvcId=group,
            memberCount=await groups.count(group),
            members=members,
            next=members[-1] if len(members) == limit else None,
        )

    @mgmt.put(
        "/api/v1/groups/{groupSvcId}",
        response_model=GroupPublic,
        responses={201: {"model": GroupPublic}, **problem_responses(400)},
        summary="Create or replace a group profile (up to 100,000 members)",
    )
    async def put_group(
        groupSvcId: GroupId,
        body: GroupMembers,
        groups: GroupsDep,
        request: Request,
    ) -> JSONResponse:
        bad = bad_group(groupSvcId, request)
        if bad is not None:
            return bad
        detail = _bad_members(body.members)
        if detail is not None:
            return problem(400, "Bad Request", detail, Cause.INVALID_REQUEST, _instance(request))
        created = await groups.replace(groupSvcId, body.members)
        page = await group_page(groups, groupSvcId, None, 100)
        return JSONResponse(page.model_dump(), status_code=201 if created else 200)

    @mgmt.get(
        "/api/v1/groups/{groupSvcId}",
        response_model=GroupPublic,
        responses=problem_responses(400, 404),
        summary="A group profile, its members paged in id order",
    )
    async def get_group(
        groupSvcId: GroupId,
        groups: GroupsDep,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> GroupPublic | JSONResponse:
        bad = bad_group(groupSvcId, request)
        if bad is not None:
            return bad
        if not await groups.count(groupSvcId):
            return no_group(groupSvcId, request)
        return await group_page(groups, groupSvcId, after, limit)

    @mgmt.delete(
        "/api/v1/groups/{groupSvcId}",
        status_code=204,
        responses=problem_responses(400, 404),
        summary="Delete a group",
    )
    async def delete_group(groupSvcId: GroupId, groups: GroupsDep, request: Request) -> Response:
        bad = bad_group(groupSvcId, request)
        if bad is not None:
            return bad
        if not await groups.delete(groupSvcId):
            return no_group(groupSvcId, request)
        return Response(status_code=204)

    @mgmt.post(
        "/api/v1/groups/{groupSvcId}/members",
        response_model=GroupPublic,
        responses=problem_responses(400),
        summary="Add members to a group (creates it when new)",
    )
    async def add_members(
        groupSvcId: GroupId,
        body: GroupMembers,
        groups: GroupsDep,
        request: Request,
    ) -> GroupPublic | JSONResponse:
        bad = bad_group(groupSvcId, request)
        if bad is not None:
            return bad
        detail = _bad_members(body.members)
        if detail is not None:
            return problem(400, "Bad Request", detail, Cause.INVALID_REQUEST, _instance(request))
        await groups.add(groupSvcId, body.members)
        return await group_page(groups, groupSvcId, None, 100)

    @mgmt.delete(
        "/api/v1/groups/{groupSvcId}/members/{ueSvcId}",
        status_code=204,
        responses=problem_responses(400, 404),
        summary="Remove one member from a group",
    )
    async def remove_member(
        groupSvcId: GroupId,
        ueSvcId: UeId,
        groups: GroupsDep,
        request: Request,
    ) -> Response:
        bad = bad_group(groupSvcId, request) or check_id(ueSvcId, request)
        if bad is not None:
            return bad
        if not await groups.remove(groupSvcId, ueSvcId):
            return problem(
                404,
                "Not Found",
                f"{ueSvcId} is not a member of {groupSvcId}",
                Cause.UNKNOWN_RECIPIENT,
                _instance(request),
            )
        return Response(status_code=204)

    @mgmt.get(
        "/api/v1/topics/{topic}",
        response_model=TopicPublic,
        responses=problem_responses(400),
        summary="A messaging topic's current subscribers (TS 23.554 8.8)",
    )
    async def get_topic(
        topic: Annotated[str, Path(description="Topic name", json_schema_extra=_ID_SCHEMA)],
        store: StoreDep,
        request: Request,
    ) -> TopicPublic | JSONResponse:
        if not _UE_ID_RE.fullmatch(topic):
            return problem(
                400,
                "Bad Request",
                "topic: must be 1-128 characters of [A-Za-z0-9._~@:+-]",
                Cause.INVALID_REQUEST,
                _instance(request),
            )
        now = int(datetime.now(UTC).timestamp() * 1000)
        rows = await store.subscribers(topic, now)
        return TopicPublic(
            topic=topic,
            subscribers=[
                SubscriberPublic(
                    ueSvcId=ue, exprTime=None if until == float("inf") else _ms(int(until))
                )
                for ue, until in rows
            ],
        )

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: Redis answers", responses=problem_responses(503))
    async def readyz(request: Request) -> JSONResponse:
        try:
            # Bounded: a probe must get its 503 quickly, not after redis-py's retries.
            await asyncio.wait_for(redis.ping(), READY_TIMEOUT)
        except Exception as exc:  # any Redis failure (or slowness) means not ready
            return problem(
                503, "Service Unavailable", f"redis: {exc}", Cause.OVERLOADED, _instance(request)
            )
        return JSONResponse({"status": "ready"})

    mgmt.include_router(credentials.router())
    app.include_router(mgmt)
    app.include_router(as_api.router())
    app.include_router(token_router())
    install_openapi_security(app)
    declare_problems(app)
    return app


# What an operation may answer besides what its route declares: an error nobody expected
# (500) and, behind authentication, a refused token (401), a missing scope (403), the rate
# limit (429), and a router or Redis that did not answer (503).
_ANY_ERRORS = (500,)
_SECURED_ERRORS = (401, 403, 429, 503)


def declare_problems(app: FastAPI) -> None:
    """Makes the OpenAPI document declare the errors the app answers. FastAPI documents a
    422 HTTPValidationError for every operation with parameters or a body, but this app
    answers a request that fails validation 400 ProblemDetails (problems.install)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                statuses = list(_ANY_ERRORS)
                if responses.pop("422", None) is not None:
                    statuses.append(400)
                if operation.get("security"):
                    statuses.extend(_SECURED_ERRORS)
                for status, declared in problem_responses(*statuses).items():
                    responses.setdefault(
                        str(status), {**declared, "description": problems.TITLES[int(status)]}
                    )
        declared_schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            declared_schemas.pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
