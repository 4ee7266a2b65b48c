"""The async core: one run of one service, guarded, leased, recorded. Written once, used by
``AbstractService.run_service_loop()`` and by the Celery task (the single sync edge)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services import logs, shutdown
from services.errors import RunTimedOut
from services.fields import ERROR, INTERRUPTED, OK, TIMEOUT
from services.lease import LeaseKeeper
from services.schedule import TickSlot, tick_gap
from services.state import Decision, FinishResult, RunTicket

if TYPE_CHECKING:
    from services.AbstractService import AbstractService

logger = logging.getLogger("services.runner")

# catchup: a Beat tick for a slot missed while no Beat ran (docs/scheduling.md).
KINDS = ("tick", "catchup", "loop", "retry", "trigger")
# How long the runner waits for the keeper thread to record a run it took at the hard limit.
HARD_LIMIT_RECORD_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class RunReport:
    """What happened to one attempt: the guard's decision and, if it ran, how it ended."""

    decision: Decision
    error: BaseException | None = None
    result: FinishResult | None = None

    @property
    def verdict(self) -> str:
        return self.decision.verdict

    @property
    def ticket(self) -> RunTicket | None:
        return self.decision.ticket

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.ticket is not None and self.ticket.error is not None)

    @property
    def outcome(self) -> str | None:
        """ok | error | timeout for a run that ended; None when the guard refused it."""
        if self.ticket is None:
            return None
        if self.ticket.outcome == OK:
            return ERROR if self.failed else OK  # _handle_failure() marked it failed
        return self.ticket.outcome

    def summary(self) -> str:
        """One line, the Celery task's result as Flower shows it: ``ran <run id>: ok`` or
        ``skipped: paused``. A string, because Celery reprs every result into its event."""
        if self.ticket is None:
            detail = f" ({self.decision.detail})" if self.decision.detail else ""
            return f"skipped: {self.verdict}{detail}"
        outcome = self.outcome or ""
        if self.result is not None and self.result.stopped:
            outcome += ", stopped at max_failures"
        return f"ran {self.ticket.run_id}: {outcome}"


