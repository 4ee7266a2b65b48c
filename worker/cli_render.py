"""How ``svc`` prints: rich tables for people, JSON for scripts. Nothing here reads Redis.

Every value shown comes from Redis, which anyone can write: a stop reason, an error, a worker
name, an audit entry. So each goes into a table as a :class:`rich.text.Text` (never parsed as
markup: ``[bold red]`` is shown as typed) made :func:`visible` (a control character such as
ESC, which would steer the terminal, is shown as its escape, ``\\x1b``). A time or a number
may be absurd too; it is shown as it is, never raised on. JSON output stays exact: json.dumps
escapes control characters itself.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.health import NO_BEAT
from worker.ops_schedule import BeatView, ScheduleInfo
from worker.ops_status import Lease, ServiceStatus

CONDITION_STYLE = {"running": "green", "paused": "yellow", "stopped": "red",
                   "backoff": "magenta", "corrupt": "bold red", "held": "bold red"}
# Outside a terminal (pipes, CI logs, tests) rich would wrap at 80 columns and split values,
# so output is this wide there unless COLUMNS says otherwise.
PLAIN_WIDTH = 220
# C0 and C1 control characters (ESC starts terminal sequences, CR overwrites a line, BEL
# rings, 0x9b is a one-byte CSI) and the bidi overrides that make text read other than it is.
UNSAFE_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(value: object) -> str:
    """``value`` as text with every control character replaced by its escape (``\\x1b``,
    ``\\r``, ``\\u202e``), so that it is read, not obeyed, by the terminal."""
    text = str(value)
    if text.isascii() and text.isprintable():  # the usual case, without the regex
        return text
    return UNSAFE_CHARACTERS.sub(
        lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def cell(value: object, style: str = "") -> Text:
    """A table cell holding ``value`` literally: no markup, no emoji codes, no control codes."""
    return Text(visible(value), style=style)


def console(stderr: bool = False) -> Console:
    """The terminal's width (COLUMNS first, as rich reads it); outside a terminal COLUMNS if
    set, else PLAIN_WIDTH, so a script that asks for a width gets it."""
    out = Console(stderr=stderr, highlight=False, soft_wrap=False)
    asked = os.environ.get("COLUMNS", "")
    if not out.is_terminal and not (asked.isdigit() and int(asked) > 0):
        out.width = PLAIN_WIDTH
    return out


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


# -- small formats -------------------------------------------------------------------------


def when(ts: object, now: float, short: bool = False) -> str:
    """``14:03:22 (3s ago)``; the date too when it is not today; ``short``: ``3s ago`` alone.
    Whatever Redis held: a time no calendar reaches (``1e12``) is shown as its number, and a
    value that is no time at all as it is, rather than failing the whole listing."""
    if ts is None:
        return "-"
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return f"{visible(repr(ts))} (not a time)"
    if not math.isfinite(ts):
        return f"{ts} (not a time)"
    try:
        # Local time, naive: the same clock and date as .astimezone() would give, at a
        # fraction of the cost (60,000 of these in a listing of 10,000 services).
        moment = datetime.fromtimestamp(ts)
    except (OverflowError, OSError, ValueError):  # past year 9999 or before year 1
        return f"{ts:g} ({'far future' if ts > now else 'far past'})"
    delta = ts - now
    relative = f"in {span(delta)}" if delta > 0 else f"{span(-delta)} ago"
    if short:
        return relative
    clock = moment.strftime("%H:%M:%S" if moment.date() == _today(now) else
                            "%Y-%m-%d %H:%M:%S")
    return f"{clock} ({relative})"


@functools.lru_cache(maxsize=4)
def _today(now: float) -> date:
    """The local date at ``now``: one snapshot's rows share it (10,000 per listing)."""
    return datetime.fromtimestamp(now).date()


def span(seconds: float) -> str:
    if not math.isfinite(seconds):
        return str(seconds)
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


