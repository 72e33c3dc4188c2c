"""``msgin5g``: act as a UE (over CoAP or MQTT) and manage the server, from a shell.

    msgin5g register ue-1
    msgin5g listen ue-2 --register          # in another terminal
    msgin5g send ue-1 ue-2 'hello' --report --wait
    msgin5g status <msgId> --from ue-1

Built on the UE client library (:class:`CoapUe`, :class:`MqttUe`) and, for the management
API of the registry, on the standard library's HTTP client. docs/cli.md has a full session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiocoap.error
import aiomqtt

from msgin5g_client.coap import CoapUe
from msgin5g_client.common import DownlinkDoc, RequestFailed, build_msg
from msgin5g_client.mqtt import MqttUe
from msgin5g_common import header as h

PROG = "msgin5g"
DEFAULT_COAP_PORT = 5683
DEFAULT_COAPS_PORT = 5684
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_COAP_PORT}"
DEFAULT_BROKER = "127.0.0.1:1883"
DEFAULT_API = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 10.0
HINT = "is `make run` running?"

Ue = CoapUe | MqttUe
HostPort = tuple[str, int]
Handler = Callable[[argparse.Namespace, "Output"], Coroutine[Any, Any, int]]


class CliError(Exception):
    """An expected failure: its message is printed as one line on stderr, exit code 1."""


class ApiFailed(Exception):
    """The registry refused a management request (a ProblemDetails answer)."""

    def __init__(self, status: int, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.status = status
        self.cause = cause
        self.detail = detail


# -- output --------------------------------------------------------------------------------------


class Output:
    """Results go to stdout, as text or as one JSON document per line (``--json``);
    progress notes go to stderr so that stdout stays machine-readable."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: str) -> None:
        line = json.dumps(data, separators=(",", ":"), ensure_ascii=False) if self.as_json else text
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        _error_line(text)


def _error_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# -- argument types ------------------------------------------------------------------------------


def _endpoint(value: str, default_port: int, schemes: tuple[str, ...]) -> HostPort:
    """``host``, ``host:port``, ``[v6]:port`` or ``scheme://host:port``."""
    text = value.strip()
    for scheme in schemes:
        if text.lower().startswith(f"{scheme}://"):
            text = text[len(scheme) + 3 :]
    text = text.rstrip("/")
    port_text = ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"not host[:port]: {value!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # a host name, or a bare IPv6 address
    if not host:
        raise argparse.ArgumentTypeError(f"no host in {value!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"not a port number: {port_text!r}")
    return host, int(port_text)


def coap_server(value: str) -> HostPort:
    return _endpoint(value, DEFAULT_COAP_PORT, ("coap",))


def mqtt_broker(value: str) -> HostPort:
    return _endpoint(value, 1883, ("mqtt", "tcp"))


def api_url(value: str) -> str:
    parsed = urllib.parse.urlsplit(value if "://" in value else f"http://{value}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {value!r}")
    return number


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {value!r}")
    return int(value)


def point_in_time(value: str) -> datetime:
    """A number of seconds from now, or an RFC 3339 date-time with a time zone."""
    try:
        delta = float(value)
    except ValueError:
        pass
    else:
        if delta <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {value!r}")
        return datetime.now(UTC) + timedelta(seconds=delta)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"neither seconds nor an RFC 3339 date-time: {value!r} "
            "(examples: 3600, 2030-01-01T00:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"the date-time needs a time zone (Z or +01:00): {value!r}"
        )
    return parsed.astimezone(UTC)


def identifier(value: str) -> str:
    if not h.valid_id(value):
        raise argparse.ArgumentTypeError(
            f"not an identifier: {value!r} (1-128 characters of A-Z a-z 0-9 . _ ~ @ : + -)"
        )
    return value


def originator(value: str) -> str:
    """``UE:id`` or ``AS:id``; a bare id is a UE."""
    kind, sep, ident = value.partition(":")
    if not sep or kind.upper() not in ("UE", "AS"):
        kind, ident = "UE", value
    identifier(ident)
    return f"{kind.upper()}:{ident}"


# -- connections ---------------------------------------------------------------------------------


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def endpoint_text(args: argparse.Namespace) -> str:
    """What a command talks to, for error messages."""
    if getattr(args, "uses", "ue") == "api":
        return str(args.api)
    if args.transport == "mqtt":
        host, port = args.broker
        return f"mqtt://{_host_text(host)}:{port}"
    host, port = args.server
    if getattr(args, "psk", None):
        port = DEFAULT_COAPS_PORT if port == DEFAULT_COAP_PORT else port
        return f"coaps://{_host_text(host)}:{port}"
    return f"coap://{_host_text(host)}:{port}"


