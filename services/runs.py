"""The run path: the guard before a run, the lease renewals during it and the record after
it, each one Lua script on this process's own connection. ``services.runner`` is its only
caller (through ``StateStore.runs``); operators read and change state through ``StateStore``.

Times in Redis are the Redis server's clock (``TIME``), so workers with skewed clocks still
agree on leases, backoff and tick windows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import Redis
from redis.commands.core import Script

from services import durability
from services.fields import Kind, Outcome, Verdict, parse_number
from services.keys import Keys
from services.redis_client import RedisErrors
from services.schedule import (
    MAX_SECONDS,
    MAX_TICK_SLACK_SECONDS,
    SLOT_AHEAD_SECONDS,
    TICK_SLACK_FRACTION,
)
from services.scripts import ScriptChannel, Scripts

logger = logging.getLogger(__name__)

# A stored time further ahead than the longest allowed delay (plus a day) is absurd.
MAX_AHEAD_MS = int((MAX_SECONDS + 86400) * 1000)


def worker_identity() -> str:
    """``host:pid``: which process ran a run or holds a lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class RunTicket:
    """One started run, as the guard handed it out: what the record and the lease need."""

    name: str
    token: str
    """``<run id>@<host:pid>``: the lease member; a finish with another token changes
    nothing of a newer run's."""
    seq: int
    """The run's sequence number (the fencing token)."""
    started_ms: int
    kind: Kind
    began: float = field(default_factory=time.monotonic, repr=False, compare=False)
    """When this process saw the run start (its own monotonic clock)."""

    @property
    def run_id(self) -> str:
        return self.token.split("@", 1)[0]


@dataclass(frozen=True)
class Decision:
    """The guard's verdict. ``ticket`` is set exactly when the verdict is ``go``. ``detail``
    is the script's text as shown to people; the properties read it for each verdict."""

    verdict: Verdict
    detail: str
    now_ms: int
    warnings: tuple[str, ...] = ()
    ticket: RunTicket | None = None
    epoch: str = ""
    restored: str = ""
    """Set when this process restored the service's flags after Redis lost its data."""

    @property
    def go(self) -> bool:
        return self.verdict is Verdict.GO

    @property
    def retry_at(self) -> float | None:
        """``backoff``: when the backoff ends (Unix seconds)."""
        return parse_number(self.detail) if self.verdict is Verdict.BACKOFF else None

    @property
    def holders(self) -> tuple[str, ...]:
        """``leased``: the tokens holding every lease."""
        return tuple(self.detail.split(",")) if self.verdict is Verdict.LEASED else ()

    @property
    def cause(self) -> str:
        """What makes two refusals the same news: the stop reason, the unreadable flag, when
        Redis lost its data. Other details change at every tick (a duplicate's slot, the
        lease holders) or only with a run (a backoff's end), so the verdict alone says it."""
        if self.verdict in (Verdict.STOPPED, Verdict.CORRUPT, Verdict.HELD):
            return f"{self.verdict}: {self.detail}"
        return str(self.verdict)


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


class StoreAccess(Protocol):
    """What the run path uses of ``services.state.StateStore``."""

    client: Redis
    keys: Keys
    scripts: Scripts
    lease_ms: int
    history_length: int
    history_bytes: int
    audit_length: int
    redis_url: str

    @property
    def lease_seconds(self) -> float: ...

    @property
    def memory(self) -> durability.StoreMemory: ...

    def reaching(self) -> RedisErrors: ...

    def restore(self, name: str, epoch: str) -> str: ...

    def now(self) -> float: ...


