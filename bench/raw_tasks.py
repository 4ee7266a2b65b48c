"""The raw Celery no-op task the wrapper is compared with, on the worker's own app.

Loaded into the benchmark's worker with ``celery -A worker worker -I bench.raw_tasks``; the
worker's code is unchanged. Its only work is counting itself done (``bench.counters``),
exactly what the no-op service's ``update()`` does.

With ``BENCH_BREAKDOWN=1`` (``overhead.py --breakdown``) this module also times, in every
worker process, ``ProcessRuntime.run`` (the whole wrapper inside the task body) and the
guard and finish calls of the run path, ``services.runs.RunLedger`` (wall clock, and CPU of
the calling thread), so the bench can split the wrapper's cost per run without a
profiler's distortion. It costs a few microseconds per run, so the reference figures are
taken without it.

With ``BENCH_HOLLOW=1`` (``overhead.py --hollow``) ``ProcessRuntime.run`` is replaced by a
canned report of a run that went and succeeded, counted as ``update()`` counts itself: no
guard, no ``update()``, no record. What the wrapped arm still costs over the raw one is the
task around the run (the message check of a service call, the log context, ``execute``).

With ``BENCH_FLOOR=1`` (``overhead.py --floor``) the canned report comes after one PING on
the state store's client: the least any guard that hears from Redis before ``update()`` can
cost. Wrapped / raw is then the ceiling of every design with one round trip before the run.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from time import perf_counter_ns, thread_time_ns
from typing import Any

from bench import counters
from services.fields import Kind, Outcome, Verdict
from services.runner import RunReport
from services.runs import Decision, RunLedger, RunTicket
from services.schedule import TickSlot
from worker.celery_app import app
from worker.runtime import ProcessRuntime


@app.task(name=counters.RAW_TASK, ignore_result=True, acks_late=False)
def raw_noop() -> None:
    counters.bump(counters.RAW)


def _timed(fn: Callable[..., Any], field: int, cpu_field: int) -> Callable[..., Any]:
    """``fn``, adding its wall-clock and its thread's CPU nanoseconds to two counters."""

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start, start_cpu = perf_counter_ns(), thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            counters.bump(cpu_field, thread_time_ns() - start_cpu)
            counters.bump(field, perf_counter_ns() - start)

    return timed


if os.environ.get("BENCH_BREAKDOWN") == "1":
    ProcessRuntime.run = _timed(  # type: ignore[method-assign]
        ProcessRuntime.run, counters.RUN_NS, counters.RUN_CPU_NS
    )
    RunLedger.begin = _timed(  # type: ignore[method-assign]
        RunLedger.begin, counters.BEGIN_NS, counters.SCRIPTS_CPU_NS
    )
    RunLedger.finish = _timed(  # type: ignore[method-assign]
        RunLedger.finish, counters.FINISH_NS, counters.SCRIPTS_CPU_NS
    )


def _hollow_run(
    self: ProcessRuntime, name: str, kind: Kind, slot: TickSlot | None = None
) -> RunReport:
    counters.bump(counters.WRAPPED)
    ticket = RunTicket(name, f"hollow@{os.getpid()}", 1, 0, kind)
    return RunReport(Decision(Verdict.GO, "1", 0, ticket=ticket), Outcome.OK)


if os.environ.get("BENCH_HOLLOW") == "1":
    ProcessRuntime.run = _hollow_run  # type: ignore[method-assign]


def _floor_run(
    self: ProcessRuntime, name: str, kind: Kind, slot: TickSlot | None = None
) -> RunReport:
    self.store.client.ping()  # one round trip, the smallest there is
    return _hollow_run(self, name, kind, slot)


if os.environ.get("BENCH_FLOOR") == "1":
    ProcessRuntime.run = _floor_run  # type: ignore[method-assign]