def make_ue(args: argparse.Namespace, ue_id: str) -> Ue:
    if args.transport == "mqtt":
        # A client identifier of its own: the UE's own connection (another msgin5g listen,
        # a device) must not be taken over by the broker.
        client_id = f"{ue_id}.cli-{uuid.uuid4().hex[:8]}"
        password = getattr(args, "password", None)
        return MqttUe(
            ue_id,
            args.broker,
            timeout=args.timeout,
            client_id=None if password else client_id,
            username=ue_id if password else None,
            password=password,
        )
    psk = getattr(args, "psk", None)
    host, port = args.server
    if psk and port == DEFAULT_COAP_PORT:
        port = DEFAULT_COAPS_PORT
    return CoapUe(ue_id, (host, port), timeout=args.timeout, psk=psk)


def downlink(
    ue: Ue, *, auto_ack: bool, established: asyncio.Future[None]
) -> AsyncIterator[DownlinkDoc]:
    """The UE's incoming documents: the observed inbox (CoAP) or the downlink topic (MQTT)."""
    if isinstance(ue, CoapUe):
        return ue.observe(auto_ack=auto_ack, on_established=established)
    established.set_result(None)  # the downlink topic is subscribed from the start
    return ue.messages(auto_ack=auto_ack)


def _failed(cause: str | None, detail: str | None) -> RequestFailed:
    return RequestFailed(cause or "UNKNOWN", detail or "")


# -- text of documents ---------------------------------------------------------------------------


def describe(doc: DownlinkDoc, ue: str) -> str:
    """One line for an incoming document: ``[HIGH] from UE:ue-2 (msgId m-1): hello``."""
    if isinstance(doc, h.Imdn):
        cause = f" ({doc.failure_cause})" if doc.failure_cause else ""
        return f"report from {doc.ori_addr} (msgId {doc.msg_id}): {doc.deliv_st.value}{cause}"
    if isinstance(doc, h.SegRec):
        missing = ", ".join(str(n) for n in doc.missing)
        return f"the server asks for segment(s) {missing} of message {doc.seg_id} again"
    prefix = f"[{doc.priority.value}] " if doc.priority else ""
    to = ""
    if doc.dest_addr != h.Address(h.AddrType.UE, ue):
        to = f" to {doc.dest_addr}"
    extra = [f"msgId {doc.msg_id}"]
    if doc.app_id:
        extra.append(f"appId {doc.app_id}")
    if doc.deliv_st_req_ind:
        extra.append("report requested")
    payload = doc.payload if doc.payload is not None else "(no payload)"
    return f"{prefix}from {doc.ori_addr}{to} ({', '.join(extra)}): {payload}"


def result_text(result: h.MsgResult, dest: h.Address) -> str:
    """What a MSGRESP result means for the sender, in words."""
    if dest.addr_type in (h.AddrType.UE, h.AddrType.AS):
        if result is h.MsgResult.ACCEPTED:
            return "the recipient is reachable: the message is on its way"
        if result is h.MsgResult.STORED:
            return "the recipient is not reachable now: it gets the message when it shows up"
    elif result in (h.MsgResult.ACCEPTED, h.MsgResult.STORED):
        return f"each recipient gets its own copy: `{PROG} status` lists them"
    return ""


# -- UE commands ---------------------------------------------------------------------------------


async def _register(ue: Ue, args: argparse.Namespace) -> h.RegResp:
    options: dict[str, Any] = {}
    if getattr(args, "bc_area", None):
        options["bc_area"] = args.bc_area
    if getattr(args, "max_seg_size", None):
        options["max_seg_size"] = args.max_seg_size
    lifetime = getattr(args, "lifetime", None) or h.DEFAULT_LIFETIME
    resp = await ue.register(lifetime, **options)
    if resp.result is not h.Result.SUCCESS:
        raise _failed(resp.failure_cause, resp.failure_detail)
    return resp


def _registered_text(resp: h.RegResp, transport: str) -> str:
    return f"{resp.ue_svc_id} registered for {resp.lifetime} s over {transport}"


async def cmd_register(args: argparse.Namespace, out: Output) -> int:
    async with make_ue(args, args.ue) as ue:
        resp = await _register(ue, args)
    out.emit(h.to_json(resp), _registered_text(resp, args.transport))
    return 0


async def cmd_deregister(args: argparse.Namespace, out: Output) -> int:
    async with make_ue(args, args.ue) as ue:
        resp = await ue.deregister()
    if resp.result is not h.Result.SUCCESS:
        raise _failed(resp.failure_cause, resp.failure_detail)
    out.emit(h.to_json(resp), f"{resp.ue_svc_id} deregistered over {args.transport}")
    return 0


