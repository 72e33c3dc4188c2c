"""The chart's Deployments run the services: each service, started as a process with the
environment its rendered Deployment gives it, becomes ready and reads every setting it gets.

tests/unit/test_chart.py checks the rendered objects against Kubernetes' schemas and the
services' settings classes; this test checks them against the processes. The chart is rendered
with its default values (ci/default-values.yaml: bundled Redis and Mosquitto). Each service
Deployment's container environment is built as the kubelet builds it (envFrom ConfigMaps,
ConfigMap and Secret key references resolved from the rendered objects, the downward API,
``$(VAR)`` expansion) and then moved from the cluster to this machine, and only that:

- bind addresses (``0.0.0.0``) and the pod IP become 127.0.0.1, and every container port a
  service binds becomes a free port of its own (four pods' ports 9100 on one loopback);
- a Kubernetes Service host name with a Service port (``<release>-router:50052``, also inside
  a URL) becomes 127.0.0.1 with the local port of the process behind that Service port;
- the bundled Redis is a local Redis that requires the password the rendered Redis pod gets,
  so the services' URL keeps its credentials;
- the bundled Mosquitto is the devstack's loopback broker: it has one anonymous listener, so
  the mqtt-edge's listener (1884) maps to it, and the rendered username and password are
  passed on unchanged but not checked (the rendered broker's authentication and ACLs are
  tested in tests/unit/test_chart.py with the rendered mosquitto.conf);
- a Secret or ConfigMap volume (the registry's OAuth2 clients and signing key) becomes a
  temporary directory holding the files the kubelet would project from the rendered object,
  and a setting that names a file under its mountPath names the same file there.

The bundled broker's pod also runs msgin5g-credsync (an init container and a sidecar): here
only their settings are checked against the ones it reads; tests/integration/test_credsync.py
runs that pod with its rendered commands, files and environments.

The processes inherit the runner's environment apart from its ``MSGIN5G_*`` variables (as a
container inherits its image's: PATH, the virtualenv), so the ``MSGIN5G_*`` settings a service
sees are exactly the chart's.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import helm_python
import httpx
import pytest
import pytest_asyncio
import yaml
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError

from msgin5g_devstack.stack import Ports, Stack, StackConfig, StackError, free_port
from msgin5g_registry.credsync import CredsyncSettings
from tests.unit.test_chart import PENDING_SETTINGS, SERVICES

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "msgin5g"
VALUES = CHART / "ci" / "default-values.yaml"
RELEASE = "msgin5g"
NAMESPACE = "msgin5g-conformance"
LOCAL = "127.0.0.1"
ANY_HOSTS = {"0.0.0.0", "::", "[::]"}
COMPONENT = "app.kubernetes.io/component"
# The order the devstack starts them in: the router first, the others are its clients.
START_ORDER = ("router", "registry", "coap-edge", "mqtt-edge")
READY_TIMEOUT = 30.0
# host:port, with an IPv6 host in brackets.
ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d+)")


def pod_name(workload: dict[str, Any]) -> str:
    """A name as Kubernetes gives the workload's pods."""
    name: str = workload["metadata"]["name"]
    return f"{name}-0" if workload["kind"] == "StatefulSet" else f"{name}-7d4b9c6f58-x2kqz"


# ----------------------------------------------------------------------------- rendering


@dataclass
class Rendered:
    objects: list[dict[str, Any]]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) <= 1, f"{kind}/{name} rendered {len(found)} times"
        return found[0] if found else None

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in kinds]

    def workload(self, component: str) -> dict[str, Any]:
        found = [
            w
            for w in self.of_kind("Deployment", "StatefulSet")
            if w["spec"]["template"]["metadata"]["labels"].get(COMPONENT) == component
        ]
        assert len(found) == 1, f"{len(found)} workloads of {component}"
        return found[0]

    def data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        """A ConfigMap's or Secret's data (decoded), as a pod would see it."""
        obj = self.find(kind, name)
        if obj is None:
            assert optional, f"the pod refers to {kind}/{name}, which the chart does not render"
            return None
        data: dict[str, str] = dict(obj.get("stringData", {}))
        for key, value in obj.get("data", {}).items():
            data[key] = base64.b64decode(value).decode() if kind == "Secret" else value
        return data


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    values = yaml.safe_load(VALUES.read_text()) or {}
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return Rendered(
        [
            doc
            for path, text in sorted(manifests.items())
            if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text)
            if doc
        ]
    )


