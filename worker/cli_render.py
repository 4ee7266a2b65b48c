"""How ``svc`` prints: rich tables for people, JSON for scripts. Nothing here reads Redis."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker.ops import Lease, ServiceStatus

CONDITION_STYLE = {"running": "green", "paused": "yellow", "stopped": "red",
                   "backoff": "magenta", "corrupt": "bold red"}
# Outside a terminal (pipes, CI logs, tests) rich would wrap at 80 columns and split values.
PLAIN_WIDTH = 220


def console(stderr: bool = False) -> Console:
    out = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not out.is_terminal:
        out.width = PLAIN_WIDTH
    return out


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


# -- small formats -------------------------------------------------------------------------


def when(ts: float | None, now: float) -> str:
    """``14:03:22 (3s ago)``; the date too when it is not today."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts).astimezone()
    today = datetime.fromtimestamp(now).astimezone().date()
    clock = moment.strftime("%H:%M:%S" if moment.date() == today else "%Y-%m-%d %H:%M:%S")
    delta = ts - now
    return f"{clock} ({'in ' + span(delta) if delta > 0 else span(-delta) + ' ago'})"


def span(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 90:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def condition_text(status: ServiceStatus) -> Text:
    kind = status.condition
    label = {
        "stopped": f"stopped: {status.state.stop_reason or 'no reason recorded'}",
        "backoff": f"backing off until {when(status.state.retry_at, status.now)}",
        "corrupt": "corrupt flag: nothing runs (" + ", ".join(status.state.corrupt) + ")",
    }.get(kind, kind)
    if kind == "running" and status.leases:
        label = "running (run in progress)"
    return Text(label, style=CONDITION_STYLE.get(kind, ""))


def failures_text(status: ServiceStatus) -> str:
    limit = status.config.max_failures if status.config else "?"
    return f"{status.state.failures}/{limit}"


def lease_text(leases: tuple[Lease, ...] | list[Lease], now: float) -> str:
    if not leases:
        return "-"
    return ", ".join(f"{lease.run_id} on {lease.worker} (expires {span(lease.expires_at - now)})"
                     for lease in leases)


def next_tick_text(status: ServiceStatus) -> str:
    if status.condition in ("stopped", "paused", "corrupt"):
        return f"- ({status.condition})"
    due = status.next_tick_at
    if due is None:
        return "-"
    return when(due, status.now) if due > status.now else "due now"


def change_text(status: ServiceStatus) -> str:
    state = status.state
    if not state.change:
        return "-"
    why = f": {state.change_reason}" if state.change_reason else ""
    return f"{state.change} by {state.changed_by} at {when(state.changed_at, status.now)}{why}"


def last_run_text(status: ServiceStatus) -> str:
    run = status.last_run
    if not run:
        return when(status.state.last_started_at, status.now)
    duration = run.get("duration")
    took = f", {span(duration)}" if isinstance(duration, int | float) else ""
    return f"{when(run.get('finished_at'), status.now)} {run.get('outcome', '?')}{took}"


# -- views ---------------------------------------------------------------------------------


def service_table(statuses: list[ServiceStatus]) -> Table:
    table = Table(pad_edge=False)
    for title in ("SERVICE", "STATE", "FAILURES", "INTERVAL", "LAST RUN", "LAST SUCCESS",
                  "NEXT TICK", "LEASE"):
        # A long stop reason is cut here; `svc status NAME` shows it whole.
        table.add_column(title, no_wrap=True, overflow="ellipsis",
                         max_width=48 if title == "STATE" else None)
    for status in statuses:
        table.add_row(
            status.name, condition_text(status), failures_text(status),
            seconds_text(status.config.interval_seconds if status.config else None),
            last_run_text(status), when(status.state.last_success_at, status.now),
            next_tick_text(status),
            ", ".join(lease.worker for lease in status.leases) or "-")
    return table


def print_services(statuses: list[ServiceStatus], errors: list[str]) -> None:
    """``svc list``: one row per service, then what needs attention."""
    out = console()
    if not statuses:
        out.print("no services: none discovered here and none registered by a worker")
    else:
        out.print(service_table(statuses))
    for status in statuses:
        for warning in status.warnings:
            if warning.startswith("unreadable"):
                out.print(Text(f"warning: {status.name}: {warning}", style="yellow"))
    print_registry_errors(out, errors)


def print_registry_errors(out: Console, errors: list[str]) -> None:
    for error in errors:
        out.print(Text(f"not loaded: {error}", style="red"))


def detail_grid(status: ServiceStatus) -> Table:
    config = status.config
    state = status.state
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("service", Text(status.name, style="bold")),
        ("state", condition_text(status)),
        ("failures", failures_text(status)),
        ("interval", seconds_text(config.interval_seconds if config else None)),
        ("retry delay", seconds_text(config.retry_delay_seconds if config else None)),
        ("max concurrent runs", str(config.max_concurrent_runs) if config else "-"),
        ("queue", (config.queue or "(default)") if config else "-"),
        ("runs started", str(state.runs)),
        ("last run", last_run_text(status)),
        ("last success", when(state.last_success_at, status.now)),
        ("last error", f"{state.last_error} ({when(state.last_error_at, status.now)})"
         if state.last_error else "-"),
        ("next tick", next_tick_text(status)),
        ("lease held by", lease_text(status.leases, status.now)),
        ("last change", change_text(status)),
    ]
    for label, value in rows:
        grid.add_row(label, value)
    for warning in status.warnings:
        grid.add_row("warning", Text(warning, style="yellow"))
    return grid