def _destination(args: argparse.Namespace) -> h.AddrType:
    for flag, kind in (
        ("to_group", h.AddrType.GROUP),
        ("to_topic", h.AddrType.TOPIC),
        ("to_as", h.AddrType.AS),
        ("to_area", h.AddrType.BC),
    ):
        if getattr(args, flag):
            return kind
    return h.AddrType.UE


async def cmd_send(args: argparse.Namespace, out: Output) -> int:
    msg = build_msg(
        args.sender,
        args.to,
        args.text,
        dest_type=_destination(args),
        msg_id=args.msg_id,
        priority=h.Priority(args.priority) if args.priority else None,
        app_id=args.app_id,
        deliv_st_req_ind=args.report or args.wait,
        sto_and_fw_ind=not args.no_store,
        expr_time=args.expires,
    )
    async with make_ue(args, args.sender) as ue:
        if args.register:
            out.note(_registered_text(await _register(ue, args), args.transport))
        resp = await ue.send_msg(msg)
        if resp.result is h.MsgResult.FAILED:
            raise _failed(resp.failure_cause, resp.failure_detail)
        note = result_text(resp.result, msg.dest_addr)
        if resp.failure_cause:
            note = f"{resp.failure_cause}: {resp.failure_detail or 'the first outcome'}"
        out.emit(
            h.to_json(resp),
            f"sent {msg.msg_id} to {msg.dest_addr}: {resp.result.value}"
            + (f" ({note})" if note else ""),
        )
        if not args.wait:
            return 0
        report = await _wait_for_report(ue, msg, args.timeout)
    out.emit(h.to_json(report), describe(report, args.sender))
    if report.deliv_st is not h.DelivSt.REPT_DELY_SUCCESS:
        raise CliError(
            f"{msg.msg_id} was not delivered to {report.ori_addr}: "
            f"{report.failure_cause or report.deliv_st.value}"
        )
    return 0


async def _wait_for_report(ue: Ue, msg: h.Msg, within: float) -> h.Imdn:
    """Waits for the IMDN about ``msg`` and acknowledges it; other documents of the sender
    are left pending (not acknowledged) for its own ``msgin5g listen``."""
    established: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    try:
        async with asyncio.timeout(within):
            docs = downlink(ue, auto_ack=False, established=established)
            try:
                async for doc in docs:
                    if isinstance(doc, h.Imdn) and doc.msg_id == msg.msg_id:
                        await ue.ack(doc)
                        return doc
            finally:
                await _close(docs)
    except TimeoutError:
        pass
    raise CliError(
        f"no delivery report for {msg.msg_id} within {within:g} s; the message stays "
        f"pending: `{PROG} status {msg.msg_id} --from {ue.ue_svc_id}` shows where it is"
    )


async def _close(docs: AsyncIterator[DownlinkDoc]) -> None:
    """Ends an iteration over incoming documents now (for CoAP: cancels the observation)."""
    if isinstance(docs, AsyncGenerator):
        await docs.aclose()


async def cmd_listen(args: argparse.Namespace, out: Output) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    async with make_ue(args, args.ue) as ue:
        if args.register:
            out.note(_registered_text(await _register(ue, args), args.transport))
        established: asyncio.Future[None] = loop.create_future()
        received = 0

        async def consume() -> None:
            nonlocal received
            docs = downlink(ue, auto_ack=not args.no_ack, established=established)
            try:
                async for doc in docs:
                    out.emit(h.to_json(doc), describe(doc, args.ue))
                    received += 1
                    if args.count is not None and received >= args.count:
                        return
            finally:
                await _close(docs)

        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(consume())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, established}, return_when=asyncio.FIRST_COMPLETED)
            if established.done() and not task.done():
                where = "inbox" if args.transport == "coap" else "downlink topic"
                acking = "not acknowledging" if args.no_ack else "acknowledging"
                out.note(
                    f"listening to {args.ue}'s {where} on {endpoint_text(args)}, {acking} "
                    "what arrives; Ctrl-C stops"
                )
                await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            stopping.cancel()
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # raises what the listening failed with
    if stop.is_set():
        out.note(f"stopped after {received} document(s)")
    return 0


async def cmd_subscribe(args: argparse.Namespace, out: Output) -> int:
    async with make_ue(args, args.ue) as ue:
        resp = await ue.subscribe(args.topics, args.until)
    if resp.result is not h.Result.SUCCESS:
        raise _failed(resp.failure_cause, resp.failure_detail)
    until = f" until {h.format_time(args.until)}" if args.until else ""
    out.emit(h.to_json(resp), f"{args.ue} subscribed to {', '.join(args.topics)}{until}")
    return 0


