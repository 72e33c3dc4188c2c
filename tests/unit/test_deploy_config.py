"""skaffold.yaml follows Skaffold's v4beta14 schema and builds every service's image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# The shared folder sits next to the checkout on developer and CI machines.
_CANDIDATES = [REPO.parent / "shared", Path("/work/shared")]
SCHEMA = next(
    (p / "schemas" / "skaffold-v4beta14.json" for p in _CANDIDATES if p.is_dir()),
    _CANDIDATES[0] / "schemas" / "skaffold-v4beta14.json",
)
SERVICES = ("registry", "router", "coap-edge", "mqtt-edge")


def _skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    return config


@pytest.mark.skipif(not SCHEMA.exists(), reason="../shared/schemas is where CI keeps the schema")
def test_skaffold_yaml_is_valid_against_the_v4beta14_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(_skaffold(), schema)


def test_skaffold_builds_one_image_per_service_from_a_dockerfile_target() -> None:
    artifacts = _skaffold()["build"]["artifacts"]
    targets = {a["image"]: a["docker"]["target"] for a in artifacts}
    assert targets == {f"msgin5g-{s}": s for s in SERVICES}
    dockerfile = (REPO / "Dockerfile").read_text()
    for service in SERVICES:
        assert f"AS {service}\n" in dockerfile
        assert f'ENTRYPOINT ["msgin5g-{service}"]' in dockerfile