class RunLedger:
    """Guard, renew, record: the scripts every run sends. Thread-safe: the scripts share one
    pinned connection per process that ``ScriptChannel`` locks per command."""

    def __init__(self, store: StoreAccess) -> None:
        self.store = store
        self.defer_success = False
        """Send a short run's success without waiting for its reply (Celery workers do)."""
        self._process: tuple[int, str, ScriptChannel] | None = None
        self._process_lock = threading.Lock()
        # Each service's six keys, as the two scripts of every run take them: made once per
        # service (the store's prefix never changes), not twice per run.
        self._keys: dict[str, tuple[str, ...]] = {}

    def _per_process(self) -> tuple[int, str, ScriptChannel]:
        """This process's ``host:pid`` and its script channel, made again after a fork. The
        channel connects on first use, so an unreachable Redis is still reported then."""
        current = self._process
        pid = os.getpid()
        if current is None or current[0] != pid:
            with self._process_lock:
                current = self._process
                if current is None or current[0] != pid:
                    channel = ScriptChannel(self.store.client, _late_finish_reply)
                    current = self._process = (pid, worker_identity(), channel)
        return current

    def _service_keys(self, name: str) -> tuple[str, ...]:
        keys = self._keys.get(name)
        if keys is None:
            keys = self._keys[name] = self.store.keys.for_service(name)
        return keys

    def _call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script on this process's channel (inside ``store.reaching()``)."""
        return self._per_process()[2].call(script, keys, args)

    def flush(self) -> None:
        """Read the reply of an outcome sent without waiting (at process shutdown)."""
        with self.store.reaching():
            self._per_process()[2].flush()

    def begin(self, name: str, *, kind: Kind, max_runs: int, tick_gap_seconds: float,
              cooldown_seconds: float = 0.0, slot_ms: int | None = None,
              next_slot_ms: int | None = None) -> Decision:
        """The guard: run now or not, and why not. On ``go`` the lease is held. A service held
        after Redis lost its data is restored first if this process saw its flags.
        ``slot_ms``, ``next_slot_ms``: a Beat tick's slot and the one after it (see
        ``begin_run.lua``: each slot runs once, in order; the gap check is the schedule's)."""
        guard = functools.partial(self._guard, name, kind, max_runs, tick_gap_seconds,
                                  cooldown_seconds, slots=(slot_ms, next_slot_ms))
        decision = guard()
        if decision.verdict is Verdict.HELD:
            restored = self.store.restore(name, decision.epoch)
            if restored:
                decision = dataclasses.replace(guard(), restored=restored)
        return decision

    def _guard(self, name: str, kind: Kind, max_runs: int, tick_gap_seconds: float,
               cooldown_seconds: float, *,
               slots: tuple[int | None, int | None]) -> Decision:
        store = self.store
        memory = store.memory
        with store.reaching():
            # 48 random bits, as the first 12 hex digits of a uuid4 were, @ host:pid.
            token = f"{os.urandom(6).hex()}@{self._per_process()[1]}"
            verdict, detail, now_ms, warnings, epoch, run_kind = self._call(
                store.scripts.begin_run, self._service_keys(name),
                (token, store.lease_ms, max_runs, kind, int(tick_gap_seconds * 1000),
                 memory.epoch, durability.new_epoch_id(), int(cooldown_seconds * 1000),
                 MAX_AHEAD_MS, store.history_length, memory.remembered(name),
                 *("" if slot is None else int(slot) for slot in slots),
                 TICK_SLACK_FRACTION, int(MAX_TICK_SLACK_SECONDS * 1000),
                 int(SLOT_AHEAD_SECONDS * 1000), store.history_bytes))
        verdict = Verdict(verdict)
        memory.epoch = epoch
        memory.note(name, verdict, detail, int(now_ms))
        if verdict is Verdict.HELD:
            memory.announce_loss(epoch, detail, f"Redis at {store.redis_url}")
        ticket = None
        if verdict is Verdict.GO:
            ticket = RunTicket(name, token, int(detail), int(now_ms), Kind(run_kind))
        return Decision(verdict, detail, int(now_ms), tuple(warnings), ticket, epoch)

    def finish(self, ticket: RunTicket, *, error: str | None, max_failures: int,
               retry_delay_seconds: float, outcome: Outcome | None = None,
               lease_lost: bool = False) -> FinishResult:
        """Record a run's outcome and release its lease. ``outcome`` defaults to ``ok`` when
        ``error`` is None, else ``error``; ``timeout`` counts as a failure, ``interrupted``
        (the worker's own shutdown mid-run) as neither. ``lease_lost``: the lease keeper saw
        another run take the lease (the reply is then not known ahead)."""
        if outcome is None:
            outcome = Outcome.OK if error is None else Outcome.ERROR
        store = self.store
        keys = self._service_keys(ticket.name)
        with store.reaching():
            _, identity, channel = self._per_process()
            args = (ticket.token, ticket.seq, outcome, error or "", max_failures,
                    int(retry_delay_seconds * 1000), store.history_length, ticket.started_ms,
                    identity, ticket.kind, store.audit_length, store.history_bytes)
            if outcome is Outcome.OK and self._may_defer(ticket, lease_lost):
                channel.send(store.scripts.finish_run, keys, args, ticket)
                return _SUCCEEDED
            failures, stopped, superseded, lost, retry_at, counted = channel.call(
                store.scripts.finish_run, keys, args)
        return FinishResult(int(failures), bool(stopped), bool(superseded), bool(lost),
                            int(retry_at), bool(counted))

    def _may_defer(self, ticket: RunTicket, lease_lost: bool) -> bool:
        """A success may be recorded without waiting for Redis's reply when that reply is
        known: the run ended well inside its lease (so it cannot have expired and been taken
        over), hence it resets failures, stops nothing and supersedes nothing."""
        return (self.defer_success and not lease_lost and ticket.kind is not Kind.PROBE
                and time.monotonic() - ticket.began < self.store.lease_seconds / 3)

    def renew(self, ticket: RunTicket, lease_ms: int | None = None) -> bool:
        """Extend the run's lease by ``lease_ms`` (default: the whole lease) from now."""
        with self.store.reaching():
            return bool(self._call(
                self.store.scripts.renew_lease, (self.store.keys.lease(ticket.name),),
                (ticket.token, lease_ms or self.store.lease_ms)))

    def record_outside_run(self, name: str, *, error: str | None, max_failures: int,
                           retry_delay_seconds: float) -> FinishResult:
        """Record an outcome that belongs to no leased run (``seq`` 0, kind ``manual``): a
        failure reported by ``_handle_failure()`` outside ``update()``."""
        token = f"manual-{os.urandom(4).hex()}@{worker_identity()}"
        ticket = RunTicket(name, token, 0, int(self.store.now() * 1000), Kind.MANUAL)
        return self.finish(ticket, error=error, max_failures=max_failures,
                           retry_delay_seconds=retry_delay_seconds)
