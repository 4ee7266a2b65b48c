"""The Redis state store: flags, failure counters, leases, run history and audit, shared by
every process that runs a service. Each decision is one Lua script, one round trip.

Times in Redis are the Redis server's clock (``TIME``), so workers with skewed clocks still
agree on leases, backoff and tick windows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis
from redis import Redis
from redis.commands.core import Script

from services.errors import StateCorruptError, StateUnavailableError
from services.keys import Keys, validate_name
from services.scripts import ScriptChannel, Scripts
from services.settings import Settings, get_settings, redact_url

logger = logging.getLogger(__name__)

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
GO = "go"


def parse_flag(value: str | None, default: bool) -> bool | None:
    """A flag as Redis holds it; None when the value is not a flag (the scripts agree)."""
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def worker_identity() -> str:
    """``host:pid``: which process ran a run or holds a lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RunTicket:
    """One started run: what finish and the lease keeper need to know about it."""

    name: str
    token: str
    seq: int
    started_ms: int
    kind: str
    lease_lost: bool = False
    error: str | None = None
    """Set when ``update()`` reported a failure through ``_handle_failure`` and returned."""
    finishing: bool = False
    result: FinishResult | None = None
    began: float = field(default_factory=time.monotonic, repr=False)
    """When this process saw the run start (its own monotonic clock)."""

    @property
    def run_id(self) -> str:
        return self.token.split("@", 1)[0]


@dataclass(frozen=True)
class Decision:
    """The guard's verdict. ``ticket`` is set exactly when the verdict is ``go``."""

    verdict: str
    detail: str
    now_ms: int
    warnings: tuple[str, ...] = ()
    ticket: RunTicket | None = None

    @property
    def go(self) -> bool:
        return self.verdict == GO


@dataclass(frozen=True)
class FinishResult:
    failures: int
    stopped: bool
    superseded: bool
    lease_lost: bool
    retry_at_ms: int


@dataclass(frozen=True)
class ServiceState:
    """A service's hash, read with the documented defaults. Unreadable fields fall back to the
    default and are listed in ``corrupt`` as ``field=value``."""

    name: str
    running: bool = True
    paused: bool = False
    failures: int = 0
    runs: int = 0
    retry_at: float | None = None
    last_started_at: float | None = None
    last_finished_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    stop_reason: str | None = None
    changed_by: str | None = None
    changed_at: float | None = None
    change: str | None = None
    change_reason: str | None = None
    corrupt: tuple[str, ...] = field(default=())

    @classmethod
    def from_hash(cls, name: str, raw: Mapping[str, str]) -> ServiceState:
        corrupt: list[str] = []
        values: dict[str, Any] = {}
        for flag, default in (("running", True), ("paused", False)):
            parsed = parse_flag(raw.get(flag), default)
            if parsed is None:
                corrupt.append(f"{flag}={raw[flag]}")
                # A value nobody can read must not run the service: the scripts refuse too.
                parsed = flag == "paused"
            values[flag] = parsed
        for key in ("failures", "runs"):
            values[key] = int(_number(raw, key, corrupt) or 0)
        for key in ("retry_at", "last_started_at", "last_finished_at", "last_success_at",
                    "last_error_at", "changed_at"):
            values[key] = _number(raw, key, corrupt)
        for key in ("last_error", "stop_reason", "changed_by", "change", "change_reason"):
            values[key] = raw.get(key) or None
        return cls(name=name, corrupt=tuple(corrupt), **values)


def _number(raw: Mapping[str, str], key: str, corrupt: list[str]) -> float | None:
    value = raw.get(key)
    if value in (None, ""):
        return None
    try:
        # float() also takes '1_0'; the scripts do not, and both must read a value alike.
        number = math.nan if "_" in value else float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):  # nan and inf are no count and no time either
        corrupt.append(f"{key}={value}")
        return None
    return number


