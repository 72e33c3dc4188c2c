"""What the CoAP and MQTT UE clients share: message building, dedup, errors."""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from msgin5g_common import header as h

DownlinkDoc = h.Downlink
T = TypeVar("T")


class RequestFailed(Exception):
    """The server refused a request: ``cause`` is the MSGin5G failure cause; ``retry_after``
    the seconds the server asked the client to wait before trying again (CoAP Max-Age of a
    5.03), 0 when it gave none."""

    def __init__(self, cause: str, detail: str, code: str = "", retry_after: float = 0.0) -> None:
        super().__init__(f"{code + ' ' if code else ''}{cause}: {detail}")
        self.cause = cause
        self.detail = detail
        self.code = code
        self.retry_after = retry_after


def new_msg_id() -> str:
    return str(uuid.uuid4())


def build_msg(
    ori: str,
    dest: str,
    payload: str | None,
    *,
    dest_type: h.AddrType = h.AddrType.UE,
    msg_id: str | None = None,
    priority: h.Priority | None = None,
    app_id: str | None = None,
    deliv_st_req_ind: bool = False,
    sto_and_fw_ind: bool = True,
    expr_time: datetime | None = None,
) -> h.Msg:
    return h.Msg(
        msg_id=msg_id or new_msg_id(),
        ori_addr=h.Address(h.AddrType.UE, ori),
        dest_addr=h.Address(dest_type, dest),
        payload=payload,
        app_id=app_id,
        priority=priority,
        deliv_st_req_ind=deliv_st_req_ind,
        sto_and_fw_ind=sto_and_fw_ind,
        expr_time=expr_time,
    )


def doc_key(doc: DownlinkDoc) -> tuple[str, str, str]:
    """What makes a downlink document unique for the application."""
    kind = "IMDN" if isinstance(doc, h.Imdn) else "MSG"
    return kind, str(doc.ori_addr), doc.msg_id


def ack_for(ue: str, doc: DownlinkDoc) -> h.MsgResp:
    """The MSGRESP acknowledging a received document."""
    return h.MsgResp(doc.msg_id, h.MsgResult.DELIVERED, ue_svc_id=ue, ori_addr=doc.ori_addr)


def report_for(ue: str, doc: h.Msg, *, ok: bool = True, cause: str | None = None) -> h.Imdn:
    """The IMDN telling the sender of ``doc`` whether it was delivered."""
    return h.Imdn(
        ori_addr=h.Address(h.AddrType.UE, ue),
        dest_addr=doc.ori_addr,
        msg_id=doc.msg_id,
        deliv_st=h.DelivSt.REPT_DELY_SUCCESS if ok else h.DelivSt.REPT_DELY_FAILED,
        failure_cause=cause,
    )


def update_for(ue: str, msg_id: str, expr_time: datetime | None) -> h.MsgUpd:
    """Changes the expiry of a stored message (``expr_time``), or discards it (None)."""
    action = h.UpdAction.DISCARD if expr_time is None else h.UpdAction.UPDATE
    return h.MsgUpd(msg_id, h.Address(h.AddrType.UE, ue), action, expr_time)


class Seen:
    """Remembers recently received documents so that redeliveries reach the application once."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._keys: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self.capacity = capacity

    def first_time(self, doc: DownlinkDoc) -> bool:
        key = doc_key(doc)
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True


RETRYABLE = frozenset({"OVERLOADED", "TIMEOUT"})


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    attempts: int,
    first_delay: float = 0.2,
    retryable: frozenset[str] | None = RETRYABLE,
) -> T:
    """Runs ``attempt`` until it succeeds or fails for good. A timeout or a refusal whose
    cause is in ``retryable`` (None: any refusal) is retried, ``attempts`` tries in all, the
    delay doubling up to 5 s, and never shorter than the server's retry hint (a rate limit's
    Max-Age); resending the same document is safe because the server suppresses duplicates
    by (oriAddr, msgId)."""
    delay = first_delay
    for remaining in range(attempts - 1, -1, -1):
        hint = 0.0
        try:
            return await attempt()
        except TimeoutError:
            if remaining == 0:
                raise
        except RequestFailed as exc:
            if (retryable is not None and exc.cause not in retryable) or remaining == 0:
                raise
            hint = exc.retry_after
        await asyncio.sleep(max(delay, hint))
        delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")
