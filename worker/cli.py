"""``svc``: see and change every service from any machine that reaches Redis.

Exit codes: 0 done; 1 the world said no (Redis, the broker or the database unreachable,
a state key of the wrong type, ``--wait`` timed out); 2 the command was wrong (usage, a bad
option value, an unknown or malformed service name, a bad setting). How errors become one
line is in :mod:`worker.cli_edge`.
Settings are read once, here at the edge, and handed down; tests pass their own environment.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from services import logs
from services.errors import ServiceConfigError, StateCorruptError
from services.settings import load_settings, redact_url
from worker import cli_list
from worker import cli_render as render
from worker.cli_edge import EXIT_FAILED, EXIT_USAGE, OneLineGroup, edge, fail
from worker.cli_health import health, workers
from worker.cli_schedule import forget, schedule
from worker.cli_web import web
from worker.ops import Operator, actor, check_reason

app = typer.Typer(
    name="svc", cls=OneLineGroup, no_args_is_help=True, add_completion=False,
    # Expected failures get one clear line (cli_edge); a traceback means a bug, so keep it plain.
    pretty_exceptions_enable=False)

# More rows than Redis keeps (SVC_HISTORY_LENGTH, SVC_AUDIT_LENGTH) is a typo; a number past
# Redis's range would otherwise come back as Redis refusing the command.
MAX_ROWS = 100_000


def finite_seconds(value: float | None) -> float | None:
    """--timeout: nan would never compare as passed, so --wait would wait forever."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"expected a number of seconds >= 0, got {value}")
    return value


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NamesArg = Annotated[list[str] | None, typer.Argument(help="Service names.", show_default=False)]
AllOpt = Annotated[bool, typer.Option("--all", help="Every known service.")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why: kept in the audit record.")]
WaitOpt = Annotated[bool, typer.Option(
    "--wait", help="Return only once no run of these services is in progress.")]
TimeoutOpt = Annotated[float | None, typer.Option(
    "--timeout", help="Seconds --wait waits (default SVC_WAIT_TIMEOUT_SECONDS).",
    callback=finite_seconds)]
RowsOpt = Annotated[int, typer.Option("-n", min=1, max=MAX_ROWS, help="How many rows.")]


@app.callback()
def setup(ctx: typer.Context) -> None:
    """Operate periodic services: status, schedule, pause/resume/stop/start, trigger, history,
    metrics.

    Settings (REDIS_URL, SVC_KEY_PREFIX, SVC_PACKAGES, ...) come from the environment or .env.
    Exit codes: 0 done; 1 Redis, the broker or the database unreachable or refusing (a state
    key of the wrong type), or --wait timed out; 2 bad usage or option value, or an unknown or
    malformed service name.
    """
    if ctx.obj is None:
        try:
            settings = load_settings()
        except ServiceConfigError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        ctx.obj = Operator(settings)
    ctx.call_on_close(ctx.obj.close)
    root = logging.getLogger()
    if not root.handlers:  # a real command line, not a test runner's captured one
        logs.configure("WARNING", ctx.obj.settings.log_json)
        # list and status show registry load errors in their output, JSON included, and a
        # registration without a usable schedule as a warning of its service.
        logging.getLogger("services.registry").setLevel(logging.CRITICAL)
        logging.getLogger("beat_schedule.store").setLevel(logging.CRITICAL)


def operator(ctx: typer.Context) -> Operator:
    return ctx.obj  # type: ignore[no-any-return]


# -- reading -------------------------------------------------------------------------------


@app.command("list")
@edge
def list_services(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    wide: Annotated[bool, typer.Option(
        "--wide", help="Every column in full, however wide the terminal.")] = False,
) -> None:
    """Every service at a glance: state, failures, next tick, last run, schedule, last
    success, lease; as many columns as the terminal's width (or COLUMNS) holds."""
    cli_list.show_services(operator(ctx), as_json, detailed=False, wide=wide)


@app.command()
@edge
def status(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="One service; all when left out.")] = None,
    rows: Annotated[int, typer.Option(
        "-n", min=1, max=MAX_ROWS, help="Recent runs and changes shown.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Full status of every service, or one service with its recent runs and changes.

    State (running / paused / stopped and why / backing off until), failures out of max,
    schedule, last run, last success, last error, next tick, lease holder, last change; for
    every service, also the leader Beat and how late its ticks go out."""
    op = operator(ctx)
    if name is None:
        cli_list.show_services(op, as_json, detailed=True)
        return
    (name,) = op.resolve([name])
    op.load_code()  # one service in full: whether this machine's code has it too
    _, (found,) = op.statuses([name])
    audit = op.audit(name, rows)
    history = op.history(name, rows)
    if as_json:
        render.emit_json({"service": found.as_json(), "audit": audit, "history": history,
                          "registry_errors": op.registry_errors,
                          "index_errors": op.index_errors})
    else:
        render.print_detail(found, audit, history, op.registry_errors, op.index_errors)


@app.command()
@edge
def history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The service.")],
    rows: RowsOpt = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recent runs, newest first: start, duration, outcome, worker, error."""
    op = operator(ctx)
    (name,) = op.resolve([name])
    runs = op.history(name, rows)
    if as_json:
        render.emit_json(runs)
    elif runs:
        render.console().print(render.history_table(runs, op.store.now()))
    else:
        render.console().print(f"{name}: no runs recorded yet", markup=False)


@app.command()
@edge
def audit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The service.")],
    rows: RowsOpt = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recent operator changes, newest first: what, who, when, why."""
    op = operator(ctx)
    (name,) = op.resolve([name])
    changes = op.audit(name, rows)
    if as_json:
        render.emit_json(changes)
    elif changes:
        render.console().print(render.audit_table(changes, op.store.now()))
    else:
        render.console().print(f"{name}: no changes recorded", markup=False)


# -- changing ------------------------------------------------------------------------------

CONTROL_HELP = {
    "pause": "Pause: no new run starts on any worker until resume (a run in progress may "
             "finish; --wait returns once it has).",
    "resume": "Resume paused services.",
    "stop": "Stop: like pause, but shown as stopped with your reason; undone by start.",
    "start": "Start stopped services again, clearing their failure count.",
    "reset": "Clear failures and backoff, and undo a stop caused by max_failures.",
}


def control(ctx: typer.Context, action: str, *, names: list[str] | None, every: bool,
            reason: str, wait: bool = False, timeout: float | None = None,
            as_json: bool = False) -> None:
    op = operator(ctx)
    if bool(names) == every:
        raise fail(f"{action}: name one or more services, or give --all", EXIT_USAGE)
    check_reason(reason)  # before anything reads or changes Redis
    targets = op.resolve(names or [], every=every)
    changes = op.control(targets, action, reason)
    report: dict[str, Any] = {"changes": changes}
    busy: dict[str, list[Any]] = {}
    if wait:
        limit = timeout if timeout is not None else op.settings.wait_timeout_seconds
        started = time.monotonic()
        try:
            busy = op.wait_idle(targets, limit)
        except StateCorruptError as exc:
            # The change stands (it was the point, and it is audited); only the wait failed.
            raise fail(f"{action} done, but --wait cannot tell whether a run is in progress: "
                       f"{exc}", EXIT_FAILED) from None
        report["wait"] = {"idle": not busy, "seconds": round(time.monotonic() - started, 3),
                          "in_progress": {name: [lease.token for lease in leases]
                                          for name, leases in busy.items()}}
    if as_json:
        render.emit_json(report)
    else:
        render.print_changes(changes, op.store.now())
        if wait and not busy:
            render.console().print(f"no run in progress ({report['wait']['seconds']}s)")
    if busy:
        still = "; ".join(f"{name}: {render.lease_text(leases, op.store.now())}"
                          for name, leases in busy.items())
        raise fail(f"--wait timed out; still in progress: {still}", EXIT_FAILED)


def waiting_command(action: str) -> Callable[..., None]:
    """pause and stop keep new runs from starting, so only they can wait for the last one."""

    def command(ctx: typer.Context, names: NamesArg = None, *, every: AllOpt = False,
                reason: ReasonOpt = "", wait: WaitOpt = False, timeout: TimeoutOpt = None,
                as_json: JsonOpt = False) -> None:
        control(ctx, action, names=names, every=every, reason=reason, wait=wait,
                timeout=timeout, as_json=as_json)

    return command


def plain_command(action: str) -> Callable[..., None]:
    def command(ctx: typer.Context, names: NamesArg = None, *, every: AllOpt = False,
                reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
        control(ctx, action, names=names, every=every, reason=reason, as_json=as_json)

    return command


for _action in ("pause", "resume", "stop", "start", "reset"):
    _factory = waiting_command if _action in ("pause", "stop") else plain_command
    _fn = edge(_factory(_action))
    _fn.__name__ = _action
    _fn.__doc__ = CONTROL_HELP[_action]
    app.command(_action)(_fn)


@app.command("acknowledge-loss")
@edge
def acknowledge_loss(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """After Redis lost its data: the services are as they should be. Clears the loss from
    svc status and the metrics; services still held run again as running."""
    op = operator(ctx)
    before = op.store.acknowledge_loss(actor())
    if as_json:
        render.emit_json({"acknowledged": bool(before.get("lost_at")), "epoch": before})
    elif before.get("lost_at"):
        render.console().print(f"loss of {before.get('lost_epoch', '?')} acknowledged",
                               markup=False)
    else:
        render.console().print("no data loss recorded", markup=False)


@app.command()
@edge
def trigger(ctx: typer.Context, names: Annotated[list[str], typer.Argument(
        help="Service names.", show_default=False)], as_json: JsonOpt = False) -> None:
    """Run now: send a tick outside the schedule; the worker's guard still decides.

    A paused, stopped, backing-off or busy service does not run."""
    op = operator(ctx)
    targets = op.resolve(names)
    _, found = op.statuses(targets)  # also proves Redis answers before the broker is tried
    sent = op.trigger(targets)
    report = [{"service": s.name, "task_id": sent[s.name], "state": s.condition,
               "will_run": s.condition == "running" and not s.leases} for s in found]
    if as_json:
        render.emit_json(report)
        return
    out = render.console()
    for row, s in zip(report, found, strict=True):
        note = "" if row["will_run"] else (
            f"; note: it is {render.condition_text(s).plain}, so the guard will refuse it")
        out.print(f"sent {row['service']} (task {row['task_id']}){note}", markup=False)


app.command("schedule")(schedule)
app.command("forget")(forget)
app.command("health")(health)
app.command("workers")(workers)
app.command("web")(web)


# -- serving and running -------------------------------------------------------------------


@app.command()
@edge
def metrics(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Port (default SVC_METRICS_PORT; 0: any free port).")] = None,
    address: Annotated[str | None, typer.Option(
        help="Address (default SVC_METRICS_ADDRESS).")] = None,
    once: Annotated[bool, typer.Option(
        "--once", help="Print one scrape to stdout and exit.")] = False,
) -> None:
    """Serve Prometheus metrics for every service, read from Redis at each scrape."""
    from worker.metrics import exposition, serve
    from worker.watch import BackgroundWatch

    op = operator(ctx)
    if once:
        sys.stdout.write(exposition(op))
        return
    server = serve(op, address or op.settings.metrics_address,
                   port if port is not None else op.settings.metrics_port)
    host, bound = str(server.server_address[0]), server.server_address[1]
    render.console().print(f"serving metrics on http://{host}:{bound}/metrics "
                           f"(Redis {redact_url(op.settings.redis_url)}); Ctrl-C stops",
                           markup=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        # It also watches health: with every worker gone, it is what notifies.
        with BackgroundWatch(op.settings, "metrics"):
            while not stop.wait(1):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


@app.command()
@edge
def migrate(ctx: typer.Context, revision: Annotated[str, typer.Option(
        help="Alembic revision to upgrade to.")] = "head") -> None:
    """Upgrade the database (DATABASE_URL) to the latest schema."""
    from services.database.migrate import current, upgrade

    url = operator(ctx).settings.database_url
    upgrade(url, revision)
    render.console().print(f"database {redact_url(url)} is at revision {current(url)}",
                           markup=False)


@app.command()
@edge
def up(ctx: typer.Context) -> None:
    """Start the whole stack here (Redis if needed, worker, Beat, Flower), like make run.

    Ctrl-C stops everything."""
    from services.redis_client import connect_redis
    from worker.stack import main as stack_main

    # A REDIS_URL nobody can parse is refused here, in one line, before anything starts.
    connect_redis(operator(ctx).settings.redis_url).close()
    code = stack_main()
    raise typer.Exit(code if isinstance(code, int) else 0)


def main() -> None:
    """The ``svc`` console script."""
    # Like ``celery -A``, find SVC_PACKAGES in the directory the command runs in: a console
    # script's sys.path holds only its own directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app()