class _Reaching:
    """Turns "Redis is down" and "a state key has the wrong type" into the framework's own
    errors. A plain class rather than ``@contextmanager``: it is entered twice per run."""

    __slots__ = ("store",)

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc_type is None:
            return False
        if issubclass(exc_type, (redis.ConnectionError, redis.TimeoutError)):
            raise StateUnavailableError(
                f"cannot reach Redis at {self.store.redis_url}: {exc}") from exc
        if issubclass(exc_type, UnicodeDecodeError):
            raise StateCorruptError(
                f"a state key under {self.store.keys.prefix}: holds bytes that are not UTF-8 "
                f"text ({exc}); expected flags 1/0 and numbers: fix it with HSET") from exc
        if issubclass(exc_type, redis.ResponseError) and "WRONGTYPE" not in str(exc):
            # OOM under noeviction, READONLY after a failover: Redis is there but refuses.
            raise StateUnavailableError(
                f"Redis at {self.store.redis_url} refused the command: {exc}") from exc
        if issubclass(exc_type, redis.ResponseError):
            # Someone replaced a state key with another type (SET instead of HSET): refuse to
            # run, say which keys, and keep the process alive until it is fixed.
            raise StateCorruptError(
                f"a state key under {self.store.keys.prefix}: holds the wrong Redis type "
                f"({exc}); expected the documented layout (see services/keys.py)") from exc
        return False


_SUCCEEDED = FinishResult(0, False, False, False, 0)


def _late_finish_reply(reply: Any, ticket: RunTicket, error: BaseException | None) -> None:
    """The reply to a success sent without waiting, read before the next command."""
    where = {"service": ticket.name, "run_id": ticket.run_id}
    if error is not None:
        logger.error("recording the run's success may have failed: %s", error, extra=where)
    elif reply[2]:  # superseded: an operator removed the lease and a newer run started
        logger.error("run finished after losing its lease to a newer run; only its history "
                     "entry was written", extra=where)


