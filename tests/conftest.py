"""Fixtures shared by the integration and end-to-end tests: the system, started as make run does."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from msgin5g_devstack.stack import Ports, Stack, StackConfig

_counter = itertools.count()


def new_ue_id(label: str = "ue") -> str:
    """A UE Service ID no other test uses (tests share one system)."""
    return f"{label}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


async def message_state(
    http_url: str, msg_id: str, ori: str, *, token: str | None = None, **params: str
) -> dict[str, Any]:
    """The state API's view of a message (``ori``: ``UE:<id>`` or ``AS:<id>``; ``token``: the
    admin token of a system with auth on)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=http_url, headers=headers) as http:
        response = await http.get(f"/api/v1/messages/{msg_id}", params={"ori": ori, **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until_state(
    http_url: str,
    msg_id: str,
    ori: str,
    wanted: str,
    *,
    token: str | None = None,
    within: float = 15.0,
) -> dict[str, Any]:
    """The message's state once its (first) recipient reached ``wanted``. A state lives in
    Redis and the system announces no change of it, so the wait asks the state API until it
    holds (a message being reassembled is not there yet: 404 counts as "not yet")."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=http_url, headers=headers) as http:
        while True:
            response = await http.get(f"/api/v1/messages/{msg_id}", params={"ori": ori})
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                if body["recipients"] and body["recipients"][0]["state"] == wanted:
                    return body
            assert time.monotonic() < deadline, response.text
            await asyncio.sleep(0.05)


def stack_config(base: Path, **env: str) -> StackConfig:
    return StackConfig(ports=Ports.ephemeral(), data_dir=base, env=dict(env))


@pytest_asyncio.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One running system for the tests that only need it to serve them."""
    async with Stack(stack_config(tmp_path_factory.mktemp("stack"))) as running:
        yield running


@pytest_asyncio.fixture
async def own_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A system of the test's own, for tests that stop and restart parts of it."""
    async with Stack(stack_config(tmp_path)) as running:
        yield running
