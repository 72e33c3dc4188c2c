"""The AS-facing API of TS 29.538: AS registration, A2P messages, delivery reports and topic
subscriptions, forwarded to the router over gRPC.

Request bodies are checked against the TS 29.538 schemas themselves (``spec.py``), so a
document is accepted or refused exactly as those schemas say; members the schemas do not
know are ignored (TS 29.500 forward compatibility). What the schemas cannot say (an AS may act
only as itself, a payload limit, a topic name that must fit a CoAP path and an MQTT topic) is
checked after, with its own cause. Every error is a ProblemDetails document.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import router_pb2 as rpb
from msgin5g_common import convert
from msgin5g_common.errors import Cause
from msgin5g_common.header import valid_id, valid_msg_id
from msgin5g_common.keys import as_recipient
from msgin5g_registry import spec
from msgin5g_registry.auth import AsRegistrationDep, MsgDeliveryDep, Principal, TopicDep
from msgin5g_registry.problems import PROBLEM_JSON, InvalidParam, ProblemDetails, ProblemError
from msgin5g_registry.store import AsStore, RegistryStore

log = logging.getLogger("msgin5g.registry.as_api")

ASREG = "/msgs-asregistration/v1"
DELIVERY = "/msgs-msgdelivery/v1"
TOPICS = "/msgs-topiclistevent/v1"

# The longest appId of a registration this server keeps.
MAX_ID = 256
UINT32 = 2**32 - 1
# What a MSG to a UE can carry (MSGin5G-1, docs/protocol.md): a message the AS API took but a
# UE could not read would be retried until it expired, never delivered.
MAX_APP_ID = 128
MAX_SEG = 65535
ID_RULE = "1-128 characters of [A-Za-z0-9._~@:+-]"

_ADDR_TYPES = {
    "UE": pb.ADDR_TYPE_UE,
    "AS": pb.ADDR_TYPE_AS,
    "GROUP": pb.ADDR_TYPE_GROUP,
    "TOPIC": pb.ADDR_TYPE_TOPIC,
    "BC": pb.ADDR_TYPE_BC,
}
# Unknown priorities are allowed by the schema (anyOf string): they count as MIDDLE.
_PRIORITIES = {"HIGH": pb.PRIORITY_HIGH, "MIDDLE": pb.PRIORITY_MIDDLE, "LOW": pb.PRIORITY_LOW}
_DELIV_ST = {
    "REPT_DELY_SUCCESS": pb.DELIVERY_STATUS_REPT_DELY_SUCCESS,
    "REPT_DELY_FAILED": pb.DELIVERY_STATUS_REPT_DELY_FAILED,
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ProblemDetails answers (application/problem+json, the
    TS 29.571 schema) of the given statuses."""
    schema = spec.schema("ProblemDetails")
    return {
        status: {
            "description": ProblemDetails.__name__,
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status in statuses
    }


_ERRORS = (400, 401, 403, 404, 411, 413, 415, 429, 500, 503)


def _ok(name: str, status: int = 200, **extra: Any) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": name,
            "content": {"application/json": {"schema": spec.schema(name)}},
            **extra,
        },
        **problem_responses(*_ERRORS),
    }


def bad(param: str, reason: str, cause: str = "MANDATORY_IE_INCORRECT") -> ProblemError:
    """A schema-valid document the server cannot take: names the member and why."""
    return ProblemError(
        400, f"{param}: {reason}", cause, invalid=[InvalidParam(param=param, reason=reason)]
    )