def duration_text(value: object) -> str:
    """A run's duration from its history entry (a number, unless someone wrote otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return span(value)


def condition_text(status: ServiceStatus, short: bool = False) -> Text:
    """``running``, ``paused``, ``stopped: <reason>``...; ``short`` for a narrow listing: the
    state word still leads, so a cut keeps it."""
    kind, state = status.condition, status.state
    retry = when(state.retry_at, status.now, short)
    reason = state.stop_reason or ""
    stopped = f"stopped: {reason or 'no reason recorded'}"
    if short and reason.startswith("stopped by "):  # an operator's stop: say "stopped" once
        stopped = reason
    label = {
        "stopped": stopped,
        "backoff": f"backoff: retry {retry}" if short else f"backing off until {retry}",
        "corrupt": "corrupt flag: nothing runs (" + ", ".join(state.corrupt) + ")",
        "held": "held: waiting for an operator" if short
                else "held: Redis lost its data; waiting for an operator (svc resume)",
    }.get(kind, kind)
    if kind == "running" and status.leases:
        label = "running (run in progress)"
    return cell(label, CONDITION_STYLE.get(kind, ""))


def failures_text(status: ServiceStatus) -> str:
    limit = status.config.max_failures if status.config else "?"
    return f"{status.state.failures}/{limit}"


def lease_text(leases: tuple[Lease, ...] | list[Lease], now: float) -> str:
    if not leases:
        return "-"
    return ", ".join(f"{lease.run_id} on {lease.worker} (expires {span(lease.expires_at - now)})"
                     for lease in leases)


def next_tick_text(status: ServiceStatus, short: bool = False) -> str:
    if status.condition in ("stopped", "paused", "corrupt"):
        return f"- ({status.condition})"
    due = status.next_tick_at
    if due is None:
        info = status.schedule
        if info is not None and not info.registered:
            return "- (unregistered)" if short else "- (no worker registered it)"
        return "- (no Beat yet)" if short else "- (not scheduled by a Beat yet)"
    if NO_BEAT in status.health.codes and short:  # the due time stays, but nobody sends it
        return "- (no Beat)"
    text = when(due, status.now, short) if due > status.now else "due now"
    if status.schedule is not None and status.schedule.pending:
        text += " (changing)" if short else " (schedule changed: Beat reschedules at its next poll)"
    if NO_BEAT in status.health.codes:
        text += " (no Beat leads: not sent)"
    return text


HEALTH_STYLE = {"ok": "green", "paused": "yellow"}


def health_text(status: ServiceStatus, short: bool = False) -> Text:
    """``ok``, ``paused``, or the problems by name (``no beat, overdue``); in full (``svc
    status``) with why."""
    health = status.health
    if health.ok:
        return cell(health.status, HEALTH_STYLE[health.status])
    if short:
        return cell(", ".join(p.label for p in health.problems), "red")
    return cell(health.summary(), "red")


def schedule_text(info: ScheduleInfo | None) -> str:
    """``every 30s (live; code: every 10s)`` or ``cron 0 3 * * * (UTC) (code)``."""
    if info is None or info.schedule is None:
        return "-"
    if info.source != "live":
        return f"{info.text()} (code)"
    code = info.code.describe() if info.code is not None else "?"
    return f"{info.text()} (live override; code: {code})"


def beat_line(beat: BeatView) -> Text:
    """``beat: leader HOST:PID:NONCE (token 3); tick lateness over the last minute: p50 2ms,
    p99 9ms, max 31ms (120 ticks)``, and what is wrong when something is."""
    if not beat.leader:
        line, style = "beat: no leader Beat (no Beat holds the lease: no ticks are sent)", "red"
    else:
        line, style = f"beat: leader {beat.holder} (token {beat.fence or '?'})", ""
    if beat.age is None:
        return cell(line + ("; no tick stats yet" if beat.leader else ""), style)
    late = beat.lateness()
    if late["max"] is None:
        line += "; no tick sent in the last minute"
    else:
        window = beat.stats.get("window_ticks") or "?"
        line += ("; tick lateness over the last minute: "
                 + ", ".join(f"{label} {span(value or 0.0)}" for label, value in late.items())
                 + f" ({window} ticks)")
    if beat.stale:
        line += f"; STALE: stats last written {span(beat.age)} ago (Beat stuck or gone?)"
        style = style or "yellow"
    return cell(line, style)


def change_text(status: ServiceStatus) -> str:
    state = status.state
    if not state.change:
        return "-"
    why = f": {state.change_reason}" if state.change_reason else ""
    return f"{state.change} by {state.changed_by} at {when(state.changed_at, status.now)}{why}"


def last_run_text(status: ServiceStatus, short: bool = False) -> str:
    """``14:03:22 (3s ago) ok, 12ms``; ``short``: ``3s ago ok``."""
    run = status.last_run
    if not run:
        return when(status.state.last_started_at, status.now, short)
    if short:
        return f"{when(run.get('finished_at'), status.now, short)} {run.get('outcome', '?')}"
    duration = duration_text(run.get("duration"))
    took = f", {duration}" if duration != "-" else ""
    return f"{when(run.get('finished_at'), status.now)} {run.get('outcome', '?')}{took}"


# -- views ---------------------------------------------------------------------------------


def print_loss(out: Console, statuses: Sequence[ServiceStatus]) -> None:
    """One line when Redis lost the framework's data, and what it means for the services."""
    loss = next((s.loss for s in statuses if s.loss is not None), None)
    if loss is None:
        return
    held = [s.name for s in statuses if s.held]
    line = (f"warning: Redis lost the framework's data (noticed at "
            f"{when(loss.lost_at, statuses[0].now)} by {loss.detected_by}): paused and stopped "
            "services were restored as workers last saw them")
    if held:
        line += (f"; held until an operator acts on them (svc resume NAME): "
                 f"{', '.join(held)}")
    out.print(cell(line, "bold red"))


def print_registry_errors(out: Console, errors: list[str],
                          index_errors: Sequence[str] = ()) -> None:
    """Service files that did not load here, and index entries nobody can read."""
    for error in errors:
        out.print(cell(f"not loaded: {error}", "red"))
    for error in index_errors:
        out.print(cell(f"warning: {error}", "yellow"))


