"""The async core: one run of one service, guarded, leased, recorded. Written once, used by
the standalone loop (``services.standalone``) and by the Celery task (the single sync edge).

The runner owns a run from the guard to the record: it records the outcome itself, then tells
the service through its hooks (``_reset_failures``, ``_handle_failure``) with the run already
recorded. It knows services only as ``Runnable``: what it reads and calls of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services import logs, shutdown
from services.errors import RunTimedOut
from services.fields import Kind, Outcome, Verdict
from services.lease import LeaseKeeper, LeaseWatch
from services.runs import Decision, FinishResult, RunTicket
from services.schedule import TickSlot, tick_gap
from services.state import StateStore

logger = logging.getLogger("services.runner")

# How long the runner waits for the keeper thread to record a run it took at the hard limit.
HARD_LIMIT_RECORD_WAIT_SECONDS = 30.0


class RunContext:
    """A run in progress, owned by the runner; the service sees it as ``_current_run``. The
    ticket is the guard's and never changes; the rest is what happens to the run."""

    def __init__(self, ticket: RunTicket) -> None:
        self.ticket = ticket
        self.watch = LeaseWatch()
        """The lease keeper's word on the lease (replaced by the keeper's own on tracking)."""
        self.failure: str | None = None
        """What ``update()`` reported through ``_handle_failure`` before returning."""
        self.result: FinishResult | None = None
        """The record, once the run is recorded."""
        self.expire: Callable[[float | None], None] | None = None
        """While ``update()`` runs: moves its soft limit (``expire(0)`` ends it now)."""
        self.expired_by = ""
        """Who ended the run early through ``expire`` (a host's own time limit), for the
        record."""
        self._claimed = threading.Lock()
        # Held until the keeper's thread recorded the run at its hard limit (see recorded):
        # a lock as a one-shot signal, since an Event (a condition and its lock, built in
        # Python) cost every run several microseconds for a wait that almost never happens.
        self._recorded = threading.Lock()
        self._recorded.acquire()

    @property
    def run_id(self) -> str:
        return self.ticket.run_id

    @property
    def lease_lost(self) -> bool:
        return self.watch.lost

    def claim(self) -> bool:
        """True for the one thread (the runner, or the keeper at the hard limit) that
        records this run."""
        return self._claimed.acquire(blocking=False)

    def mark_recorded(self) -> None:
        """The keeper's thread is done recording the run it claimed (recorded or not)."""
        self._recorded.release()

    def recorded(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``mark_recorded``; true once it happened."""
        return self._recorded.acquire(timeout=timeout)


class Runnable(Protocol):
    """What the runner reads and calls of a service (``AbstractService`` is one). Read-only
    properties, as the runner never sets them: a service class may then give a number as an
    int (``timeout_seconds = 10``)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> StateStore: ...

    @property
    def interval_seconds(self) -> float: ...

    @property
    def max_failures(self) -> int: ...

    @property
    def retry_delay_seconds(self) -> float: ...

    @property
    def max_concurrent_runs(self) -> int: ...

    @property
    def timeout_seconds(self) -> float: ...

    @property
    def stop_cooldown_seconds(self) -> float: ...

    async def update(self) -> None: ...

    def _begin_run(self, run: RunContext) -> None: ...

    def _end_run(self, run: RunContext) -> None: ...

    def _handle_failure(self, error: BaseException) -> FinishResult | None: ...

    def _reset_failures(self) -> FinishResult | None: ...


@dataclass(frozen=True)
class RunReport:
    """What happened to one attempt: the guard's decision and, if it ran, how it ended."""

    decision: Decision
    outcome: Outcome | None = None
    """ok | error | timeout for a run that ended; None when the guard refused it."""
    error: BaseException | None = None
    failure: str | None = None
    """The failure as recorded: the error, or what ``_handle_failure`` reported."""
    result: FinishResult | None = None

    @property
    def verdict(self) -> Verdict:
        return self.decision.verdict

    @property
    def ticket(self) -> RunTicket | None:
        return self.decision.ticket

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def summary(self) -> str:
        """One line, the Celery task's result as Flower shows it: ``ran <run id>: ok`` or
        ``skipped: paused``. A string, because Celery reprs every result into its event."""
        if self.ticket is None:
            detail = f" ({self.decision.detail})" if self.decision.detail else ""
            return f"skipped: {self.verdict}{detail}"
        outcome = str(self.outcome or "")
        if self.result is not None and self.result.stopped:
            outcome += ", stopped at max_failures"
        return f"ran {self.ticket.run_id}: {outcome}"


def describe(error: BaseException) -> str:
    """One line for Redis: the exception's type and message, then where it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"[:2000]


async def run_once(service: Runnable, kind: Kind, keeper: LeaseKeeper,
                   limit_errors: tuple[type[BaseException], ...] = (),
                   slot: TickSlot | None = None) -> RunReport:
    """Guard, run ``update()`` on this loop under its time limits, record the outcome, tell
    the service. Never raises for a failing ``update()``: the failure is recorded and
    reported. Raises only for the process's own shutdown (after recording the run as
    ``interrupted``).

    ``limit_errors``: exceptions a host raises for its own time limit (Celery's
    ``SoftTimeLimitExceeded``): such a run is a ``timeout`` too. ``slot``: where a Beat tick
    sits in the schedule; its slots, not the service's own interval, make the duplicate
    window."""
    store = service.state
    with logs.bound(service.name):
        decision = store.runs.begin(
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
        run = RunContext(ticket)
        run.watch = keeper.track(ticket, service.timeout_seconds + keeper.grace,
                                  functools.partial(_hard_limit, service, keeper, run))
        service._begin_run(run)
        try:
            outcome, error = await _run_update(service, run, limit_errors)
        finally:
            keeper.untrack(ticket)
        if not run.claim():
            # The lease keeper got there first: past the hard limit it recorded the run as a
            # timeout (and in a pool process is ending it). That record is the run's one.
            # Where this process lives on (the solo pool, a standalone loop) the service is
            # told of that timeout too, as of any recorded failure.
            try:
                if run.recorded(HARD_LIMIT_RECORD_WAIT_SECONDS) and run.result:
                    _tell(service, RunTimedOut(run.failure), run.failure)
            finally:
                service._end_run(run)
            return RunReport(decision, Outcome.TIMEOUT, error, run.failure, run.result)
        if outcome is Outcome.OK and run.failure is not None:
            outcome = Outcome.ERROR  # update() reported a failure through _handle_failure()
        failure = run.failure = describe(error) if error is not None else run.failure
        _log_end(outcome, error)
        try:
            run.result = store.runs.finish(
                ticket, outcome=outcome, error=failure, max_failures=service.max_failures,
                retry_delay_seconds=service.retry_delay_seconds, lease_lost=run.lease_lost)
            if outcome is Outcome.INTERRUPTED:
                assert error is not None
                raise error  # the shutdown goes on
            _tell(service, error, failure)
        finally:
            service._end_run(run)
        _log_outcome(service, run.result, failure)
    return RunReport(decision, outcome, error, failure, run.result)


def _tell(service: Runnable, error: BaseException | None, failure: str | None) -> None:
    """The seed's hooks, with the run already recorded: an override may log, alert or clean
    up; what it returns or raises changes nothing of the record."""
    try:
        if failure is None:
            service._reset_failures()
        else:
            service._handle_failure(error if error is not None else RuntimeError(failure))
    except Exception:
        logger.exception("%s raised; the run is recorded regardless",
                         "_reset_failures()" if failure is None else "_handle_failure()")


def record_failure(service: Runnable, error: BaseException) -> FinishResult:
    """A failure reported outside any run: counted as the seed's counter did (backoff, and a
    stop at ``max_failures``)."""
    return service.state.runs.record_outside_run(
        service.name, error=describe(error), max_failures=service.max_failures,
        retry_delay_seconds=service.retry_delay_seconds)


async def _run_update(service: Runnable, run: RunContext,
                      limit_errors: tuple[type[BaseException], ...]
                      ) -> tuple[Outcome, BaseException | None]:
    """Await ``update()`` under its soft limit; how it ended, and with what."""
    limit = asyncio.timeout(service.timeout_seconds)
    run.expire = limit.reschedule  # a host's own limit can end the run early (see worker)
    started = time.monotonic()
    try:
        async with limit:
            await service.update()
    except BaseException as exc:
        if limit.expired() and not isinstance(exc, TimeoutError | asyncio.CancelledError):
            # update() turned the cancellation into an error of its own: still the limit.
            return Outcome.TIMEOUT, RunTimedOut(
                f"update() ran past timeout_seconds={service.timeout_seconds:g} and was "
                f"cancelled; it then raised {describe(exc)}")
        if run.expired_by and isinstance(exc, TimeoutError):
            return Outcome.TIMEOUT, RunTimedOut(f"update() was cancelled by {run.expired_by}")
        return _classify(exc, limit, limit_errors, service.timeout_seconds)
    finally:
        run.expire = None
    if limit.expired():  # update() swallowed the cancellation and returned late
        return Outcome.TIMEOUT, RunTimedOut(
            f"update() ran past timeout_seconds={service.timeout_seconds:g} and ignored the "
            "cancellation")
    took = time.monotonic() - started
    if took > service.timeout_seconds:
        # It blocked the event loop past its limit (a synchronous call), so the limit never
        # got to cancel it; it returned before the hard limit. Still past its time.
        return Outcome.TIMEOUT, RunTimedOut(
            f"update() took {took:.3g}s, past timeout_seconds={service.timeout_seconds:g}: it "
            "blocked the event loop, so it could not be cancelled")
    return Outcome.OK, None


def _classify(exc: BaseException, limit: asyncio.Timeout,
              limit_errors: tuple[type[BaseException], ...],
              timeout_seconds: float) -> tuple[Outcome, BaseException]:
    """What an exception out of ``update()`` means for the run's outcome."""
    if isinstance(exc, TimeoutError) and limit.expired():
        return Outcome.TIMEOUT, RunTimedOut(
            f"update() ran past timeout_seconds={timeout_seconds:g} and was cancelled")
    if isinstance(exc, limit_errors):
        return Outcome.TIMEOUT, exc
    if isinstance(exc, Exception):
        return Outcome.ERROR, exc
    if isinstance(exc, asyncio.CancelledError):
        # Cancelled from outside (the standalone loop's Ctrl-C, a host shutting down), or a
        # cancelled inner task that leaked out of update(), which is update()'s own failure.
        task = asyncio.current_task()
        cancelled = task is not None and task.cancelling()
        return (Outcome.INTERRUPTED if cancelled else Outcome.ERROR), exc
    # SystemExit, KeyboardInterrupt or a custom BaseException: the process's own shutdown
    # only if it is shutting down; otherwise user code raised it, and it is a failure.
    return (Outcome.INTERRUPTED if shutdown.requested() else Outcome.ERROR), exc


