"""What the end-to-end tests of the TS 29.538 AS API share: the system with OAuth2 on, its
clients and tokens, and a real HTTP application server to register as a targetUri.

A module takes its own running system with ``system = system_fixture()`` (module-scoped: a
stack starts in a few seconds); the ``app_server`` fixture is in ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from msgin5g_devstack.stack import Stack
from tests.conftest import stack_config

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
# The ASs client app-1 may act as; each test takes its own.
OWN_AS = [f"as-{n}" for n in range(12)]
OTHER_AS = "as-of-app-2"
CLIENT = "app-1"
SECRET = "secret-1-for-tests"
OTHER_CLIENT = "app-2"
OTHER_SECRET = "secret-2-for-tests"
WAIT = 15.0


def signing_key() -> str:
    """A fresh EC P-256 private key (PEM): the registry signs its access tokens with it."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class System:
    stack: Stack
    signing_key: str

    @property
    def url(self) -> str:
        return self.stack.http_url


def system_env(key: str, **env: str) -> dict[str, str]:
    """The settings of a system with the AS API's OAuth2 on (clients app-1, acting as
    :data:`OWN_AS`, and app-2, acting as :data:`OTHER_AS`), the admin token, fast retries;
    ``env`` adds or overrides."""
    clients = {
        "clients": [
            {"clientId": CLIENT, "clientSecret": SECRET, "asSvcIds": OWN_AS},
            {"clientId": OTHER_CLIENT, "clientSecret": OTHER_SECRET, "asSvcIds": [OTHER_AS]},
        ]
    }
    return {
        "MSGIN5G_AUTH_ENABLED": "true",
        "MSGIN5G_AUTH_SIGNING_KEY": key,
        "MSGIN5G_AUTH_CLIENTS": json.dumps(clients),
        "MSGIN5G_ADMIN_TOKEN": ADMIN_TOKEN,
        "MSGIN5G_RETRY_BASE": "0.3",
        "MSGIN5G_RETRY_MAX": "1",
        "MSGIN5G_SWEEP_INTERVAL": "0.2",
        "MSGIN5G_AS_TIMEOUT": "2",
        # Device credentials (issue 8) wrapped under a fixed test key-encryption key.
        "MSGIN5G_CREDENTIALS_KEK": base64.b64encode(bytes(range(32))).decode(),
        **env,
    }


def system_fixture(**env: str) -> Callable[..., Any]:
    """A module-scoped ``system`` fixture: the system with the AS API's OAuth2 on
    (:func:`system_env`, plus ``env``). Assign it to ``system`` in the test module."""

    @pytest_asyncio.fixture(scope="module", name="system")
    async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
        key = signing_key()
        config = stack_config(tmp_path_factory.mktemp("as-stack"), **system_env(key, **env))
        async with Stack(config) as running:
            yield System(running, key)

    return system


class AppServer:
    """A real HTTP application server: records what it is sent, answers ``status``."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.status = 204
        self.posts = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        body = await request.json()
        if 200 <= self.status < 300:
            await self.received.put(body)
        return web.Response(status=self.status)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/callback", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self.listen()
        return self.url

    async def listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def go_down(self) -> None:
        """Stops listening: connections are refused until listen() again."""
        assert self._site is not None
        await self._site.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/callback"

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.received.get(), WAIT)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def token(http: httpx.AsyncClient, client: str = CLIENT, secret: str = SECRET) -> str:
    """An access token of ``client`` from the registry's token endpoint (every scope)."""
    response = await http.post(
        "/oauth2/token", auth=(client, secret), data={"grant_type": "client_credentials"}
    )
    assert response.status_code == 200, response.text
    issued: str = response.json()["access_token"]
    return issued


def admin() -> dict[str, str]:
    """The Authorization header of the static admin token."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