def detail_rows(status: ServiceStatus) -> list[tuple[str, Text]]:
    """``svc status``'s block for one service: (label, value) rows."""
    config = status.config
    state = status.state
    plain: list[tuple[str, str]] = [
        ("failures", failures_text(status)),
        ("schedule", schedule_text(status.schedule)),
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
    return [("service", cell(status.name, "bold")), ("state", condition_text(status)),
            ("health", health_text(status)),
            *((label, cell(value)) for label, value in plain),
            *(("warning", cell(warning, "yellow")) for warning in status.warnings)]


def detail_block(rows: list[tuple[str, Text]], width: int) -> Text:
    """The rows as two columns, labels in bold, a value too long for the line folded under
    itself. Laid out here rather than by a rich grid: measuring and rendering a grid took
    2-6 ms per service, 19 s for ``svc status`` at 10,000 services."""
    label_width = max(len(label) for label, _ in rows)
    value_width = max(width - label_width - 2, 20)
    block = Text()
    for label, value in rows:
        block.append(label.ljust(label_width), "bold")
        block.append("  ")
        if value.cell_len <= value_width and "\n" not in value.plain:
            block.append_text(value)
        else:
            indent = "\n" + " " * (label_width + 2)
            lines = value.wrap(_MEASURING, value_width, overflow="fold")
            block.append_text(Text(indent).join(lines))
        block.append("\n")
    block.rstrip()
    return block


# Only for Text.wrap, which asks a console for nothing but the cell widths of characters.
_MEASURING = Console(width=PLAIN_WIDTH, highlight=False)


def print_details(statuses: list[ServiceStatus], errors: list[str],
                  index_errors: Sequence[str] = (), beat: BeatView | None = None) -> None:
    """``svc status``: the leader Beat, then every service in full, one block each."""
    out = console()
    if beat is not None:
        out.print(beat_line(beat))
        out.print()
    if not statuses:
        out.print("no services: none discovered here and none registered by a worker")
    for i, status in enumerate(statuses):
        if i:
            out.print()
        out.print(detail_block(detail_rows(status), out.width), soft_wrap=True)
    print_loss(out, statuses)
    print_registry_errors(out, errors, index_errors)


def print_detail(status: ServiceStatus, audit: list[Any], history: list[Any],
                 errors: list[str], index_errors: Sequence[str] = ()) -> None:
    """``svc status NAME``: the service in full, its recent changes and runs."""
    out = console()
    out.print(detail_block(detail_rows(status), out.width), soft_wrap=True)
    if audit:
        out.print()
        out.print(audit_table(audit, status.now, title="recent changes"))
    if history:
        out.print()
        out.print(history_table(history, status.now, title="recent runs"))
    print_loss(out, [status])
    print_registry_errors(out, errors, index_errors)


def entry(row: Any) -> dict[str, Any]:
    """A history or audit entry as a dict: one that holds other JSON (a number, a list) is
    shown as unreadable rather than failing the table."""
    if isinstance(row, dict):
        return row
    return {"outcome": "unreadable", "action": "unreadable",
            "error": json.dumps(row), "reason": json.dumps(row)}


def history_table(rows: list[Any], now: float, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", pad_edge=False)
    for column in ("STARTED", "DURATION"):
        table.add_column(column, no_wrap=True)
    # Bounded, so that a long value (whatever Redis holds) cannot squeeze the others away.
    for column, width in (("OUTCOME", 28), ("RUN", 16), ("WORKER", 40)):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=width)
    table.add_column("ERROR", overflow="fold", max_width=80)
    for row in map(entry, rows):
        outcome = str(row.get("outcome", "?"))
        if row.get("superseded"):
            outcome += " (superseded)"
        elif row.get("lease_lost"):
            outcome += " (lease lost)"
        table.add_row(
            cell(when(row.get("started_at"), now)), cell(duration_text(row.get("duration"))),
            cell(outcome, "green" if row.get("outcome") == "ok" else "red"),
            cell(row.get("run_id", "-")), cell(row.get("worker", "-")),
            cell(row.get("error") or "-"))
    return table


def audit_table(rows: list[Any], now: float, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", pad_edge=False)
    table.add_column("WHEN", no_wrap=True)
    for column, width in (("ACTION", 16), ("BY", 40)):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=width)
    table.add_column("REASON", overflow="fold", max_width=80)
    for row in map(entry, rows):
        table.add_row(cell(when(row.get("at"), now)), cell(row.get("action", "?")),
                      cell(row.get("by", "?")), cell(row.get("reason") or "-"))
    return table


def print_changes(changes: list[dict[str, Any]], now: float) -> None:
    table = Table(pad_edge=False)
    for column in ("SERVICE", "ACTION", "BY", "WHEN"):
        table.add_column(column, no_wrap=True)
    table.add_column("REASON", overflow="fold", max_width=80)
    for change in changes:
        table.add_row(cell(change["service"]), cell(change["action"]), cell(change["by"]),
                      cell(when(change.get("at"), now)), cell(change.get("reason") or "-"))
    console().print(table)