def _hard_limit(service: Runnable, keeper: LeaseKeeper, run: RunContext,
                ticket: RunTicket) -> None:
    """In the lease keeper's thread: the run is past its hard limit, so ``update()`` never
    yielded to be cancelled. Record it as a ``timeout`` (freeing the lease), then let the host
    end the process if it can replace it."""
    if not run.claim():
        return  # update() returned just now: the runner records the run itself
    limit = service.timeout_seconds + keeper.grace
    with logs.bound(service.name, ticket.run_id):
        logger.error("update() did not return within its hard limit (%gs: timeout_seconds "
                     "%g + grace %g)", limit, service.timeout_seconds, keeper.grace)
        run.failure = (f"RunTimedOut: hard limit: update() did not return within {limit:g}s "
                       "and never yielded to be cancelled (a blocking call)")
        try:
            run.result = service.state.runs.finish(
                ticket, outcome=Outcome.TIMEOUT, error=run.failure,
                max_failures=service.max_failures,
                retry_delay_seconds=service.retry_delay_seconds)
        finally:
            # Recorded or not (Redis away: the run then shows as lost once its lease lapses),
            # a blocked pool process is replaced.
            run.mark_recorded()
            if keeper.on_hard_limit is not None:
                keeper.on_hard_limit(ticket)