def print_details(statuses: list[ServiceStatus], errors: list[str]) -> None:
    """``svc status``: every service in full, one block each."""
    out = console()
    if not statuses:
        out.print("no services: none discovered here and none registered by a worker")
    for i, status in enumerate(statuses):
        if i:
            out.print()
        out.print(detail_grid(status))
    print_registry_errors(out, errors)


def print_detail(status: ServiceStatus, audit: list[dict[str, Any]],
                 history: list[dict[str, Any]], errors: list[str]) -> None:
    """``svc status NAME``: the service in full, its recent changes and runs."""
    out = console()
    out.print(detail_grid(status))
    if audit:
        out.print()
        out.print(audit_table(audit, status.now, title="recent changes"))
    if history:
        out.print()
        out.print(history_table(history, status.now, title="recent runs"))
    print_registry_errors(out, errors)


def history_table(rows: list[dict[str, Any]], now: float, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", pad_edge=False)
    for column in ("STARTED", "DURATION", "OUTCOME", "RUN", "WORKER"):
        table.add_column(column, no_wrap=True)
    table.add_column("ERROR", overflow="fold", max_width=80)
    for row in rows:
        outcome = str(row.get("outcome", "?"))
        if row.get("superseded"):
            outcome += " (superseded)"
        elif row.get("lease_lost"):
            outcome += " (lease lost)"
        duration = row.get("duration")
        table.add_row(
            when(row.get("started_at"), now),
            span(duration) if isinstance(duration, int | float) else "-",
            Text(outcome, style="green" if row.get("outcome") == "ok" else "red"),
            str(row.get("run_id", "-")), str(row.get("worker", "-")),
            str(row.get("error") or "-"))
    return table


def audit_table(rows: list[dict[str, Any]], now: float, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", pad_edge=False)
    for column in ("WHEN", "ACTION", "BY"):
        table.add_column(column, no_wrap=True)
    table.add_column("REASON", overflow="fold", max_width=80)
    for row in rows:
        table.add_row(when(row.get("at"), now), str(row.get("action", "?")),
                      str(row.get("by", "?")), str(row.get("reason") or "-"))
    return table


def print_changes(changes: list[dict[str, Any]], now: float) -> None:
    table = Table(pad_edge=False)
    for column in ("SERVICE", "ACTION", "BY", "WHEN"):
        table.add_column(column, no_wrap=True)
    table.add_column("REASON", overflow="fold", max_width=80)
    for change in changes:
        table.add_row(change["service"], change["action"], change["by"],
                      when(change.get("at"), now), change.get("reason") or "-")
    console().print(table)
