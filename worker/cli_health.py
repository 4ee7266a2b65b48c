"""``svc health`` and ``svc workers``: is everything running, and who is alive.

``svc health`` prints only what is wrong and exits 1 when anything is (0 when all is well),
so it works as a container healthcheck and from cron monitors; ``--process worker|beat``
checks instead that a worker (or Beat) of this host is alive, which is what a container's own
healthcheck wants to know. Health is :func:`services.health.assess`, read from one snapshot
(``Operator.snapshot``), the same as the metrics and the services page.
"""

from __future__ import annotations

import socket
from typing import Annotated

import typer
from rich.table import Table

from services.heartbeat import KINDS, Liveness, ProcessInfo
from worker import cli_render as render
from worker.cli_edge import EXIT_FAILED, edge, fail
from worker.ops import InvalidArgumentError, Operator
from worker.ops_status import ServiceStatus

NamesArg = Annotated[list[str] | None, typer.Argument(
    help="Service names; all when left out.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@edge
def health(
    ctx: typer.Context,
    names: NamesArg = None,
    process: Annotated[str | None, typer.Option(
        "--process", help="Check instead that a worker (or beat) on this host is alive: a "
        "container's healthcheck.", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Exit 0 when every service named (or every service) is healthy, 1 otherwise, printing
    only what is wrong: stopped, failing, overdue, stuck, no worker, no beat, state lost.

    A paused service is healthy. Redis unreachable is exit 1 too."""
    op: Operator = ctx.obj
    if process is not None:
        check_process(op, process, as_json)
        return
    targets = op.resolve(names or []) if names else op.known()
    _, found, _ = op.snapshot(targets)
    sick = [status for status in found if not status.health.ok]
    if as_json:
        render.emit_json({"healthy": not sick, "services": {
            s.name: s.health.as_json() for s in found}})
    else:
        for status in sick:
            render.console().print(render.cell(health_line(status)))
    if sick:
        raise typer.Exit(EXIT_FAILED)


def health_line(status: ServiceStatus) -> str:
    """``ticker: stopped: disk full by ops@host``: one line per unhealthy service."""
    return f"{status.name}: {status.health.summary()}"


def check_process(op: Operator, kind: str, as_json: bool) -> None:
    """Exit 0 when a process of ``kind`` on this host has a live heartbeat."""
    if kind not in KINDS:
        raise InvalidArgumentError(f"--process {kind!r}: expected one of {', '.join(KINDS)}")
    host = socket.gethostname()
    _, _, liveness = op.snapshot([])
    mine = [p for p in liveness.processes if p.kind == kind and p.host == host]
    alive = [p for p in mine if p.alive]
    if as_json:
        render.emit_json({"healthy": bool(alive), "host": host,
                          "processes": [p.as_json() for p in mine]})
    if alive:
        return
    if not as_json:
        last = max((p.seen_at for p in mine), default=None)
        seen = f"; last seen {render.when(last, liveness.now)}" if last is not None else ""
        raise fail(f"no live {kind} heartbeat from host {host}{seen}", EXIT_FAILED)
    raise typer.Exit(EXIT_FAILED)


@edge
def workers(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Workers and Beats from their heartbeats: alive, or gone and when last seen (for a day).

    A process is gone three heartbeats (SVC_HEARTBEAT_SECONDS) after its last one, or at once
    when it stopped cleanly."""
    op: Operator = ctx.obj
    _, _, liveness = op.snapshot([])
    if as_json:
        render.emit_json({"now": liveness.now, "beat_leader": liveness.leader_holder,
                          "processes": [p.as_json() for p in ordered(liveness)]})
        return
    if not liveness.processes:
        render.console().print("no worker or Beat has written a heartbeat in the last day")
        return
    render.console().print(process_table(liveness))


def ordered(liveness: Liveness) -> list[ProcessInfo]:
    """Alive first, then by kind and host."""
    return sorted(liveness.processes, key=lambda p: (not p.alive, p.kind, p.host, p.pid))


def process_table(liveness: Liveness) -> Table:
    table = Table(pad_edge=False)
    for title, width in (("KIND", 8), ("PROCESS", 32), ("STATE", 10), ("LAST SEEN", 24),
                         ("UP SINCE", 24), ("SERVES", 60)):
        table.add_column(title, no_wrap=True, overflow="ellipsis", max_width=width)
    for p in ordered(liveness):
        state = ("alive" if p.alive else "gone", "green" if p.alive else "red")
        role = f" ({p.role})" if p.role else ""
        serves = (f"{', '.join(p.services) or '-'} on {', '.join(p.queues) or '-'}"
                  if p.kind == "worker" else "-")
        table.add_row(render.cell(p.kind + role), render.cell(f"{p.host}:{p.pid}"),
                      render.cell(*state), render.cell(render.when(p.seen_at, liveness.now)),
                      render.cell(render.when(p.started_at, liveness.now)), render.cell(serves))
    return table
