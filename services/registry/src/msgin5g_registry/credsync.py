"""``msgin5g-credsync``: keeps a Mosquitto password file in step with the registry's device
credentials (credentials.py), so that the broker authenticates devices by their MQTT password.

At start it reads the whole state once (every UE of the credential change log with its
current ``$7$`` hash) and writes the file; then it follows
:meth:`CredentialStore.changed_since`, every ``MSGIN5G_CREDSYNC_INTERVAL`` seconds and at once
when a ueSvcId arrives on the revocation channel (a revoke takes effect within a second). When
the file's content changes it is replaced atomically (a temporary file in the same folder,
mode 0600, then a rename) and Mosquitto is told to reload it with SIGHUP: the pid in
``MSGIN5G_CREDSYNC_MOSQUITTO_PID_FILE`` (read at each reload: Mosquitto may have restarted) or
``MSGIN5G_CREDSYNC_MOSQUITTO_PID``. On reload Mosquitto checks its live clients again: a
revoked device's session is closed by the broker.

The file holds one line per user, ``username:$7$...``: the fixed service users of
``MSGIN5G_CREDSYNC_SERVICE_USERS`` (JSON ``{"username": "$7$..."}``, the mqtt-edge's own
account, so that it is never locked out; a UE of the same name is left out), then every UE
with live credentials. Mosquitto keeps one password per user, so **during a rotation's grace
period only the current password is in the file**: after a rotation the broker refuses the
previous MQTT password at the next sync (the grace applies to DTLS and OSCORE only) and a live
session opened with it is closed on that reload; the device reconnects with the new one.
A ueSvcId that Mosquitto cannot take as a username (a ``:``, or ``+``/``#``, which its ACL
patterns refuse) is left out and counted in the logs.

More fixed accounts can come from ``MSGIN5G_CREDSYNC_SERVICE_USERS_FILE``: a Mosquitto
password file (``username:$7$...`` lines, as ``mosquitto_passwd`` writes them), read once at
start; the JSON setting wins for a name in both.

``msgin5g-credsync --once`` writes the file from the whole state and exits: 0 once it is
written, 1 when Redis has not answered within ``MSGIN5G_CREDSYNC_ONCE_TIMEOUT`` seconds (or
the file cannot be written). It signals Mosquitto only when a pid (file) is set. Kubernetes
runs it as an init container of the broker's pod, so that the broker starts with every
device's password, and restarts it until it succeeds.

The following process touches ``MSGIN5G_CREDSYNC_HEALTH_FILE`` (when set) after each pass of
its loop, whether Redis answered or not: the file's age shows that the loop is not stuck (a
liveness probe); "sync failed" warnings show that Redis is not answering.

The process needs no key-encryption key: it reads hashes only, never a wrapped secret. It
must run as the user Mosquitto runs as (the file is 0600), sharing the file's folder; in
Kubernetes a sidecar of the broker's pod sharing its process namespace. Logs carry counts and
versions, never a hash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgin5g_common import logs, redisutil, service
from msgin5g_common.keys import Keys
from msgin5g_common.settings import CommonSettings
from msgin5g_registry.credentials import KEK_BYTES, CredentialStore

log = logging.getLogger("msgin5g.registry.credsync")

PAGE = 1000
_HASH_SCHEMES = ("$7$", "$6$")
_BAD_USERNAME_CHARS = frozenset(":+#/\n\r\t \x00")
_RETRY_DELAY = 1.0

Reloader = Callable[[], bool]


class CredsyncSettings(CommonSettings):
    """``MSGIN5G_*`` settings of ``msgin5g-credsync`` (the Redis ones are the services')."""

    # The Mosquitto password file (its folder must be writable: the file is replaced).
    credsync_password_file: str = "/mosquitto/auth/passwords"
    # Seconds between two reads of the change log (a revocation also wakes the sync).
    credsync_interval: float = 1.0
    # Where Mosquitto's pid is (read at each reload), or the pid itself; neither: no reload.
    credsync_mosquitto_pid_file: str = ""
    credsync_mosquitto_pid: int = 0
    # JSON {"username": "$7$..."}: fixed accounts (the mqtt-edge's) always in the file.
    credsync_service_users: str = ""
    # A Mosquitto password file (username:$7$... lines) of more fixed accounts, read at start.
    credsync_service_users_file: str = ""
    # --once: seconds to keep trying Redis before giving up (exit status 1).
    credsync_once_timeout: float = Field(default=30.0, gt=0)
    # Touched after each pass of the loop (a liveness probe checks its age); empty: none.
    credsync_health_file: str = ""


def parse_service_users(text: str) -> dict[str, str]:
    """The service users of ``MSGIN5G_CREDSYNC_SERVICE_USERS``; ValueError names a bad one
    (never its hash)."""
    if not text.strip():
        return {}
    try:
        doc: Any = json.loads(text)
    except ValueError:
        raise ValueError("MSGIN5G_CREDSYNC_SERVICE_USERS: not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError(  # noqa: TRY004 (a bad setting, like the others)
            'MSGIN5G_CREDSYNC_SERVICE_USERS: must be {"username": "$7$..."}'
        )
    users: dict[str, str] = {}
    for name, hashed in doc.items():
        _check_service_user("MSGIN5G_CREDSYNC_SERVICE_USERS", name, hashed)
        users[name] = hashed
    return users


def parse_password_file(text: str, source: str) -> dict[str, str]:
    """Fixed accounts from a Mosquitto password file (``username:hash`` lines; blank lines
    and ``#`` comments are skipped); ValueError names the line of a bad one (never its hash)."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, hashed = line.partition(":")
        if not colon:
            raise ValueError(f"{source}: line {number}: not username:hash")
        _check_service_user(f"{source}: line {number}", name, hashed)
        users[name] = hashed
    return users


def load_service_users(settings: CredsyncSettings) -> dict[str, str]:
    """Every fixed account of the settings: the file's, then the JSON setting's (which wins)."""
    users: dict[str, str] = {}
    if path := settings.credsync_service_users_file:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(
                f"MSGIN5G_CREDSYNC_SERVICE_USERS_FILE ({path}): cannot read it ({exc.strerror})"
            ) from None
        users.update(parse_password_file(text, f"MSGIN5G_CREDSYNC_SERVICE_USERS_FILE ({path})"))
    users.update(parse_service_users(settings.credsync_service_users))
    return users


def _check_service_user(source: str, name: str, hashed: object) -> None:
    if not valid_username(name):
        raise ValueError(f"{source}: bad username {name!r}")
    if not isinstance(hashed, str) or not hashed.startswith(_HASH_SCHEMES) or "\n" in hashed:
        raise ValueError(f"{source}: {name}: not a Mosquitto $7$ (or $6$) hash")


def valid_username(name: str) -> bool:
    """Whether Mosquitto can take ``name`` as a password-file username under %u ACLs."""
    return bool(name) and not (_BAD_USERNAME_CHARS & set(name))


@dataclass
class SyncState:
    """What the sync knows: each UE's current hash, and the last change version read."""

    version: int = 0
    hashes: dict[str, str] = field(default_factory=dict)
    written: str | None = None  # the file's content as last written


@dataclass(frozen=True, slots=True)
class SyncResult:
    changed: int  # UEs read from the change log
    written: bool  # the file was rewritten
    reloaded: bool  # Mosquitto was sent SIGHUP
    users: int  # UE lines in the file
    version: int


def render(service_users: dict[str, str], hashes: dict[str, str]) -> tuple[str, int, int]:
    """The password file's content, the number of UE lines, and of ueSvcIds left out."""
    lines = [f"{name}:{hashed}" for name, hashed in sorted(service_users.items())]
    users = skipped = 0
    for ue in sorted(hashes):
        if ue in service_users or not valid_username(ue):
            skipped += 1
            continue
        lines.append(f"{ue}:{hashes[ue]}")
        users += 1
    return "".join(line + "\n" for line in lines), users, skipped


def write_atomic(path: Path, text: str) -> None:
    """Replaces ``path`` with ``text``: a reader sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


def mosquitto_reloader(pid: int = 0, pid_file: str = "") -> Reloader:
    """A function that sends SIGHUP to Mosquitto and says whether it could."""

    def reload() -> bool:
        target = pid
        if pid_file:
            try:
                target = int(Path(pid_file).read_text().strip())
            except (OSError, ValueError) as exc:
                log.warning(
                    "no mosquitto pid to reload", extra={"pidFile": pid_file, "error": str(exc)}
                )
                return False
        if target <= 0:
            return False
        try:
            os.kill(target, signal.SIGHUP)
        except OSError as exc:
            log.warning("mosquitto not signalled", extra={"pid": target, "error": str(exc)})
            return False
        return True

    return reload


async def _current_version(store: CredentialStore) -> int:
    value: Any = await store.redis.get(store.keys.credentials_version())
    return 0 if value is None else int(value)


async def sync_once(
    store: CredentialStore,
    state: SyncState,
    path: Path,
    service_users: dict[str, str],
    reload: Reloader,
    *,
    page: int = PAGE,
) -> SyncResult:
    """One step: reads the changes after ``state.version`` (all of them the first time),
    rewrites the file when its content changes and then reloads Mosquitto."""
    if await _current_version(store) < state.version:
        # The change log went back (Redis restored or flushed): read everything again.
        log.warning(
            "credential change log went back: full resync", extra={"version": state.version}
        )
        state.version, state.hashes = 0, {}
    changed = 0
    while True:
        rows = await store.changed_since(state.version, page)
        for ue, version in rows:
            hashes = await store.mqtt_password_hashes(ue)
            if hashes:
                state.hashes[ue] = hashes[0]  # the current one only (see the module docstring)
            else:
                state.hashes.pop(ue, None)
            state.version = max(state.version, version)
        changed += len(rows)
        if len(rows) < page:
            break
    text, users, skipped = render(service_users, state.hashes)
    written = reloaded = False
    if text != state.written:
        started = time.perf_counter()
        await asyncio.to_thread(write_atomic, path, text)
        state.written, written = text, True
        reloaded = reload()
        log.info(
            "password file written",
            extra={
                "users": users,
                "serviceUsers": len(service_users),
                "skipped": skipped,
                "changed": changed,
                "version": state.version,
                "reloaded": reloaded,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
    return SyncResult(changed, written, reloaded, users, state.version)


async def _watch_revocations(store: CredentialStore, wake: asyncio.Event) -> None:
    """Sets ``wake`` for every revocation published; resubscribes after a Redis failure."""
    while True:
        pubsub = store.redis.pubsub()
        try:
            await pubsub.subscribe(store.revoked_channel)
            wake.set()  # a revocation may have been missed while unsubscribed
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None:
                    wake.set()
        except (RedisError, OSError) as exc:
            log.warning("revocation channel lost", extra={"error": str(exc)})
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        await asyncio.sleep(_RETRY_DELAY)


async def follow(
    store: CredentialStore,
    settings: CredsyncSettings,
    stop: asyncio.Event,
    *,
    reload: Reloader | None = None,
) -> None:
    """Syncs until ``stop``: at start, every interval, and on each revocation."""
    path = Path(settings.credsync_password_file)
    service_users = load_service_users(settings)
    if reload is None:
        if not settings.credsync_mosquitto_pid and not settings.credsync_mosquitto_pid_file:
            log.warning("no mosquitto pid set: the file is written, the broker not reloaded")
        reload = mosquitto_reloader(
            settings.credsync_mosquitto_pid, settings.credsync_mosquitto_pid_file
        )
    health = Path(settings.credsync_health_file) if settings.credsync_health_file else None
    state = SyncState()
    wake = asyncio.Event()
    watcher = asyncio.create_task(_watch_revocations(store, wake))
    first = True
    try:
        while not stop.is_set():
            wake.clear()
            try:
                result = await sync_once(store, state, path, service_users, reload)
            except (RedisError, OSError) as exc:
                log.warning("credential sync failed, retrying", extra={"error": str(exc)})
            else:
                if first:
                    service.ready(passwordFile=str(path), users=result.users)
                    first = False
            if health is not None:
                _touch(health)
            stopping = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait(
                    (stopping, woken),
                    timeout=settings.credsync_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                stopping.cancel()
                woken.cancel()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def store_for(redis: Redis, settings: CommonSettings) -> CredentialStore:
    """A store for reading hashes and the change log: it never unwraps, so it is given a
    random key-encryption key, never the real one."""
    return CredentialStore(redis, Keys(settings.redis_prefix), secrets.token_bytes(KEK_BYTES))


def _touch(path: Path) -> None:
    try:
        path.touch()
    except OSError as exc:
        log.warning("health file not touched", extra={"path": str(path), "error": str(exc)})


async def once(settings: CredsyncSettings, *, reload: Reloader | None = None) -> SyncResult:
    """``--once``: writes the file from the whole state. Retries while Redis does not answer,
    for ``credsync_once_timeout`` seconds; then raises the last error (a RedisError, or
    TimeoutError when a try did not end in time). Mosquitto is signalled when a pid is set."""
    path = Path(settings.credsync_password_file)
    service_users = load_service_users(settings)
    if reload is None:
        reload = mosquitto_reloader(
            settings.credsync_mosquitto_pid, settings.credsync_mosquitto_pid_file
        )
        if not settings.credsync_mosquitto_pid and not settings.credsync_mosquitto_pid_file:
            reload = _no_reload
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.credsync_once_timeout
    delay = 0.2
    redis = redisutil.connect(settings.redis_url, max_connections=2)
    try:
        store = store_for(redis, settings)
        last: RedisError | TimeoutError | None = None
        while True:
            try:
                # A Redis behind a dropping firewall would block a connect for minutes.
                async with asyncio.timeout(max(deadline - loop.time(), 0.5)):
                    return await sync_once(store, SyncState(), path, service_users, reload)
            except (RedisError, TimeoutError) as exc:
                if isinstance(exc, RedisError) or last is None:
                    last = exc  # a timeout says less than the Redis error before it
                if loop.time() + delay >= deadline:
                    raise last from None
                log.warning("waiting for redis", extra={"error": str(exc), "retryIn": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    finally:
        await redis.aclose()


def _no_reload() -> bool:
    return False


def run_once(settings: CredsyncSettings) -> int:
    """``msgin5g-credsync --once``: the exit status (0: written; 1: not)."""
    logs.configure("credsync", settings.log_level)
    result: SyncResult | None = None
    error = ""
    try:
        result = asyncio.run(once(settings))
    except (RedisError, TimeoutError) as exc:
        error = f"redis did not answer within {settings.credsync_once_timeout:g} s: "
        error += str(exc) or type(exc).__name__
    except (OSError, ValueError) as exc:
        error = str(exc)
    if result is None:
        # Expected failures: one line saying why, no traceback.
        log.error("password file not written", extra={"error": error})
        return 1
    log.info(
        "synced once",
        extra={
            "passwordFile": settings.credsync_password_file,
            "users": result.users,
            "version": result.version,
        },
    )
    return 0


async def serve(settings: CredsyncSettings, stop: asyncio.Event) -> None:
    load_service_users(settings)  # a bad setting stops us at once
    redis = redisutil.connect(settings.redis_url, max_connections=8)
    try:
        if not await redisutil.wait_until_up(redis, stop):
            return
        await follow(store_for(redis, settings), settings, stop)
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="msgin5g-credsync",
        description="Keeps a Mosquitto password file in step with the registry's device "
        "credentials (settings: MSGIN5G_CREDSYNC_* and the Redis ones).",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="write the file from the whole state and exit (1 when Redis does not answer "
        "within MSGIN5G_CREDSYNC_ONCE_TIMEOUT seconds)",
    )
    args = parser.parse_args(argv)
    settings = CredsyncSettings()
    if args.once:
        raise SystemExit(run_once(settings))
    service.run("credsync", settings.log_level, partial(serve, settings))


if __name__ == "__main__":
    main()
