"""A service as an operator sees it: its status read in one round trip (state, leases, last
run, schedule, health), the leases it holds, and a data loss of the store. Built by
:meth:`worker.ops.Operator.snapshot`; shown by ``svc``, the services page and the metrics.
Nothing here reads Redis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from services.config import ServiceConfig
from services.fields import CHANGE, EPOCH, ServiceState, Verdict, parse_number, standing
from services.health import Health
from worker.ops_schedule import ScheduleInfo


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
    in_registry: bool
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
        verdict = standing(self.state, held=self.held, now=self.now)
        return "running" if verdict is Verdict.GO else str(verdict)

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
        if not self.in_registry and self.config is not None:
            notes.append("not found in this machine's registry (known from a worker)")
        if self.held:
            notes.append("Redis lost its data and no worker remembered this service's state: "
                         "it runs once an operator acts on it (svc resume, start, pause...)")
        elif self.raw.get("restored_by"):
            notes.append("state restored after Redis lost its data, as worker "
                         f"{self.raw['restored_by']} last saw it")
        return notes

    def as_json(self) -> dict[str, Any]:
        state = asdict(self.state)
        state.pop("name")
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
