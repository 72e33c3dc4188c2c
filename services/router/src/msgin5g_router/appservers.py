"""Delivery to application servers: the router POSTs to the AS's registered ``targetUri``.

A MSG goes as a TS 29.538 ``UEMessageDelivery``, a delivery report as a
``DeliveryStatusReport``. A 2xx answer is delivery. A 4xx answer other than 408/429 is a
refusal: retrying the same document cannot change it. Anything else (no connection, a
timeout, 408, 429, 5xx) is transient: the document stays stored and is sent again with
back-off until it expires, as for any store-and-forward recipient.
"""

from __future__ import annotations

import enum
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from msgin5g.v1 import common_pb2 as pb
from msgin5g_common import convert
from msgin5g_common import header as h

log = logging.getLogger("msgin5g.router.appservers")

# Members of the MSGin5G header that the TS 29.538 documents do not have.
_NOT_IN_UE_MESSAGE = ("msgType", "priority", "rcptAddr")


class Outcome(enum.Enum):
    DELIVERED = "DELIVERED"
    REFUSED = "REFUSED"
    RETRY = "RETRY"


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: Outcome
    detail: str = ""


def as_document(doc: pb.Downlink) -> dict[str, Any]:
    """The TS 29.538 body for a downlink document: UEMessageDelivery or DeliveryStatusReport."""
    body = h.to_json(convert.downlink_from_pb(doc))
    body.pop("msgType", None)
    if doc.WhichOneof("doc") == "msg":
        for name in _NOT_IN_UE_MESSAGE:
            body.pop(name, None)
        body.setdefault("stoAndFwInd", True)
    return body


def _refused(status: int) -> bool:
    return 400 <= status < 500 and status not in (408, 425, 429)


class AppServers:
    """One HTTP client session (connection pool) for every AS callback."""

    def __init__(self, timeout: float, ca_file: str = "") -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context(cafile=self.ca_file or None)
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(limit=256, ssl=context),
                headers={"User-Agent": "msgin5g-router"},
            )
        return self._session

    async def post(self, target_uri: str, doc: pb.Downlink) -> Answer:
        body = as_document(doc)
        try:
            async with self._client().post(target_uri, json=body) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # ValueError: a targetUri aiohttp cannot use (the registry checks the form).
            return Answer(Outcome.RETRY, f"{type(exc).__name__}: {exc}"[:200])
        if 200 <= status < 300:
            return Answer(Outcome.DELIVERED)
        if _refused(status):
            return Answer(Outcome.REFUSED, f"HTTP {status}")
        return Answer(Outcome.RETRY, f"HTTP {status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
