"""End-to-end: the ``msgin5g`` command-line tool, run as a real process against the system,
over CoAP and MQTT. A background ``msgin5g listen`` is awaited line by line, never slept for."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from msgin5g_client.cli import build_parser
from msgin5g_devstack.stack import Stack, free_port
from tests.conftest import new_ue_id

pytestmark = pytest.mark.e2e

CLI = (sys.executable, "-m", "msgin5g_client.cli")
TIMEOUT = 20.0
HINT = "is `make run` running?"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def docs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


def _env() -> dict[str, str]:
    """The tests' environment without MSGIN5G_* settings, which the tool would read."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MSGIN5G_")}


def _connection(stack: Stack) -> list[str]:
    coap_host, coap_port = stack.coap_addr
    mqtt_host, mqtt_port = stack.mqtt_addr
    return [
        "--server", f"{coap_host}:{coap_port}",
        "--broker", f"{mqtt_host}:{mqtt_port}",
        "--api", stack.http_url,
    ]  # fmt: skip


async def msgin5g(stack: Stack, *args: str, program: tuple[str, ...] = CLI) -> Run:
    """Runs the tool to its end."""
    proc = await asyncio.create_subprocess_exec(
        *program,
        *_connection(stack),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def ok(stack: Stack, *args: str) -> Run:
    run = await msgin5g(stack, *args)
    assert run.code == 0, f"msgin5g {' '.join(args)} exited {run.code}: {run.err}"
    return run


def failure(run: Run) -> str:
    """The one line an expected failure prints: exit code 1, no traceback."""
    assert run.code == 1, run
    assert "Traceback" not in run.err
    assert run.err.count("\n") == 1, run.err
    return run.err.strip()


class Listener:
    """A ``msgin5g listen`` running in the background."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    async def ready(self) -> str:
        """Waits for the line saying it listens (on stderr); returns what it said before."""
        said = ""
        while True:
            raw = await asyncio.wait_for(self.stderr.readline(), TIMEOUT)
            assert raw, f"msgin5g listen exited: {said}{(await self.stderr.read()).decode()}"
            line = raw.decode()
            if line.startswith("listening to "):
                return said
            said += line

    async def line(self) -> str:
        raw = await asyncio.wait_for(self.stdout.readline(), TIMEOUT)
        assert raw, "msgin5g listen ended without printing a document"
        return raw.decode().rstrip("\n")

    async def exit_code(self) -> int:
        return await asyncio.wait_for(self.proc.wait(), TIMEOUT)


@asynccontextmanager
async def listening(stack: Stack, *args: str) -> AsyncIterator[Listener]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *_connection(stack),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    listener = Listener(proc)
    try:
        await listener.ready()
        yield listener
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _table_row(run: Run, first_cell: str) -> list[str]:
    return next(line.split() for line in run.lines if line.startswith(f"{first_cell} "))


# -- help ------------------------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, path: str = "msgin5g") -> Iterator[tuple[str, str]]:
    """(command line, help text) of the tool and of every subcommand."""
    yield path, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


def test_every_command_explains_itself_with_an_example() -> None:
    helps = dict(_commands(build_parser()))
    expected = {
        "register", "deregister", "send", "listen", "subscribe", "unsubscribe", "status",
        "group create", "group show", "group add", "group remove", "group delete",
        "ue show", "ue provision", "topic show",
    }  # fmt: skip
    assert {f"msgin5g {c}" for c in expected} <= set(helps)
    for command, text in helps.items():
        usage, description = text.split("\n\n")[:2]
        assert usage.startswith(f"usage: {command} "), command
        assert description.endswith("."), (command, description)
        assert "\nexample" in text, command


async def test_console_script_prints_help(stack: Stack) -> None:
    script = Path(sys.executable).with_name("msgin5g")
    assert script.exists(), "the msgin5g console script is not installed in the virtualenv"
    run = await msgin5g(stack, "send", "--help", program=(str(script),))
    assert run.code == 0
    assert run.out.startswith("usage: msgin5g send")
    assert "FROM must be registered" in " ".join(run.out.split())
    assert "msgin5g send ue-1 ue-2" in run.out


# -- UE commands -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [("coap", "coap"), ("mqtt", "mqtt"), ("mqtt", "coap")],
    ids=["coap", "mqtt", "mqtt-to-coap"],
)
async def test_register_send_listen_report_status_deregister(
    stack: Stack, src: str, dst: str
) -> None:
    a, b = new_ue_id("cli-a"), new_ue_id("cli-b")
    first = f"m-{new_ue_id()}"
    sender = ("--transport", src)

    registered = await ok(stack, *sender, "register", a, "--lifetime", "3600")
    assert registered.out == f"{a} registered for 3600 s over {src}\n"

    async with listening(
        stack, "listen", b, "--register", "--count", "2", "--transport", dst
    ) as lb:
        sent = await ok(
            stack, *sender, "send", a, b, "hello there",
            "--priority", "high", "--app-id", "app-1", "--msg-id", first,
        )  # fmt: skip
        assert sent.out.startswith(f"sent {first} to UE:{b}: ACCEPTED")
        assert await lb.line() == f"[HIGH] from UE:{a} (msgId {first}, appId app-1): hello there"

        waited = await ok(stack, *sender, "--json", "send", a, b, "report back", "--wait")
        answer, report = waited.docs()
        assert answer["msgType"] == "MSGRESP"
        assert answer["result"] == "ACCEPTED"
        second = answer["msgId"]
        assert report == {
            "msgType": "IMDN",
            "oriAddr": {"addrType": "UE", "addr": b},
            "destAddr": {"addrType": "UE", "addr": a},
            "msgId": second,
            "delivSt": "REPT_DELY_SUCCESS",
        }
        assert await lb.line() == f"from UE:{a} (msgId {second}, report requested): report back"
        assert await lb.exit_code() == 0

    status = await ok(stack, "status", first, "--from", a)
    assert status.lines[0] == f"message {first} from UE:{a} to UE:{b}: ACCEPTED"
    assert _table_row(status, "RECIPIENT")[:4] == ["RECIPIENT", "STATE", "ATTEMPTS", "REPORT"]
    _, shown_state, attempts, shown_report, *history = _table_row(status, f"UE:{b}")
    assert (shown_state, attempts.isdigit(), shown_report) == ("DELIVERED", True, "-")
    assert history[0] == "ACCEPTED"
    [state] = (await ok(stack, "--json", "status", second, "--from", f"UE:{a}")).docs()
    [recipient] = state["recipients"]
    assert (recipient["state"], recipient["deliveryReport"]) == ("DELIVERED", "REPT_DELY_SUCCESS")
    assert {step["state"] for step in recipient["history"]} >= {"ACCEPTED", "DELIVERED"}

    [ue_b] = (await ok(stack, "--json", "ue", "show", b)).docs()
    assert (ue_b["registered"], ue_b["transport"]) == (True, dst)
    shown = await ok(stack, "ue", "show", a)
    assert shown.lines[0] == f"{a}: registered over {src}"
    assert "  lifetime (s): 3600" in shown.lines

    assert (await ok(stack, *sender, "deregister", a)).out == f"{a} deregistered over {src}\n"
    late = await msgin5g(stack, *sender, "send", a, b, "too late")
    assert failure(late) == f"send failed: NOT_REGISTERED: UE {a} is not registered"


async def test_listen_without_ack_sees_the_message_again_and_stops_on_ctrl_c(
    stack: Stack,
) -> None:
    a, b = new_ue_id("cli-a"), new_ue_id("cli-b")
    msg_id = f"m-{new_ue_id()}"
    await asyncio.gather(ok(stack, "register", a), ok(stack, "register", b))
    stored = await ok(
        stack, "send", a, b, "while you slept", "--msg-id", msg_id,
        "--priority", "LOW", "--expires", "3600",
    )  # fmt: skip
    assert stored.out.startswith(f"sent {msg_id} to UE:{b}: STORED")

    async with listening(stack, "listen", b, "--no-ack") as lb:
        assert await lb.line() == f"[LOW] from UE:{a} (msgId {msg_id}): while you slept"
        lb.proc.send_signal(signal.SIGINT)
        assert await lb.exit_code() == 0
        rest = (await lb.stderr.read()).decode()
        assert rest == "stopped after 1 document(s)\n"

    # Not acknowledged: not delivered (the router marks FORWARDED once the edge returns,
    # which may be after the listener printed the message).
    row = _table_row(await ok(stack, "status", msg_id, "--from", a), f"UE:{b}")
    assert row[1] in ("STORED", "FORWARDED")

    # Not acknowledged, so it comes again; this time it is acknowledged.
    again = await ok(stack, "--json", "listen", b, "--count", "1")
    [doc] = again.docs()
    assert (doc["msgType"], doc["msgId"], doc["priority"]) == ("MSG", msg_id, "LOW")
    assert "exprTime" in doc["stoAndFwParams"]
    row = _table_row(await ok(stack, "status", msg_id, "--from", a), f"UE:{b}")
    assert row[1] == "DELIVERED"


async def test_send_outcomes_stored_duplicate_unreachable_expired_and_no_report(
    stack: Stack,
) -> None:
    a, b = new_ue_id("cli-a"), new_ue_id("cli-b")
    msg_id = f"m-{new_ue_id()}"
    await ok(stack, "register", a)

    unknown = await msgin5g(stack, "send", a, b, "anyone there?")
    assert failure(unknown) == f"send failed: UNKNOWN_RECIPIENT: UE:{b} is not known"
    provisioned = await ok(stack, "ue", "provision", b)
    assert provisioned.out.startswith(f"{b} provisioned")
    shown = await ok(stack, "ue", "show", b)
    assert shown.out == f"{b}: known, not registered (messages to it are stored)\n"

    stored = await ok(stack, "send", a, b, "later", "--msg-id", msg_id)
    assert stored.out.startswith(f"sent {msg_id} to UE:{b}: STORED")
    duplicate = await ok(stack, "send", a, b, "later", "--msg-id", msg_id)
    assert duplicate.out.startswith(f"sent {msg_id} to UE:{b}: STORED (DUPLICATE")

    unreachable, expired, no_report = await asyncio.gather(
        msgin5g(stack, "send", a, b, "now or never", "--no-store"),
        msgin5g(stack, "send", a, b, "too old", "--expires", "2000-01-01T00:00:00Z"),
        msgin5g(stack, "--timeout", "1", "send", a, b, "tell me", "--wait", "--msg-id", "w-1"),
    )
    assert failure(unreachable).startswith("send failed: RECIPIENT_UNREACHABLE: ")
    assert failure(expired).startswith("send failed: EXPIRED: ")
    assert no_report.out.startswith(f"sent w-1 to UE:{b}: STORED")
    assert failure(no_report) == (
        "no delivery report for w-1 within 1 s; the message stays pending: "
        f"`msgin5g status w-1 --from {a}` shows where it is"
    )


async def test_subscribe_send_to_topic_and_unsubscribe(stack: Stack) -> None:
    a, b, c = new_ue_id("cli-a"), new_ue_id("cli-b"), new_ue_id("cli-c")
    topic, other = new_ue_id("news"), new_ue_id("sport")
    msg_id = f"m-{new_ue_id()}"
    await asyncio.gather(
        ok(stack, "register", a),
        ok(stack, "register", b),
        ok(stack, "--transport", "mqtt", "register", c),
    )
    subscribed = await ok(stack, "subscribe", b, topic, "--until", "3600")
    assert subscribed.out.startswith(f"{b} subscribed to {topic} until 20")
    subscribed = await ok(stack, "--transport", "mqtt", "subscribe", c, topic, other)
    assert subscribed.out == f"{c} subscribed to {topic}, {other}\n"
    [listed] = (await ok(stack, "--json", "topic", "show", topic)).docs()
    assert {s["ueSvcId"] for s in listed["subscribers"]} == {b, c}

    async with listening(stack, "listen", b, "--count", "1") as lb:
        await ok(stack, "send", a, topic, "headline", "--to-topic", "--msg-id", msg_id)
        assert await lb.line() == f"from UE:{a} to TOPIC:{topic} (msgId {msg_id}): headline"
        assert await lb.exit_code() == 0

    left = await ok(stack, "--transport", "mqtt", "unsubscribe", c, topic, other)
    assert left.out == f"{c} unsubscribed from {topic}, {other}\n"
    await ok(stack, "unsubscribe", b, topic)
    assert (await ok(stack, "topic", "show", topic)).out == f"topic {topic}: 0 subscribers\n"


# -- management commands ---------------------------------------------------------------------------


async def test_group_create_show_add_remove_send_delete(stack: Stack) -> None:
    a, b, c, d = (new_ue_id(f"cli-{x}") for x in "abcd")
    group = new_ue_id("team")
    msg_id = f"m-{new_ue_id()}"
    await asyncio.gather(ok(stack, "register", a), ok(stack, "register", c))

    created = await ok(stack, "group", "create", group, a, b)
    assert created.out == f"group {group} created with 2 member(s)\n"
    added = await ok(stack, "group", "add", group, c, d)
    assert added.out == f"group {group} has 4 member(s)\n"
    removed = await ok(stack, "group", "remove", group, d)
    assert removed.out == f"removed {d} from group {group}\n"
    shown = await ok(stack, "group", "show", group)
    assert shown.lines == [f"group {group}: 3 members", *(f"  {m}" for m in sorted([a, b, c]))]
    [as_json] = (await ok(stack, "--json", "group", "show", group)).docs()
    assert (as_json["memberCount"], sorted(as_json["members"])) == (3, sorted([a, b, c]))

    # b listens over MQTT; c is registered but away, so its copy is stored.
    async with listening(
        stack, "--transport", "mqtt", "listen", b, "--register", "--count", "1"
    ) as lb:
        sent = await ok(stack, "send", a, group, "to the team", "--to-group", "--msg-id", msg_id)
        assert sent.out.startswith(f"sent {msg_id} to GROUP:{group}: ACCEPTED")
        assert await lb.line() == f"from UE:{a} to GROUP:{group} (msgId {msg_id}): to the team"
        assert await lb.exit_code() == 0
    # The fan-out goes on in the background: b's copy has arrived, c's may still be on its way.
    [state] = (await ok(stack, "--json", "status", msg_id, "--from", a)).docs()
    assert b in {r["rcptAddr"]["addr"] for r in state["recipients"]}
    assert a not in {r["rcptAddr"]["addr"] for r in state["recipients"]}

    outsider = await msgin5g(stack, "send", c, "nobodys-group", "hi", "--to-group")
    assert failure(outsider).startswith("send failed: UNKNOWN_RECIPIENT: ")
    assert (await ok(stack, "group", "delete", group)).out == f"group {group} deleted\n"
    gone = await msgin5g(stack, "group", "show", group)
    assert failure(gone) == f"group show failed: UNKNOWN_RECIPIENT: group {group} does not exist"


# -- errors ----------------------------------------------------------------------------------------


async def test_failures_are_one_clear_line_and_exit_code_1(stack: Stack) -> None:
    ghost = new_ue_id("ghost")
    closed_tcp = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        # A UDP port that takes requests and never answers them.
        silent.bind(("127.0.0.1", 0))
        silent_port = silent.getsockname()[1]
        closed_udp = free_port(socket.SOCK_DGRAM)
        silent_server = f"127.0.0.1:{silent_port}"
        broker = f"127.0.0.1:{closed_tcp}"
        runs = await asyncio.gather(
            msgin5g(stack, "send", ghost, "x", "hi"),
            msgin5g(stack, "--transport", "mqtt", "send", ghost, "x", "hi"),
            # Options after the command work too.
            msgin5g(stack, "register", ghost, "--server", f"127.0.0.1:{closed_udp}"),
            msgin5g(stack, "register", ghost, "--server", silent_server, "--timeout", "1"),
            msgin5g(stack, "--transport", "mqtt", "--broker", broker, "register", ghost),
            msgin5g(stack, "--api", f"http://127.0.0.1:{closed_tcp}", "ue", "show", ghost),
            msgin5g(stack, "ue", "show", ghost),
            msgin5g(stack, "status", "no-such-message", "--from", ghost),
        )  # fmt: skip
    (coap, mqtt, refused, silent_run, no_broker, api, unknown_ue, unknown_msg) = map(failure, runs)
    assert coap == f"send failed: NOT_REGISTERED: UE {ghost} is not registered"
    assert mqtt == f"send failed: NOT_REGISTERED: UE {ghost} is not registered"
    assert refused == f"cannot reach coap://127.0.0.1:{closed_udp}: connection refused: {HINT}"
    assert silent_run == f"no answer from coap://127.0.0.1:{silent_port} within 1 s: {HINT}"
    assert no_broker == f"cannot reach mqtt://{broker}: connection refused: {HINT}"
    assert api == f"cannot reach http://127.0.0.1:{closed_tcp}: connection refused: {HINT}"
    assert unknown_ue == f"ue show failed: UNKNOWN_RECIPIENT: UE {ghost} is not known"
    assert unknown_msg.startswith("status failed: UNKNOWN_MESSAGE: no message no-such-message")

    usage = await msgin5g(stack, "send", ghost)
    assert usage.code == 2
    assert "usage: msgin5g send" in usage.err
    assert "required: TO, TEXT" in usage.err