async def cmd_unsubscribe(args: argparse.Namespace, out: Output) -> int:
    async with make_ue(args, args.ue) as ue:
        resp = await ue.unsubscribe(args.topics)
    if resp.result is not h.Result.SUCCESS:
        raise _failed(resp.failure_cause, resp.failure_detail)
    out.emit(h.to_json(resp), f"{args.ue} unsubscribed from {', '.join(args.topics)}")
    return 0


# -- management API ------------------------------------------------------------------------------


class Api:
    """The registry's management API (``/api/v1``), over urllib in a worker thread."""

    def __init__(self, base: str, token: str | None, timeout: float) -> None:
        self.base = base
        self.token = token
        self.timeout = timeout
        host = urllib.parse.urlsplit(base).hostname or ""
        # A proxy from the environment must not catch requests to this machine.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers)

    async def call(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        return await asyncio.to_thread(self._call, method, path, body, query)

    def _call(
        self, method: str, path: str, body: Any, query: dict[str, str] | None
    ) -> tuple[int, Any]:
        url = self.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            raise _problem(exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise TimeoutError from None
            raise CliError(f"cannot reach {self.base}: {_reason(exc.reason)}: {HINT}") from None
        return status, json.loads(raw) if raw else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


def _problem(status: int, raw: bytes) -> ApiFailed:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return ApiFailed(status, f"HTTP {status}", raw.decode(errors="replace")[:200])
    cause = str(body.get("cause") or body.get("title") or f"HTTP {status}")
    detail = str(body.get("detail") or "")
    params = body.get("invalidParams")
    if isinstance(params, list) and params:
        named = "; ".join(
            f"{p.get('param')}: {p.get('reason')}" for p in params if isinstance(p, dict)
        )
        detail = f"{detail} ({named})" if detail else named
    if status in (401, 403):
        detail += " (the management API needs an admin token: --token or MSGIN5G_TOKEN)"
    return ApiFailed(status, cause, detail.strip())


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def api(args: argparse.Namespace) -> Api:
    return Api(args.api, args.token, args.timeout)


def _time(value: str | None, *, short: bool = False) -> str:
    """An API date-time, as ``2025-01-02T03:04:05.678Z`` (``03:04:05.678`` if short)."""
    if not value:
        return "-"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return value
    text = h.format_time(parsed)
    return text[11:-1] if short else text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _addr_text(addr: Any) -> str:
    if isinstance(addr, dict):
        return f"{addr.get('addrType')}:{addr.get('addr')}"
    return str(addr)


async def cmd_status(args: argparse.Namespace, out: Output) -> int:
    query = {"ori": args.sender, "limit": str(args.limit)}
    if args.after:
        query["after"] = args.after
    _, state = await api(args).call("GET", f"/api/v1/messages/{_seg(args.msg_id)}", query=query)
    rows = [
        (
            _addr_text(r.get("rcptAddr")),
            str(r.get("state")) + (f" ({r['failureCause']})" if r.get("failureCause") else ""),
            str(r.get("attempts", 0)),
            r.get("deliveryReport") or "-",
            ", ".join(f"{t['state']} {_time(t['at'], short=True)}" for t in r.get("history", [])),
        )
        for r in state.get("recipients", [])
    ]
    lines = [
        f"message {state['msgId']} from {_addr_text(state['oriAddr'])} "
        f"to {_addr_text(state['destAddr'])}: {state['result']}",
        f"accepted {_time(state.get('acceptedAt'))}, expires {_time(state.get('expiresAt'))}",
        _table(("RECIPIENT", "STATE", "ATTEMPTS", "REPORT", "HISTORY (UTC)"), rows),
    ]
    summary = state.get("summary") or {}
    if summary:
        lines.append("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.items())))
    if state.get("next"):
        lines.append(f"more recipients: add --after {state['next']}")
    out.emit(state, "\n".join(lines))
    return 0


async def _all_members(client: Api, group: str) -> dict[str, Any]:
    path = f"/api/v1/groups/{_seg(group)}"
    _, page = await client.call("GET", path, query={"limit": "10000"})
    members: list[str] = list(page["members"])
    while page.get("next"):
        _, page = await client.call("GET", path, query={"limit": "10000", "after": page["next"]})
        members.extend(page["members"])
    return {"groupSvcId": group, "memberCount": page["memberCount"], "members": members}


def _members_text(group: dict[str, Any]) -> str:
    count = group["memberCount"]
    lines = [f"group {group['groupSvcId']}: {count} member{'s' if count != 1 else ''}"]
    lines.extend(f"  {m}" for m in group["members"])
    return "\n".join(lines)


async def cmd_group(args: argparse.Namespace, out: Output) -> int:
    client = api(args)
    path = f"/api/v1/groups/{_seg(args.group)}"
    action = args.group_action
    if action == "create":
        status, body = await client.call("PUT", path, {"members": args.members})
        verb = "created" if status == 201 else "replaced"
        out.emit(body, f"group {args.group} {verb} with {body['memberCount']} member(s)")
    elif action == "show":
        group = await _all_members(client, args.group)
        out.emit(group, _members_text(group))
    elif action == "add":
        _, body = await client.call("POST", f"{path}/members", {"members": args.members})
        out.emit(body, f"group {args.group} has {body['memberCount']} member(s)")
    elif action == "remove":
        for member in args.members:
            await client.call("DELETE", f"{path}/members/{_seg(member)}")
        out.emit(
            {"groupSvcId": args.group, "removed": args.members},
            f"removed {', '.join(args.members)} from group {args.group}",
        )
    else:
        await client.call("DELETE", path)
        out.emit({"groupSvcId": args.group, "deleted": True}, f"group {args.group} deleted")
    return 0


def _ue_text(ue: dict[str, Any]) -> str:
    if not ue.get("registered"):
        return f"{ue['ueSvcId']}: known, not registered (messages to it are stored)"
    lines = [f"{ue['ueSvcId']}: registered over {ue.get('transport')}"]
    for key, label in (
        ("lifetime", "lifetime (s)"),
        ("registeredAt", "registered at"),
        ("expiresAt", "expires at"),
        ("deliveryMode", "delivery mode"),
        ("bcArea", "broadcast area"),
        ("maxSegSize", "max segment size"),
    ):
        if ue.get(key) is not None:
            value = _time(ue[key]) if key.endswith("At") else str(ue[key])
            lines.append(f"  {label}: {value}")
    return "\n".join(lines)


async def cmd_ue(args: argparse.Namespace, out: Output) -> int:
    path = f"/api/v1/ues/{_seg(args.ue)}"
    if args.ue_action == "provision":
        status, body = await api(args).call("PUT", path)
        verb = "provisioned" if status == 201 else "was already known"
        out.emit(body, f"{args.ue} {verb}: messages to it are stored until it registers")
    else:
        _, body = await api(args).call("GET", path)
        out.emit(body, _ue_text(body))
    return 0


async def cmd_topic(args: argparse.Namespace, out: Output) -> int:
    _, body = await api(args).call("GET", f"/api/v1/topics/{_seg(args.topic)}")
    subs = body.get("subscribers", [])
    lines = [f"topic {args.topic}: {len(subs)} subscriber{'s' if len(subs) != 1 else ''}"]
    lines.extend(
        f"  {s['ueSvcId']}" + (f" until {_time(s['exprTime'])}" if s.get("exprTime") else "")
        for s in subs
    )
    out.emit(body, "\n".join(lines))
    return 0


# -- the parser ----------------------------------------------------------------------------------


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _add_common(parser: argparse.ArgumentParser, uses: str, *, top: bool = False) -> None:
    """The connection options. On the tool they carry the defaults; on each subcommand they
    are accepted too (``msgin5g send --transport mqtt ...``) and override only when given."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection options")
    if uses in ("ue", "all"):
        group.add_argument(
            "--transport",
            choices=("coap", "mqtt"),
            default=default("coap"),
            help="how the UE talks to the server (default: coap)",
        )
        group.add_argument(
            "--server",
            type=coap_server,
            metavar="HOST[:PORT]",
            default=default(_env("MSGIN5G_SERVER", DEFAULT_SERVER)),
            help=f"the CoAP server (env MSGIN5G_SERVER, default {DEFAULT_SERVER})",
        )
        group.add_argument(
            "--psk",
            default=default(os.environ.get("MSGIN5G_PSK") or None),
            help="the UE's DTLS pre-shared key (env MSGIN5G_PSK): CoAP over coaps://, PSK "
            f"identity = the UE; port {DEFAULT_COAP_PORT} of --server becomes {DEFAULT_COAPS_PORT}",
        )
        group.add_argument(
            "--password",
            default=default(os.environ.get("MSGIN5G_PASSWORD") or None),
            help="the UE's MQTT password (env MSGIN5G_PASSWORD): username and client id = the UE",
        )
        group.add_argument(
            "--broker",
            type=mqtt_broker,
            metavar="HOST[:PORT]",
            default=default(_env("MSGIN5G_BROKER", DEFAULT_BROKER)),
            help=f"the MQTT broker (env MSGIN5G_BROKER, default {DEFAULT_BROKER})",
        )
    if uses in ("api", "all"):
        group.add_argument(
            "--api",
            type=api_url,
            metavar="URL",
            default=default(_env("MSGIN5G_API", DEFAULT_API)),
            help=f"the registry's HTTP API (env MSGIN5G_API, default {DEFAULT_API})",
        )
        group.add_argument(
            "--token",
            default=default(os.environ.get("MSGIN5G_TOKEN") or None),
            help="admin bearer token for the management API when auth is on "
            "(env MSGIN5G_TOKEN; `make run` needs none)",
        )
    group.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        default=default(DEFAULT_TIMEOUT),
        help=f"how long to wait for each answer (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print results as JSON, one document per line",
    )


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-paragraph description to the terminal; keeps examples as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _command(
    subparsers: Any,
    name: str,
    handler: Handler,
    uses: str,
    summary: str,
    description: str,
    example: str,
    action: str | None = None,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n{example}",
        formatter_class=_HelpFormatter,
    )
    parser.set_defaults(handler=handler, uses=uses, action=action or name)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Talk to an MSGin5G server from a shell. The UE commands (register, send, listen, "
            "subscribe, ...) act as the UE you name, over CoAP or MQTT, exactly as a device "
            "would; the management commands (status, group, ue, topic) use the registry's "
            "HTTP API. The defaults fit `make run` on this machine. A UE must be registered "
            "before it sends or listens (`msgin5g register UE`, or --register)."
        ),
        epilog=(
            "example (with `make run` going):\n"
            f"  {PROG} listen ue-2 --register          # terminal 1: ue-2 waits for messages\n"
            f"  {PROG} register ue-1                   # terminal 2\n"
            f"  {PROG} send ue-1 ue-2 hello --report --wait\n"
            f"  {PROG} status <msgId> --from ue-1\n"
            f"\n{PROG} COMMAND --help explains each command; docs/cli.md has a full session."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_common(parser, "all", top=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    p = _command(
        sub, "register", cmd_register, "ue",
        "register a UE with the server",
        "Registers the UE: from then on it may send, and the server delivers to it. "
        "Registering again refreshes the registration. Over MQTT, messages stored for the UE "
        "are published right after the registration: to receive them, use "
        "`listen UE --register` instead.",
        f"  {PROG} register ue-1 --lifetime 3600\n  ue-1 registered for 3600 s over coap",
    )  # fmt: skip
    p.add_argument("ue", metavar="UE", type=identifier, help="the UE Service ID, e.g. ue-1")
    _add_register_options(p)
    _add_common(p, "ue")

    p = _command(
        sub, "deregister", cmd_deregister, "ue",
        "end a UE's registration",
        "Ends the UE's registration. The UE stays known: messages to it are stored until it "
        "registers again (or they expire).",
        f"  {PROG} deregister ue-1",
    )  # fmt: skip
    p.add_argument("ue", metavar="UE", type=identifier, help="the UE Service ID")
    _add_common(p, "ue")

    p = _command(
        sub, "send", cmd_send, "ue",
        "send a message as a UE",
        "Sends TEXT from the UE FROM to TO: another UE by default, or a group, a messaging "
        "topic, an application server or a broadcast area. FROM must be registered (register "
        "it first, or add --register). Prints the msgId and the server's answer: ACCEPTED "
        "(on its way), STORED (kept until the recipient shows up) or an error. With --wait "
        "it then waits (up to --timeout) for the recipient's delivery report. While waiting "
        "it acknowledges only that report, so run it when FROM has no other pending "
        "messages (or receive them with `listen`).",
        f"  {PROG} send ue-1 ue-2 'hello' --priority HIGH --report --wait\n"
        "  sent 5f0c... to UE:ue-2: ACCEPTED (...)\n"
        "  report from UE:ue-2 (msgId 5f0c...): REPT_DELY_SUCCESS\n"
        f"  {PROG} send ue-1 meters 'reading 42' --to-as",
    )  # fmt: skip
    p.add_argument("sender", metavar="FROM", type=identifier, help="the sending UE")
    p.add_argument("to", metavar="TO", type=identifier, help="the recipient (a UE unless --to-*)")
    p.add_argument("text", metavar="TEXT", help="the payload (up to 2048 bytes by default)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--to-group", action="store_true", help="TO is a group (FROM a member)")
    kind.add_argument("--to-topic", action="store_true", help="TO is a messaging topic")
    kind.add_argument("--to-as", action="store_true", help="TO is an application server")
    kind.add_argument("--to-area", action="store_true", help="TO is a broadcast area")
    p.add_argument(
        "--priority",
        type=str.upper,
        choices=[x.value for x in h.Priority],
        help="delivery order in the recipient's inbox",
    )
    p.add_argument("--report", action="store_true", help="ask for a delivery report (IMDN)")
    p.add_argument(
        "--wait", action="store_true", help="wait for the delivery report (implies --report)"
    )
    p.add_argument(
        "--expires",
        type=point_in_time,
        metavar="SECONDS|RFC3339",
        help="drop the message if undelivered by then: seconds from now, or a date-time "
        "such as 2030-01-01T00:00:00Z (default: 7 days)",
    )
    p.add_argument(
        "--no-store",
        action="store_true",
        help="fail (RECIPIENT_UNREACHABLE) instead of storing when the recipient is away",
    )
    p.add_argument("--app-id", metavar="X", help="an application id the recipient gets as is")
    p.add_argument("--msg-id", metavar="ID", help="the msgId (default: a new UUID)")
    p.add_argument("--register", action="store_true", help="register FROM first")
    _add_register_options(p)
    _add_common(p, "ue")

    p = _command(
        sub, "listen", cmd_listen, "ue",
        "print the messages a UE receives",
        "Receives as the UE: observes its inbox (CoAP) or subscribes to its downlink topic "
        "(MQTT), prints each message and delivery report as it arrives, and acknowledges "
        "each one (and sends the delivery report a sender asked for), unless --no-ack. "
        "Over CoAP, what waited in the inbox comes first. Runs until Ctrl-C, or until "
        "--count documents have arrived.",
        f"  {PROG} listen ue-2 --register\n"
        "  [HIGH] from UE:ue-1 (msgId 5f0c..., report requested): hello",
    )  # fmt: skip
    p.add_argument("ue", metavar="UE", type=identifier, help="the receiving UE")
    p.add_argument("--count", type=positive_int, metavar="N", help="exit after N documents")
    p.add_argument(
        "--no-ack",
        action="store_true",
        help="do not acknowledge: the documents stay pending and come again",
    )
    p.add_argument("--register", action="store_true", help="register the UE first")
    _add_register_options(p)
    _add_common(p, "ue")

    for name, handler, verb, description in (
        (
            "subscribe", cmd_subscribe, "subscribe a UE to messaging topics",
            "Subscribes the UE to the topics: messages sent to a topic (send --to-topic) "
            "reach every UE subscribed at that time. Lasts until unsubscribed, or --until.",
        ),
        (
            "unsubscribe", cmd_unsubscribe, "unsubscribe a UE from messaging topics",
            "Ends the UE's subscription to the topics.",
        ),
    ):  # fmt: skip
        p = _command(
            sub, name, handler, "ue", verb, description, f"  {PROG} {name} ue-1 news weather"
        )
        p.add_argument("ue", metavar="UE", type=identifier, help="the UE")
        p.add_argument("topics", metavar="TOPIC", nargs="+", type=identifier, help="topic names")
        if name == "subscribe":
            p.add_argument(
                "--until",
                type=point_in_time,
                metavar="SECONDS|RFC3339",
                help="end of the subscription: seconds from now, or a date-time",
            )
        _add_common(p, "ue")

    p = _command(
        sub, "status", cmd_status, "api",
        "show a message's delivery state",
        "Shows where a message is, per recipient: its state (ACCEPTED, STORED, FORWARDED, "
        "DELIVERED, EXPIRED, FAILED), how often it was handed over, the delivery report and "
        "when each step happened. A message is named by its msgId and its sender.",
        f"  {PROG} status 5f0c... --from ue-1\n"
        "  message 5f0c... from UE:ue-1 to UE:ue-2: ACCEPTED\n"
        "  RECIPIENT  STATE      ATTEMPTS  REPORT             HISTORY (UTC)\n"
        "  UE:ue-2    DELIVERED  1         REPT_DELY_SUCCESS  ACCEPTED 10:00:00.120, ...",
    )  # fmt: skip
    p.add_argument("msg_id", metavar="MSGID", help="the msgId")
    p.add_argument(
        "--from",
        dest="sender",
        required=True,
        type=originator,
        metavar="UE|AS:id",
        help="the sender: a UE (ue-1 or UE:ue-1) or an application server (AS:meters)",
    )
    p.add_argument(
        "--limit", type=positive_int, default=100, metavar="N", help="recipients per page (100)"
    )
    p.add_argument("--after", metavar="RECIPIENT", help="the page after this recipient")
    _add_common(p, "api")

    group = sub.add_parser(
        "group",
        help="create, show, change and delete groups",
        description="Group profiles on the registry: a message to a group (send --to-group) "
        "reaches every member but its sender; only members may send to a group.",
        epilog=f"example:\n  {PROG} group create field-team ue-1 ue-2\n"
        f"  {PROG} group add field-team ue-3\n  {PROG} group show field-team",
        formatter_class=_HelpFormatter,
    )
    actions = group.add_subparsers(title="actions", metavar="ACTION", required=True)
    for name, summary, members, description in (
        (
            "create", "create a group, or replace its members", "+",
            "Creates the group with the members given (1 to 100,000 UE ids), or replaces the "
            "members of an existing group. Members need not be registered. A message to the "
            "group (send --to-group) reaches every member but its sender, and only members "
            "may send one.",
        ),
        ("show", "list a group's members", None, "Lists the group's members, in id order."),
        (
            "add", "add members (creates the group when new)", "+",
            "Adds members to the group; creates the group when it does not exist yet.",
        ),
        (
            "remove", "remove members", "+",
            "Removes members from the group; naming a UE that is not a member is an error.",
        ),
        ("delete", "delete the group", None, "Deletes the group profile."),
    ):  # fmt: skip
        tail = " ue-1 ue-2" if members else ""
        p = _command(
            actions, name, cmd_group, "api", summary, description,
            f"  {PROG} group {name} field-team{tail}", action=f"group {name}",
        )  # fmt: skip
        p.set_defaults(group_action=name)
        p.add_argument("group", metavar="GROUP", type=identifier, help="the group's id")
        if members:
            p.add_argument(
                "members", metavar="MEMBER", nargs=members, type=identifier, help="UE ids"
            )
        _add_common(p, "api")

    ue = sub.add_parser(
        "ue",
        help="show or provision a UE",
        description="A UE's record on the registry.",
        epilog=f"example:\n  {PROG} ue show ue-1\n  {PROG} ue provision meter-17",
        formatter_class=_HelpFormatter,
    )
    ue_actions = ue.add_subparsers(title="actions", metavar="ACTION", required=True)
    for name, summary, description in (
        (
            "show", "show a UE's registration",
            "Shows whether the UE is registered, over which transport, and until when.",
        ),
        (
            "provision", "make a UE known before it registers",
            "Makes the UE known: messages to it are then stored until it registers, instead "
            "of failing with UNKNOWN_RECIPIENT.",
        ),
    ):  # fmt: skip
        p = _command(
            ue_actions, name, cmd_ue, "api", summary, description,
            f"  {PROG} ue {name} ue-1", action=f"ue {name}",
        )  # fmt: skip
        p.set_defaults(ue_action=name)
        p.add_argument("ue", metavar="UE", type=identifier, help="the UE Service ID")
        _add_common(p, "api")

    topic = sub.add_parser(
        "topic",
        help="show a messaging topic's subscribers",
        description="Messaging topics on the registry.",
        epilog=f"example:\n  {PROG} topic show news",
        formatter_class=_HelpFormatter,
    )
    topic_actions = topic.add_subparsers(title="actions", metavar="ACTION", required=True)
    p = _command(
        topic_actions, "show", cmd_topic, "api", "list a topic's subscribers",
        "Lists the UEs subscribed to the topic now, and until when.",
        f"  {PROG} topic show news", action="topic show",
    )  # fmt: skip
    p.add_argument("topic", metavar="TOPIC", type=identifier, help="the topic")
    _add_common(p, "api")
    return parser


def _add_register_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("registration options")
    group.add_argument(
        "--lifetime",
        type=positive_int,
        metavar="S",
        help=f"seconds the registration lasts (default {h.DEFAULT_LIFETIME})",
    )
    group.add_argument(
        "--bc-area", type=identifier, metavar="A", help="the broadcast area the UE is in"
    )
    group.add_argument(
        "--max-seg-size", type=positive_int, metavar="N", help="largest segment the UE takes"
    )


# -- main ----------------------------------------------------------------------------------------


def _message(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message of an expected failure (None: not an expected one)."""
    where = endpoint_text(args)
    match exc:
        case CliError():
            return str(exc)
        case RequestFailed() | ApiFailed():
            detail = f": {exc.detail}" if exc.detail else ""
            return f"{args.action} failed: {exc.cause}{detail}"
        case TimeoutError():
            return f"no answer from {where} within {args.timeout:g} s: {HINT}"
        case aiocoap.error.Error() | aiomqtt.MqttError() | OSError():
            return f"cannot reach {where}: {_why(exc)}: {HINT}"
    return None


def _why(exc: BaseException) -> str:
    """``connection refused`` from ``[Errno 111] Connection refused (ECONNREFUSED, ...)``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc.args[0]) if exc.args else str(exc)
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    text = re.sub(r"\s*\([A-Z]+,[^)]*\)$", "", text)
    return (text[:1].lower() + text[1:]) if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args, Output(args.json)))
    except KeyboardInterrupt:
        _error_line("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (msgin5g listen ... | head -1): nothing more to say, and
        # nothing for the interpreter to flush at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        message = _message(exc, args)
        if message is None:
            raise
        _error_line(message)
        return 1


if __name__ == "__main__":
    sys.exit(main())
