"""A service's health: one definition, used by ``svc health``, ``svc list``, the metrics, the
services page and the notifications alike.

:func:`assess` is a pure function of what Redis holds (the state hash, the runs in progress,
the effective schedule, the heartbeats) and the time: it reads nothing itself, so every
surface that shows health computes the same answer from the same snapshot.

A service is ``ok``, or ``paused`` (healthy, and says so), or unhealthy with one or more
problems, worst first:

- ``state_lost``  Redis lost its data and nobody restored or confirmed the service's flags
- ``corrupt``     a flag in its hash is unreadable (nothing runs)
- ``stopped``     by an operator or by ``max_failures`` (with who and why)
- ``no_beat``     no Beat holds the leader lease: no ticks are sent
- ``no_worker``   no live worker has its task and consumes its queue
- ``stuck``       a run has been in progress longer than its hard time limit
- ``overdue``     no successful run within ``overdue_after_seconds`` (see
  :func:`overdue_deadline`)
- ``failing``     its last run failed (failures > 0) and it has not stopped yet
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.config import ServiceConfig
from services.fields import ServiceState
from services.heartbeat import Liveness
from services.schedule import Schedule

OK, PAUSED = "ok", "paused"
STATE_LOST, CORRUPT, STOPPED = "state_lost", "corrupt", "stopped"
NO_BEAT, NO_WORKER, STUCK, OVERDUE, FAILING = "no_beat", "no_worker", "stuck", "overdue", "failing"
PROBLEMS = (STATE_LOST, CORRUPT, STOPPED, NO_BEAT, NO_WORKER, STUCK, OVERDUE, FAILING)
"""Worst first: a service's status is its worst problem."""
STATUSES = (OK, PAUSED, *PROBLEMS)
# A transition to one of these is notified at once: it is a fact, not a reading that a
# heartbeat or a tick arriving a moment later could undo.
IMMEDIATE = frozenset({STATE_LOST, CORRUPT, STOPPED})
# Failing is a step on the way to stopped (max_failures) and has its own alerting rule
# (failing for N runs): notified only when it follows an alert (stopped, started again, and
# failing again), never on its own.
QUIET = frozenset({FAILING})
OVERDUE_INTERVALS = 3
CRON_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Problem:
    code: str
    detail: str

    @property
    def label(self) -> str:
        """``no worker``: the code as people read it."""
        return self.code.replace("_", " ")

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}


@dataclass(frozen=True)
class Health:
    problems: tuple[Problem, ...] = ()
    paused: bool = False
    overdue_seconds: float = 0.0
    """How far past its deadline a service without a recent success is (0 when it is not)."""
    deadline: float | None = None
    """When the service becomes overdue without another success (Unix time)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        """The worst problem's code, else ``paused`` or ``ok``."""
        if self.problems:
            return self.problems[0].code
        return PAUSED if self.paused else OK

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(p.code for p in self.problems)

    def summary(self) -> str:
        """``ok``, ``paused``, or ``stopped: <why>; no worker: <why>``."""
        if self.ok:
            return self.status
        return "; ".join(f"{p.label}: {p.detail}" for p in self.problems)

    @property
    def alert_class(self) -> str:
        """How a transition to this health is notified (``health_note.lua``)."""
        if self.ok:
            return "healthy"
        return "quiet" if self.status in QUIET else "alert"

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "status": self.status, "paused": self.paused,
                "problems": [p.as_json() for p in self.problems],
                "overdue_seconds": self.overdue_seconds, "overdue_at": self.deadline}


@dataclass(frozen=True)
class HealthChange:
    """A transition, as notified (once per transition, cluster-wide)."""

    service: str
    status: str
    previous: str
    health: Health
    at: float
    since: float

    @property
    def recovered(self) -> bool:
        return self.status == OK

    def text(self) -> str:
        if self.recovered:
            return f"service {self.service} recovered (was {self.previous.replace('_', ' ')})"
        return f"service {self.service} is unhealthy: {self.health.summary()}"

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text(), "service": self.service, "status": self.status,
                "previous": self.previous, "at": self.at, "since": self.since,
                "health": self.health.as_json()}


