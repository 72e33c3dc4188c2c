"""charts/msgin5g renders, lints and validates for the value sets an operator uses.

No cluster: the chart is rendered with Helm's own Go SDK (helm-python-sdk), linted strictly,
and every rendered object is validated against the Kubernetes 1.31 schemas
(kubernetes-validate, strict: unknown fields fail). The bundled broker and Redis are started
locally from the rendered configuration where Mosquitto and redis-server are installed.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # the package ships no type information
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from helm_python import _native
from pydantic_settings import BaseSettings

from msgin5g_coap_edge.settings import CoapEdgeSettings
from msgin5g_mqtt_edge.settings import MqttEdgeSettings
from msgin5g_registry.auth import load_signing_keys, parse_clients
from msgin5g_registry.credentials import KEK_BYTES, load_kek
from msgin5g_registry.credsync import CredsyncSettings
from msgin5g_registry.settings import RegistrySettings
from msgin5g_router.settings import RouterSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "msgin5g"
KUBE_VERSION = "1.31.0"
RELEASE = "msgin5g"
NAMESPACE = "msgin5g-test"
POD_IP = "10.1.2.3"
POD_NAME = "msgin5g-pod-0"
# Where the registry finds its OAuth2 clients and signing keys (the auth Secret's mount).
AUTH_DIR = "/etc/msgin5g/auth"

# component name -> settings class of the service
SERVICES: dict[str, type[BaseSettings]] = {
    "registry": RegistrySettings,
    "router": RouterSettings,
    "coap-edge": CoapEdgeSettings,
    "mqtt-edge": MqttEdgeSettings,
}
# Settings the chart sets that the services do not read yet (they ignore unknown variables).
# Remove a name once its service reads it.
PENDING_SETTINGS = {
    "MSGIN5G_REDIS_CLUSTER",
    "MSGIN5G_REDIS_TLS_CA_FILE",
    "MSGIN5G_MQTT_TLS",
    "MSGIN5G_MQTT_TLS_CA_FILE",
}
# Settings the services read that the chart leaves unset with its defaults, on purpose: inline
# alternatives of the files it mounts, and paths it sets only when a value asks for them.
UNSET_BY_DEFAULT = {
    "MSGIN5G_AUTH_CLIENTS",
    "MSGIN5G_AUTH_SIGNING_KEY",
    "MSGIN5G_AS_TLS_CA_FILE",
    "MSGIN5G_CREDENTIALS_KEK",
}

_COMMON = {
    "MSGIN5G_REDIS_URL",
    "MSGIN5G_REDIS_PREFIX",
    "MSGIN5G_LOG_LEVEL",
    "MSGIN5G_GRPC_TIMEOUT",
    "MSGIN5G_METRICS_HOST",
    "MSGIN5G_METRICS_PORT",
}
_EDGE = _COMMON | {
    "MSGIN5G_ROUTER_ADDR",
    "MSGIN5G_REGISTRY_ADDR",
    "MSGIN5G_EDGE_ID",
    "MSGIN5G_EDGE_GRPC_BIND",
    "MSGIN5G_EDGE_ADVERTISE_ADDR",
    "MSGIN5G_EDGE_HEARTBEAT_INTERVAL",
    "MSGIN5G_MAX_PAYLOAD",
}
# What each service must be given in a cluster (docs/operations.md, "Settings").
CONTRACT: dict[str, set[str]] = {
    "registry": _COMMON
    | {
        "MSGIN5G_HTTP_HOST",
        "MSGIN5G_HTTP_PORT",
        "MSGIN5G_GRPC_BIND",
        "MSGIN5G_ROUTER_ADDR",
        "MSGIN5G_MIN_LIFETIME",
        "MSGIN5G_MAX_LIFETIME",
        "MSGIN5G_AUTH_ENABLED",
        "MSGIN5G_HTTP_MAX_BODY",
        "MSGIN5G_MAX_PAYLOAD",
    },
    "router": _COMMON
    | {
        "MSGIN5G_GRPC_BIND",
        "MSGIN5G_ROUTER_ID",
        "MSGIN5G_ROUTE_LEASE_TTL",
        "MSGIN5G_DEFAULT_EXPIRY",
        "MSGIN5G_STATE_RETENTION",
        "MSGIN5G_INBOX_LIMIT",
        "MSGIN5G_RETRY_BASE",
        "MSGIN5G_RETRY_MAX",
        "MSGIN5G_RETRY_LIMIT",
        "MSGIN5G_SWEEP_INTERVAL",
        "MSGIN5G_AS_TIMEOUT",
    },
    "coap-edge": _EDGE
    | {
        "MSGIN5G_COAP_HOST",
        "MSGIN5G_COAP_PORT",
        "MSGIN5G_COAP_NOTIFICATION_BYTES",
        "MSGIN5G_LEASE_RENEW_INTERVAL",
        # Device security: said explicitly, so that a change of the services' defaults never
        # opens plain CoAP or closes OSCORE/DTLS in a cluster.
        "MSGIN5G_COAP_INSECURE",
        "MSGIN5G_COAP_OSCORE",
        "MSGIN5G_COAP_DTLS",
        "MSGIN5G_COAP_DTLS_PORT",
        "MSGIN5G_COAP_DTLS_HOST",
    },
    "mqtt-edge": _EDGE
    | {
        "MSGIN5G_MQTT_HOST",
        "MSGIN5G_MQTT_PORT",
        "MSGIN5G_MQTT_USERNAME",
        "MSGIN5G_MQTT_PASSWORD",
        "MSGIN5G_MQTT_PREFIX",
        "MSGIN5G_MQTT_SHARE_GROUP",
        "MSGIN5G_MQTT_SESSION_EXPIRY",
        "MSGIN5G_MQTT_KEEPALIVE",
        "MSGIN5G_MQTT_WORKERS",
        "MSGIN5G_MQTT_UE_BACKLOG",
        "MSGIN5G_MQTT_BACKLOG_BYTES",
    },
}

# The value sets an operator uses, as files (Helm chart-testing's convention: `ct lint` and
# `ct install` use every ci/*-values.yaml); every test parametrized by value set takes each.
CI_VALUES = CHART / "ci"
VALUE_SETS: dict[str, dict[str, Any]] = {
    path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text()) or {}
    for path in sorted(CI_VALUES.glob("*-values.yaml"))
}
# Value sets the assertions below name.
REQUIRED_VALUE_SETS = {
    "default",
    "external",
    "all-features",
    "minimal-resources",
    "hardened",
    "auth-disabled",
}


@dataclass
class Rendered:
    values: dict[str, Any]
    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]


def _parse(manifests: dict[str, str], values: dict[str, Any]) -> Rendered:
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(values=values, objects=objects, notes=notes)


def render(chart: helm_python.Chart, values: dict[str, Any]) -> Rendered:
    return _parse(chart.render(values, name=RELEASE, namespace=NAMESPACE), values)


def render_with_api_versions(
    chart: helm_python.Chart, values: dict[str, Any], api_versions: list[str]
) -> Rendered:
    """Render as against a cluster that serves ``api_versions`` (``helm template --api-versions``).

    ``Chart.render`` does not expose that option; the native call it wraps takes it.
    """
    options = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": api_versions}
    raw = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(options))
    manifests: dict[str, str] = json.loads(raw)
    return _parse(manifests, values)


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def rendered(chart: helm_python.Chart) -> dict[str, Rendered]:
    """Each value set rendered once for the whole module."""
    return {name: render(chart, values) for name, values in VALUE_SETS.items()}


def name_of(component: str) -> str:
    return f"{RELEASE}-{component}"


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of env values that refer to earlier variables."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


def effective_env(
    r: Rendered, component: str, secrets: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment the service's process sees, as the kubelet would build it.

    Secret references resolve to ``secrets[name/key]`` or to ``<secret:name/key>``; the
    downward API gives POD_NAME and POD_IP.
    """
    secrets = secrets or {}
    deployment = r.get("Deployment", name_of(component))
    c = container(deployment)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(r.get("ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in c.get("env", []):
        if "value" in entry:
            env[entry["name"]] = _expand(entry["value"], env)
            continue
        ref = entry["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            env[entry["name"]] = {"metadata.name": POD_NAME, "status.podIP": POD_IP}[path]
        else:
            key = f"{ref['secretKeyRef']['name']}/{ref['secretKeyRef']['key']}"
            env[entry["name"]] = secrets.get(key, f"<secret:{key}>")
    return env


def chart_secrets(r: Rendered) -> dict[str, str]:
    """Every key of every Secret the chart renders, as ``name/key`` -> decoded value."""
    out: dict[str, str] = {}
    for secret in r.of_kind("Secret"):
        for key, value in secret.get("data", {}).items():
            out[f"{secret['metadata']['name']}/{key}"] = base64.b64decode(value).decode()
    return out


# ----------------------------------------------------------------------------- Helm checks


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict_passes(value_set: str) -> None:
    report = helm_python.lint(
        CHART, VALUE_SETS[value_set], strict=True, kube_version=KUBE_VERSION, namespace=NAMESPACE
    )
    assert report["errors"] == []
    # 1 is "info" (e.g. "icon is recommended"); warnings (2) and errors (3) fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_is_valid_for_kubernetes_1_31(
    rendered: dict[str, Rendered], value_set: str
) -> None:
    r = rendered[value_set]
    assert r.objects
    for obj in r.objects:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = "/".join(str(p) for p in err.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {err.message}")
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_ci_holds_the_value_sets_and_stays_out_of_the_package() -> None:
    assert set(VALUE_SETS) >= REQUIRED_VALUE_SETS
    schema = json.loads((CHART / "values.schema.json").read_text())
    for name, values in VALUE_SETS.items():
        assert isinstance(values, dict), name
        # A value set names only values the chart has (Helm checks the merged result).
        for path in leaf_paths(values):
            assert _schema_at(schema, path) is not None, f"ci/{name}-values.yaml: {path}"
    # Chart-testing reads ci/ from the chart's directory; the packaged chart does not need it.
    assert "ci/" in (CHART / ".helmignore").read_text().splitlines()


def test_values_yaml_follows_its_schema_and_the_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)
    for path in leaf_paths(values):
        assert _schema_at(schema, path) is not None, f"values.schema.json does not describe {path}"


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _schema_at(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    node = _resolve(schema, schema)
    for part in path.split("."):
        props = node.get("properties")
        if props is None:
            # A free-form Kubernetes object or map: described as a whole.
            return node if node.get("type") == "object" else None
        if part not in props:
            return None
        node = _resolve(schema, props[part])
    return node


def leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every value; maps that are empty or free-form count as one value."""
    out: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not _free_form(path):
            out.extend(leaf_paths(value, f"{path}."))
        else:
            out.append(path)
    return out


def _free_form(path: str) -> bool:
    # Kubernetes objects handed through as is: documented as one value each.
    return path.rsplit(".", 1)[-1] in {
        "podSecurityContext",
        "containerSecurityContext",
        "resources",
        "namespaceSelector",
        "podSelector",
        "startup",
        "liveness",
        "readiness",
    }


def _client(**fields: Any) -> dict[str, Any]:
    """An AS client entry of ``registry.auth.clients``."""
    return {
        "clientId": "as-1",
        "clientSecret": "as-1-secret-0123456789",
        "asSvcIds": ["as-1"],
        "scopes": ["msgs-msgdelivery"],
        **fields,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"registry": {"replicaz": 3}}, "replicaz"),
        ({"unknownTopLevel": True}, "unknownTopLevel"),
        ({"router": {"replicas": "two"}}, "/router/replicas"),
        ({"coapEdge": {"service": {"type": "ExternalName"}}}, "/coapEdge/service/type"),
        ({"redis": {"appendfsync": "sometimes"}}, "/redis/appendfsync"),
        ({"mosquitto": {"auth": {"devices": [{"username": "a/b", "password": "x"}]}}}, "username"),
        ({"registry": {"auth": {"enabled": "yes"}}}, "/registry/auth/enabled"),
        ({"registry": {"auth": {"tokenTtl": 10}}}, "/registry/auth/tokenTtl"),
        ({"registry": {"auth": {"clients": [_client(clientId="as:1")]}}}, "clientId"),
        ({"registry": {"auth": {"clients": [_client(scopes=["msgs-everything"])]}}}, "scopes"),
        ({"registry": {"auth": {"clients": [_client(clientSecret="too-short")]}}}, "clientSecret"),
        # An AS client acts for given ASs; an admin client for all of them.
        ({"registry": {"auth": {"clients": [_client(asSvcIds=[])]}}}, "asSvcIds"),
        ({"registry": {"auth": {"clients": [_client(scopes=["msgin5g-admin"])]}}}, "asSvcIds"),
        ({"registry": {"auth": {"clients": [{"clientId": "as-1"}]}}}, "clientSecret"),
        ({"router": {"asTimeout": 0}}, "/router/asTimeout"),
        ({"registry": {"credentials": {"grace": -1}}}, "/registry/credentials/grace"),
        ({"registry": {"credentials": {"kek": "x"}}}, "kek"),
        ({"mosquitto": {"auth": {"source": "ldap"}}}, "/mosquitto/auth/source"),
        ({"coapEdge": {"security": {"dtlsPort": 70000}}}, "/coapEdge/security/dtlsPort"),
        ({"coapEdge": {"security": {"insecure": "no"}}}, "/coapEdge/security/insecure"),
        ({"coapEdge": {"service": {"dtlsNodePort": 80}}}, "/coapEdge/service/dtlsNodePort"),
        ({"config": {"mqttEdge": {"backlogBytes": 1000}}}, "/config/mqttEdge/backlogBytes"),
        ({"mosquitto": {"credsync": {"interval": 0}}}, "/mosquitto/credsync/interval"),
    ],
)
def test_helm_rejects_values_the_schema_does_not_allow(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"enabled": False}}, "externalRedis.url"),
        ({"mosquitto": {"enabled": False}}, "externalBroker.host"),
        (
            {
                "redis": {"enabled": False},
                "externalRedis": {"url": "redis://h:6379", "tls": {"enabled": True}},
            },
            "rediss://",
        ),
        ({"mosquitto": {"tls": {"enabled": True}}}, "mosquitto.tls.existingSecret"),
        (
            {"router": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
            "minReplicas",
        ),
        (
            {"registry": {"auth": {"existingSecret": "auth", "clients": [_client()]}}},
            "that Secret's clients.json",
        ),
        (
            {"registry": {"auth": {"clients": [_client(), _client(asSvcIds=["as-2"])]}}},
            'clientId "as-1" appears more than once',
        ),
        (
            {"registry": {"credentials": {"enabled": False}}},
            "mosquitto.auth.source=registry needs registry.credentials.enabled=true",
        ),
        (
            {"coapEdge": {"security": {"oscore": False, "dtlsPort": 0}}},
            "no device can use CoAP",
        ),
        ({"coapEdge": {"security": {"dtlsPort": 5683}}}, "must differ"),
    ],
)
def test_inconsistent_values_fail_with_a_message_that_says_what_to_set(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)


# ----------------------------------------------------------------------------- pods


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_is_non_root_read_only_probed_and_sized(
    rendered: dict[str, Rendered], value_set: str
) -> None:
    r = rendered[value_set]
    for workload in r.workloads():
        spec = pod_spec(workload)
        what = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, what
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert spec["automountServiceAccountToken"] is False, what
        mounts_tmp = False
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert sc["runAsUser"] != 0, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert "add" not in sc["capabilities"], c["name"]
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
            mounts_tmp |= any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", []))
        for c in spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in c, f"{what}/{c['name']} has no {probe}"
        assert mounts_tmp, f"{what} has no writable /tmp"
    for component in SERVICES:
        deployment = r.get("Deployment", name_of(component))
        assert pod_spec(deployment)["securityContext"]["runAsUser"] == 10001
        # Service links would put MSGIN5G_<SERVICE>_PORT-style variables (release "msgin5g")
        # into the services' own MSGIN5G_ settings namespace.
        assert pod_spec(deployment)["enableServiceLinks"] is False
        assert container(deployment)["securityContext"]["runAsUser"] == 10001
        tmp = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "tmp")
        assert "emptyDir" in tmp


def test_probes_use_http_on_the_registry_and_grpc_health_elsewhere(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["default"]
    registry = container(r.get("Deployment", name_of("registry")))
    assert registry["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert registry["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert registry["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for component, grpc_port in (("router", 50052), ("coap-edge", 50053), ("mqtt-edge", 50054)):
        c = container(r.get("Deployment", name_of(component)))
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["grpc"] == grpc_port
        assert ports["metrics"] == 9100
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["grpc"] == {"port": grpc_port}, (component, probe)
    coap = container(r.get("Deployment", name_of("coap-edge")))
    assert {"name": "coap", "containerPort": 5683, "protocol": "UDP"} in coap["ports"]
    assert {"name": "coaps", "containerPort": 5684, "protocol": "UDP"} in coap["ports"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_service_gets_every_setting_it_needs(
    rendered: dict[str, Rendered], value_set: str
) -> None:
    r = rendered[value_set]
    for component, settings in SERVICES.items():
        env = effective_env(r, component)
        assert CONTRACT[component] - set(env) == set(), f"{component} misses settings"
        reads = {f"MSGIN5G_{field.upper()}" for field in settings.model_fields}
        unknown = {k for k in env if k.startswith("MSGIN5G_")} - reads - PENDING_SETTINGS
        assert unknown == set(), f"{component} gets settings no service reads (misspelt?)"
        unset = reads - set(env) - UNSET_BY_DEFAULT
        if value_set == "default" and unset:
            # A setting a service added since the chart was written: it runs with the
            # service's default until values.yaml maps it (extraEnv sets it meanwhile).
            warnings.warn(f"{component}: the chart does not set {sorted(unset)}", stacklevel=1)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_services_accept_the_settings_the_chart_gives_them(
    rendered: dict[str, Rendered], value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = rendered[value_set]
    secrets = chart_secrets(r)
    expected_any = "::" if VALUE_SETS[value_set].get("ipFamily") == "IPv6" else "0.0.0.0"
    advertised_ip = f"[{POD_IP}]" if expected_any == "::" else POD_IP
    parsed: dict[str, Any] = {}
    for component, settings_class in SERVICES.items():
        for key in list(os.environ):
            if key.startswith("MSGIN5G_"):
                monkeypatch.delenv(key)
        for key, value in effective_env(r, component, secrets).items():
            monkeypatch.setenv(key, value)
        parsed[component] = settings_class()
    registry, router = parsed["registry"], parsed["router"]
    coap, mqtt = parsed["coap-edge"], parsed["mqtt-edge"]
    assert registry.http_host == expected_any
    assert registry.http_port == 8080
    assert registry.grpc_bind.endswith(":50051")
    assert registry.router_addr == f"{RELEASE}-router:50052"
    assert router.grpc_bind.endswith(":50052")
    assert router.router_id == POD_NAME
    for edge, port in ((coap, 50053), (mqtt, 50054)):
        assert edge.edge_id == POD_NAME
        assert edge.edge_advertise_addr == f"{advertised_ip}:{port}"
        assert edge.edge_grpc_bind.endswith(f":{port}")
        assert edge.router_addr == f"{RELEASE}-router:50052"
        assert edge.registry_addr == f"{RELEASE}-registry:50051"
    assert coap.coap_host == expected_any
    assert coap.coap_port == 5683
    # DTLS binds the pod IP (tinydtls cannot bind the any-address).
    assert coap.coap_dtls_host == POD_IP
    coap_values = VALUE_SETS[value_set].get("coapEdge", {}).get("security", {})
    assert coap.coap_dtls_port == coap_values.get("dtlsPort", 5684)
    assert coap.coap_dtls is (coap.coap_dtls_port != 0)
    assert coap.coap_insecure is coap_values.get("insecure", False)
    assert coap.coap_oscore is coap_values.get("oscore", True)
    assert registry.max_payload == coap.max_payload == mqtt.max_payload == router.max_payload
    auth_on = VALUE_SETS[value_set].get("registry", {}).get("auth", {}).get("enabled", True)
    assert registry.auth_enabled is auth_on
    if auth_on:
        assert registry.auth_clients_file == f"{AUTH_DIR}/clients.json"
        assert registry.auth_signing_key_file == f"{AUTH_DIR}/signing-key.pem"
        assert registry.admin_token
    assert router.as_timeout > 0
    for service in parsed.values():
        assert service.metrics_port == 9100
        assert service.metrics_host == expected_any
        assert service.redis_url.startswith(("redis://", "rediss://", "<secret:"))


def test_the_services_reach_the_bundled_redis_and_broker_with_the_generated_credentials(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["default"]
    secrets = chart_secrets(r)
    password = secrets[f"{name_of('redis')}/redis-password"]
    assert len(password) == 32
    for component in SERVICES:
        env = effective_env(r, component, secrets)
        assert env["MSGIN5G_REDIS_URL"] == f"redis://:{password}@{name_of('redis')}:6379/0"
    mqtt = effective_env(r, "mqtt-edge", secrets)
    assert mqtt["MSGIN5G_MQTT_HOST"] == f"{name_of('mosquitto')}-edge"
    assert mqtt["MSGIN5G_MQTT_PORT"] == "1884"
    assert mqtt["MSGIN5G_MQTT_USERNAME"] == "msgin5g-edge"
    broker = r.get("Deployment", name_of("mosquitto"))
    init_env = {e["name"]: e for e in pod_spec(broker)["initContainers"][0]["env"]}
    ref = init_env["EDGE_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert mqtt["MSGIN5G_MQTT_PASSWORD"] == secrets[f"{ref['name']}/{ref['key']}"]
    edge_service = r.get("Service", f"{name_of('mosquitto')}-edge")
    assert edge_service["spec"]["ports"][0]["port"] == 1884


def test_external_redis_and_broker_replace_the_bundled_ones(rendered: dict[str, Rendered]) -> None:
    r = rendered["external"]
    names = {o["metadata"]["name"] for o in r.objects}
    assert not any(n.startswith((name_of("redis"), name_of("mosquitto"))) for n in names)
    secrets = chart_secrets(r)
    for component in SERVICES:
        env = effective_env(r, component, secrets)
        assert env["MSGIN5G_REDIS_URL"] == "rediss://msgin5g:s3cret@redis.example.net:6380/0"
        assert env["MSGIN5G_REDIS_CLUSTER"] == "true"
        assert env["MSGIN5G_REDIS_TLS_CA_FILE"] == "/etc/msgin5g/tls/redis/ca.crt"
        deployment = r.get("Deployment", name_of(component))
        mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert mounts["redis-ca"] == "/etc/msgin5g/tls/redis"
    mqtt = effective_env(r, "mqtt-edge", secrets)
    assert mqtt["MSGIN5G_MQTT_HOST"] == "emqx.example.net"
    assert mqtt["MSGIN5G_MQTT_PORT"] == "8883"
    assert mqtt["MSGIN5G_MQTT_TLS"] == "true"
    assert mqtt["MSGIN5G_MQTT_TLS_CA_FILE"] == "/etc/msgin5g/tls/mqtt/ca.crt"
    assert mqtt["MSGIN5G_MQTT_PASSWORD"] == "<secret:broker-credentials/mqtt-password>"


def test_existing_secrets_are_used_and_never_generated(rendered: dict[str, Rendered]) -> None:
    r = rendered["hardened"]
    secret_names = {s["metadata"]["name"] for s in r.of_kind("Secret")}
    assert name_of("redis") not in secret_names
    assert name_of("mosquitto") not in secret_names
    env = effective_env(r, "router")
    assert env["REDIS_PASSWORD"] == "<secret:redis-auth/redis-password>"
    assert (
        env["MSGIN5G_REDIS_URL"]
        == f"redis://:<secret:redis-auth/redis-password>@{name_of('redis')}:6379/0"
    )
    assert (
        effective_env(r, "mqtt-edge")["MSGIN5G_MQTT_PASSWORD"]
        == "<secret:mqtt-edge-auth/mqtt-password>"
    )
    broker = pod_spec(r.get("Deployment", name_of("mosquitto")))
    devices = next(v for v in broker["volumes"] if v["name"] == "devices")
    assert devices["secret"]["secretName"] == "mqtt-devices"
    # The registry's KEK: the given Secret and key, mounted as the file the registry reads.
    assert KEK_SECRET not in secret_names
    registry = r.get("Deployment", name_of("registry"))
    assert _volumes(registry)["credentials-kek"]["secret"] == {
        "secretName": "registry-kek",
        "items": [{"key": "key", "path": "kek"}],
    }
    assert "checksum/kek" not in registry["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_roll_when_their_configuration_or_secrets_change(
    rendered: dict[str, Rendered], value_set: str
) -> None:
    for workload in rendered[value_set].workloads():
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        for key in ("checksum/config", "checksum/secret"):
            assert re.fullmatch(r"[0-9a-f]{64}", annotations[key]), (
                workload["metadata"]["name"],
                key,
            )


def test_a_setting_change_changes_the_config_checksum_of_the_services_that_read_it(
    chart: helm_python.Chart, rendered: dict[str, Rendered]
) -> None:
    before = rendered["default"]
    after = render(chart, {"config": {"router": {"retryLimit": 3}, "logLevel": "DEBUG"}})
    for component in SERVICES:
        old = before.get("Deployment", name_of(component))["spec"]["template"]["metadata"]
        new = after.get("Deployment", name_of(component))["spec"]["template"]["metadata"]
        assert old["annotations"]["checksum/config"] != new["annotations"]["checksum/config"]
    assert effective_env(after, "router")["MSGIN5G_RETRY_LIMIT"] == "3"
    assert "MSGIN5G_RETRY_LIMIT" not in effective_env(after, "registry")


# ----------------------------------------------------------------------------- registry auth


AUTH_SECRET = f"{RELEASE}-registry-auth"
KEK_SECRET = f"{RELEASE}-registry-kek"
KEK_DIR = "/etc/msgin5g/credentials"


def _volumes(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(workload)["volumes"]}


def _mounts(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container(workload)["volumeMounts"]}


def _env_entry(workload: dict[str, Any], name: str) -> dict[str, Any] | None:
    found = [e for e in container(workload).get("env", []) if e["name"] == name]
    assert len(found) <= 1, name
    return found[0] if found else None


def _auth_volume_serves_the_files(
    workload: dict[str, Any], env: dict[str, str], secret: str
) -> None:
    """The auth Secret is mounted read-only where MSGIN5G_AUTH_*_FILE point, with those keys."""
    volume = _volumes(workload)["auth"]["secret"]
    assert volume["secretName"] == secret
    mount = _mounts(workload)["auth"]
    assert mount == {"name": "auth", "mountPath": AUTH_DIR, "readOnly": True}
    files = {item["path"]: item["key"] for item in volume["items"]}
    for setting, key in (
        ("MSGIN5G_AUTH_CLIENTS_FILE", "clients.json"),
        ("MSGIN5G_AUTH_SIGNING_KEY_FILE", "signing-key.pem"),
    ):
        directory, _, name = env[setting].rpartition("/")
        assert directory == mount["mountPath"], setting
        assert files[name] == key, setting
    ref = _env_entry(workload, "MSGIN5G_ADMIN_TOKEN")
    assert ref is not None
    assert ref["valueFrom"] == {"secretKeyRef": {"name": secret, "key": "admin-token"}}


def test_oauth2_is_on_by_default_with_a_generated_key_and_admin_token(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["default"]
    registry = r.get("Deployment", name_of("registry"))
    secrets = chart_secrets(r)
    env = effective_env(r, "registry", secrets)
    assert env["MSGIN5G_AUTH_ENABLED"] == "true"
    assert env["MSGIN5G_AUTH_CLIENTS_FILE"] == f"{AUTH_DIR}/clients.json"
    assert env["MSGIN5G_AUTH_SIGNING_KEY_FILE"] == f"{AUTH_DIR}/signing-key.pem"
    assert env["MSGIN5G_AUTH_TOKEN_TTL"] == "300"
    assert env["MSGIN5G_AUTH_ISSUER"] == "msgin5g-registry"
    assert env["MSGIN5G_AS_RATE_LIMIT"] == "100"
    _auth_volume_serves_the_files(registry, env, AUTH_SECRET)
    # The admin token is in the Secret, never in the ConfigMap.
    assert "MSGIN5G_ADMIN_TOKEN" not in r.get("ConfigMap", name_of("registry"))["data"]
    token = env["MSGIN5G_ADMIN_TOKEN"]
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
    assert token == secrets[f"{AUTH_SECRET}/admin-token"]
    assert json.loads(secrets[f"{AUTH_SECRET}/clients.json"]) == {"clients": []}
    # No other service gets any of it.
    for component in SERVICES:
        if component != "registry":
            other = r.get("Deployment", name_of(component))
            assert "auth" not in _volumes(other)
            assert not any(
                k.startswith(("MSGIN5G_AUTH_", "MSGIN5G_ADMIN"))
                for k in effective_env(r, component)
            )


def test_the_generated_signing_key_is_an_ec_p256_private_key(rendered: dict[str, Rendered]) -> None:
    pem = chart_secrets(rendered["default"])[f"{AUTH_SECRET}/signing-key.pem"]
    assert pem.startswith("-----BEGIN EC PRIVATE KEY-----")
    key = load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.key_size == 256
    # And the registry loads it as its signing key.
    assert len(load_signing_keys(pem, "signing-key.pem")) == 1


def test_the_registry_rolls_when_the_chart_made_auth_secret_changes(
    chart: helm_python.Chart, rendered: dict[str, Rendered]
) -> None:
    """checksum/auth covers exactly what the Secret holds, from the same render."""
    r = rendered["default"]
    secrets = chart_secrets(r)
    parts = [
        secrets[f"{AUTH_SECRET}/{key}"]
        for key in ("clients.json", "signing-key.pem", "admin-token")
    ]
    annotations = r.get("Deployment", name_of("registry"))["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["checksum/auth"] == hashlib.sha256("\n".join(parts).encode()).hexdigest()
    for component in SERVICES:
        if component != "registry":
            pod = r.get("Deployment", name_of(component))["spec"]["template"]["metadata"]
            assert "checksum/auth" not in pod["annotations"]
    # Each render without a cluster generates afresh (in a cluster, lookup reads them back).
    again = chart_secrets(render(chart, VALUE_SETS["default"]))
    for key in ("signing-key.pem", "admin-token"):
        assert again[f"{AUTH_SECRET}/{key}"] != secrets[f"{AUTH_SECRET}/{key}"]


def test_the_clients_are_rendered_into_clients_json(rendered: dict[str, Rendered]) -> None:
    r = rendered["all-features"]
    secrets = chart_secrets(r)
    clients = json.loads(secrets[f"{AUTH_SECRET}/clients.json"])
    assert clients == {
        "clients": [
            {
                "clientId": "as-fleet",
                "clientSecret": "fleet-secret-change-me",
                "asSvcIds": ["as-1", "as-2"],
                "scopes": ["msgs-asregistration", "msgs-msgdelivery", "msgs-topiclistevent"],
            },
            {
                "clientId": "ops",
                "clientSecret": "ops-secret-change-me",
                "scopes": ["msgin5g-admin"],
            },
        ]
    }
    # The registry accepts the file it is given.
    parsed = parse_clients(secrets[f"{AUTH_SECRET}/clients.json"], "clients.json")
    assert [(c.client_id, c.is_admin) for c in parsed] == [("as-fleet", False), ("ops", True)]
    env = effective_env(r, "registry", secrets)
    assert env["MSGIN5G_AUTH_TOKEN_TTL"] == "600"
    assert env["MSGIN5G_AUTH_ISSUER"] == "https://api.msgin5g.example.net"
    assert env["MSGIN5G_AS_RATE_LIMIT"] == "50"
    assert "No AS clients are configured yet" not in r.notes
    assert "No AS clients are configured yet" in rendered["default"].notes
    # The clients' secrets stay out of the ConfigMap.
    assert "fleet-secret-change-me" not in json.dumps(r.get("ConfigMap", name_of("registry")))


def test_an_existing_auth_secret_is_mounted_and_none_is_generated(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["hardened"]
    assert AUTH_SECRET not in {s["metadata"]["name"] for s in r.of_kind("Secret")}
    registry = r.get("Deployment", name_of("registry"))
    env = effective_env(r, "registry")
    assert env["MSGIN5G_AUTH_ENABLED"] == "true"
    assert env["MSGIN5G_ADMIN_TOKEN"] == "<secret:registry-auth/admin-token>"
    _auth_volume_serves_the_files(registry, env, "registry-auth")
    # The chart cannot see that Secret's content: no checksum of it.
    assert "checksum/auth" not in registry["spec"]["template"]["metadata"]["annotations"]
    assert "get secret registry-auth -o jsonpath='{.data.admin-token}'" in r.notes


def test_without_auth_the_registry_gets_no_secret_and_the_notes_warn(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["auth-disabled"]
    registry = r.get("Deployment", name_of("registry"))
    env = effective_env(r, "registry")
    assert env["MSGIN5G_AUTH_ENABLED"] == "false"
    assert not {k for k in env if k.startswith("MSGIN5G_AUTH_") and k != "MSGIN5G_AUTH_ENABLED"}
    assert "MSGIN5G_ADMIN_TOKEN" not in env
    assert "MSGIN5G_AS_RATE_LIMIT" not in env
    assert "auth" not in _volumes(registry)
    assert "auth" not in _mounts(registry)
    assert "checksum/auth" not in registry["spec"]["template"]["metadata"]["annotations"]
    assert AUTH_SECRET not in {s["metadata"]["name"] for s in r.of_kind("Secret")}
    assert "WARNING: registry.auth.enabled=false" in r.notes
    assert "WARNING" not in rendered["default"].notes


def test_notes_tell_how_to_get_the_admin_token_and_an_as_token(
    rendered: dict[str, Rendered],
) -> None:
    notes = rendered["default"].notes
    assert (
        f"kubectl -n {NAMESPACE} get secret {AUTH_SECRET} -o jsonpath='{{.data.admin-token}}'"
        " | base64 -d" in notes
    )
    assert (
        "curl -u <clientId>:<clientSecret> -d grant_type=client_credentials"
        " http://127.0.0.1:8080/oauth2/token" in notes
    )
    ingress = rendered["all-features"].notes
    assert "https://api.msgin5g.example.net/oauth2/token" in ingress


def test_the_router_times_out_as_callbacks_and_trusts_the_given_ca(
    rendered: dict[str, Rendered],
) -> None:
    default = rendered["default"]
    router = default.get("Deployment", name_of("router"))
    env = effective_env(default, "router")
    assert env["MSGIN5G_AS_TIMEOUT"] == "5"
    assert "MSGIN5G_AS_TLS_CA_FILE" not in env
    assert "as-ca" not in _volumes(router)
    r = rendered["all-features"]
    router = r.get("Deployment", name_of("router"))
    env = effective_env(r, "router")
    assert env["MSGIN5G_AS_TIMEOUT"] == "2.5"
    volume = _volumes(router)["as-ca"]["secret"]
    assert volume == {
        "secretName": "as-callbacks-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    mount = _mounts(router)["as-ca"]
    assert mount["readOnly"] is True
    assert env["MSGIN5G_AS_TLS_CA_FILE"] == f"{mount['mountPath']}/ca.crt"
    for component in SERVICES:
        if component != "router":
            assert "as-ca" not in _volumes(r.get("Deployment", name_of(component)))
    # With restricted egress only the router may open connections to the callbacks.
    callbacks = [{"port": 443, "protocol": "TCP"}]
    for component in SERVICES:
        rules = _policy(r, component)["egress"]
        assert any(rule.get("ports") == callbacks for rule in rules) is (component == "router")


# ----------------------------------------------------------------------------- device security


def test_the_registry_gets_a_generated_kek_that_outlives_the_release(
    chart: helm_python.Chart, rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    r = rendered["default"]
    secrets = chart_secrets(r)
    secret = r.get("Secret", KEK_SECRET)
    # Losing it makes every device's credentials useless: `helm uninstall` leaves it, and a
    # reinstall reads it back (lookup), as upgrades do.
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert set(secret["data"]) == {"kek"}
    kek = secrets[f"{KEK_SECRET}/kek"]
    assert len(base64.b64decode(kek, validate=True)) == KEK_BYTES
    registry = r.get("Deployment", name_of("registry"))
    env = effective_env(r, "registry", secrets)
    assert env["MSGIN5G_CREDENTIALS_KEK_FILE"] == f"{KEK_DIR}/kek"
    assert env["MSGIN5G_CREDENTIALS_GRACE"] == "3600"
    assert "MSGIN5G_CREDENTIALS_KEK" not in env
    assert _volumes(registry)["credentials-kek"]["secret"] == {
        "secretName": KEK_SECRET,
        "items": [{"key": "kek", "path": "kek"}],
    }
    assert _mounts(registry)["credentials-kek"] == {
        "name": "credentials-kek",
        "mountPath": KEK_DIR,
        "readOnly": True,
    }
    # The registry loads the file the kubelet projects.
    (tmp_path / "kek").write_text(kek)
    assert load_kek(RegistrySettings(credentials_kek_file=str(tmp_path / "kek"))) == (
        base64.b64decode(kek)
    )
    # A KEK put into the Secret by hand rolls the registry at the next upgrade.
    annotations = registry["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/kek"] == hashlib.sha256(kek.encode()).hexdigest()
    assert "checksum/auth" in annotations
    # Nothing else gets it: the edges and credsync read keys through the registry or hashes.
    for workload in r.workloads():
        if workload["metadata"]["name"] != name_of("registry"):
            assert "credentials-kek" not in _volumes(workload)
    assert kek not in json.dumps(r.get("ConfigMap", name_of("registry")))
    # Each render without a cluster generates afresh (in a cluster, lookup reads it back).
    again = chart_secrets(render(chart, VALUE_SETS["default"]))
    assert again[f"{KEK_SECRET}/kek"] != kek
    grace = effective_env(rendered["all-features"], "registry")["MSGIN5G_CREDENTIALS_GRACE"]
    assert grace == "7200"


def test_without_device_credentials_the_registry_gets_no_kek(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["auth-disabled"]
    registry = r.get("Deployment", name_of("registry"))
    env = effective_env(r, "registry")
    assert not {k for k in env if k.startswith("MSGIN5G_CREDENTIALS_")}
    assert "credentials-kek" not in _volumes(registry)
    assert "credentials-kek" not in _mounts(registry)
    assert KEK_SECRET not in {s["metadata"]["name"] for s in r.of_kind("Secret")}
    assert "registry.credentials.enabled=false" in r.notes


def test_coap_edge_serves_oscore_and_dtls_with_the_given_limits(
    rendered: dict[str, Rendered],
) -> None:
    default = effective_env(rendered["default"], "coap-edge")
    assert {k: v for k, v in default.items() if k.startswith("MSGIN5G_COAP_")} == {
        "MSGIN5G_COAP_HOST": "0.0.0.0",
        "MSGIN5G_COAP_PORT": "5683",
        "MSGIN5G_COAP_NOTIFICATION_BYTES": "1024",
        "MSGIN5G_COAP_INSECURE": "false",
        "MSGIN5G_COAP_OSCORE": "true",
        "MSGIN5G_COAP_DTLS": "true",
        "MSGIN5G_COAP_DTLS_PORT": "5684",
        "MSGIN5G_COAP_DTLS_HOST": POD_IP,
        "MSGIN5G_COAP_DTLS_MAX_SESSIONS": "100000",
        "MSGIN5G_COAP_DTLS_IDLE_TIMEOUT": "600",
        "MSGIN5G_COAP_KEYS_TTL": "30",
    }
    deployment = rendered["default"].get("Deployment", name_of("coap-edge"))
    dtls_host = _env_entry(deployment, "MSGIN5G_COAP_DTLS_HOST")
    assert dtls_host == {
        "name": "MSGIN5G_COAP_DTLS_HOST",
        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
    }
    service = rendered["default"].get("Service", name_of("coap-edge"))["spec"]["ports"]
    assert [(p["name"], p["port"], p["protocol"]) for p in service] == [
        ("coap", 5683, "UDP"),
        ("coaps", 5684, "UDP"),
    ]
    tuned = effective_env(rendered["all-features"], "coap-edge")
    assert tuned["MSGIN5G_COAP_DTLS_MAX_SESSIONS"] == "50000"
    assert tuned["MSGIN5G_COAP_DTLS_IDLE_TIMEOUT"] == "300"
    assert tuned["MSGIN5G_COAP_KEYS_TTL"] == "15"

    # The lab: plain CoAP only, DTLS off: no coaps port anywhere, and the notes warn.
    lab = rendered["auth-disabled"]
    env = effective_env(lab, "coap-edge")
    assert (env["MSGIN5G_COAP_INSECURE"], env["MSGIN5G_COAP_OSCORE"]) == ("true", "false")
    assert (env["MSGIN5G_COAP_DTLS"], env["MSGIN5G_COAP_DTLS_PORT"]) == ("false", "0")
    ports = container(lab.get("Deployment", name_of("coap-edge")))["ports"]
    assert "coaps" not in {p["name"] for p in ports}
    assert [p["name"] for p in lab.get("Service", name_of("coap-edge"))["spec"]["ports"]] == [
        "coap"
    ]
    assert ("coaps", "UDP") not in _rules(_policy(lab, "coap-edge"))
    assert "WARNING: coapEdge.security.insecure=true" in lab.notes
    assert "coapEdge.security.insecure" not in rendered["default"].notes


def test_the_services_settings_cover_the_registry_and_mqtt_edge_limits(
    rendered: dict[str, Rendered],
) -> None:
    for value_set, body, backlog, backlog_bytes in (
        ("default", "65536", "256", "67108864"),
        ("all-features", "131072", "128", "33554432"),
    ):
        registry = effective_env(rendered[value_set], "registry")
        assert registry["MSGIN5G_HTTP_MAX_BODY"] == body
        assert registry["MSGIN5G_MAX_PAYLOAD"] == "2048"
        mqtt = effective_env(rendered[value_set], "mqtt-edge")
        assert mqtt["MSGIN5G_MQTT_UE_BACKLOG"] == backlog
        assert mqtt["MSGIN5G_MQTT_BACKLOG_BYTES"] == backlog_bytes


CREDSYNC_IMAGE = "msgin5g-registry:"


def _containers(workload: dict[str, Any], kind: str = "containers") -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod_spec(workload).get(kind, [])}


def _plain_env(c: dict[str, Any], secrets: dict[str, str] | None = None) -> dict[str, str]:
    """A container's environment (values and resolved Secret references)."""
    secrets = secrets or {}
    env: dict[str, str] = {}
    for entry in c.get("env", []):
        if "value" in entry:
            env[entry["name"]] = _expand(entry["value"], env)
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            key = f"{ref['name']}/{ref['key']}"
            env[entry["name"]] = secrets.get(key, f"<secret:{key}>")
    return env


def _conf_values(conf: str, option: str) -> list[str]:
    return [line.split(None, 1)[1] for line in conf.splitlines() if line.startswith(f"{option} ")]


@pytest.mark.parametrize("value_set", ["default", "all-features", "hardened"])
def test_the_broker_takes_device_passwords_from_the_registry(
    rendered: dict[str, Rendered], value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An init container writes the password file before Mosquitto starts; a sidecar keeps it
    in step and sends Mosquitto SIGHUP (the pid from its pid_file, in a shared process
    namespace). Both run the registry's image as Mosquitto's user."""
    r = rendered[value_set]
    secrets = chart_secrets(r)
    broker = r.get("Deployment", name_of("mosquitto"))
    spec = pod_spec(broker)
    conf = r.get("ConfigMap", name_of("mosquitto"))["data"]["mosquitto.conf"]
    assert spec["shareProcessNamespace"] is True
    inits, containers = _containers(broker, "initContainers"), _containers(broker)
    assert list(inits) == ["passwords", "credsync-init"]
    assert list(containers) == ["mosquitto", "credsync"]
    mosquitto = containers["mosquitto"]
    uid = mosquitto["securityContext"]["runAsUser"]
    (pid_file,) = _conf_values(conf, "pid_file")
    device_files = set(_conf_values(conf, "password_file")) - {"/mosquitto/auth/edge.passwd"}
    assert device_files == {"/mosquitto/devices/devices.passwd"}

    registry_image = container(r.get("Deployment", name_of("registry")))["image"]
    for c, once in ((inits["credsync-init"], True), (containers["credsync"], False)):
        assert c["image"] == registry_image
        assert c["image"].startswith(CREDSYNC_IMAGE)
        assert c["command"] == ["msgin5g-credsync"]
        assert c.get("args", []) == (["--once"] if once else [])
        # Mosquitto's user: the 0600 file is the broker's, the signal needs no capability.
        assert c["securityContext"]["runAsUser"] == uid
        assert c["resources"] == r.values.get("mosquitto", {}).get("credsync", {}).get(
            "resources",
            yaml.safe_load((CHART / "values.yaml").read_text())["mosquitto"]["credsync"][
                "resources"
            ],
        )
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/mosquitto/devices"].get("readOnly", False) is False
        env = _plain_env(c, secrets)
        # The registry's Redis settings.
        registry_env = effective_env(r, "registry", secrets)
        for key in ("MSGIN5G_REDIS_URL", "MSGIN5G_REDIS_PREFIX", "MSGIN5G_REDIS_CLUSTER"):
            assert env[key] == registry_env[key], key
        assert env["MSGIN5G_CREDSYNC_PASSWORD_FILE"] in device_files
        # The mqtt-edge has its own listener and password file: no service users needed.
        assert "MSGIN5G_CREDSYNC_SERVICE_USERS" not in env
        given = {k for k in env if k.startswith("MSGIN5G_")}
        reads = {f"MSGIN5G_{name.upper()}" for name in CredsyncSettings.model_fields}
        assert given - reads - PENDING_SETTINGS == set()
        for key in list(os.environ):
            if key.startswith("MSGIN5G_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = CredsyncSettings()
        if once:
            assert settings.credsync_once_timeout > 0
            assert "/mosquitto/run" not in mounts
        else:
            assert settings.credsync_mosquitto_pid_file == pid_file
            assert mounts["/mosquitto/run"]["readOnly"] is True
            assert settings.credsync_health_file.startswith("/tmp/")
            assert "/tmp" in mounts
            for probe in ("startupProbe", "livenessProbe"):
                assert settings.credsync_health_file in json.dumps(c[probe]["exec"]), probe
    broker_mounts = {m["mountPath"]: m for m in mosquitto["volumeMounts"]}
    assert broker_mounts["/mosquitto/devices"]["readOnly"] is True
    assert pid_file.startswith("/mosquitto/run/")
    assert broker_mounts["/mosquitto/run"].get("readOnly", False) is False
    volumes = _volumes(broker)
    assert volumes["device-passwords"]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes["run"]

    # Static accounts given next to the registry's: hashed by the first init container into
    # the file credsync merges in.
    static = value_set != "default"
    assert ("devices" in volumes) is static
    credsync_env = _plain_env(containers["credsync"])
    if static:
        script = inits["passwords"]["args"][0]
        static_file = credsync_env["MSGIN5G_CREDSYNC_SERVICE_USERS_FILE"]
        assert f"cp /mosquitto/secret/devices.passwd {static_file}" in script
        assert static_file.startswith("/mosquitto/devices/")
    else:
        assert "MSGIN5G_CREDSYNC_SERVICE_USERS_FILE" not in credsync_env
        assert name_of("mosquitto") not in {s["metadata"]["name"] for s in r.of_kind("Secret")}


def test_static_device_passwords_need_no_credsync(rendered: dict[str, Rendered]) -> None:
    r = rendered["auth-disabled"]
    broker = r.get("Deployment", name_of("mosquitto"))
    assert "shareProcessNamespace" not in pod_spec(broker)
    assert list(_containers(broker, "initContainers")) == ["passwords"]
    assert list(_containers(broker)) == ["mosquitto"]
    conf = r.get("ConfigMap", name_of("mosquitto"))["data"]["mosquitto.conf"]
    assert _conf_values(conf, "pid_file") == []
    assert "/mosquitto/auth/devices.passwd" in _conf_values(conf, "password_file")
    assert {"device-passwords", "run"}.isdisjoint(_volumes(broker))
    # Redis is the four services' only.
    assert _rules(_policy(r, "redis")) == {("redis", "TCP"): set(SERVICES)}


def test_credsync_reaches_an_external_redis_with_its_ca(chart: helm_python.Chart) -> None:
    values = copy.deepcopy(VALUE_SETS["external"])
    values["mosquitto"] = {"enabled": True}
    r = render(chart, values)
    broker = r.get("Deployment", name_of("mosquitto"))
    for c in (
        _containers(broker, "initContainers")["credsync-init"],
        _containers(broker)["credsync"],
    ):
        env = _plain_env(c, chart_secrets(r))
        assert env["MSGIN5G_REDIS_URL"] == "rediss://msgin5g:s3cret@redis.example.net:6380/0"
        assert env["MSGIN5G_REDIS_CLUSTER"] == "true"
        assert env["MSGIN5G_REDIS_TLS_CA_FILE"] == "/etc/msgin5g/tls/redis/ca.crt"
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["redis-ca"] == {
            "name": "redis-ca",
            "mountPath": "/etc/msgin5g/tls/redis",
            "readOnly": True,
        }
    assert _volumes(broker)["redis-ca"]["secret"]["secretName"] == "redis-ca"
    egress = _policy(r, "mosquitto")["egress"]
    assert egress == [
        {
            "ports": [{"port": 6379, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        }
    ]
    for obj in r.objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# ----------------------------------------------------------------------------- scaling


# What values.yaml gives each service's HPA: (minReplicas, maxReplicas).
DEFAULT_HPA_BOUNDS = {
    "registry": (2, 10),
    "router": (2, 10),
    "coap-edge": (2, 20),
    "mqtt-edge": (2, 10),
}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_an_hpa_scales_every_service(rendered: dict[str, Rendered], value_set: str) -> None:
    """On by default (CPU); the bundled Redis and Mosquitto are single instances: no HPA."""
    r = rendered[value_set]
    hpas = {h["metadata"]["name"]: h for h in r.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {name_of(c) for c in SERVICES}
    for component in SERVICES:
        hpa = hpas[name_of(component)]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name_of(component),
        }
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert hpa["metadata"]["labels"]["app.kubernetes.io/component"] == component
        # The HPA owns the replica count.
        assert "replicas" not in r.get("Deployment", name_of(component))["spec"]


def test_hpa_defaults_are_cpu_at_70_percent_from_two_replicas(
    rendered: dict[str, Rendered],
) -> None:
    hpas = {
        h["metadata"]["name"]: h for h in rendered["default"].of_kind("HorizontalPodAutoscaler")
    }
    for component, bounds in DEFAULT_HPA_BOUNDS.items():
        spec = hpas[name_of(component)]["spec"]
        assert (spec["minReplicas"], spec["maxReplicas"]) == bounds
        assert spec["metrics"] == [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70},
                },
            }
        ]
    coap = {
        h["metadata"]["name"]: h
        for h in rendered["all-features"].of_kind("HorizontalPodAutoscaler")
    }[name_of("coap-edge")]["spec"]
    assert (coap["minReplicas"], coap["maxReplicas"]) == (3, 30)
    assert [m["resource"]["name"] for m in coap["metrics"]] == ["cpu", "memory"]


def test_without_autoscaling_the_deployment_has_a_fixed_size(chart: helm_python.Chart) -> None:
    off = {"autoscaling": {"enabled": False}}
    r = render(
        chart,
        {"registry": off, "router": {**off, "replicas": 3}, "coapEdge": off, "mqttEdge": off},
    )
    assert r.of_kind("HorizontalPodAutoscaler") == []
    assert r.get("Deployment", name_of("router"))["spec"]["replicas"] == 3
    assert r.get("Deployment", name_of("registry"))["spec"]["replicas"] == 2
    one = render(chart, {"router": off})
    assert {h["metadata"]["name"] for h in one.of_kind("HorizontalPodAutoscaler")} == {
        name_of(c) for c in SERVICES if c != "router"
    }


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_a_pdb_covers_every_service(rendered: dict[str, Rendered], value_set: str) -> None:
    r = rendered[value_set]
    pdbs = {p["metadata"]["name"]: p for p in r.of_kind("PodDisruptionBudget")}
    assert set(pdbs) == {name_of(c) for c in SERVICES}
    for component in SERVICES:
        pdb = pdbs[name_of(component)]["spec"]
        pod_labels = r.get("Deployment", name_of(component))["spec"]["template"]["metadata"][
            "labels"
        ]
        assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
        assert ("minAvailable" in pdb) != ("maxUnavailable" in pdb)
    if value_set == "hardened":
        assert pdbs[name_of("router")]["spec"]["minAvailable"] == 1
        assert pdbs[name_of("registry")]["spec"]["minAvailable"] == "50%"


# ----------------------------------------------------------------------------- network


def _policy(r: Rendered, component: str) -> dict[str, Any]:
    spec: dict[str, Any] = r.get("NetworkPolicy", name_of(component))["spec"]
    return spec


def _sources(rule: dict[str, Any]) -> set[str] | None:
    """Components a rule admits (None: from anywhere)."""
    if "from" not in rule:
        return None
    return {
        peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component", "?")
        for peer in rule["from"]
    }


def _rules(policy: dict[str, Any]) -> dict[tuple[str, str], set[str] | None]:
    return {
        (str(port["port"]), port["protocol"]): _sources(rule)
        for rule in policy["ingress"]
        for port in rule["ports"]
    }


def test_network_policies_deny_by_default_and_allow_only_the_needed_flows(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["default"]
    deny = r.get("NetworkPolicy", f"{RELEASE}-default-deny")["spec"]
    assert deny["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "msgin5g",
        "app.kubernetes.io/instance": RELEASE,
    }
    assert deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    edges = {"coap-edge", "mqtt-edge"}
    assert _rules(_policy(r, "registry")) == {
        ("http", "TCP"): None,
        ("grpc", "TCP"): edges,
        ("metrics", "TCP"): {"?"},
    }
    assert _rules(_policy(r, "router")) == {
        ("grpc", "TCP"): edges | {"registry"},
        ("metrics", "TCP"): {"?"},
    }
    assert _rules(_policy(r, "coap-edge")) == {
        ("grpc", "TCP"): {"router"},
        ("coap", "UDP"): None,
        ("coaps", "UDP"): None,
        ("metrics", "TCP"): {"?"},
    }
    assert _rules(_policy(r, "mqtt-edge")) == {
        ("grpc", "TCP"): {"router"},
        ("metrics", "TCP"): {"?"},
    }
    # The broker's msgin5g-credsync reads the devices' credentials from Redis.
    assert _rules(_policy(r, "redis")) == {("redis", "TCP"): set(SERVICES) | {"mosquitto"}}
    assert _rules(_policy(r, "mosquitto")) == {
        ("mqtt", "TCP"): None,
        ("mqtt-edge", "TCP"): {"mqtt-edge"},
    }
    metrics_rule = next(
        rule for rule in _policy(r, "router")["ingress"] if rule["ports"][0]["port"] == "metrics"
    )
    assert metrics_rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {},
        }
    ]
    # Egress stays open unless asked for.
    for policy in r.of_kind("NetworkPolicy"):
        assert "Egress" not in policy["spec"]["policyTypes"]


def test_restricted_egress_allows_dns_and_the_flows_between_the_services(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["hardened"]
    deny = r.get("NetworkPolicy", f"{RELEASE}-default-deny")["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for p in deny["egress"][0]["ports"]} == {53}

    def targets(component: str) -> set[tuple[str, int | None]]:
        out: set[tuple[str, int | None]] = set()
        for rule in _policy(r, component)["egress"]:
            peers = [
                p.get("podSelector", {})
                .get("matchLabels", {})
                .get("app.kubernetes.io/component", "*")
                for p in rule.get("to", [{}])
            ]
            ports = [p.get("port") for p in rule.get("ports", [])] or [None]
            out |= {(peer, port) for peer in peers for port in ports}
        return out

    assert targets("registry") == {("redis", 6379), ("router", 50052)}
    assert {("coap-edge", 50053), ("mqtt-edge", 50054), ("redis", 6379), ("*", None)} == targets(
        "router"
    )
    assert targets("coap-edge") == {
        ("redis", 6379),
        ("router", 50052),
        ("registry", 50051),
        ("*", None),
    }
    assert targets("mqtt-edge") == {
        ("redis", 6379),
        ("router", 50052),
        ("registry", 50051),
        ("mosquitto", 1884),
    }
    # The broker's pod reaches Redis (msgin5g-credsync) and nothing else but DNS.
    assert targets("mosquitto") == {("redis", 6379)}
    assert "Egress" not in _policy(r, "redis")["policyTypes"]
    external = rendered["external"]
    mqtt_egress = external.get("NetworkPolicy", name_of("mqtt-edge"))["spec"]["egress"]
    assert {"port": 8883, "protocol": "TCP"} in [
        p for rule in mqtt_egress for p in rule.get("ports", [])
    ]
    redis_rule = next(
        rule for rule in mqtt_egress if rule.get("to") == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    )
    assert redis_rule["ports"] == [{"port": 6379, "protocol": "TCP"}]


def test_registry_ingress_routes_to_the_http_api(rendered: dict[str, Rendered]) -> None:
    assert rendered["default"].of_kind("Ingress") == []
    r = rendered["all-features"]
    ingress = r.get("Ingress", name_of("registry"))["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [
        {"secretName": "msgin5g-api-tls", "hosts": ["api.msgin5g.example.net"]}
    ]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": name_of("registry"), "port": {"name": "http"}}
    http_rule = next(
        rule for rule in _policy(r, "registry")["ingress"] if rule["ports"][0]["port"] == "http"
    )
    assert http_rule["from"] == VALUE_SETS["all-features"]["networkPolicy"]["registryHttpFrom"]
    assert "https://api.msgin5g.example.net/" in r.notes


def test_coap_edge_service_can_be_a_udp_load_balancer(rendered: dict[str, Rendered]) -> None:
    default = rendered["default"].get("Service", name_of("coap-edge"))["spec"]
    assert default["type"] == "ClusterIP"
    assert "nodePort" not in default["ports"][0]
    r = rendered["all-features"]
    spec = r.get("Service", name_of("coap-edge"))["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["externalTrafficPolicy"] == "Local"
    assert spec["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert spec["sessionAffinity"] == "ClientIP"
    assert spec["ports"] == [
        {"name": "coap", "port": 5683, "targetPort": "coap", "protocol": "UDP", "nodePort": 30683},
        {
            "name": "coaps",
            "port": 5684,
            "targetPort": "coaps",
            "protocol": "UDP",
            "nodePort": 30684,
        },
    ]
    broker = r.get("Service", name_of("mosquitto"))["spec"]
    assert broker["type"] == "LoadBalancer"
    assert {p["port"] for p in broker["ports"]} == {1883, 8883}
    # The edge listener never leaves the cluster.
    assert r.get("Service", f"{name_of('mosquitto')}-edge")["spec"]["type"] == "ClusterIP"
    assert "status.loadBalancer" in r.notes


# ----------------------------------------------------------------------------- monitoring


def test_service_monitor_only_where_the_cluster_has_the_crd(chart: helm_python.Chart) -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}
    without = render(chart, values)
    assert without.of_kind("ServiceMonitor") == []
    assert "no ServiceMonitor was created" in without.notes
    with_crd = render_with_api_versions(chart, values, ["monitoring.coreos.com/v1"])
    (monitor,) = with_crd.of_kind("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    selected = [
        s
        for s in with_crd.of_kind("Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert {s["metadata"]["name"] for s in selected} == {f"{name_of(c)}-metrics" for c in SERVICES}
    off = render_with_api_versions(chart, {}, ["monitoring.coreos.com/v1"])
    assert off.of_kind("ServiceMonitor") == []


def test_notes_tell_how_to_reach_coap_mqtt_and_the_http_api(rendered: dict[str, Rendered]) -> None:
    notes = rendered["default"].notes
    assert f"port-forward svc/{name_of('registry')} 8080:8080" in notes
    assert f"coap://{name_of('coap-edge')}.{NAMESPACE}.svc:5683" in notes
    assert f"service {name_of('mosquitto')} port 1883" in notes
    assert f"coaps://{name_of('coap-edge')}.{NAMESPACE}.svc:5684" in notes
    # Device credentials come from the registry (the broker's passwords too).
    assert "/api/v1/ues/ue-1/credentials" in notes
    assert "mqttPassword" in notes
    assert f"get secret {KEK_SECRET} -o yaml" in notes
    assert "No device credentials are configured yet" not in notes
    assert "No device credentials are configured yet" in rendered["auth-disabled"].notes
    assert "emqx.example.net:8883" in rendered["external"].notes


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in leaf_paths(values) if f"| `{p}` |" not in readme]
    assert missing == []


# ----------------------------------------------------------------------------- bundled servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(
    not (Path("/usr/sbin/mosquitto").exists() and shutil.which("mosquitto_passwd")),
    reason="needs Mosquitto (make system-deps installs it)",
)
def test_bundled_mosquitto_isolates_devices_and_serves_the_edge(
    chart: helm_python.Chart, tmp_path: Path
) -> None:
    """The rendered mosquitto.conf, ACLs and init script, run with the local Mosquitto."""
    device_port, edge_port = _free_port(), _free_port()
    values = {
        "mosquitto": {
            "port": device_port,
            "edgePort": edge_port,
            "auth": {
                "source": "static",
                "devices": [
                    {"username": "ue-1", "password": "pw-1"},
                    {"username": "ue-2", "password": "pw-2"},
                ],
                "edge": {"password": "edge-pw"},
            },
        }
    }
    r = render(chart, values)
    config_map = r.get("ConfigMap", name_of("mosquitto"))
    deployment = r.get("Deployment", name_of("mosquitto"))
    secrets = chart_secrets(r)
    for sub in ("config", "auth", "secret", "data"):
        (tmp_path / sub).mkdir()

    def local(text: str) -> str:
        return text.replace("/mosquitto/", f"{tmp_path}/")

    for key, text in config_map["data"].items():
        (tmp_path / "config" / key).write_text(local(text))
    if os.geteuid() == 0:  # as root, Mosquitto would switch to the `mosquitto` user
        with (tmp_path / "config" / "mosquitto.conf").open("a") as conf:
            conf.write("\nuser root\n")
    (tmp_path / "secret" / "devices.passwd").write_text(
        secrets[f"{name_of('mosquitto')}/devices.passwd"]
    )
    init = pod_spec(deployment)["initContainers"][0]
    init_env = {e["name"]: e.get("value", "") for e in init["env"]}
    init_env["EDGE_PASSWORD"] = "edge-pw"
    subprocess.run(
        ["/bin/sh", "-c", local(init["args"][0])],
        env={**os.environ, **init_env},
        check=True,
        timeout=30,
    )
    assert "pw-1" not in (tmp_path / "auth" / "devices.passwd").read_text()

    broker = subprocess.Popen(
        # stdbuf: the rendered config logs to stdout, which a pipe would buffer.
        ["stdbuf", "-oL", "/usr/sbin/mosquitto", "-c", str(tmp_path / "config" / "mosquitto.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_line(broker, b" running")
        with _Mqtt("edge-a", "msgin5g-edge", "edge-pw", edge_port) as edge:
            assert edge.rc == 0
            edge.subscribe("$share/msgin5g-edge/msgin5g/up/#")
            with _Mqtt("any-id", "ue-1", "pw-1", device_port) as ue1:
                assert ue1.rc == 0
                ue1.subscribe("msgin5g/ue/#")
                for topic in (
                    "msgin5g/up/ue-1",
                    "msgin5g/up/ue-2",
                    "msgin5g/ue/ue-2",
                    "msgin5g/up/ue-1/x",
                ):
                    ue1.publish(topic)
                for topic in ("msgin5g/ue/ue-2", "msgin5g/ue/ue-1"):
                    edge.publish(topic)
                # The broker keeps each publisher's order: the allowed message each side
                # waits for was published after the forbidden ones, so anything forbidden
                # that got through would have arrived before it.
                edge.wait_for(2)
                ue1.wait_for(1)
                assert edge.topics == ["msgin5g/up/ue-1", "msgin5g/up/ue-1/x"]
                assert ue1.topics == ["msgin5g/ue/ue-1"]
            for user, password, port in (
                ("ue-1", "wrong", device_port),
                ("msgin5g-edge", "edge-pw", device_port),  # the edge is no device
                ("ue-1", "pw-1", edge_port),  # and a device cannot use the edge listener
            ):
                assert _Mqtt("refused", user, password, port).connack() == _NOT_AUTHORIZED, (
                    user,
                    port,
                )
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def _wait_for_line(server: subprocess.Popen[bytes], marker: bytes) -> None:
    """Reads a server's log until it says ``marker`` (it serves by then)."""
    assert server.stdout is not None
    lines: list[bytes] = []
    for line in server.stdout:
        lines.append(line)
        if marker in line:
            return
    raise AssertionError(f"the server exited: {b''.join(lines).decode(errors='replace')}")


_NOT_AUTHORIZED = 0x87  # MQTT 5 CONNACK reason code


class _Mqtt:
    """A small synchronous MQTT 5 client for the broker test."""

    def __init__(self, client_id: str, username: str, password: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.rc: int | None = None
        self.topics: list[str] = []
        self._connected = threading.Event()
        self._acks = threading.Semaphore(0)
        self._got = threading.Condition()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._acks.release()
        self._client.on_publish = lambda *_: self._acks.release()
        self._port = port

    def connack(self) -> int | None:
        """Connect without a network thread and return the CONNACK reason code."""
        self._client.connect("127.0.0.1", self._port)
        deadline = time.monotonic() + 5
        while not self._connected.is_set() and time.monotonic() < deadline:
            self._client.loop(timeout=0.05)
        self._client.disconnect()
        return self.rc

    def __enter__(self) -> _Mqtt:
        self._client.connect("127.0.0.1", self._port)
        self._client.loop_start()
        assert self._connected.wait(5), "no CONNACK"
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.rc = int(reason.value)
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._got:
            self.topics.append(message.topic)
            self._got.notify_all()

    def subscribe(self, topic: str) -> None:
        self._client.subscribe(topic, qos=1)
        assert self._acks.acquire(timeout=5), "no SUBACK"

    def publish(self, topic: str) -> None:
        self._client.publish(topic, b"{}", qos=1)
        assert self._acks.acquire(timeout=5), "no PUBACK"

    def wait_for(self, count: int) -> None:
        with self._got:
            assert self._got.wait_for(lambda: len(self.topics) >= count, timeout=5), self.topics


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_bundled_redis_starts_from_the_rendered_command_with_its_password(
    chart: helm_python.Chart, tmp_path: Path
) -> None:
    """The StatefulSet's command and redis.conf, run with the local redis-server."""
    r = render(chart, {"redis": {"auth": {"password": "pa55-Word"}}})
    statefulset = r.get("StatefulSet", name_of("redis"))
    c = container(statefulset)
    port = _free_port()
    conf = r.get("ConfigMap", name_of("redis"))["data"]["redis.conf"]
    conf = conf.replace("port 6379", f"port {port}").replace("dir /data", f"dir {tmp_path}")
    conf = conf.replace("bind * -::*", "bind 127.0.0.1")
    (tmp_path / "redis.conf").write_text(conf)
    script = c["args"][0].replace("/etc/redis/redis.conf", str(tmp_path / "redis.conf"))
    env = {**os.environ, "REDIS_PASSWORD": "pa55-Word"}
    server = subprocess.Popen(
        [*c["command"], script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _wait_for_line(server, b"Ready to accept connections")
        # The password is not on redis-server's command line.
        assert b"pa55-Word" not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        probe = c["readinessProbe"]["exec"]["command"]
        probe = [*probe[:-1], probe[-1].replace("-h 127.0.0.1", f"-h 127.0.0.1 -p {port}")]
        ready = subprocess.run(
            probe, env={**os.environ, "REDISCLI_AUTH": "pa55-Word"}, timeout=10, check=False
        )
        assert ready.returncode == 0
        denied = subprocess.run(
            probe, env={**os.environ, "REDISCLI_AUTH": "nope"}, timeout=10, check=False
        )
        assert denied.returncode != 0
        cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]
        auth_env = {**os.environ, "REDISCLI_AUTH": "pa55-Word"}
        aof = subprocess.run(
            [*cli, "config", "get", "appendonly"],
            env=auth_env,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert aof.stdout.split() == ["appendonly", "yes"]
        policy = subprocess.run(
            [*cli, "config", "get", "maxmemory-policy"],
            env=auth_env,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert policy.stdout.split() == ["maxmemory-policy", "noeviction"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_generated_passwords_live_only_as_long_as_one_render(chart: helm_python.Chart) -> None:
    """The per-render password cache (kept in Helm's copy of the values) never leaks out.

    Neither into the caller's values nor into the loaded chart: a second render generates
    afresh (in a cluster, the chart reads the stored password back instead).
    """
    values = copy.deepcopy(VALUE_SETS["default"])
    first = chart_secrets(render(chart, values))
    second = chart_secrets(render(chart, values))
    assert values == VALUE_SETS["default"]
    key = f"{name_of('redis')}/redis-password"
    assert first[key] != second[key]