# ----------------------------------------------------------------------------- the kubelet


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (k8s.io/kubernetes third_party/forked/golang/expansion):
    ``$(NAME)`` of a variable defined before is replaced, an undefined one stays as it is,
    ``$$`` is a literal ``$``."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(value):
        if value[cursor] == "$" and cursor + 1 < len(value):
            out.append(value[checkpoint:cursor])
            rest = value[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(" and ")" in rest:
                name = rest[1 : rest.index(")")]
                out.append(env.get(name, f"$({name})"))
                advance = rest.index(")") + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + value[checkpoint:]


def container_env(r: Rendered, workload: dict[str, Any], name: str = "") -> dict[str, str]:
    """The environment of the workload's (one) container, or of its (init) container
    ``name``, as the kubelet builds it."""
    spec = workload["spec"]["template"]["spec"]
    if name:
        (container,) = [
            c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name
        ]
    else:
        (container,) = spec["containers"]
    downward = {
        "metadata.name": pod_name(workload),
        "metadata.namespace": NAMESPACE,
        "status.podIP": LOCAL,
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = (
            ("ConfigMap", source["configMapRef"])
            if "configMapRef" in source
            else ("Secret", source["secretRef"])
        )
        data = r.data(kind, ref["name"], ref.get("optional", False))
        env.update({source.get("prefix", "") + k: v for k, v in (data or {}).items()})
    for entry in container.get("env", []):
        name = entry["name"]
        source = entry.get("valueFrom")
        if source is None:
            env[name] = expand(entry.get("value", ""), env)
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            assert path in downward, f"{name}: no local stand-in for {path}"
            env[name] = downward[path]
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "ConfigMap" if "configMapKeyRef" in source else "Secret"
            ref = source["configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"]
            optional = ref.get("optional", False)
            data = r.data(kind, ref["name"], optional)
            if data is None or (optional and ref["key"] not in data):
                continue
            assert ref["key"] in data, f"{name}: {kind}/{ref['name']} has no key {ref['key']}"
            env[name] = data[ref["key"]]
        else:
            pytest.fail(f"{name}: unsupported valueFrom {source}")
    return env


# ----------------------------------------------------------------------------- volumes


def mount_files(r: Rendered, workload: dict[str, Any], root: Path) -> dict[str, Path]:
    """Writes the files of the container's Secret and ConfigMap volumes under ``root``, as
    the kubelet projects them (``items``, or every key); returns mountPath -> local directory."""
    spec = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounted: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            kind, source, name = "Secret", volume["secret"], volume["secret"]["secretName"]
        elif "configMap" in volume:
            kind, source, name = "ConfigMap", volume["configMap"], volume["configMap"]["name"]
        else:
            continue  # emptyDir (/tmp): the process has the machine's own
        assert "subPath" not in mount, f"{mount['name']}: subPath mounts are not mapped"
        data = r.data(kind, name, source.get("optional", False))
        if data is None:
            continue
        local = root / mount["mountPath"].lstrip("/")
        for item in source.get("items") or [{"key": key, "path": key} for key in data]:
            assert item["key"] in data, f"{kind}/{name} has no key {item['key']}"
            target = local / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
        mounted[mount["mountPath"]] = local
    return mounted


def localize_files(env: dict[str, str], mounted: dict[str, Path]) -> dict[str, str]:
    """The environment with every path under a mountPath replaced by the local file."""
    out = dict(env)
    for key, value in env.items():
        for mount_path, local in mounted.items():
            if value.startswith(f"{mount_path.rstrip('/')}/"):
                out[key] = str(local / value[len(mount_path) :].lstrip("/"))
                assert Path(out[key]).is_file(), f"{key}={value}: no such file in the volume"
                break
        else:
            assert not (key.endswith("_FILE") and value), f"{key}={value}: no volume provides it"
    return out


# ----------------------------------------------------------------------------- to loopback


@dataclass
class Loopback:
    """Where the cluster's pods and Services are on this machine."""

    # component -> container port -> local port
    ports: dict[str, dict[int, int]] = field(default_factory=dict)
    # Service name -> (component, Service port -> container port)
    services: dict[str, tuple[str, dict[int, int]]] = field(default_factory=dict)

    @classmethod
    def of(cls, r: Rendered, redis_port: int, mqtt_port: int) -> Loopback:
        loopback = cls()
        named: dict[str, dict[str, int]] = {}
        for workload in r.of_kind("Deployment", "StatefulSet"):
            component = workload["spec"]["template"]["metadata"]["labels"][COMPONENT]
            # The broker's pod also runs msgin5g-credsync, which listens on nothing.
            ports = [
                p
                for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            ]
            named[component] = {p["name"]: p["containerPort"] for p in ports if "name" in p}
            local: dict[int, int] = {}
            for p in ports:
                if component in SERVICES:
                    udp = p.get("protocol", "TCP") == "UDP"
                    local[p["containerPort"]] = free_port(
                        socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
                    )
                elif component == "redis":
                    local[p["containerPort"]] = redis_port
                elif component == "mosquitto":
                    # The devstack broker has one listener: devices' and the mqtt-edge's.
                    local[p["containerPort"]] = mqtt_port
                else:
                    pytest.fail(f"no local stand-in for the {component} pods")
            loopback.ports[component] = local
        for service in r.of_kind("Service"):
            selector = service["spec"].get("selector", {})
            component = selector.get(COMPONENT)
            assert component in loopback.ports, f"Service {service['metadata']['name']}"
            targets: dict[int, int] = {}
            for p in service["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                targets[p["port"]] = named[component][target] if isinstance(target, str) else target
            loopback.services[service["metadata"]["name"]] = (component, targets)
        return loopback

    def _service(self, host: str) -> tuple[str, dict[int, int]] | None:
        """The Service a cluster DNS name names (``name``, ``name.ns``, ``name.ns.svc...``)."""
        name, _, domain = host.partition(".")
        if domain not in ("", NAMESPACE, f"{NAMESPACE}.svc", f"{NAMESPACE}.svc.cluster.local"):
            return None
        return self.services.get(name)

    def address(self, component: str, host: str, port: int) -> tuple[str, int]:
        """The local address of ``host:port`` as seen from a pod of ``component``."""
        if host in ANY_HOSTS or host == LOCAL:  # a bind address, or the pod's own IP
            own = self.ports[component]
            assert port in own, f"{component} binds {port}, which is no container port of its pod"
            return LOCAL, own[port]
        service = self._service(host)
        assert service is not None, f"{component} is given {host}:{port}: no Service of the chart"
        target, targets = service
        assert port in targets, f"{component} is given {host}:{port}: not a port of that Service"
        return LOCAL, self.ports[target][targets[port]]

    def localize(self, component: str, env: dict[str, str]) -> dict[str, str]:
        """The pod's environment with every cluster address replaced by its local one."""
        out = dict(env)
        for key, value in env.items():
            if key.endswith("_HOST") and f"{key[:-5]}_PORT" in env:
                port_key = f"{key[:-5]}_PORT"
                local, port = self.address(component, value, int(env[port_key]))
                out[key], out[port_key] = local, str(port)
            elif key.endswith("_PORT") and f"{key[:-5]}_HOST" in env:
                continue  # with its _HOST
            elif "://" in value:
                url = urlsplit(value)
                assert url.hostname is not None, f"{key}={value}"
                assert url.port is not None, f"{key}={value}"
                local, port = self.address(component, url.hostname, url.port)
                userinfo = url.netloc.rpartition("@")[0]
                netloc = f"{userinfo}@{local}:{port}" if userinfo else f"{local}:{port}"
                out[key] = urlunsplit(url._replace(netloc=netloc))
            elif match := ADDRESS.fullmatch(value):
                local, port = self.address(component, match[1].strip("[]"), int(match[2]))
                out[key] = f"{local}:{port}"
            elif value in ANY_HOSTS:
                out[key] = LOCAL
        for key, value in out.items():
            host: str | None = None
            if "://" in value:
                host = urlsplit(value).hostname
            elif match := ADDRESS.fullmatch(value):
                host = match[1]
            assert host in (None, LOCAL), f"{key}={value} still names a cluster address"
            assert value not in ANY_HOSTS, f"{key}={value}"
        return out


# ----------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("component", SERVICES)
def test_every_setting_the_deployment_sets_is_one_the_service_reads(
    rendered: Rendered, component: str
) -> None:
    env = container_env(rendered, rendered.workload(component))
    reads = {f"MSGIN5G_{name.upper()}" for name in SERVICES[component].model_fields}
    given = {key for key in env if key.startswith("MSGIN5G_")}
    assert given, f"the {component} Deployment sets no MSGIN5G_ setting"
    assert given - reads - PENDING_SETTINGS == set(), f"{component} ignores these"
    # Anything else the chart sets is there for a $(VAR) reference (POD_IP).
    others = set(env) - given
    assert others <= {"POD_IP"}, others


@pytest.mark.parametrize("name", ["credsync-init", "credsync"])
def test_every_setting_credsync_gets_is_one_it_reads(rendered: Rendered, name: str) -> None:
    """The broker pod's msgin5g-credsync containers (tests/integration/test_credsync.py runs
    them)."""
    env = container_env(rendered, rendered.workload("mosquitto"), name)
    reads = {f"MSGIN5G_{field.upper()}" for field in CredsyncSettings.model_fields}
    given = {key for key in env if key.startswith("MSGIN5G_")}
    assert {"MSGIN5G_REDIS_URL", "MSGIN5G_CREDSYNC_PASSWORD_FILE"} <= given
    assert given - reads - PENDING_SETTINGS == set(), f"{name} ignores these"
    assert set(env) == given


class ChartStack(Stack):
    """The devstack's process handling (logs, readiness, stopping), with each service's
    environment taken from the chart instead of the devstack's."""

    def __init__(self, config: StackConfig) -> None:
        super().__init__(config)
        self.envs: dict[str, dict[str, str]] = {}

    def service_env(self, name: str) -> dict[str, str]:
        return self.envs[name]


@pytest_asyncio.fixture
async def chart_stack(tmp_path: Path) -> AsyncIterator[ChartStack]:
    stack = ChartStack(StackConfig(ports=Ports.ephemeral(), data_dir=tmp_path))
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield stack
    finally:
        await stack.stop()


async def _require_password(port: int, password: str) -> None:
    """Makes the local Redis ask for the password the rendered Redis pod is given."""
    admin = Redis(host=LOCAL, port=port)
    try:
        await admin.config_set("requirepass", password)
    finally:
        await admin.aclose()
    anonymous = Redis(host=LOCAL, port=port)
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.ping()
    finally:
        await anonymous.aclose()


def _process_env(stack: Stack, name: str) -> dict[str, str]:
    raw = Path(f"/proc/{stack.procs[name].proc.pid}/environ").read_bytes()
    pairs = (item.decode().partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _expected_listen(component: str, env: dict[str, str]) -> dict[str, str]:
    """The ``listen`` of the service's ready event, from the environment it was given."""
    listen = {
        "metrics": f"http://{env['MSGIN5G_METRICS_HOST']}:{env['MSGIN5G_METRICS_PORT']}/metrics"
    }
    if component in ("router", "registry"):
        listen["grpc"] = env["MSGIN5G_GRPC_BIND"]
    else:
        listen["grpc"] = env["MSGIN5G_EDGE_ADVERTISE_ADDR"]
        listen["edge_id"] = env["MSGIN5G_EDGE_ID"]
    if component == "registry":
        listen["http"] = f"http://{env['MSGIN5G_HTTP_HOST']}:{env['MSGIN5G_HTTP_PORT']}"
    if component == "coap-edge":
        listen["coap"] = f"udp://{env['MSGIN5G_COAP_HOST']}:{env['MSGIN5G_COAP_PORT']}"
        if env.get("MSGIN5G_COAP_DTLS", "true").lower() not in ("false", "0", "no", "off"):
            host = env.get("MSGIN5G_COAP_DTLS_HOST") or env["MSGIN5G_COAP_HOST"]
            listen["coaps"] = f"udp://{host}:{env.get('MSGIN5G_COAP_DTLS_PORT', '5684')}"
    if component == "mqtt-edge":
        listen["mqtt"] = f"mqtt://{env['MSGIN5G_MQTT_HOST']}:{env['MSGIN5G_MQTT_PORT']}"
    return listen


async def test_each_service_becomes_ready_with_the_environment_its_deployment_gives_it(
    rendered: Rendered, chart_stack: ChartStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stack = chart_stack
    await stack._with_free_port("redis", stack.start_redis)
    redis_env = container_env(rendered, rendered.workload("redis"))
    await _require_password(stack.ports.redis, redis_env["REDIS_PASSWORD"])
    await stack._with_free_port("mqtt", stack.start_mosquitto)
    # From here on the runner's own MSGIN5G_* settings (if any) must not reach the services.
    for key in list(os.environ):
        if key.startswith("MSGIN5G_"):
            monkeypatch.delenv(key)

    loopback = Loopback.of(rendered, stack.ports.redis, stack.ports.mqtt)
    for component in START_ORDER:
        workload = rendered.workload(component)
        env = loopback.localize(component, container_env(rendered, workload))
        env = localize_files(env, mount_files(rendered, workload, tmp_path / "pods" / component))
        stack.envs[component] = env
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                listen = await stack.start_service(component)
        except (StackError, TimeoutError) as err:
            log = (stack.log_dir / f"{component}.log").read_text()[-4000:]
            pytest.fail(f"{component} did not become ready: {err}\n{log}")
        seen = _process_env(stack, component)
        assert {k: seen.get(k) for k in env} == env, component
        assert {k for k in seen if k.startswith("MSGIN5G_")} == {
            k for k in env if k.startswith("MSGIN5G_")
        }, component
        assert listen == _expected_listen(component, env), component

    # The edges registered themselves, with the rendered prefix and their pod names, in the
    # Redis the rendered URL (password included) names.
    redis = Redis.from_url(stack.envs["router"]["MSGIN5G_REDIS_URL"], decode_responses=True)
    try:
        for component, kind in (("coap-edge", "coap"), ("mqtt-edge", "mqtt")):
            env = stack.envs[component]
            key = f"{env['MSGIN5G_REDIS_PREFIX']}:edge:{kind}:{env['MSGIN5G_EDGE_ID']}"
            assert await redis.get(key) == env["MSGIN5G_EDGE_ADVERTISE_ADDR"], key
    finally:
        await redis.aclose()

    # OAuth2 is on by default: the management API wants the admin token the Secret holds.
    registry = stack.envs["registry"]
    assert registry["MSGIN5G_AUTH_ENABLED"] == "true"
    url = f"http://{LOCAL}:{registry['MSGIN5G_HTTP_PORT']}/api/v1/topics/conformance"
    async with httpx.AsyncClient(timeout=10) as http:
        anonymous = await http.get(url)
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        admin = await http.get(
            url, headers={"Authorization": f"Bearer {registry['MSGIN5G_ADMIN_TOKEN']}"}
        )
        assert admin.status_code == 200, admin.text

    # Device credentials are on by default: the registry wraps them with the KEK the chart
    # generated (MSGIN5G_CREDENTIALS_KEK_FILE names the file of the mounted Secret).
    credentials = f"http://{LOCAL}:{registry['MSGIN5G_HTTP_PORT']}/api/v1/ues/ue-conf/credentials"
    async with httpx.AsyncClient(timeout=10) as http:
        issued = await http.post(
            credentials, headers={"Authorization": f"Bearer {registry['MSGIN5G_ADMIN_TOKEN']}"}
        )
        assert issued.status_code == 201, issued.text
        assert {"psk", "mqttPassword", "oscore"} <= set(issued.json())
