"""skaffold.yaml follows Skaffold's v4beta14 schema and builds every service's image."""

from __future__ import annotations

import copy
import json
import re
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


# ----------------------------------------------------------------------------- deploy


def _release() -> dict[str, Any]:
    releases = _skaffold()["deploy"]["helm"]["releases"]
    assert len(releases) == 1
    release: dict[str, Any] = releases[0]
    return release


def _set(values: dict[str, Any], dotted: str, value: Any) -> None:
    """What `helm --set a.b.c=value` does to the values."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        values = values.setdefault(key, {})
    values[leaf] = value


def _skaffold_values(profile: str | None = None) -> dict[str, Any]:
    """The values Skaffold hands Helm: the profile's overrides, then the built images."""
    release = copy.deepcopy(_release())
    if profile is not None:
        (selected,) = [p for p in _skaffold()["profiles"] if p["name"] == profile]
        for patch in selected["patches"]:
            prefix = "/deploy/helm/releases/0/"
            assert patch["op"] == "add"
            assert patch["path"].startswith(prefix)
            release[patch["path"].removeprefix(prefix)] = patch["value"]
    values: dict[str, Any] = copy.deepcopy(release.get("overrides", {}))
    for key, value in release.get("setValues", {}).items():
        _set(values, key, value)
    for key, template in release["setValueTemplates"].items():
        # Skaffold fills IMAGE_REPO_<image> / IMAGE_TAG_<image> from the build.
        filled = re.sub(
            r"\{\{\.IMAGE_(REPO|TAG)_(\w+)\}\}",
            lambda m: (
                f"registry.example.net/{m[2].replace('_', '-')}" if m[1] == "REPO" else "build-123"
            ),
            template,
        )
        _set(values, key, filled)
    return values


def test_skaffold_deploys_the_chart_with_each_built_image_repository_and_tag() -> None:
    release = _release()
    assert release["chartPath"] == "charts/msgin5g"
    assert (REPO / release["chartPath"] / "Chart.yaml").exists()
    templates = release["setValueTemplates"]
    chart_keys = {
        "registry": "registry",
        "router": "router",
        "coap-edge": "coapEdge",
        "mqtt-edge": "mqttEdge",
    }
    expected = {}
    for service, key in chart_keys.items():
        image = f"msgin5g_{service.replace('-', '_')}"
        expected[f"{key}.image.repository"] = f"{{{{.IMAGE_REPO_{image}}}}}"
        expected[f"{key}.image.tag"] = f"{{{{.IMAGE_TAG_{image}}}}}"
    assert templates == expected


@pytest.mark.parametrize("profile", [None, "dev"])
def test_the_chart_renders_and_validates_with_what_skaffold_sets(profile: str | None) -> None:
    helm_python = pytest.importorskip("helm_python")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    values = _skaffold_values(profile)
    with helm_python.Chart.load(REPO / _release()["chartPath"]) as chart:
        manifests = chart.render(values, name=_release()["name"], namespace="dev")
    objects = [
        doc
        for path, text in manifests.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.31.0", strict=True)
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for service in SERVICES:
        deployment = deployments[f"msgin5g-{service}"]
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == f"registry.example.net/msgin5g-{service}:build-123"
        if profile == "dev":
            assert deployment["spec"]["replicas"] == 1
    kinds = {o["kind"] for o in objects}
    if profile == "dev":
        assert "HorizontalPodAutoscaler" not in kinds
        assert "PodDisruptionBudget" not in kinds
        services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
        coap = services["msgin5g-coap-edge"]["spec"]
        assert coap["type"] == "NodePort"
        assert coap["ports"][0]["nodePort"] == 30683
    # The port-forward names a Service the chart creates.
    forwarded = {(p["resourceType"], p["resourceName"]) for p in _skaffold().get("portForward", [])}
    services_made = {("service", o["metadata"]["name"]) for o in objects if o["kind"] == "Service"}
    assert forwarded <= services_made


def test_every_profile_is_documented_by_a_comment() -> None:
    lines = (REPO / "skaffold.yaml").read_text().splitlines()
    for profile in _skaffold().get("profiles", []):
        (index,) = [
            i for i, line in enumerate(lines) if line.strip() == f"- name: {profile['name']}"
        ]
        assert lines[index - 1].strip().startswith("#"), f"profile {profile['name']} has no comment"
