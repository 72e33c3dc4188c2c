"""mqtt-edge settings (``MSGIN5G_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from msgin5g_common.settings import EdgeSettings


class MqttEdgeSettings(EdgeSettings):
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str = ""
    mqtt_password: str = ""
    # Topic prefix of MSGin5G-1 (msgin5g.md section 6).
    mqtt_prefix: str = "msgin5g"
    # MQTT 5 shared-subscription group of the uplink: every replica joins the same group.
    mqtt_share_group: str = "msgin5g-edge"
    # Seconds the broker keeps this replica's session (and its queued share of the uplink)
    # after a crash: long enough for a restart of the same replica (same edge id, e.g. the
    # pod name), short because a replica that never returns holds its share until then.
    # A graceful stop leaves the shared subscription first, so nothing is held.
    mqtt_session_expiry: int = 60
    mqtt_keepalive: int = 30
    # Uplink documents handled in parallel (documents of one UE stay in order).
    mqtt_workers: int = 32
    # Uplink waiting for a worker (backlog.py), bounded: publishes per UE, and bytes of all
    # UEs together (one UE may hold a sixteenth of them). What does not fit is answered with
    # OVERLOADED instead of being queued.
    mqtt_ue_backlog: int = Field(default=256, ge=1)
    mqtt_backlog_bytes: int = Field(default=64 << 20, ge=1 << 20)
    # Largest aggregated downlink document (a JSON array of MSG/IMDN documents), in bytes:
    # what waits for a UE that comes back leaves in few publishes (aggregate.py).
    mqtt_aggregate_bytes: int = 4096
