"""``svc schedule NAME``: a service's effective schedule and next tick, or a live change of it.

Every option is checked here, before Redis is touched, so a bad value is one line naming the
option and what it expects (exit 2) and nothing is written. The change itself goes through
:meth:`beat_schedule.store.ScheduleStore.set_override` / ``reset`` (``worker.ops_schedule``),
which audit it; Beat picks it up within one poll.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from services.schedule import Schedule, ScheduleError, parse_seconds, seconds_text
from worker import cli_render as render
from worker.cli_edge import edge
from worker.ops import InvalidArgumentError, Operator, actor, check_reason
from worker.ops_schedule import ScheduleInfo, change_schedule, forget_service, read_schedules

# Options that change the schedule -> the override field each sets.
FIELDS = {"--every": "every_seconds", "--cron": "cron", "--tz": "timezone",
          "--jitter": "jitter_seconds", "--catchup": "catchup",
          "--catchup-window": "catchup_window_seconds"}
DURATIONS = ("--every", "--jitter", "--catchup-window")
# The rest of a schedule when one option is checked on its own (Schedule checks them together).
_PROBE: dict[str, Any] = {"every_seconds": 60.0}


def parse_changes(given: dict[str, str | None]) -> dict[str, Any]:
    """The override fields ``given`` (option -> text as typed, None when not given) sets.
    Raises :class:`InvalidArgumentError` naming the option and what it expects."""
    if given.get("--every") is not None and given.get("--cron") is not None:
        raise InvalidArgumentError(
            "--every and --cron cannot be given together: a schedule is either an interval "
            "or a cron expression")
    changes: dict[str, Any] = {}
    for option, text in given.items():
        if text is None:
            continue
        field = FIELDS[option]
        try:
            value: Any = parse_seconds(text, option) if option in DURATIONS else text
            probe = {**_PROBE, field: value}
            if field == "cron":
                probe["every_seconds"] = None
            Schedule(**probe)
        except ScheduleError as exc:
            message = str(exc)
            raise InvalidArgumentError(
                message if message.startswith(option) else f"{option} {text!r}: {message}"
            ) from None
        changes[field] = value
    return changes


def check_timezone(name: str, changes: dict[str, Any], info: ScheduleInfo) -> None:
    """A time zone only means something to a cron schedule: refuse one that would be stored
    and ignored."""
    if "timezone" not in changes or "cron" in changes or not info.registered:
        return
    if "every_seconds" in changes:
        raise InvalidArgumentError("--tz applies to cron schedules, not to --every; give "
                                   "--cron with it")
    if info.schedule is not None and info.schedule.cron is None:
        raise InvalidArgumentError(f"--tz applies to cron schedules; {name} runs "
                                   f"{info.text()}: give --cron with it")


def override_text(override: dict[str, Any] | None) -> str:
    if not override:
        return "none"
    return ", ".join(f"{field}={value}" for field, value in sorted(override.items()))


def next_tick_text(info: ScheduleInfo, now: float) -> str:
    if info.due_at is None:
        return ("- (not scheduled by a Beat yet)" if info.registered
                else "- (no worker registered it, so Beat does not schedule it)")
    text = render.when(info.due_at, now) if info.due_at > now else "due now"
    if info.pending:
        text += " (schedule changed: Beat reschedules at its next poll)"
    return text


def schedule_grid(name: str, info: ScheduleInfo, now: float) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("service", render.cell(name, "bold"))
    grid.add_row("schedule", render.cell(info.text()))
    grid.add_row("source", render.cell(
        "live override" if info.source == "live" else info.source or "-"))
    grid.add_row("live override", render.cell(override_text(info.override)))
    grid.add_row("code", render.cell(info.code.describe() if info.code else "-"))
    if info.schedule is not None:
        grid.add_row("catch-up", render.cell(
            f"{info.schedule.catchup}, window "
            f"{seconds_text(info.schedule.catchup_window_seconds)}"))
    grid.add_row("next tick", render.cell(next_tick_text(info, now)))
    if info.problem:
        grid.add_row("warning", render.cell(info.problem, "yellow"))
    return grid


@edge
def schedule(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The service.")],
    *,
    every: Annotated[str | None, typer.Option(
        "--every", help="Run every DURATION (30s, 5m, 2h, 1d); replaces a cron expression.",
        show_default=False)] = None,
    cron: Annotated[str | None, typer.Option(
        "--cron", help='Run on a cron expression ("*/5 * * * *"); replaces an interval.',
        show_default=False)] = None,
    tz: Annotated[str | None, typer.Option(
        "--tz", help="IANA time zone of the cron expression (Europe/Berlin).",
        show_default=False)] = None,
    jitter: Annotated[str | None, typer.Option(
        "--jitter", help="Delay each tick by a stable amount below DURATION (0 turns it off).",
        show_default=False)] = None,
    catchup: Annotated[str | None, typer.Option(
        "--catchup", help="After missed ticks: latest (one), skip (none) or all.",
        show_default=False)] = None,
    catchup_window: Annotated[str | None, typer.Option(
        "--catchup-window", help="latest catches up only ticks missed this recently.",
        show_default=False)] = None,
    reset: Annotated[bool, typer.Option(
        "--reset", help="Drop the live override: back to code and environment.")] = False,
    reason: Annotated[str, typer.Option(
        "--reason", "-r", help="Why: kept in the audit record.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show a service's effective schedule and next tick, or change it live (audited).

    Without options: the schedule, where it comes from (code and environment, or a live
    override) and the next tick Beat will send. With --every, --cron [--tz], --jitter,
    --catchup or --catchup-window: set those in the live override; --reset drops it."""
    op: Operator = ctx.obj
    changes = parse_changes({"--every": every, "--cron": cron, "--tz": tz, "--jitter": jitter,
                             "--catchup": catchup, "--catchup-window": catchup_window})
    if reset and changes:
        raise InvalidArgumentError("--reset drops the live override; it cannot be given with "
                                   f"{', '.join(o for o, f in FIELDS.items() if f in changes)}")
    if reason and not (reset or changes):
        raise InvalidArgumentError("--reason goes with a change (--every, --cron, --tz, "
                                   "--jitter, --catchup, --catchup-window or --reset)")
    check_reason(reason)
    (name,) = op.resolve([name])
    before = read_schedules(op.store, [name], op.registered, op.config)[name]
    entry: dict[str, Any] | None = None
    if reset or changes:
        check_timezone(name, changes, before)
        _, entry = change_schedule(op.store, name, None if reset else changes, who=actor(),
                                   reason=reason)
    info = before if entry is None else read_schedules(op.store, [name], op.registered,
                                                       op.config)[name]
    now = op.store.now()
    if as_json:
        render.emit_json({"service": name, "now": now, "schedule": info.as_json(),
                          "change": entry})
        return
    out = render.console()
    if entry is not None:
        what = "live override dropped" if reset else "schedule changed"
        why = f": {entry['reason']}" if entry.get("reason") else ""
        out.print(render.cell(f"{name}: {what} by {entry['by']}{why}; Beat applies it at its "
                              "next poll"))
    out.print(schedule_grid(name, info, now))


@edge
def forget(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Services no worker runs any more.")],
    *,
    reason: Annotated[str, typer.Option(
        "--reason", "-r", help="Why: kept in the audit record.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Drop services removed from the code: their registration and live override go, and
    Beat stops ticking them at its next poll. State, history and audit stay. A worker that
    still runs one registers it again at its next start."""
    op: Operator = ctx.obj
    check_reason(reason)
    resolved = op.resolve(names)
    unregistered = [name for name in resolved if name not in op.registered]
    if unregistered:
        raise InvalidArgumentError(
            f"{', '.join(unregistered)}: no worker registered it, so there is nothing to "
            "forget (Beat does not schedule it)")
    entries = {name: forget_service(op.store, name, who=actor(), reason=reason)
               for name in resolved}
    if as_json:
        render.emit_json(entries)
        return
    out = render.console()
    for name, entry in entries.items():
        why = f": {entry['reason']}" if entry.get("reason") else ""
        out.print(render.cell(f"{name}: forgotten by {entry['by']}{why}; Beat stops ticking "
                              "it at its next poll"))
