"""End-to-end: schemathesis drives every operation of the registry's live OpenAPI document
(the TS 29.538 AS API, the OAuth2 endpoints and the /api/v1 management API) on a running
system with OAuth2 on.

Every request carries the static admin token: the admin principal holds every scope and may
act as any AS, so generated documents get past authorization and reach the handlers (the
token endpoint, which wants HTTP Basic client credentials, is driven too and answers its
documented RFC 6749 refusals). Positive cases and negative ones (documents the schema
refuses) are generated, and every answer must pass the checks: no server error, a status
code, a Content-Type, headers and a body the operation declares.

The test is synchronous (schemathesis calls with ``requests``), so the system runs on an
event loop of its own, in a thread: on the tests' loop, which a synchronous test blocks,
nobody would read the services' output, and a service whose pipe is full stops.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from msgin5g_devstack.stack import Stack
from tests.conftest import stack_config
from tests.e2e.as_support import ADMIN_TOKEN, System, signing_key, system_env

pytestmark = pytest.mark.e2e

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
START = 60.0


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The system with the AS API's OAuth2 on, run by a loop in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="stack", daemon=True)
    thread.start()
    key = signing_key()
    stack = Stack(stack_config(tmp_path_factory.mktemp("as-stack"), **system_env(key)))
    try:
        asyncio.run_coroutine_threadsafe(stack.__aenter__(), loop).result(START)
        try:
            yield System(stack, key)
        finally:
            asyncio.run_coroutine_threadsafe(stack.__aexit__(None, None, None), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@pytest.fixture(scope="module")
def live_schema(system: System) -> schemathesis.BaseSchema:
    """The registry's /openapi.json as it serves it, with the admin token on every call."""
    config = schemathesis.Config.from_dict(
        {
            "base-url": system.url,
            "headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
            "request-timeout": 10,
        }
    )
    return schemathesis.openapi.from_url(f"{system.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("live_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32 reads and renames ``node._nodeid`` (to name each operation's
    subtest) when its schema comes from a fixture; pytest 9.2 has no such attribute."""
    request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_its_openapi_declares(
    case: schemathesis.Case[Any],
) -> None:
    case.call_and_validate(checks=CHECKS)
