"""What every edge's gRPC side shares: EdgeBatchService, the router's batches of Deliver calls."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import grpc

from msgin5g.v1 import edge_pb2 as epb
from msgin5g.v1 import edge_pb2_grpc as egrpc
from msgin5g_common.batch import status_of
from msgin5g_common.grpcutil import Context

log = logging.getLogger("msgin5g.edge")

SERVICE_NAME = "msgin5g.v1.EdgeBatchService"


class Delivers(Protocol):
    """An edge's EdgeService servicer."""

    async def Deliver(  # noqa: N802 - gRPC method names are the proto's
        self, request: epb.DeliverRequest, context: Context
    ) -> epb.DeliverResponse: ...


class BatchedDeliveries(egrpc.EdgeBatchServiceServicer):
    """EdgeBatchService over an edge's EdgeService: DeliverMany is its Deliver for each item,
    all at once (the router puts one UE in a batch at most once, so there is no order among
    the items to keep). An item that raises fails alone, answered as its Deliver call would
    have been."""

    def __init__(self, edge: Delivers) -> None:
        self.edge = edge

    async def DeliverMany(  # noqa: N802 - gRPC method names are the proto's
        self, request: epb.DeliverManyRequest, context: Context
    ) -> epb.DeliverManyResponse:
        outcomes = await asyncio.gather(
            *(self.edge.Deliver(item, context) for item in request.requests),
            return_exceptions=True,
        )
        return epb.DeliverManyResponse(results=[_result(outcome) for outcome in outcomes])


def _result(outcome: Any) -> epb.DeliverResult:
    if isinstance(outcome, epb.DeliverResponse):
        return epb.DeliverResult(response=outcome)
    if isinstance(outcome, asyncio.CancelledError):
        code, details = grpc.StatusCode.CANCELLED.value[0], "cancelled"
    else:
        if not isinstance(outcome, grpc.aio.AioRpcError):
            log.error("a delivery of a batch failed", exc_info=outcome)
        code, details = status_of(outcome)
    return epb.DeliverResult(error=epb.DeliverError(code=code, details=details))
