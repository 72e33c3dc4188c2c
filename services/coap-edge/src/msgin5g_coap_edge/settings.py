"""coap-edge settings (``MSGIN5G_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from msgin5g_common.settings import EdgeSettings


class CoapEdgeSettings(EdgeSettings):
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683
    # An Observe notification carries pending documents up to about this many bytes (at
    # least one document): notifications are not sent blockwise, so keep them in one datagram.
    coap_notification_bytes: int = 1024
    # Seconds between renewals of the route leases of the UEs observing on this replica.
    lease_renew_interval: float = 60.0
    # Seconds a push (a CoAP POST to a UE registered with deliveryMode push) may take,
    # retransmissions included, before the document is left for a later inbox GET.
    push_timeout: float = 10.0

    # Device security (docs/security.md). Plain, unauthenticated CoAP on coap_port: only when
    # the operator turns it on (make run does, for development).
    coap_insecure: bool = False
    # OSCORE-protected requests on coap_port (contexts from the registry).
    coap_oscore: bool = True
    # coaps:// (DTLS-PSK, keys from the registry), on this UDP port (0: a free one).
    coap_dtls: bool = True
    coap_dtls_port: int = 5684
    # The address DTLS binds (tinydtls cannot bind the any-address; in Kubernetes the pod
    # IP); empty: coap_host.
    coap_dtls_host: str = ""
    # DTLS sessions held at most (least recently used ones end first), and seconds a session
    # may stay idle.
    coap_dtls_max_sessions: int = Field(default=100_000, ge=1)
    coap_dtls_idle_timeout: float = Field(default=600.0, gt=0)
    # Seconds device keys are cached before the registry is asked again (a revocation drops
    # them at once; this bounds how long a rotated-out key outlives its grace).
    coap_keys_ttl: float = Field(default=30.0, gt=0)