def _log_end(outcome: Outcome, error: BaseException | None) -> None:
    if error is None:
        return
    if outcome is Outcome.INTERRUPTED:
        logger.warning("update() interrupted by the process's shutdown (%s)",
                       type(error).__name__)
    elif outcome is Outcome.TIMEOUT:
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
    changed = _note_verdict(key, None if decision.go else decision.cause)
    if decision.go:
        return
    corrupt = decision.verdict is Verdict.CORRUPT
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
def _note_verdict(key: str, refusal: str | None) -> bool:
    """Remember ``refusal`` (None: the service ran) for ``key``; true when it differs from
    the last one remembered."""
    with _last_refusal_lock:
        previous = _last_refusal.pop(key, None)
        if refusal is not None:
            _last_refusal[key] = refusal
    return refusal != previous


def _log_outcome(service: Runnable, result: FinishResult, failure: str | None) -> None:
    if result.superseded:
        logger.error("run finished after losing its lease to a newer run; only its history "
                     "entry was written")
    elif result.stopped:
        logger.error("stopped after %d consecutive failures (max_failures=%d)",
                     result.failures, service.max_failures)
    elif failure is not None or result.failures:
        logger.warning("failure %d of %d; retry in %ss", result.failures,
                       service.max_failures, service.retry_delay_seconds)
    else:
        logger.debug("run ok")