def assess(state: ServiceState, *, config: ServiceConfig | None, schedule: Schedule | None,
           liveness: Liveness, now: float, inflight: Mapping[str, float] | None = None,
           held: bool = False, hard_limit_grace: float = 0.0,
           last_outcome: str | None = None) -> Health:
    """The health of the service whose hash is ``state``.

    ``inflight``: run token -> start (Unix time) of each run in progress; ``held``: Redis lost
    its data and the service's flags were neither restored nor confirmed; ``hard_limit_grace``:
    SVC_HARD_LIMIT_GRACE_SECONDS (a run past ``timeout_seconds`` plus it is stuck);
    ``last_outcome``: how the newest recorded run ended (services.fields.OUTCOMES)."""
    name = state.name
    queue = config.queue if config is not None else None
    problems: list[Problem] = []
    if held:
        problems.append(Problem(STATE_LOST, "Redis lost its data; the service runs again once "
                                "an operator acts on it (svc resume)"))
    flags = [c for c in state.corrupt if c.startswith(("running=", "paused="))]
    if flags:
        problems.append(Problem(CORRUPT, f"unreadable {', '.join(flags)}: nothing runs"))
    if not state.running:
        problems.append(Problem(STOPPED, _stop_detail(state)))
    # Whether runs are expected at all: a paused, stopped or held service runs nothing, so
    # neither its workers, its Beat nor its last success say anything about its health.
    active = state.running and not state.paused and not problems
    if active:
        problems += _liveness_problems(name, queue, liveness)
    problems += _stuck(config, inflight or {}, now, hard_limit_grace)
    deadline, late = None, 0.0
    if active:
        deadline = overdue_deadline(state, config, schedule)
        # A run in progress may yet succeed: a healthy service whose runs take longer than
        # three intervals is not late (past its hard limit it is `stuck`, which says more).
        # Unless the last run did not end well: a crash loop always has a run in progress.
        in_progress = bool(inflight) and last_outcome in (None, OK)
        if deadline is not None and now > deadline and not in_progress:
            late = now - deadline
            problems.append(Problem(OVERDUE, f"{_no_success(state, now)} ({_span(late)} "
                                    "past due)"))
        if state.failures > 0:
            problems.append(Problem(FAILING, _failing_detail(state, config)))
    problems.sort(key=lambda p: PROBLEMS.index(p.code))
    return Health(tuple(problems), paused=state.paused and state.running,
                  overdue_seconds=late, deadline=deadline)


def overdue_deadline(state: ServiceState, config: ServiceConfig | None,
                     schedule: Schedule | None) -> float | None:
    """When the service is overdue unless it succeeds first; None when nothing is expected.

    Counted from its last success, or from when it was last started, resumed or reset, or
    from when a worker first registered it, whichever is newest (so a service that never
    succeeded is measured from when it could first run, and a restart of its workers does
    not move the clock). On an interval schedule: ``overdue_after_seconds`` later (default
    three intervals). On cron: that long after the first slot that follows (default the
    run's ``timeout_seconds`` plus a minute)."""
    if schedule is None or config is None:
        return None
    known = [t for t in (state.last_success_at, state.changed_at, state.registered_at)
             if t is not None]
    if not known:
        return None
    since = max(known)
    if schedule.cron is None:
        period = schedule.every_seconds or config.interval_seconds
        return since + (config.overdue_after_seconds or OVERDUE_INTERVALS * period)
    grace = config.overdue_after_seconds or config.timeout_seconds + CRON_GRACE_SECONDS
    return schedule.next_fire_ms(state.name, int(since * 1000)) / 1000 + grace


def _liveness_problems(name: str, queue: str | None, liveness: Liveness) -> list[Problem]:
    found = []
    if liveness.beat_leader is None:
        beats = len(liveness.alive("beat"))
        found.append(Problem(NO_BEAT, "no Beat holds the leader lease, so no tick is sent "
                             f"({beats} Beat{'s' if beats != 1 else ''} alive)"))
    if not liveness.serving(name, queue):
        workers = len(liveness.alive("worker"))
        found.append(Problem(NO_WORKER, f"no live worker runs it on queue "
                             f"{queue or 'celery'} ({workers} worker"
                             f"{'s' if workers != 1 else ''} alive)"))
    return found


def _stuck(config: ServiceConfig | None, inflight: Mapping[str, float], now: float,
           grace: float) -> list[Problem]:
    if config is None or not inflight:
        return []
    limit = config.timeout_seconds + grace
    token, started = min(inflight.items(), key=lambda item: item[1])
    if now - started <= limit:
        return []
    run_id, _, worker = token.partition("@")
    return [Problem(STUCK, f"run {run_id} on {worker or '?'} in progress for "
                    f"{_span(now - started)}, past its hard limit "
                    f"({_span(limit)})")]


def _stop_detail(state: ServiceState) -> str:
    # The scripts write who and why into it: "stopped by ana@ops: disk full", or the
    # max_failures line with the last error.
    return state.stop_reason or "no reason recorded"


def _failing_detail(state: ServiceState, config: ServiceConfig | None) -> str:
    limit = config.max_failures if config is not None else "?"
    error = f"; last error: {state.last_error[:200]}" if state.last_error else ""
    return f"{state.failures}/{limit} consecutive failures{error}"


def _no_success(state: ServiceState, now: float) -> str:
    if state.last_success_at is None:
        return "no successful run yet"
    return f"no successful run for {_span(now - state.last_success_at)}"


def _span(seconds: float) -> str:
    """``42s``, ``12m``, ``3.5h``, ``2.0d``: a duration as health details say it."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
