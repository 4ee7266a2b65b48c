"""What the services page shows, as plain text: every value the templates print is read
and made here, from one snapshot (``Operator.snapshot``) per page, with the words ``svc``
uses (``worker.cli_render``).

Nothing here is HTML. Every value comes from Redis, which anyone can write, so the templates
print it through Tornado's autoescaping (``<script>`` is shown as typed) and each value is
first made :func:`visible` (a control character or a bidi override is shown as its escape,
so a value reads as it is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.heartbeat import BEAT, WORKER, Liveness, ProcessInfo
from worker import cli_render as render
from worker.ops import Operator
from worker.ops_schedule import BeatView, read_beat
from worker.ops_status import ServiceStatus

visible = render.visible
# How each action is explained next to its button (the same words as ``svc --help``).
ACTION_HELP = {
    "pause": "no new run starts on any worker until resume",
    "resume": "run again on schedule",
    "stop": "like pause, shown as stopped with your reason; undone by start",
    "start": "run again, clearing the failure count",
    "reset": "clear failures and backoff; undo a stop caused by max_failures",
}


@dataclass(frozen=True)
class Problem:
    label: str
    detail: str


@dataclass(frozen=True)
class ServiceRow:
    """One service as the list and its own page show it."""

    name: str
    condition: str
    """running | paused | stopped | backoff | corrupt | held: also the CSS class."""
    state: str
    health: str
    """ok | paused | the worst problem's code: also the CSS class."""
    problems: tuple[Problem, ...]
    schedule: str
    next_tick: str
    last_run: str
    last_outcome: str
    last_error: str
    failures: str
    lease: str


def service_row(status: ServiceStatus) -> ServiceRow:
    state = status.state
    run = status.last_run or {}
    error = "-"
    if state.last_error:
        error = f"{state.last_error} ({render.when(state.last_error_at, status.now)})"
    return ServiceRow(
        name=visible(status.name),
        condition=status.condition,
        state=visible(state_text(status)),
        health=status.health.status,
        problems=tuple(Problem(visible(p.label), visible(p.detail))
                       for p in status.health.problems),
        schedule=visible(render.schedule_text(status.schedule)),
        next_tick=visible(render.next_tick_text(status)),
        last_run=visible(render.last_run_text(status)),
        last_outcome="ok" if run.get("outcome") == "ok" else ("failed" if run else ""),
        last_error=visible(error),
        failures=visible(render.failures_text(status)),
        lease=visible(render.lease_text(status.leases, status.now)))


def state_text(status: ServiceStatus) -> str:
    """``running``, ``paused``, ``stopped: <reason>``... as ``svc list`` says it."""
    reason = status.state.stop_reason or ""
    if status.condition == "stopped" and reason.startswith("stopped by "):
        return reason  # an operator's stop: "stopped" once, not "stopped: stopped by"
    return render.condition_text(status).plain


def detail_rows(status: ServiceStatus) -> list[tuple[str, str]]:
    """The rest of ``svc status NAME``: label -> value."""
    config, state = status.config, status.state
    rows = [
        ("retry delay", render.seconds_text(config.retry_delay_seconds if config else None)),
        ("max concurrent runs", str(config.max_concurrent_runs) if config else "-"),
        ("queue", (config.queue or "(default)") if config else "-"),
        ("runs started", str(state.runs)),
        ("last success", render.when(state.last_success_at, status.now)),
        ("last change", render.change_text(status)),
    ]
    rows += [("warning", warning) for warning in status.warnings]
    return [(label, visible(value)) for label, value in rows]


@dataclass(frozen=True)
class ProcessRow:
    kind: str
    host: str
    pid: str
    role: str
    services: str
    queues: str
    seen: str
    started: str


def process_rows(liveness: Liveness, now: float) -> list[ProcessRow]:
    """The live workers, then the live Beats."""
    found = [*liveness.alive(WORKER), *liveness.alive(BEAT)]
    return [process_row(p, now) for p in found]


def process_row(process: ProcessInfo, now: float) -> ProcessRow:
    return ProcessRow(
        kind=visible(process.kind), host=visible(process.host), pid=visible(process.pid),
        role=visible(process.role or "-"), services=visible(", ".join(process.services) or "-"),
        queues=visible(", ".join(process.queues) or "-"),
        seen=visible(render.when(process.seen_at, now)),
        started=visible(render.when(process.started_at, now)))


def beat_text(beat: BeatView) -> tuple[str, bool]:
    """The ``svc status`` Beat line, and whether a Beat leads."""
    return visible(render.beat_line(beat).plain), bool(beat.leader)


def loss_text(statuses: Sequence[ServiceStatus]) -> str:
    """One line when Redis lost the framework's data ('' when it did not)."""
    loss = next((s.loss for s in statuses if s.loss is not None), None)
    if loss is None:
        return ""
    held = [s.name for s in statuses if s.held]
    noticed = render.when(loss.lost_at, statuses[0].now)
    line = (f"Redis lost the framework's data (noticed at {noticed} by {loss.detected_by}): "
            "paused and stopped services were restored as workers last saw them")
    if held:
        line += f"; held until an operator acts on them: {', '.join(held)}"
    return visible(line)


@dataclass(frozen=True)
class HistoryRow:
    started: str
    duration: str
    outcome: str
    ok: bool
    run: str
    worker: str
    error: str


def history_rows(rows: list[Any], now: float) -> list[HistoryRow]:
    found = []
    for row in map(render.entry, rows):
        outcome = str(row.get("outcome", "?"))
        if row.get("superseded"):
            outcome += " (superseded)"
        elif row.get("lease_lost"):
            outcome += " (lease lost)"
        found.append(HistoryRow(
            started=visible(render.when(row.get("started_at"), now)),
            duration=visible(render.duration_text(row.get("duration"))),
            outcome=visible(outcome), ok=row.get("outcome") == "ok",
            run=visible(row.get("run_id", "-")), worker=visible(row.get("worker", "-")),
            error=visible(row.get("error") or "-")))
    return found


@dataclass(frozen=True)
class AuditRow:
    at: str
    action: str
    by: str
    reason: str


def audit_rows(rows: list[Any], now: float) -> list[AuditRow]:
    return [AuditRow(at=visible(render.when(row.get("at"), now)),
                     action=visible(row.get("action", "?")), by=visible(row.get("by", "?")),
                     reason=visible(row.get("reason") or "-"))
            for row in map(render.entry, rows)]


# -- reading -------------------------------------------------------------------------------


def read_list(op: Operator) -> dict[str, Any]:
    """Everything the list shows: one snapshot of every known service, and the Beat."""
    op.refresh()  # services registered since the last request
    now, statuses, liveness = op.snapshot(op.known())
    beat, leads = beat_text(read_beat(op.store))
    return {"rows": [service_row(s) for s in statuses],
            "processes": process_rows(liveness, now), "beat": beat, "beat_leads": leads,
            "loss": loss_text(statuses),
            "notes": [visible(e) for e in (*op.registry_errors, *op.index_errors)]}


def read_service(op: Operator, name: str, rows: int) -> dict[str, Any]:
    """One service in full, with its recent runs and changes."""
    op.refresh()
    (name,) = op.resolve([name])
    now, (status,), _ = op.snapshot([name])
    return {"row": service_row(status), "details": detail_rows(status),
            "loss": loss_text([status]),
            "history": history_rows(op.history(name, rows), now),
            "audit": audit_rows(op.audit(name, rows), now)}