async def read_json(request: Request, name: str) -> dict[str, Any]:
    """The request body as a document of schema ``name``: JSON media type (415), within the
    size limit (413), parseable (400) and valid by the TS 29.538 schema (400)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ProblemError(415, f"send {name} as application/json (got {media or 'nothing'})")
    limit: int = request.app.state.max_body
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProblemError(413, f"the body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ProblemError(413, f"the body is over {limit} bytes")
    try:
        # RFC 8259: UTF-8 only (json.loads of bytes would also take UTF-16 and UTF-32, and
        # surrogates encoded as UTF-8), and no NaN or Infinity, which are not JSON.
        doc = json.loads(body.decode("utf-8"), parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise ProblemError(400, f"the body is not JSON: {exc}"[:200], "INVALID_MSG_FORMAT") from exc
    where = _lone_surrogate(doc) if _ESCAPED_SURROGATE.search(body) else None
    if where is not None:
        # A "\ud800" escape alone is no Unicode text: nothing could encode or store it.
        reason = "holds a lone surrogate (not Unicode text)"
        raise ProblemError(
            400,
            f"{where}: {reason}",
            "INVALID_MSG_FORMAT",
            invalid=[InvalidParam(param=where, reason=reason)],
        )
    invalid = spec.validate(name, doc)
    if invalid:
        first = invalid[0]
        raise ProblemError(
            400, f"{first.param}: {first.reason}", "INVALID_MSG_FORMAT", invalid=invalid
        )
    assert isinstance(doc, dict)  # the schemas are objects
    return doc


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(doc: Any) -> str | None:
    """The path of the first member name or string of ``doc`` with a lone surrogate (a
    ``\\ud800`` escape without its pair), or None. Iterative: a document is as deep as the
    JSON parser allowed."""
    # Each entry: (node, its path as a linked list of (parent, key) pairs).
    todo: list[tuple[Any, Any]] = [(doc, None)]
    while todo:
        node, path = todo.pop()
        if isinstance(node, str):
            if not _is_text(node):
                return _path_name(path)
        elif isinstance(node, dict):
            for key, value in node.items():
                if not _is_text(key):
                    return _path_name((path, key))
                todo.append((value, (path, key)))
        elif isinstance(node, list):
            todo.extend((value, (path, index)) for index, value in enumerate(node))
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path_name(path: Any) -> str:
    parts: list[str] = []
    while path is not None:
        path, key = path
        # The name itself may hold the surrogate: shown escaped, as it was sent.
        parts.append(str(key).encode("utf-8", "backslashreplace").decode("utf-8"))
    return ".".join(reversed(parts)) or "body"


def _own_as(principal: Principal, as_svc_id: str, param: str) -> None:
    if not valid_id(as_svc_id):
        raise bad(param, f"must be {ID_RULE}")
    if not principal.may_act_as(as_svc_id):
        raise ProblemError(
            403,
            f"client {principal.client_id} may not act as AS {as_svc_id}",
            Cause.NOT_AUTHORIZED,
            invalid=[InvalidParam(param=param, reason="not an asSvcId of this client")],
        )


def _sender(principal: Principal, doc: dict[str, Any]) -> pb.Address:
    ori = doc["oriAddr"]
    if ori["addrType"] != "AS":
        raise bad("oriAddr.addrType", "an application server sends as AS")
    _own_as(principal, ori["addr"], "oriAddr.addr")
    return pb.Address(addr_type=pb.ADDR_TYPE_AS, addr=ori["addr"])


def _msg_id(doc: dict[str, Any]) -> str:
    value: str = doc["msgId"]
    if not valid_msg_id(value):
        raise bad("msgId", "must be 1-128 printable ASCII characters")
    return value


def _time(value: str, param: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise bad(param, "not an RFC 3339 date-time", "OPTIONAL_IE_INCORRECT") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise bad(param, "out of range", "OPTIONAL_IE_INCORRECT") from exc


def message_of(principal: Principal, doc: dict[str, Any], max_payload: int) -> pb.Message:
    """An ASMessageDelivery as the router's Message."""
    ori = _sender(principal, doc)
    dest = doc["destAddr"]
    dest_type = _ADDR_TYPES.get(dest["addrType"])
    if dest_type is None or dest_type == pb.ADDR_TYPE_AS:
        raise bad("destAddr.addrType", "an AS sends to UE, GROUP, TOPIC or BC")
    if not valid_id(dest["addr"]):
        raise bad("destAddr.addr", f"must be {ID_RULE}")
    msg = pb.Message(
        msg_id=_msg_id(doc),
        ori_addr=ori,
        dest_addr=pb.Address(addr_type=dest_type, addr=dest["addr"]),
        app_id=doc.get("appId", ""),
        priority=_PRIORITIES.get(doc.get("priority", ""), pb.PRIORITY_UNSPECIFIED),
        deliv_st_req_ind=bool(doc.get("delivStReqInd", False)),
        sto_and_fw_ind=bool(doc["stoAndFwInd"]),
        seg_ind=bool(doc.get("segInd", False)),
    )
    if len(msg.app_id) > MAX_APP_ID:
        raise bad("appId", f"at most {MAX_APP_ID} characters", "OPTIONAL_IE_INCORRECT")
    if "payload" in doc:
        payload: str = doc["payload"]
        if len(payload.encode()) > max_payload:
            raise ProblemError(
                413,
                f"payload: over {max_payload} bytes",
                Cause.PAYLOAD_TOO_LARGE,
                invalid=[InvalidParam(param="payload", reason=f"over {max_payload} bytes")],
            )
        msg.payload = payload
    expr = doc.get("stoAndFwParams", {}).get("exprTime")
    if expr is not None:
        msg.sto_and_fw_params.expr_time.CopyFrom(
            convert.timestamp(_time(expr, "stoAndFwParams.exprTime"))
        )
    if "latency" in doc:
        latency: int = doc["latency"]
        if latency <= 0:
            raise bad("latency", "must be a positive number of seconds", "OPTIONAL_IE_INCORRECT")
        msg.latency = min(latency, UINT32)
    seg = doc.get("segParams")
    if msg.seg_ind and seg is None:
        raise bad("segParams", "required when segInd is true", "OPTIONAL_IE_INCORRECT")
    if seg is not None:
        for name in ("totalSegCount", "segNumb"):
            # 0 is "not given": a UE is sent none.
            if not 0 <= seg.get(name, 0) <= MAX_SEG:
                raise bad(f"segParams.{name}", f"must be 1-{MAX_SEG}", "OPTIONAL_IE_INCORRECT")
        msg.seg_params.CopyFrom(
            pb.SegmentParams(
                seg_id=seg.get("segId", ""),
                total_seg_count=seg.get("totalSegCount", 0),
                seg_numb=seg.get("segNumb", 0),
                last_seg_flag=bool(seg.get("lastSegFlag", False)),
            )
        )
    return msg