class StateStore:
    """Every read and write of service state. Thread-safe: redis-py pools connections, and
    the per-run scripts share one pinned connection that redis-py locks per command."""

    def __init__(
        self,
        client: Redis,
        keys: Keys | None = None,
        *,
        lease_seconds: float = 30.0,
        history_length: int = 100,
        audit_length: int = 200,
        redis_url: str = "",
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.lease_ms = int(lease_seconds * 1000)
        self.history_length = history_length
        self.audit_length = audit_length
        self.redis_url = redact_url(redis_url) if redis_url else "<redis>"
        self.scripts = Scripts.register(client)
        self.worker = worker_identity()
        self._reaching_cm = _Reaching(self)
        self._process: tuple[int, str, ScriptChannel] | None = None
        self.defer_success = False
        """Send a short run's success without waiting for its reply (Celery workers do)."""
        self._process_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> StateStore:
        return cls(
            connect_redis(settings.redis_url),
            Keys(settings.key_prefix),
            lease_seconds=settings.lease_seconds,
            history_length=settings.history_length,
            audit_length=settings.audit_length,
            redis_url=settings.redis_url,
        )

    @property
    def lease_seconds(self) -> float:
        return self.lease_ms / 1000

    def _reaching(self) -> _Reaching:
        return self._reaching_cm

    def _per_process(self) -> tuple[int, str, ScriptChannel]:
        """This process's ``host:pid`` and its script channel, made again after a fork. The
        channel connects on first use, so an unreachable Redis is still reported then."""
        current = self._process
        pid = os.getpid()
        if current is None or current[0] != pid:
            with self._process_lock:
                current = self._process
                if current is None or current[0] != pid:
                    channel = ScriptChannel(self.client, _late_finish_reply)
                    current = self._process = (pid, worker_identity(), channel)
        return current

    def _run_script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._per_process()[2].call(script, keys, args)

    def flush(self) -> None:
        """Read the reply of an outcome sent without waiting (at process shutdown)."""
        with self._reaching_cm:
            self._per_process()[2].flush()

    # -- runs ------------------------------------------------------------------------------

    def begin(self, name: str, *, kind: str, max_runs: int, tick_gap_seconds: float) -> Decision:
        """The guard: run now or not, and why not. On ``go`` the lease is held."""
        state_key, lease_key, _ = self.keys.for_service(name)
        with self._reaching_cm:
            # 48 random bits, as the first 12 hex digits of a uuid4 were, @ host:pid.
            token = f"{os.urandom(6).hex()}@{self._per_process()[1]}"
            verdict, detail, now_ms, warnings = self._run_script(
                self.scripts.begin_run,
                (state_key, lease_key),
                (token, self.lease_ms, max_runs, kind, int(tick_gap_seconds * 1000)),
            )
        ticket = None
        if verdict == GO:
            ticket = RunTicket(name, token, int(detail), int(now_ms), kind)
        return Decision(verdict, detail, int(now_ms), tuple(warnings), ticket)

    def finish(
        self,
        ticket: RunTicket,
        *,
        error: str | None,
        max_failures: int,
        retry_delay_seconds: float,
        interrupted: bool = False,
    ) -> FinishResult:
        """Record a run's outcome (``error`` None means success; ``interrupted``, a shutdown
        mid-run, counts as neither) and release its lease."""
        outcome = "interrupted" if interrupted else ("ok" if error is None else "error")
        keys = self.keys.for_service(ticket.name)
        args = (ticket.token, ticket.seq, outcome, error or "", max_failures,
                int(retry_delay_seconds * 1000), self.history_length, ticket.started_ms,
                self.worker)
        if outcome == "ok" and self._may_defer(ticket):
            with self._reaching_cm:
                self._per_process()[2].send(self.scripts.finish_run, keys, args, ticket)
            return _SUCCEEDED
        with self._reaching_cm:
            failures, stopped, superseded, lost, retry_at = self._run_script(
                self.scripts.finish_run, keys, args)
        return FinishResult(int(failures), bool(stopped), bool(superseded), bool(lost),
                            int(retry_at))

    def _may_defer(self, ticket: RunTicket) -> bool:
        """A success may be recorded without waiting for Redis's reply when that reply is
        known: the run ended well inside its lease (so it cannot have expired and been taken
        over), hence it resets failures, stops nothing and supersedes nothing."""
        return (self.defer_success and not ticket.lease_lost
                and time.monotonic() - ticket.began < self.lease_seconds / 3)

    def renew(self, ticket: RunTicket) -> bool:
        with self._reaching_cm:
            return bool(self._run_script(
                self.scripts.renew_lease, (self.keys.lease(ticket.name),),
                (ticket.token, self.lease_ms)))

    # -- operator actions -------------------------------------------------------------------

    def control(self, name: str, action: str, *, who: str, reason: str = "") -> dict[str, Any]:
        """pause, resume, stop, start or reset one service, recorded in its audit list."""
        validate_name(name)
        with self._reaching():
            entry = self.scripts.control(
                keys=[self.keys.state(name), self.keys.audit(name)],
                args=[action, who, reason, self.audit_length],
            )
        return json.loads(entry)

    def set_failures(self, name: str, failures: int) -> None:
        """Set the failure count; 0 also ends a backoff."""
        key = self.keys.state(name)
        with self._reaching(), self.client.pipeline() as pipe:
            pipe.hset(key, "failures", int(failures))
            if not failures:
                pipe.hdel(key, "retry_at")
            pipe.execute()

    def failures(self, name: str) -> int:
        with self._reaching():
            raw = self.client.hget(self.keys.state(name), "failures")
        try:
            value = float(raw or 0)
            if not math.isfinite(value):
                raise ValueError(raw)
            return int(value)
        except ValueError:
            logger.error("%s field failures=%r is not a number; treating it as 0",
                         self.keys.state(name), raw)
            return 0

    # -- reads ------------------------------------------------------------------------------

    def read(self, name: str) -> ServiceState:
        with self._reaching():
            raw = self.client.hgetall(self.keys.state(name))
        state = ServiceState.from_hash(name, raw)
        if state.corrupt:
            logger.error(
                "state of service %r in %s holds unreadable values %s; using safe defaults "
                "(expected flags 1/0 and numbers)", name, self.keys.state(name),
                ", ".join(state.corrupt))
        return state

    def flag(self, name: str, flag: str) -> bool:
        """``running`` or ``paused`` as every process sees it (an unreadable value is safe:
        paused, not running)."""
        default = flag == "running"
        with self._reaching():
            raw = self.client.hget(self.keys.state(name), flag)
        parsed = parse_flag(raw, default)
        if parsed is None:
            logger.error("%s field %s=%r is not a flag (expected 1 or 0); treating it as %s",
                         self.keys.state(name), flag, raw,
                         "paused" if flag == "paused" else "stopped")
            return flag == "paused"
        return parsed

    def history(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        with self._reaching():
            rows = self.client.lrange(self.keys.history(name), 0, max(limit, 1) - 1)
        return _json_rows(rows, self.keys.history(name))

    def audit(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        with self._reaching():
            rows = self.client.lrange(self.keys.audit(name), 0, max(limit, 1) - 1)
        return _json_rows(rows, self.keys.audit(name))

    def lease_holders(self, name: str) -> list[tuple[str, float]]:
        """``(token, expires_at)`` for every lease still held."""
        with self._reaching():
            now_s, now_us = self.client.time()
            rows = self.client.zrangebyscore(
                self.keys.lease(name), now_s * 1000 + now_us // 1000, "+inf", withscores=True)
        return [(token, score / 1000) for token, score in rows]

    def ping(self) -> None:
        """Fail now, with the URL (password hidden), if Redis is unreachable."""
        with self._reaching():
            self.client.ping()

    def now(self) -> float:
        """The Redis server's clock, which every stored time uses."""
        with self._reaching():
            seconds, micros = self.client.time()
        return seconds + micros / 1_000_000

    # -- the index of services workers have registered --------------------------------------

    def register_services(self, configs: Mapping[str, Mapping[str, Any]]) -> None:
        if not configs:
            return
        with self._reaching():
            self.client.hset(self.keys.index(), mapping={
                name: json.dumps(dict(cfg), sort_keys=True) for name, cfg in configs.items()})

    def registered(self) -> dict[str, dict[str, Any]]:
        with self._reaching():
            raw = self.client.hgetall(self.keys.index())
        found = {}
        for name, text in raw.items():
            try:
                found[name] = json.loads(text)
            except ValueError:
                logger.error("%s holds unreadable JSON for %r; ignoring it",
                             self.keys.index(), name)
        return found


def _json_rows(rows: list[str], key: str) -> list[dict[str, Any]]:
    parsed = []
    for row in rows:
        try:
            parsed.append(json.loads(row))
        except ValueError:
            logger.error("%s holds an entry that is not JSON; skipping it: %.80r", key, row)
    return parsed


def connect_redis(url: str) -> Redis:
    """A client for ``url``. Connecting is lazy; the first command reports an unreachable
    server as :class:`StateUnavailableError` with the password hidden."""
    try:
        return Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30)
    except ValueError as exc:
        raise StateUnavailableError(
            f"REDIS_URL {redact_url(url)!r} is not a Redis URL: {exc}") from exc


_default: tuple[int, StateStore] | None = None


def default_store() -> StateStore:
    """This process's store, from settings; made again after a fork."""
    global _default  # noqa: PLW0603 - one store per process is the point
    if _default is None or _default[0] != os.getpid():
        _default = (os.getpid(), StateStore.from_settings(get_settings()))
    return _default[1]

