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
    # Unacknowledged downlink is sent again after retry_base seconds, doubling up to
    # retry_max, at most retry_limit times (then it waits for the UE to show up).
    retry_base: float = Field(default=5.0, gt=0)
    retry_max: float = Field(default=300.0, gt=0)
    retry_limit: int = Field(default=8, ge=0)
    # Seconds between two sweeps for due expiries and retries (one router replica sweeps).
    sweep_interval: float = Field(default=1.0, gt=0)
    # Group fan-out: members per task, deliveries per second per replica (the pace a radio
    # cell can take), seconds before a task a dead replica took is resumed by another.
    fanout_page: int = Field(default=500, ge=1)
    fanout_rate: float = Field(default=2000.0, gt=0)
    fanout_claim_after: float = Field(default=15.0, gt=0)
    # Identifies this replica for the sweeper lock and the fan-out consumer group; empty
    # means "router-<hostname>-<pid>".
    router_id: str = ""
    # Application server callbacks (targetUri): seconds one POST may take, and a CA bundle
    # for https targetUris signed by a private CA (empty: the system's trust store).
    as_timeout: float = Field(default=5.0, gt=0)
    as_tls_ca_file: str = ""