def _address(addr: pb.Address) -> dict[str, str]:
    return convert.address_from_pb(addr).to_json()


def _router(request: Request) -> Any:
    """The router's async gRPC stub (Any: the stub class exists for the type checker only)."""
    return request.app.state.router


def _store(request: Request) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


def _as_store(request: Request) -> AsStore:
    store: AsStore = request.app.state.as_store
    return store


RouterDep = Annotated[Any, Depends(_router)]
StoreDep = Annotated[RegistryStore, Depends(_store)]
AsStoreDep = Annotated[AsStore, Depends(_as_store)]


def _failure(cause: str, detail: str) -> ProblemError:
    try:
        known = Cause(cause)
    except ValueError:
        known = Cause.INTERNAL_ERROR
    return ProblemError.of(known, detail or cause)


def router() -> APIRouter:
    api = APIRouter()

    @api.post(
        f"{ASREG}/registrations",
        status_code=201,
        tags=["AS registration"],
        summary="Register an application server (TS 29.538 MSGS_ASRegistration)",
        openapi_extra=spec.openapi_request("ASRegistration"),
        responses=_ok(
            "ASRegistrationAck",
            201,
            headers={"Location": {"required": True, "schema": {"type": "string"}}},
        ),
    )
    async def register_as(
        request: Request, principal: AsRegistrationDep, ases: AsStoreDep, router: RouterDep
    ) -> JSONResponse:
        doc = await read_json(request, "ASRegistration")
        as_svc_id: str = doc["asSvcId"]
        _own_as(principal, as_svc_id, "asSvcId")
        target: str = doc.get("targetUri", "")
        if target and not target.lower().startswith(("http://", "https://")):
            raise bad("targetUri", "must be an http or https URI", "OPTIONAL_IE_INCORRECT")
        app_id: str = doc.get("appId", "")
        if len(app_id) > MAX_ID:
            raise bad("appId", f"at most {MAX_ID} characters", "OPTIONAL_IE_INCORRECT")
        reg, created = await ases.register(
            as_svc_id,
            target_uri=target,
            app_id=app_id,
            profile=doc.get("asProf"),
            client_id=principal.client_id,
        )
        log.info(
            "as registered",
            extra={
                "asSvcId": as_svc_id,
                "registrationId": reg.registration_id,
                "targetUri": target,
                "new": created,
                "client": principal.client_id,
            },
        )
        if target:
            try:
                await router.WakeAs(rpb.WakeAsRequest(as_svc_id=as_svc_id), timeout=5)
            except grpc.aio.AioRpcError as exc:
                # Stored messages still go out on the router's next retry.
                log.warning("could not wake the router", extra={"code": exc.code().name})
        location = str(request.url_for("deregister_as", registrationId=reg.registration_id))
        ack = {
            "asSvcId": as_svc_id,
            "result": {"title": "Created" if created else "Updated", "status": 201},
        }
        return JSONResponse(ack, status_code=201, headers={"Location": location})

    @api.delete(
        f"{ASREG}/registrations/{{registrationId}}",
        status_code=204,
        name="deregister_as",
        tags=["AS DeRegistration"],
        summary="Delete an application server's registration",
        responses={204: {"description": "Deleted"}, **problem_responses(*_ERRORS)},
    )
    async def deregister_as(
        registrationId: Annotated[str, Path(description="AS registration Id")],
        principal: AsRegistrationDep,
        ases: AsStoreDep,
    ) -> Response:
        owner = await ases.owner(registrationId)
        if owner is None:
            raise ProblemError(404, f"no AS registration {registrationId}", "RESOURCE_NOT_FOUND")
        if not principal.may_act_as(owner):
            raise ProblemError(
                403,
                f"client {principal.client_id} may not act as AS {owner}",
                Cause.NOT_AUTHORIZED,
            )
        await ases.deregister(owner, registrationId)
        log.info("as deregistered", extra={"asSvcId": owner, "registrationId": registrationId})
        return Response(status_code=204)

    @api.post(
        f"{DELIVERY}/deliver-as-message",
        tags=["AS Message delivery"],
        summary="A2P: an application server sends to a UE, group, topic or broadcast area",
        openapi_extra=spec.openapi_request("ASMessageDelivery"),
        responses=_ok("MessageDeliveryAck"),
    )
    async def deliver_as_message(
        request: Request, principal: MsgDeliveryDep, router: RouterDep
    ) -> JSONResponse:
        doc = await read_json(request, "ASMessageDelivery")
        msg = message_of(principal, doc, request.app.state.max_payload)
        reply = await router.SubmitMessage(
            rpb.SubmitMessageRequest(
                message=msg, edge=pb.EdgeRef(kind=pb.EDGE_KIND_AS_API, edge_id="registry")
            ),
            timeout=request.app.state.grpc_timeout,
        )
        ack: dict[str, Any] = {"oriAddr": _address(msg.ori_addr), "msgId": msg.msg_id}
        if reply.result == pb.MSG_RESULT_FAILED:
            if reply.failure_cause != Cause.RECIPIENT_UNREACHABLE.value:
                raise _failure(reply.failure_cause, reply.failure_detail)
            # Not a bad request: the message could not be delivered and must not be stored.
            ack.update(status="DELY_FAILED", failureCause=reply.failure_cause)
        elif reply.result == pb.MSG_RESULT_STORED:
            ack["status"] = "DELY_STORED"
        if reply.failure_cause == Cause.DUPLICATE.value:
            ack["failureCause"] = Cause.DUPLICATE.value
        return JSONResponse(ack)

    @api.post(
        f"{DELIVERY}/deliver-report",
        tags=["AS/UE status report delivery"],
        summary="An application server's delivery status report about a message it received",
        openapi_extra=spec.openapi_request("DeliveryStatusReport"),
        responses=_ok("MessageDeliveryAck"),
    )
    async def deliver_report(
        request: Request, principal: MsgDeliveryDep, router: RouterDep
    ) -> JSONResponse:
        doc = await read_json(request, "DeliveryStatusReport")
        reporter = _sender(principal, doc)
        dest = doc["destAddr"]
        if dest["addrType"] != "UE":
            raise bad("destAddr.addrType", "a report goes to the UE that sent the message")
        deliv_st = _DELIV_ST.get(doc["delivSt"])
        if deliv_st is None:
            raise bad("delivSt", "REPT_DELY_SUCCESS or REPT_DELY_FAILED")
        imdn = pb.Imdn(
            ori_addr=reporter,
            dest_addr=pb.Address(addr_type=pb.ADDR_TYPE_UE, addr=dest["addr"]),
            msg_id=_msg_id(doc),
            deliv_st=deliv_st,
            failure_cause=doc.get("failureCause", "")[:MAX_ID],
        )
        reply = await router.SubmitReport(
            rpb.SubmitReportRequest(
                imdn=imdn, edge=pb.EdgeRef(kind=pb.EDGE_KIND_AS_API, edge_id="registry")
            ),
            timeout=request.app.state.grpc_timeout,
        )
        if not reply.ok:
            raise _failure(reply.failure_cause, reply.failure_detail)
        return JSONResponse({"oriAddr": _address(reporter), "msgId": imdn.msg_id})

    async def _topic_request(
        request: Request, principal: Principal, ases: AsStore
    ) -> tuple[str, list[str], dict[str, Any]]:
        doc = await read_json(request, "TopicSubscription")
        ori = _sender(principal, doc)
        topics: list[str] = doc["msgTopics"]
        for i, topic in enumerate(topics):
            if not valid_id(topic):
                raise bad(f"msgTopics.{i}", "1-128 characters of [A-Za-z0-9._~@:+-]")
        if await ases.get(ori.addr) is None:
            raise ProblemError.of(Cause.NOT_REGISTERED, f"AS {ori.addr} is not registered")
        return ori.addr, list(dict.fromkeys(topics)), doc

    @api.post(
        f"{TOPICS}/request-topic-subscription",
        tags=["Topic subscription"],
        summary="Subscribe an application server to messaging topics (TS 23.554 8.8)",
        openapi_extra=spec.openapi_request("TopicSubscription"),
        responses=_ok("TopicSubscription"),
    )
    async def subscribe(
        request: Request, principal: TopicDep, store: StoreDep, ases: AsStoreDep
    ) -> JSONResponse:
        as_svc_id, topics, doc = await _topic_request(request, principal, ases)
        until = math.inf
        if "exprTime" in doc:
            expires = _time(doc["exprTime"], "exprTime")
            if expires <= datetime.now(UTC):
                raise bad("exprTime", "in the past", "OPTIONAL_IE_INCORRECT")
            until = expires.timestamp() * 1000
        await store.subscribe(as_recipient(as_svc_id), topics, until)
        log.info("as subscribed", extra={"asSvcId": as_svc_id, "topics": topics})
        answer = {"oriAddr": doc["oriAddr"], "msgTopics": topics}
        if "exprTime" in doc:
            answer["exprTime"] = doc["exprTime"]
        return JSONResponse(answer)

    @api.post(
        f"{TOPICS}/request-topic-unsubscription",
        status_code=204,
        tags=["Topic subscription"],
        summary="Unsubscribe an application server from messaging topics",
        openapi_extra=spec.openapi_request("TopicSubscription"),
        responses={204: {"description": "Unsubscribed"}, **problem_responses(*_ERRORS)},
    )
    async def unsubscribe(
        request: Request, principal: TopicDep, store: StoreDep, ases: AsStoreDep
    ) -> Response:
        as_svc_id, topics, _ = await _topic_request(request, principal, ases)
        await store.unsubscribe(as_recipient(as_svc_id), topics)
        log.info("as unsubscribed", extra={"asSvcId": as_svc_id, "topics": topics})
        return Response(status_code=204)

    return api
