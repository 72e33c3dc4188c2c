"""RegistryService over gRPC, for the edges."""

from __future__ import annotations

import logging
import math

import grpc

from msgin5g.v1 import common_pb2 as pb
from msgin5g.v1 import registry_pb2 as rpb
from msgin5g.v1 import registry_pb2_grpc as rgrpc
from msgin5g_common import convert
from msgin5g_common.grpcutil import Context
from msgin5g_common.header import valid_id
from msgin5g_registry.credentials import CredentialStore
from msgin5g_registry.settings import RegistrySettings
from msgin5g_registry.store import RegistryStore, UeRecord

log = logging.getLogger("msgin5g.registry")

TRANSPORT_NAME = {pb.EDGE_KIND_COAP: "coap", pb.EDGE_KIND_MQTT: "mqtt"}
TRANSPORT_KIND = {v: k for k, v in TRANSPORT_NAME.items()}
MODE_NAME = {pb.DELIVERY_MODE_PUSH: "push"}


def ue_info(record: UeRecord) -> rpb.UeInfo:
    info = rpb.UeInfo(ue_svc_id=record.ue_svc_id, known=record.known)
    reg = record.registration
    if reg is not None:
        info.registered = True
        info.transport = TRANSPORT_KIND.get(reg.transport, pb.EDGE_KIND_UNSPECIFIED)
        info.lifetime = reg.lifetime
        info.registered_at.CopyFrom(convert.timestamp_ms(reg.registered_at_ms))
        info.expires_at.CopyFrom(convert.timestamp_ms(reg.expires_at_ms))
        info.bc_area = reg.bc_area
        info.delivery_mode = (
            pb.DELIVERY_MODE_PUSH if reg.delivery_mode == "push" else pb.DELIVERY_MODE_OBSERVE
        )
        if reg.max_seg_size is not None:
            info.max_seg_size = reg.max_seg_size
    return info


class RegistryServicer(rgrpc.RegistryServiceServicer):
    def __init__(
        self,
        store: RegistryStore,
        settings: RegistrySettings,
        credentials: CredentialStore | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.credentials = credentials

    async def Register(  # noqa: N802 - gRPC method names are the proto's
        self, request: rpb.RegisterRequest, context: Context
    ) -> rpb.RegisterResponse:
        if not valid_id(request.ue_svc_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "ue_svc_id is not a UE Service ID"
            )
        if request.edge.kind not in TRANSPORT_NAME:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "edge.kind is required")
        lifetime = request.lifetime or 86400
        lifetime = max(self.settings.min_lifetime, min(lifetime, self.settings.max_lifetime))
        reg = await self.store.register(
            request.ue_svc_id,
            transport=TRANSPORT_NAME[request.edge.kind],
            lifetime=lifetime,
            bc_area=request.bc_area,
            delivery_mode=MODE_NAME.get(request.delivery_mode, "observe"),
            max_seg_size=request.max_seg_size if request.HasField("max_seg_size") else None,
        )
        log.info(
            "registered",
            extra={"ueSvcId": reg.ue_svc_id, "transport": reg.transport, "lifetime": lifetime},
        )
        return rpb.RegisterResponse(
            ue_svc_id=reg.ue_svc_id,
            lifetime=lifetime,
            expires_at=convert.timestamp_ms(reg.expires_at_ms),
        )

    async def Deregister(  # noqa: N802
        self, request: rpb.DeregisterRequest, context: Context
    ) -> rpb.DeregisterResponse:
        was = await self.store.deregister(request.ue_svc_id)
        log.info("deregistered", extra={"ueSvcId": request.ue_svc_id, "wasRegistered": was})
        return rpb.DeregisterResponse(was_registered=was)

    async def GetUe(  # noqa: N802
        self, request: rpb.GetUeRequest, context: Context
    ) -> rpb.UeInfo:
        return ue_info(await self.store.get(request.ue_svc_id))

    async def Subscribe(  # noqa: N802
        self, request: rpb.SubscribeRequest, context: Context
    ) -> rpb.SubscribeResponse:
        if not valid_id(request.ue_svc_id) or not all(valid_id(t) for t in request.topics):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a UE id or topic name")
        until = request.expr_time.ToMilliseconds() if request.HasField("expr_time") else math.inf
        await self.store.subscribe(request.ue_svc_id, list(request.topics), until)
        log.info("subscribed", extra={"ueSvcId": request.ue_svc_id, "topics": list(request.topics)})
        return rpb.SubscribeResponse()

    async def Unsubscribe(  # noqa: N802
        self, request: rpb.SubscribeRequest, context: Context
    ) -> rpb.SubscribeResponse:
        await self.store.unsubscribe(request.ue_svc_id, list(request.topics))
        log.info(
            "unsubscribed", extra={"ueSvcId": request.ue_svc_id, "topics": list(request.topics)}
        )
        return rpb.SubscribeResponse()

    async def GetDeviceKeys(  # noqa: N802
        self, request: rpb.GetDeviceKeysRequest, context: Context
    ) -> rpb.DeviceKeys:
        """A device's keys for the coap-edge: never logged, never cached here."""
        if self.credentials is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "device credentials are not configured"
            )
        assert self.credentials is not None
        which = request.WhichOneof("by")
        if which == "psk_identity":
            generation, psks = await self.credentials.device_psks(request.psk_identity)
            if not psks:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no credentials")
            return rpb.DeviceKeys(
                ue_svc_id=request.psk_identity,
                generation=generation,
                psks=[rpb.DevicePsk(key=k, valid_until_ms=u or 0) for k, u in psks],
            )
        if which == "oscore_kid":
            found = await self.credentials.oscore_context(request.oscore_kid)
            if found is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no OSCORE context")
            assert found is not None
            block = max(1, min(request.oscore_sequence_block or 1, 1 << 20))
            start, end = await self.credentials.reserve_oscore_sequence(found, block)
            m = found.material
            return rpb.DeviceKeys(
                ue_svc_id=found.ue_svc_id,
                generation=found.generation,
                oscore=rpb.OscoreKey(
                    master_secret=m.master_secret,
                    master_salt=m.master_salt,
                    device_id=m.sender_id,
                    server_id=m.recipient_id,
                    valid_until_ms=found.valid_until_ms or 0,
                    sequence_start=start,
                    sequence_end=end,
                ),
            )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "psk_identity or oscore_kid")
        raise AssertionError("unreachable")
