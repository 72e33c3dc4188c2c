"""The raw CoAP baseline: a trivial aiocoap server with the paths of MSGin5G-1 and nothing
behind them (no Redis, no gRPC, no registry), so that the same client library can run
against it and against coap-edge.

    python -m bench.raw_coap [--port 0]

It prints one JSON line ``{"port": P, "pid": N}`` once it serves, and runs until SIGTERM.

- ``POST /reg``: answers REGRESP SUCCESS.
- ``POST /msg`` with a MSG: keeps it in the recipient's in-memory inbox, notifies the
  recipient's ``/inbox`` observers, answers MSGRESP ACCEPTED.
- ``POST /msg`` with a MSGRESP: drops the document from the sender's inbox.
- ``GET /inbox/{id}`` (Observe): the pending documents as a JSON array, cut to 1,024 bytes
  like coap-edge's notifications (aiocoap coalesces notifications that are not sent yet,
  so the inbox is what makes the relay lossless, as in the system).

Documents are parsed with ``json`` alone: the baseline is the transport, not a codec.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

import aiocoap
from aiocoap import Message, interfaces, resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat

JSON = ContentFormat.JSON
NOTIFICATION_BYTES = 1024


class Inbox:
    """One UE's pending documents, in arrival order; ``sent`` marks those a notification
    carried already."""

    def __init__(self) -> None:
        self.docs: dict[str, bytes] = {}
        self.unsent: set[str] = set()


class Relay(resource.Resource, interfaces.ObservableResource, resource.PathCapable):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.observers: dict[str, set[Any]] = {}
        self.inboxes: dict[str, Inbox] = {}

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return True

    async def add_observation(self, request: Message, serverobservation: Any) -> None:
        path = request.opt.uri_path
        if len(path) == 2 and path[0] == "inbox":
            ue = path[1]
            group = self.observers.setdefault(ue, set())
            group.add(serverobservation)

            def cancel() -> None:
                group.discard(serverobservation)
                if not group:
                    self.observers.pop(ue, None)

            serverobservation.accept(cancel)

    async def render(self, request: Message) -> Message:
        path = request.opt.uri_path
        if path == ("reg",) and request.code == Code.POST:
            doc = json.loads(request.payload)
            reply = {
                "msgType": "REGRESP",
                "ueSvcId": doc["ueSvcId"],
                "result": "SUCCESS",
                "lifetime": doc.get("lifetime", 86400),
            }
            return _json(Code.CREATED, reply)
        if path == ("msg",) and request.code == Code.POST:
            return self._uplink(json.loads(request.payload))
        if len(path) == 2 and path[0] == "inbox" and request.code == Code.GET:
            return Message(
                code=Code.CONTENT, payload=self._render_inbox(path[1]), content_format=JSON
            )
        return Message(code=Code.NOT_FOUND)

    def _uplink(self, doc: dict[str, Any]) -> Message:
        kind = doc.get("msgType")
        if kind == "MSG":
            ue = doc["destAddr"]["addr"]
            inbox = self.inboxes.setdefault(ue, Inbox())
            inbox.docs[doc["msgId"]] = json.dumps(doc, separators=(",", ":")).encode()
            inbox.unsent.add(doc["msgId"])
            self._notify(ue)
            reply = {"msgType": "MSGRESP", "msgId": doc["msgId"], "result": "ACCEPTED"}
            return _json(Code.CHANGED, reply)
        if kind == "MSGRESP":
            owner = self.inboxes.get(doc.get("ueSvcId", ""))
            if owner is not None:
                owner.docs.pop(doc["msgId"], None)
                owner.unsent.discard(doc["msgId"])
                if owner.unsent:
                    self._notify(doc["ueSvcId"])
            return Message(code=Code.CHANGED)
        return Message(code=Code.BAD_REQUEST)

    def _render_inbox(self, ue: str) -> bytes:
        inbox = self.inboxes.get(ue)
        if inbox is None:
            return b"[]"
        items: list[bytes] = []
        size = 2
        for msg_id, item in inbox.docs.items():
            if items and size + len(item) + 1 > NOTIFICATION_BYTES:
                break
            items.append(item)
            inbox.unsent.discard(msg_id)
            size += len(item) + 1
        return b"[" + b",".join(items) + b"]"

    def _notify(self, ue: str) -> None:
        observations = self.observers.get(ue)
        if not observations:
            return
        payload = self._render_inbox(ue)
        for observation in observations:
            observation.trigger(Message(code=Code.CONTENT, payload=payload, content_format=JSON))


def _json(code: Code, doc: dict[str, Any]) -> Message:
    return Message(
        code=code, payload=json.dumps(doc, separators=(",", ":")).encode(), content_format=JSON
    )


async def serve(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    context = await aiocoap.Context.create_server_context(
        Relay(), bind=("127.0.0.1", port), transports=["udp6"]
    )
    bound = port
    for interface in context.request_interfaces:
        transport = getattr(interface.token_interface.message_interface, "transport", None)
        if transport is not None:
            bound = int(transport.get_extra_info("socket").getsockname()[1])
    sys.stdout.write(json.dumps({"port": bound, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    await stop.wait()
    with contextlib.suppress(Exception):
        await context.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