def describe(error: BaseException) -> str:
    """One line for Redis: the exception's type and message, then where it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"[:2000]


async def run_once(service: AbstractService, kind: str, keeper: LeaseKeeper,
                   limit_errors: tuple[type[BaseException], ...] = (),
                   slot: TickSlot | None = None) -> RunReport:
    """Guard, run ``update()`` on this loop under its time limits, record the outcome. Never
    raises for a failing ``update()``: the failure is recorded and reported. Raises only for
    the process's own shutdown (after recording the run as ``interrupted``).

    ``limit_errors``: exceptions a host raises for its own time limit (Celery's
    ``SoftTimeLimitExceeded``): such a run is a ``timeout`` too. ``slot``: where a Beat tick
    sits in the schedule; its slots, not the service's own interval, make the duplicate
    window."""
    store = service.state
    with logs.bound(service.name):
        decision = store.begin(
            service.name, kind=kind, max_runs=service.max_concurrent_runs,
            tick_gap_seconds=tick_gap(service.interval_seconds),
            cooldown_seconds=service.stop_cooldown_seconds,
            slot_ms=None if slot is None else slot.at_ms,
            next_slot_ms=None if slot is None else slot.next_ms)
        _log_decision(store.keys.state(service.name), decision)
        if decision.ticket is None:
            return RunReport(decision)
    ticket = decision.ticket
    with logs.bound(service.name, ticket.run_id):
        keeper.track(ticket, service.timeout_seconds + keeper.grace,
                     functools.partial(_hard_limit, service, keeper))
        service._begin_run(ticket)
        try:
            outcome, error = await _run_update(service, ticket, limit_errors)
        finally:
            keeper.untrack(ticket)
        if not ticket.claim():
            # The lease keeper got there first: past the hard limit it recorded the run as a
            # timeout (and in a pool process is ending it). That record is the run's one.
            ticket.recorded.wait(HARD_LIMIT_RECORD_WAIT_SECONDS)
            service._end_run(ticket)
            return RunReport(decision, error, ticket.result)
        ticket.outcome = outcome
        _log_end(outcome, error)
        if outcome == INTERRUPTED:
            try:
                store.finish(ticket, error=describe(error), outcome=INTERRUPTED,
                             max_failures=service.max_failures,
                             retry_delay_seconds=service.retry_delay_seconds)
            finally:
                service._end_run(ticket)
            raise error  # type: ignore[misc]  # the shutdown goes on
        try:
            result = service._finish_run(ticket, error)
        finally:
            service._end_run(ticket)
        _log_outcome(service, ticket, result)
    return RunReport(decision, error, result)


async def _run_update(service: AbstractService, ticket: RunTicket,
                      limit_errors: tuple[type[BaseException], ...]
                      ) -> tuple[str, BaseException | None]:
    """Await ``update()`` under its soft limit; how it ended, and with what."""
    limit = asyncio.timeout(service.timeout_seconds)
    ticket.expire = limit.reschedule  # a host's own limit can end the run early (see worker)
    try:
        async with limit:
            await service.update()
    except BaseException as exc:
        if limit.expired() and not isinstance(exc, TimeoutError | asyncio.CancelledError):
            # update() turned the cancellation into an error of its own: still the limit.
            return TIMEOUT, RunTimedOut(
                f"update() ran past timeout_seconds={service.timeout_seconds:g} and was "
                f"cancelled; it then raised {describe(exc)}")
        if ticket.expired_by and isinstance(exc, TimeoutError):
            return TIMEOUT, RunTimedOut(f"update() was cancelled by {ticket.expired_by}")
        return _classify(exc, limit, limit_errors, service.timeout_seconds)
    finally:
        ticket.expire = None
    if limit.expired():  # update() swallowed the cancellation and returned late
        return TIMEOUT, RunTimedOut(
            f"update() ran past timeout_seconds={service.timeout_seconds:g} and ignored the "
            "cancellation")
    return OK, None


def _classify(exc: BaseException, limit: asyncio.Timeout,
              limit_errors: tuple[type[BaseException], ...],
              timeout_seconds: float) -> tuple[str, BaseException]:
    """What an exception out of ``update()`` means for the run's outcome."""
    if isinstance(exc, TimeoutError) and limit.expired():
        return TIMEOUT, RunTimedOut(
            f"update() ran past timeout_seconds={timeout_seconds:g} and was cancelled")
    if isinstance(exc, limit_errors):
        return TIMEOUT, exc
    if isinstance(exc, Exception):
        return ERROR, exc
    if isinstance(exc, asyncio.CancelledError):
        # Cancelled from outside (the standalone loop's Ctrl-C, a host shutting down), or a
        # cancelled inner task that leaked out of update(), which is update()'s own failure.
        task = asyncio.current_task()
        return (INTERRUPTED if task is not None and task.cancelling() else ERROR), exc
    # SystemExit, KeyboardInterrupt or a custom BaseException: the process's own shutdown
    # only if it is shutting down; otherwise user code raised it, and it is a failure.
    return (INTERRUPTED if shutdown.requested() else ERROR), exc


def _hard_limit(service: AbstractService, keeper: LeaseKeeper, ticket: RunTicket) -> None:
    """In the lease keeper's thread: the run is past its hard limit, so ``update()`` never
    yielded to be cancelled. Record it as a ``timeout`` (freeing the lease), then let the host
    end the process if it can replace it."""
    if not ticket.claim():
        return  # update() returned just now: the runner records the run itself
    limit = service.timeout_seconds + keeper.grace
    with logs.bound(service.name, ticket.run_id):
        logger.error("update() did not return within its hard limit (%gs: timeout_seconds "
                     "%g + grace %g)", limit, service.timeout_seconds, keeper.grace)
        ticket.outcome = TIMEOUT
        try:
            ticket.result = service.state.finish(
                ticket, outcome=TIMEOUT, max_failures=service.max_failures,
                retry_delay_seconds=service.retry_delay_seconds,
                error=f"RunTimedOut: hard limit: update() did not return within {limit:g}s "
                      "and never yielded to be cancelled (a blocking call)")
        finally:
            # Recorded or not (Redis away: the run then shows as lost once its lease lapses),
            # a blocked pool process is replaced.
            ticket.recorded.set()
            if keeper.on_hard_limit is not None:
                keeper.on_hard_limit(ticket)


