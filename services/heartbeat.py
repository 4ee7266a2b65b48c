"""Heartbeats: every worker and Beat says, every ``SVC_HEARTBEAT_SECONDS``, that it is alive,
where it runs and what it serves (``heartbeat.lua``). Its hash expires three heartbeats
later, so a process that died, froze or lost its network is gone from it without anyone
saying so; a sorted set remembers each process for a day, so ``svc workers`` lists the gone
ones too. Health (``services/health.py``) reads the result as :class:`Liveness`.

    beat = Heartbeat(store, WORKER, settings)
    beat.beat(services=["ticker"], queues=["celery"])   # every SVC_HEARTBEAT_SECONDS
    beat.retire()                                        # at a graceful stop
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from services.fields import parse_number
from services.outage import Outage
from services.settings import Settings
from services.state import StateStore

logger = logging.getLogger(__name__)

WORKER, BEAT = "worker", "beat"
KINDS = (WORKER, BEAT)
# Gone processes stay listed this long (the sorted set is trimmed at every heartbeat).
FORGET_SECONDS = 86400.0
DEFAULT_QUEUE = "celery"


def process_id(kind: str) -> str:
    """``worker:host:pid``: names this process in ``<p>:_process:<id>``."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ProcessInfo:
    """One worker or Beat as its last heartbeat described it."""

    id: str
    kind: str
    alive: bool
    seen_at: float
    """The last heartbeat (Unix time, Redis's clock)."""
    host: str = ""
    pid: str = ""
    started_at: float | None = None
    services: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    role: str = ""
    """A Beat's: ``leader`` or ``standby``."""
    fields: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_reply(cls, process: str, seen_ms: float, flat: Sequence[str]) -> ProcessInfo:
        raw = dict(zip(flat[::2], flat[1::2], strict=False))
        kind, _, rest = process.partition(":")
        host, _, pid = rest.rpartition(":")
        return cls(
            id=process, kind=raw.get("kind", kind), alive=bool(raw), seen_at=float(seen_ms) / 1000,
            host=raw.get("host", host), pid=raw.get("pid", pid),
            started_at=_seconds(raw.get("started_at")), services=_names(raw.get("services")),
            queues=_names(raw.get("queues")), role=raw.get("role", ""), fields=raw)

    def serves(self, name: str, queue: str | None) -> bool:
        """A live worker that has ``name``'s task and consumes its queue."""
        return (self.alive and self.kind == WORKER and name in self.services
                and (queue or DEFAULT_QUEUE) in self.queues)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "alive": self.alive, "seen_at": self.seen_at,
                "host": self.host, "pid": self.pid, "started_at": self.started_at,
                "services": list(self.services), "queues": list(self.queues),
                "role": self.role or None}


@dataclass(frozen=True)
class Liveness:
    """Which workers and Beats are alive, and who leads, as one snapshot."""

    now: float
    processes: tuple[ProcessInfo, ...] = ()
    beat_leader: str | None = None
    """The leader lease's value (``<fence> <host:pid:nonce>``); None when no Beat leads."""

    @classmethod
    def from_replies(cls, processes_reply: Sequence[Any], leader: str | None) -> Liveness:
        """From ``processes.lua``'s reply and the leader lease's value."""
        now_ms, rows = processes_reply[0], processes_reply[1:]
        found = []
        for i in range(0, len(rows) - 2, 3):
            try:
                found.append(ProcessInfo.from_reply(rows[i], float(rows[i + 1]), rows[i + 2]))
            except (TypeError, ValueError):  # a member written by hand: not a process
                continue
        return cls(float(now_ms) / 1000, tuple(found), leader or None)

    def alive(self, kind: str) -> list[ProcessInfo]:
        return [p for p in self.processes if p.alive and p.kind == kind]

    def serving(self, name: str, queue: str | None) -> list[ProcessInfo]:
        """The live workers that would run a tick of ``name``."""
        wanted = queue or DEFAULT_QUEUE
        return [p for p in self._workers_by_service.get(name, ()) if wanted in p.queues]

    @cached_property
    def _workers_by_service(self) -> dict[str, list[ProcessInfo]]:
        # Built once per snapshot: every worker lists every service it has, so asking each
        # worker's tuple for each service was quadratic (1.9 s at 10,000 services).
        index: dict[str, list[ProcessInfo]] = {}
        for process in self.alive(WORKER):
            for name in process.services:
                index.setdefault(name, []).append(process)
        return index

    @property
    def leader_holder(self) -> str | None:
        """``host:pid:nonce`` of the leader Beat."""
        return self.beat_leader.partition(" ")[2] or None if self.beat_leader else None


def queue_reads(pipe: Any, store: StateStore) -> None:
    """Add what :meth:`Liveness.from_replies` takes to a pipeline (two replies)."""
    keys = store.keys
    store.scripts.processes(keys=[keys.processes()], args=[keys.process("")], client=pipe)
    pipe.get(keys.beat_leader())


def read_liveness(store: StateStore) -> Liveness:
    with store.reaching(), store.client.pipeline(transaction=False) as pipe:
        queue_reads(pipe, store)
        processes, leader = pipe.execute()
    return Liveness.from_replies(processes, leader)


class Heartbeat:
    """Writes one process's heartbeat hash. Raises the store's errors (the caller logs)."""

    def __init__(self, store: StateStore, kind: str, settings: Settings) -> None:
        self.store = store
        self.kind = kind
        self.id = process_id(kind)
        self.ttl_ms = int(settings.heartbeat_ttl_seconds * 1000)
        self.interval = settings.heartbeat_seconds

    def beat(self, **fields: str | int | Iterable[str]) -> None:
        values = {"kind": self.kind, "host": socket.gethostname(), "pid": os.getpid(),
                  "interval": self.interval, **fields}
        flat: list[Any] = []
        for key, value in values.items():
            text = value if isinstance(value, str | int | float) else json.dumps(sorted(value))
            flat += [key, text]
        self._call("beat", flat)

    def retire(self) -> None:
        """Gone at once (a graceful stop), rather than three heartbeats later."""
        self._call("retire", [])

    def _call(self, op: str, flat: list[Any]) -> None:
        keys = self.store.keys
        with self.store.reaching():
            self.store.scripts.heartbeat(
                keys=[keys.process(self.id), keys.processes()],
                args=[op, self.id, self.ttl_ms, int(FORGET_SECONDS * 1000), *flat])


class Pulse(threading.Thread):
    """A daemon thread that calls ``jobs`` every ``interval`` seconds until ``stop()``: a
    worker's heartbeat and its turn at watching health. A failing job is logged once per
    outage (``services.outage``), never ends the thread."""

    def __init__(self, interval: float, jobs: Mapping[str, Callable[[], object]]) -> None:
        super().__init__(name="svc-pulse", daemon=True)
        self.interval = interval
        self.jobs = dict(jobs)
        self.outages = {what: Outage(logger, what) for what in self.jobs}
        self._stopping = threading.Event()

    def run(self) -> None:
        while True:
            for what, job in self.jobs.items():
                try:
                    job()
                except Exception as exc:
                    self.outages[what].failed(f"{type(exc).__name__}: {exc}")
                else:
                    self.outages[what].recovered()
            if self._stopping.wait(self.interval):
                return

    def failing(self, what: str) -> bool:
        """Whether job ``what`` failed last time (an outage is going on)."""
        return self.outages[what].ongoing

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)


def _seconds(text: str | None) -> float | None:
    """A time in ms as Unix seconds; None for anything that is not a finite number."""
    value = parse_number(text)
    return value / 1000 if value is not None else None


def _names(text: str | None) -> tuple[str, ...]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else ()
