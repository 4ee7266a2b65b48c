"""The Redis state store: flags, failure counters, leases, run history and audit, shared by
every process that runs a service. Each decision is one Lua script, one round trip.

Times in Redis are the Redis server's clock (``TIME``), so workers with skewed clocks still
agree on leases, backoff and tick windows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.commands.core import Script

from services import durability
from services.fields import ServiceState, parse_flag
from services.keys import Keys, validate_name
from services.redis_client import RedisErrors, connect_redis
from services.schedule import (
    MAX_SECONDS,
    MAX_TICK_SLACK_SECONDS,
    SLOT_AHEAD_SECONDS,
    TICK_SLACK_FRACTION,
)
from services.scripts import ScriptChannel, Scripts
from services.settings import Settings, get_settings, redact_url

logger = logging.getLogger(__name__)

GO = "go"
HELD = "held"
# A stored time further ahead than the longest allowed delay (plus a day) is absurd.
MAX_AHEAD_MS = int((MAX_SECONDS + 86400) * 1000)


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
    outcome: str = "ok"
    """How ``update()`` ended, as the runner classified it (services.fields.OUTCOMES)."""
    expire: Callable[[float | None], None] | None = field(default=None, repr=False)
    """While ``update()`` runs: moves its soft limit (``expire(0)`` ends it now)."""
    expired_by: str = ""
    """Who ended the run early through ``expire`` (a host's own time limit), for the record."""
    _claimed: threading.Lock = field(default_factory=threading.Lock, repr=False)
    recorded: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set once the lease keeper recorded the run at its hard limit."""

    def claim(self) -> bool:
        """True for the one thread (runner or lease keeper) that records this run's end."""
        return self._claimed.acquire(blocking=False)

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
    epoch: str = ""
    restored: str = ""
    """Set when this process restored the service's flags after Redis lost its data."""

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
    counted: bool = True
    """False for a failure that overlapped one already counted in this backoff window."""


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
        self._reaching_cm = RedisErrors(self.redis_url, self.keys.prefix)
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

    def reaching(self) -> RedisErrors:
        """A context that turns Redis's errors into the framework's (for callers that send
        their own commands on ``client``)."""
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

    def begin(self, name: str, *, kind: str, max_runs: int, tick_gap_seconds: float,
              cooldown_seconds: float = 0.0, slot_ms: int | None = None,
              next_slot_ms: int | None = None) -> Decision:
        """The guard: run now or not, and why not. On ``go`` the lease is held. A service held
        after Redis lost its data is restored first if this process saw its flags.
        ``slot_ms``, ``next_slot_ms``: a Beat tick's slot and the one after it (see
        ``begin_run.lua``: each slot runs once, in order; the gap check is the schedule's)."""
        guard = functools.partial(self._guard, name, kind, max_runs, tick_gap_seconds,
                                  cooldown_seconds, slots=(slot_ms, next_slot_ms))
        decision = guard()
        if decision.verdict == HELD:
            restored = self._restore(name, decision)
            if restored:
                decision = guard()
                decision = dataclasses.replace(decision, restored=restored)
        return decision

    def _guard(self, name: str, kind: str, max_runs: int, tick_gap_seconds: float,
               cooldown_seconds: float, *,
               slots: tuple[int | None, int | None]) -> Decision:
        memory = self.memory
        with self._reaching_cm:
            # 48 random bits, as the first 12 hex digits of a uuid4 were, @ host:pid.
            token = f"{os.urandom(6).hex()}@{self._per_process()[1]}"
            verdict, detail, now_ms, warnings, epoch, run_kind = self._run_script(
                self.scripts.begin_run, self.keys.for_service(name),
                (token, self.lease_ms, max_runs, kind, int(tick_gap_seconds * 1000),
                 memory.epoch, durability.new_epoch_id(), int(cooldown_seconds * 1000),
                 MAX_AHEAD_MS, self.history_length, memory.remembered(name),
                 *("" if slot is None else int(slot) for slot in slots),
                 TICK_SLACK_FRACTION, int(MAX_TICK_SLACK_SECONDS * 1000),
                 int(SLOT_AHEAD_SECONDS * 1000)))
        memory.epoch = epoch
        memory.note(name, verdict, detail, int(now_ms))
        if verdict == HELD:
            memory.announce_loss(epoch, detail, f"Redis at {self.redis_url}")
        ticket = None
        if verdict == GO:
            ticket = RunTicket(name, token, int(detail), int(now_ms), run_kind)
        return Decision(verdict, detail, int(now_ms), tuple(warnings), ticket, epoch)

    def _restore(self, name: str, held: Decision) -> str:
        """Put back the flags this process saw of ``name``; '' when it saw none."""
        seen = self.memory.seen.get(name)
        if seen is None:
            return ""
        with self._reaching_cm:
            verdict = self.scripts.restore_state(
                keys=[self.keys.state(name), self.keys.audit(name), self.keys.epoch()],
                args=[held.epoch, int(seen.running), int(seen.paused), seen.stop_reason,
                      f"{seen.at:.3f}", self._per_process()[1], self.audit_length])
        logger.warning("%s: Redis lost its data; %s its flags as this process saw them "
                       "(running=%s paused=%s)", name, verdict, seen.running, seen.paused)
        return str(verdict)

    @property
    def memory(self) -> durability.StoreMemory:
        return durability.memory_for(self.redis_url, self.keys.prefix)

    def remember_epoch(self) -> str:
        """Read the store's epoch (making one for a new store) into this process's memory.
        A worker's main process calls it before forking its pool."""
        key = self.keys.epoch()
        with self.reaching():
            now_s, _ = self.client.time()
            self.client.hsetnx(key, "id", durability.new_epoch_id())
            self.client.hsetnx(key, "created_at", now_s * 1000)
            epoch = self.client.hget(key, "id") or ""
        self.memory.epoch = epoch
        return epoch

    def acknowledge_loss(self, who: str) -> dict[str, str]:
        """An operator's all-clear after a data loss: the loss moves to ``last_lost_at`` and
        services nobody restored are no longer held. Returns the epoch hash as it was."""
        key = self.keys.epoch()
        with self.reaching():
            before = self.client.hgetall(key)
            if before.get("lost_at"):
                with self.client.pipeline() as pipe:  # MULTI: all of it or nothing
                    pipe.hset(key, mapping={"last_lost_at": before["lost_at"],
                                            "acknowledged_by": who})
                    pipe.hdel(key, "lost_at")
                    pipe.execute()
        return before

    def epoch_info(self) -> dict[str, str]:
        """The store's epoch hash: ``id``, ``created_at`` and, after a loss, ``lost_at``..."""
        with self.reaching():
            return self.client.hgetall(self.keys.epoch())

    def finish(
        self,
        ticket: RunTicket,
        *,
        error: str | None,
        max_failures: int,
        retry_delay_seconds: float,
        outcome: str | None = None,
    ) -> FinishResult:
        """Record a run's outcome and release its lease. ``outcome`` defaults to ``ok`` when
        ``error`` is None, else ``error``; ``timeout`` counts as a failure, ``interrupted``
        (the worker's own shutdown mid-run) as neither."""
        outcome = outcome or ("ok" if error is None else "error")
        keys = self.keys.for_service(ticket.name)
        args = (ticket.token, ticket.seq, outcome, error or "", max_failures,
                int(retry_delay_seconds * 1000), self.history_length, ticket.started_ms,
                self._per_process()[1], ticket.kind, self.audit_length)
        if outcome == "ok" and self._may_defer(ticket):
            with self._reaching_cm:
                self._per_process()[2].send(self.scripts.finish_run, keys, args, ticket)
            return _SUCCEEDED
        with self._reaching_cm:
            failures, stopped, superseded, lost, retry_at, counted = self._run_script(
                self.scripts.finish_run, keys, args)
        return FinishResult(int(failures), bool(stopped), bool(superseded), bool(lost),
                            int(retry_at), bool(counted))

    def _may_defer(self, ticket: RunTicket) -> bool:
        """A success may be recorded without waiting for Redis's reply when that reply is
        known: the run ended well inside its lease (so it cannot have expired and been taken
        over), hence it resets failures, stops nothing and supersedes nothing."""
        return (self.defer_success and not ticket.lease_lost and ticket.kind != "probe"
                and time.monotonic() - ticket.began < self.lease_seconds / 3)

    def renew(self, ticket: RunTicket, lease_ms: int | None = None) -> bool:
        """Extend the run's lease by ``lease_ms`` (default: the whole lease) from now."""
        with self._reaching_cm:
            return bool(self._run_script(
                self.scripts.renew_lease, (self.keys.lease(ticket.name),),
                (ticket.token, lease_ms or self.lease_ms)))

    # -- operator actions -------------------------------------------------------------------

    def control(self, name: str, action: str, *, who: str, reason: str = "") -> dict[str, Any]:
        """pause, resume, stop, start or reset one service, recorded in its audit list."""
        validate_name(name)
        with self.reaching():
            entry = self.scripts.control(
                keys=[self.keys.state(name), self.keys.audit(name)],
                args=[action, who, reason, self.audit_length],
            )
        return json.loads(entry)

    def set_failures(self, name: str, failures: int) -> None:
        """Set the failure count; 0 also ends a backoff."""
        key = self.keys.state(name)
        with self.reaching(), self.client.pipeline() as pipe:
            pipe.hset(key, "failures", int(failures))
            if not failures:
                pipe.hdel(key, "retry_at")
            pipe.execute()

    def failures(self, name: str) -> int:
        with self.reaching():
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
        with self.reaching():
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
        with self.reaching():
            raw = self.client.hget(self.keys.state(name), flag)
        parsed = parse_flag(raw, default)
        if parsed is None:
            logger.error("%s field %s=%r is not a flag (expected 1 or 0); treating it as %s",
                         self.keys.state(name), flag, raw,
                         "paused" if flag == "paused" else "stopped")
            return flag == "paused"
        return parsed

    def history(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        with self.reaching():
            rows = self.client.lrange(self.keys.history(name), 0, max(limit, 1) - 1)
        return _json_rows(rows, self.keys.history(name))

    def audit(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        with self.reaching():
            rows = self.client.lrange(self.keys.audit(name), 0, max(limit, 1) - 1)
        return _json_rows(rows, self.keys.audit(name))

    def lease_holders(self, name: str) -> list[tuple[str, float]]:
        """``(token, expires_at)`` for every lease still held."""
        with self.reaching():
            now_s, now_us = self.client.time()
            rows = self.client.zrangebyscore(
                self.keys.lease(name), now_s * 1000 + now_us // 1000, "+inf", withscores=True)
        return [(token, score / 1000) for token, score in rows]

    def ping(self) -> None:
        """Fail now, with the URL (password hidden), if Redis is unreachable."""
        with self.reaching():
            self.client.ping()

    def now(self) -> float:
        """The Redis server's clock, which every stored time uses."""
        with self.reaching():
            seconds, micros = self.client.time()
        return seconds + micros / 1_000_000

    # -- the index of services workers have registered --------------------------------------

    def register_services(self, configs: Mapping[str, Mapping[str, Any]]) -> None:
        if not configs:
            return
        with self.reaching(), self.client.pipeline(transaction=True) as pipe:
            seconds, micros = self.client.time()
            pipe.hset(self.keys.index(), mapping={
                name: json.dumps(dict(cfg), sort_keys=True) for name, cfg in configs.items()})
            for name in configs:  # the first registration only: a restart does not move it
                pipe.hsetnx(self.keys.state(name), "registered_at", f"{seconds}.{micros:06d}")
            # Beat reloads on a new version: a service new to the cluster is scheduled at once.
            pipe.incr(self.keys.schedule_version())
            pipe.execute()

    def registered(self) -> dict[str, dict[str, Any]]:
        with self.reaching():
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


_default: tuple[int, StateStore] | None = None


def default_store() -> StateStore:
    """This process's store, from settings; made again after a fork."""
    global _default  # noqa: PLW0603 - one store per process is the point
    if _default is None or _default[0] != os.getpid():
        _default = (os.getpid(), StateStore.from_settings(get_settings()))
    return _default[1]

