"""coap-edge settings (``MSGIN5G_*`` environment variables)."""

from __future__ import annotations

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
