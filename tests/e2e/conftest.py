"""Fixtures of the end-to-end tests that need no system of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.e2e.as_support import AppServer


@pytest_asyncio.fixture
async def app_server() -> AsyncIterator[AppServer]:
    """A real HTTP application server on loopback, for the test alone."""
    server = AppServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
