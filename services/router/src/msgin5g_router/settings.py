"""Router settings (``MSGIN5G_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from msgin5g_common.settings import CommonSettings


class RouterSettings(CommonSettings):
    grpc_bind: str = "127.0.0.1:50052"
    # Seconds a route lease lives without renewal (edges renew the leases they hold).
    route_lease_ttl: int = Field(default=600, ge=1)
    # Store-and-forward default when a MSG carries no exprTime, in seconds (7 days).
    default_expiry: int = Field(default=7 * 86400, ge=1)
    # How long a message record is kept after its expiry, for state queries, in seconds.
    state_retention: int = Field(default=86400, ge=0)
    # Documents one inbox GET or Observe notification carries at most.
    inbox_limit: int = Field(default=16, ge=1)
