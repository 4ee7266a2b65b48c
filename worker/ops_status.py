"""A service as an operator sees it: its status read in one round trip (state, leases, last
run, schedule, health), the leases it holds, and a data loss of the store. Built by
:meth:`worker.ops.Operator.snapshot`; shown by ``svc``, the services page and the metrics.
Nothing here reads Redis. Also :func:`collector_paused`, which every reader of many statuses
wraps its work in.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from services.config import ServiceConfig
from services.fields import CHANGE, EPOCH, ServiceState, Verdict, parse_number, standing
from services.health import Health
from worker.ops_schedule import ScheduleInfo

_STATE_FIELDS = tuple(f.name for f in fields(ServiceState) if f.name != "name")


@dataclass(frozen=True)
class Lease:
    token: str
    expires_at: float

    @property
    def run_id(self) -> str:
        return self.token.split("@", 1)[0]

    @property
    def worker(self) -> str:
        return self.token.split("@", 1)[1] if "@" in self.token else "?"


@dataclass(frozen=True)
class StoreLoss:
    """Redis lost the framework's data: when a worker noticed, which one, and the epoch
    (``<prefix>:_epoch``) in force since. Services it did not restore wait for an operator."""

    epoch: str
    lost_at: float
    detected_by: str

    @classmethod
    def from_epoch(cls, raw: dict[str, str]) -> StoreLoss | None:
        lost_at = parse_number(raw.get("lost_at"))
        if lost_at is None:
            return None
        return cls(raw.get("id", ""), lost_at / 1000, raw.get("detected_by", "?"))

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "lost_at": self.lost_at, "detected_by": self.detected_by}


@dataclass(frozen=True)
class ServiceStatus:
    """One service as an operator sees it, read in one round trip."""

    name: str
    config: ServiceConfig | None
    state: ServiceState
    now: float
    last_tick_at: float | None
    leases: tuple[Lease, ...]
    last_run: dict[str, Any] | None
    in_registry: bool | None
    """This machine's code has the service; None when that code was not imported (the
    names came from the index)."""
    seen_by_worker: bool
    raw: dict[str, str] = field(default_factory=dict, repr=False)
    """The hash as Redis holds it (the metrics read counters from it)."""
    loss: StoreLoss | None = None
    """Set when Redis lost the framework's data (for every service alike)."""
    schedule: ScheduleInfo | None = None
    """The effective schedule and the next tick, as the leader Beat keeps it."""
    health: Health = field(default_factory=Health)
    """Its health (services.health.assess), from the same snapshot."""

    @property
    def held(self) -> bool:
        """Redis lost its data and nobody restored or confirmed this service's flags since:
        the guard runs nothing of it (begin_run.lua's rule)."""
        return (self.loss is not None and self.raw.get(EPOCH) != self.loss.epoch
                and not self.raw.get(CHANGE))

    @property
    def condition(self) -> str:
        """held | corrupt | running | paused | stopped | backoff: the guard's standing
        (``services.fields.standing``), ``running`` where nothing holds the service back."""
        # Read by many columns and metrics of one row: worked out once, kept beside the
        # fields (functools.cached_property takes a lock per first read, slower still).
        found: str | None = self.__dict__.get("_condition")
        if found is None:
            verdict = standing(self.state, held=self.held, now=self.now)
            found = self.__dict__["_condition"] = "running" if verdict is Verdict.GO \
                else str(verdict)
        return found

    @property
    def next_tick_at(self) -> float | None:
        """When Beat sends the next tick: its due time in the due set (None until the leader
        Beat scheduled the service). Read, not computed: phases, jitter, cron and catch-up
        make the last tick plus an interval wrong."""
        return self.schedule.due_at if self.schedule is not None else None

    @property
    def warnings(self) -> list[str]:
        notes = [f"unreadable field {c} in Redis (treated as the safe default)"
                 for c in self.state.corrupt]
        if not self.seen_by_worker:
            notes.append("no worker has registered this service yet")
        if self.schedule is not None and self.schedule.problem:
            notes.append(f"schedule: {self.schedule.problem}")
        if self.in_registry is False and self.config is not None:
            notes.append("not found in this machine's registry (known from a worker)")
        if self.held:
            notes.append("Redis lost its data and no worker remembered this service's state: "
                         "it runs once an operator acts on it (svc resume, start, pause...)")
        elif self.raw.get("restored_by"):
            notes.append("state restored after Redis lost its data, as worker "
                         f"{self.raw['restored_by']} last saw it")
        return notes

    def as_json(self) -> dict[str, Any]:
        # The hash's fields are plain values: a shallow copy is asdict's result, without
        # its recursion (a fifth of svc status --json at 10,000 services).
        state = {name: getattr(self.state, name) for name in _STATE_FIELDS}
        state["corrupt"] = list(self.state.corrupt)
        return {
            "name": self.name,
            "condition": self.condition,
            "config": self.config.as_dict() if self.config else None,
            **state,
            "max_failures": self.config.max_failures if self.config else None,
            "interval_seconds": self.config.interval_seconds if self.config else None,
            "last_tick_at": self.last_tick_at,
            "next_tick_at": self.next_tick_at,
            "schedule": self.schedule.as_json() if self.schedule is not None else None,
            "in_progress": bool(self.leases),
            "leases": [{"token": lease.token, "run_id": lease.run_id, "worker": lease.worker,
                        "expires_at": lease.expires_at} for lease in self.leases],
            "last_run": self.last_run,
            "in_registry": self.in_registry,
            "seen_by_worker": self.seen_by_worker,
            "warnings": self.warnings,
            "held": self.held,
            "health": self.health.as_json(),
            "now": self.now,
        }


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a read makes its objects (a status per
    service, then a row or a JSON object each): they all live until the command ends, and
    each collection would walk every one made so far, over and over (a third of ``svc list``
    at 5,000 services). They hold no cycles; the collector runs again afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
