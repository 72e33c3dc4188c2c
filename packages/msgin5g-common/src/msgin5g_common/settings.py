"""Settings shared by every service: environment variables ``MSGIN5G_*``, read once at start."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MSGIN5G_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "m5g"
    log_level: str = "INFO"
    # Seconds a gRPC call between services may take before it counts as failed.
    grpc_timeout: float = 5.0
    # Prometheus /metrics; port 0 picks a free one (several services on one machine).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100


class EdgeSettings(CommonSettings):
    """What both edges need: where the router and registry are, and their own identity."""

    router_addr: str = "127.0.0.1:50052"
    registry_addr: str = "127.0.0.1:50051"
    # Unique per replica; empty means "<kind>-<hostname>-<pid>".
    edge_id: str = ""
    # Where this replica serves EdgeService, and the address it advertises to the router
    # (empty: the bound address; in Kubernetes the pod IP).
    edge_grpc_bind: str = "127.0.0.1:0"
    edge_advertise_addr: str = ""
    # Seconds between heartbeats; the heartbeat key lives three times as long.
    edge_heartbeat_interval: float = 5.0
    max_payload: int = 2048
    # Per-UE uplink rate limit of each replica (msgin5g_common.ratelimit): documents per
    # second a UE may send on average, and how many at once after a quiet spell; over it the
    # UE is refused with OVERLOADED (CoAP 5.03 with Max-Age). Acknowledgements and delivery
    # reports have ten times this allowance of their own. 0 (either) turns the limit off.
    ue_rate: float = Field(default=20.0, ge=0)
    ue_burst: int = Field(default=200, ge=0)