def _log_end(outcome: str, error: BaseException | None) -> None:
    if error is None:
        return
    if outcome == INTERRUPTED:
        logger.warning("update() interrupted by the process's shutdown (%s)",
                       type(error).__name__)
    elif outcome == TIMEOUT:
        logger.error("update() timed out: %s", describe(error))
    elif isinstance(error, Exception):
        logger.error("update() failed: %s", describe(error), exc_info=error)
    else:  # SystemExit, KeyboardInterrupt, CancelledError... raised by the service itself
        logger.error("update() failed: it raised %s, which is not this process's shutdown: "
                     "counted as a failure", describe(error), exc_info=error)


def _log_decision(key: str, decision: Decision) -> None:
    """Log why the guard refused a run, once per change of verdict per process.

    A paused or stopped service is refused at every tick, for days, and an INFO line each
    time buried everything else. So the first refusal with a given verdict logs at INFO
    (``corrupt`` at ERROR), the same verdict again only at DEBUG, until this process sees the
    service run or get another verdict. ``leased`` and ``duplicate`` (a run in progress, a
    tick delivered twice) are treated the same way: they are normal, can come at every tick
    of a slow service, and a repeat says nothing new either. The memory is this process's:
    one that never saw the run between two pauses (another process took it) keeps the
    second pause at DEBUG; ``svc audit`` records every pause regardless."""
    for warning in decision.warnings:
        logger.warning("%s holds unreadable %s (expected a number); treated as unset",
                       key, warning)
    changed = _note_verdict(key, None if decision.go else _refusal(decision))
    if decision.go:
        return
    corrupt = decision.verdict == "corrupt"
    level = (logging.ERROR if corrupt else logging.INFO) if changed else logging.DEBUG
    if corrupt:
        logger.log(level, "not running: %s holds %s, which is not a flag (expected 1 or 0); "
                   "fix it with HSET", key, decision.detail)
    else:
        logger.log(level, "not running: %s%s", decision.verdict,
                   f" ({decision.detail})" if decision.detail else "")


# The last refusal each service (by state key, so two prefixes in one process stay apart) got
# in this process; a run removes its entry. Tiny: one short string per refused service. The
# lock covers standalone loops run on threads of their own (each with its event loop); a
# prefork process runs one task at a time, and its parent runs none, so a child starts empty.
_last_refusal: dict[str, str] = {}
_last_refusal_lock = threading.Lock()
# Verdicts whose detail names the cause (the stop reason, the bad flag, when Redis lost its
# data), so a new cause is news. Other details change at every tick (duplicate: the last
# slot; leased: the holders) or only with a run (backoff: retry_at), so the verdict suffices.
_DETAIL_IS_CAUSE = frozenset({"stopped", "corrupt", "held"})


def _refusal(decision: Decision) -> str:
    """What makes two refusals the same news."""
    if decision.verdict in _DETAIL_IS_CAUSE:
        return f"{decision.verdict}: {decision.detail}"
    return decision.verdict


def _note_verdict(key: str, refusal: str | None) -> bool:
    """Remember ``refusal`` (None: the service ran) for ``key``; true when it differs from
    the last one remembered."""
    with _last_refusal_lock:
        previous = _last_refusal.pop(key, None)
        if refusal is not None:
            _last_refusal[key] = refusal
    return refusal != previous


def _log_outcome(service: AbstractService, ticket: RunTicket, result: FinishResult) -> None:
    if result.superseded:
        logger.error("run finished after losing its lease to a newer run; only its history "
                     "entry was written")
    elif result.stopped:
        logger.error("stopped after %d consecutive failures (max_failures=%d)",
                     result.failures, service.max_failures)
    elif ticket.error is not None or result.failures:
        logger.warning("failure %d of %d; retry in %ss", result.failures,
                       service.max_failures, service.retry_delay_seconds)
    else:
        logger.debug("run ok")
