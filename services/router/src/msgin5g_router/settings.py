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
    # Documents pending (stored, not acknowledged) per UE at most: a new MSG for a UE whose
    # inbox holds that many is refused with OVERLOADED (a group or topic member's copy is
    # skipped: its state becomes FAILED, cause OVERLOADED). 0: no limit.
    max_pending: int = Field(default=1000, ge=0)
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
    # Segmentation (TS 23.554 8.5): a payload over the recipient's maximum (its maxSegSize,
    # else max_payload bytes) reaches it in segments; an uplink message sent in segments is
    # routed once all of them arrived within reassembly_timeout seconds, and an originator
    # may have at most max_reassemblies of them under way.
    max_payload: int = Field(default=2048, ge=16)
    reassembly_timeout: float = Field(default=60.0, gt=0)
    max_reassemblies: int = Field(default=8, ge=1)
