"""One Celery task per service, ``svc.<name>``: the single sync edge around the async core.

A tick runs the guard, ``update()`` and the outcome script (``services.runner.run_once``) on
the process's persistent loop. A failed run is retried once by Celery after
``retry_delay_seconds`` (shown as RETRY in Flower), then reported as FAILURE.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from beat_schedule import MIN_TICK_EXPIRES_SECONDS, task_name, tick_expires
from services import logs
from services.errors import ServiceRunFailed, StateUnavailableError
from services.fields import REQUESTED_KINDS, Kind, Verdict
from services.outage import Outage
from services.registry import Registry
from services.runner import RunReport
from services.schedule import TickSlot
from worker import runtime

logger = logging.getLogger(__name__)

# Celery's countdown runs on the worker's clock, retry_at on Redis's: a little slack keeps a
# retry from arriving a hair before its backoff ends and being refused.
RETRY_SLACK_SECONDS = 0.25
# A catch-up tick (a replayed missed slot) that finds the service's previous run still holding
# its lease waits for it instead of being dropped, as a tick would: `catchup = "all"` means
# each missed slot runs. Asked again every second, for up to five minutes.
CATCHUP_WAIT_SECONDS = 1.0
CATCHUP_MAX_WAITS = 300
_state_outage = Outage(logger, "service state (Redis)")


def register_tasks(app: Celery, registry: Registry) -> None:
    for name in registry.names():
        app.task(name=task_name(name), bind=True, ignore_result=True, max_retries=1,
                 acks_late=False, shared=False)(_task_body(registry, name))


def _task_body(registry: Registry, name: str) -> Any:
    def run_service(task: Task, kind: str = "tick", slot: int | None = None,
                    next_slot: int | None = None, more_slots: list[int] | None = None) -> str:
        if more_slots and slot is not None:  # a catch-up of several missed slots, in order
            return catch_up(task, registry, name, [slot, *more_slots])
        at = None if slot is None else TickSlot(slot, next_slot)
        return execute(task, registry, name, kind, at)

    identifier = name.replace(".", "_").replace("-", "_")
    run_service.__name__ = run_service.__qualname__ = f"run_{identifier}"
    run_service.__doc__ = f"Run service {name!r} once, if its guard allows."
    return run_service


def execute(task: Task, registry: Registry, name: str, requested: str,
            slot: TickSlot | None = None) -> str:
    if requested not in REQUESTED_KINDS:
        raise ValueError(f"task {task.name}: kind must be one of {', '.join(REQUESTED_KINDS)}, "
                         f"got {requested!r}")
    kind = Kind(requested)
    if task.request.retries and kind is not Kind.CATCHUP:
        kind = Kind.RETRY
    try:
        report = runtime.current(registry).run(name, kind, slot)
    except StateUnavailableError as exc:
        # Logged once per outage (then a reminder every 30 s), not a traceback per tick;
        # the next tick after Redis is back runs normally.
        with logs.bound(name):
            _state_outage.failed(exc)
        return f"skipped: state unavailable ({exc})"
    _state_outage.recovered()
    if report.ticket is not None:
        logs.note_run_id(report.ticket.run_id)
    if report.verdict is Verdict.LEASED and kind is Kind.CATCHUP:
        _wait_for_lease(task, [slot.at_ms] if slot is not None else [])
    if report.failed:
        _retry_or_fail(task, registry, name, report)
    return report.summary()


def catch_up(task: Task, registry: Registry, name: str, slots: list[int]) -> str:
    """Run missed slots one after another in this task (``catchup = "all"``): sent as one
    message, so that no two of them race for the lease on two pool processes and the slot
    order holds. A slot that finds the lease held waits (the task is retried with the slots
    left); a failed run ends the catch-up (the service backs off anyway)."""
    summaries = []
    for index, slot in enumerate(slots):
        try:
            report = runtime.current(registry).run(name, Kind.CATCHUP, TickSlot(slot))
        except StateUnavailableError as exc:
            with logs.bound(name):
                _state_outage.failed(exc)
            return f"skipped: state unavailable ({exc})"
        _state_outage.recovered()
        if report.verdict is Verdict.LEASED:
            _wait_for_lease(task, slots[index:])
        if report.failed:
            _retry_or_fail(task, registry, name, report)
        summaries.append(report.summary())
    return "; ".join(summaries)


def _wait_for_lease(task: Task, slots: list[int]) -> None:
    """Ask again in a second for the catch-up slots left, up to ``CATCHUP_MAX_WAITS`` times."""
    if task.request.retries >= CATCHUP_MAX_WAITS or not slots:
        return
    raise task.retry(kwargs={"kind": Kind.CATCHUP.value, "slot": slots[0], "more_slots": slots[1:]},
                     countdown=CATCHUP_WAIT_SECONDS, max_retries=CATCHUP_MAX_WAITS,
                     expires=CATCHUP_WAIT_SECONDS + MIN_TICK_EXPIRES_SECONDS)


def _retry_or_fail(task: Task, registry: Registry, name: str, report: RunReport) -> None:
    assert report.ticket is not None
    run_id = report.ticket.run_id
    error = report.failure or repr(report.error)
    failure = ServiceRunFailed(f"service {name} run {run_id} failed ({report.outcome}): {error}")
    result = report.result
    # A failure that overlapped one already counted (concurrent runs, their retries) gets no
    # retry of its own: one retry per backoff window, not a storm of them. Nor does a run
    # whose record failed (Redis away at its hard limit): nothing says it may be retried.
    if (result is None or result.stopped or result.superseded or not result.counted
            or task.request.retries >= (task.max_retries or 0)):
        raise failure
    config = registry.get(name).config
    countdown = config.retry_delay_seconds + RETRY_SLACK_SECONDS
    with logs.bound(name, run_id):
        logger.info("retrying once in %.2fs", countdown)
    raise task.retry(exc=failure, countdown=countdown, kwargs={"kind": Kind.RETRY.value},
                     expires=countdown + tick_expires(config))
