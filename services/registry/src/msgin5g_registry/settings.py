"""Registry settings (``MSGIN5G_*`` environment variables)."""

from __future__ import annotations

from msgin5g_common.settings import CommonSettings


class RegistrySettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_bind: str = "127.0.0.1:50051"
    # Bounds of a UE registration's lifetime, in seconds.
    max_lifetime: int = 30 * 86400
    min_lifetime: int = 30
    # The router answers message-state queries and updates of stored messages.
    router_addr: str = "127.0.0.1:50052"
