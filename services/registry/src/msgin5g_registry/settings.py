"""Registry settings (``MSGIN5G_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

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

    # OAuth2 client credentials for the HTTP API (auth.py). Off by default so that `make run`
    # on loopback needs no keys; the chart turns it on.
    auth_enabled: bool = False
    # Clients as JSON ({"clients": [...]}), inline and/or in a file (a mounted Secret); merged.
    auth_clients: str = ""
    auth_clients_file: str = ""
    # PEM of one or more EC P-256 private keys: the first signs, all verify (key rotation).
    auth_signing_key: str = ""
    auth_signing_key_file: str = ""
    # Lifetime of an issued access token, in seconds.
    auth_token_ttl: int = Field(default=300, ge=30, le=86400)
    auth_issuer: str = "msgin5g-registry"
    # A static bearer token accepted for the admin scope (the management API).
    admin_token: str = ""
    # Requests per second per authenticated AS client (burst twice that); 0 = unlimited.
    as_rate_limit: float = Field(default=100.0, ge=0)
    # Largest request body the HTTP API reads (413 beyond), and the largest MSG payload an AS
    # may send (the same limit as the edges': msgin5g.md section 2).
    http_max_body: int = Field(default=65536, ge=1024)
    max_payload: int = Field(default=2048, ge=1)

    # Device credentials (credentials.py): the key-encryption key that wraps PSKs and OSCORE
    # secrets, base64 of 32 bytes, inline or in a file (one of the two). Without it the
    # credentials endpoints answer 503: keys are never stored unwrapped.
    credentials_kek: str = ""
    credentials_kek_file: str = ""
    # Seconds the previous secrets of a UE stay valid after a rotation.
    credentials_grace: int = Field(default=3600, ge=0)
