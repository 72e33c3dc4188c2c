"""Router settings (``MSGIN5G_*`` environment variables)."""

from __future__ import annotations

from msgin5g_common.settings import CommonSettings


class RouterSettings(CommonSettings):
    grpc_bind: str = "127.0.0.1:50052"
    # Seconds a route lease lives without renewal (edges renew the leases they hold).
    route_lease_ttl: int = 600
    # Store-and-forward default when a MSG carries no exprTime, in seconds (7 days).
    default_expiry: int = 7 * 86400
    # How long a message record is kept after its expiry, for state queries, in seconds.
    state_retention: int = 86400
    # Documents one inbox GET or Observe notification carries at most.
    inbox_limit: int = 16
