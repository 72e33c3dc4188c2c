"""Fixtures shared by the integration and end-to-end tests: the system, started as make run does."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from msgin5g_devstack.stack import Ports, Stack, StackConfig

_counter = itertools.count()


def new_ue_id(label: str = "ue") -> str:
    """A UE Service ID no other test uses (tests share one system)."""
    return f"{label}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


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
