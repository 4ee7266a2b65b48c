"""The async core: one run of one service, guarded, leased, recorded. Written once, used by
``AbstractService.run_service_loop()`` and by the Celery task (the single sync edge)."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services import logs
from services.config import tick_gap
from services.lease import LeaseKeeper
from services.state import Decision, FinishResult, RunTicket

if TYPE_CHECKING:
    from services.AbstractService import AbstractService

logger = logging.getLogger("services.runner")

KINDS = ("tick", "loop", "retry", "trigger")


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

    def summary(self) -> str:
        """One line, the Celery task's result as Flower shows it: ``ran <run id>: ok`` or
        ``skipped: paused``. A string, because Celery reprs every result into its event."""
        if self.ticket is None:
            detail = f" ({self.decision.detail})" if self.decision.detail else ""
            return f"skipped: {self.verdict}{detail}"
        outcome = "error" if self.failed else "ok"
        if self.result is not None and self.result.stopped:
            outcome += ", stopped at max_failures"
        return f"ran {self.ticket.run_id}: {outcome}"


def describe(error: BaseException) -> str:
    """One line for Redis: the exception's type and message, then where it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"[:2000]


async def run_once(service: AbstractService, kind: str, keeper: LeaseKeeper) -> RunReport:
    """Guard, run ``update()`` on this loop, record the outcome. Never raises for a failing
    ``update()``: the failure is recorded and reported."""
    store = service.state
    with logs.bound(service.name):
        decision = store.begin(
            service.name, kind=kind, max_runs=service.max_concurrent_runs,
            tick_gap_seconds=tick_gap(service.interval_seconds))
        _log_decision(store.keys.state(service.name), decision)
        if decision.ticket is None:
            return RunReport(decision)
    ticket = decision.ticket
    with logs.bound(service.name, ticket.run_id):
        keeper.track(ticket)
        service._begin_run(ticket)
        error: BaseException | None = None
        try:
            await service.update()
        except BaseException as exc:
            error = exc
            if isinstance(exc, Exception):
                logger.error("update() failed: %s", describe(exc), exc_info=exc)
            else:
                logger.warning("update() interrupted by %s", type(exc).__name__)
        finally:
            keeper.untrack(ticket)
        if error is not None and not isinstance(error, Exception):
            # Shutdown (SystemExit, KeyboardInterrupt, CancelledError) is not the service's
            # failure: free the lease, note it in the history, then let the shutdown go on.
            try:
                store.finish(ticket, error=describe(error), max_failures=service.max_failures,
                             retry_delay_seconds=service.retry_delay_seconds, interrupted=True)
            finally:
                service._end_run(ticket)
            raise error
        try:
            result = service._finish_run(ticket, error)
        finally:
            service._end_run(ticket)
        _log_outcome(service, ticket, result)
    return RunReport(decision, error, result)


def _log_decision(key: str, decision: Decision) -> None:
    for warning in decision.warnings:
        logger.warning("%s holds unreadable %s (expected a number); treated as unset",
                       key, warning)
    if decision.verdict == "corrupt":
        logger.error("not running: %s holds %s, which is not a flag (expected 1 or 0); fix it "
                     "with HSET", key, decision.detail)
    elif not decision.go:
        logger.info("not running: %s%s", decision.verdict,
                    f" ({decision.detail})" if decision.detail else "")


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
