"""``run_service_loop()``: a service run by itself, without Celery, through the same runner
(and so the same guard, lease and record) as the workers, on the same Redis state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from services import shutdown
from services.errors import StateCorruptError, StateUnavailableError
from services.fields import Kind, Verdict
from services.lease import LeaseKeeper
from services.runner import Runnable, RunReport, run_once
from services.settings import get_settings

logger = logging.getLogger("services.AbstractService")


class LoopService(Runnable, Protocol):
    def cleanup(self) -> None: ...


async def run_until_stopped(service: LoopService, stop: asyncio.Event) -> None:
    """Run ``update()`` every ``interval_seconds`` until ``stop`` is set or the service is
    stopped (by an operator or ``max_failures``); then ``cleanup()``."""
    keeper = LeaseKeeper(service.state,
                         grace_seconds=get_settings().hard_limit_grace_seconds)
    shutdown.observe_signals()
    kind = Kind.LOOP
    logger.info("%s: loop started (every %ss)", service.name, service.interval_seconds)
    try:
        while not stop.is_set():
            try:
                report = await run_once(service, kind, keeper)
            except (StateUnavailableError, StateCorruptError) as exc:
                # At least a second apart, so a zero retry delay cannot flood the log.
                pause = max(service.retry_delay_seconds, 1.0)
                logger.error("%s: %s; trying again in %ss", service.name, exc, pause)
                await _wait(stop, pause)
                continue
            kind, wait = next_step(service, report)
            if wait is None:
                break
            await _wait(stop, wait)
    finally:
        keeper.close()
        service.cleanup()
        logger.info("%s: loop ended", service.name)


def next_step(service: Runnable, report: RunReport) -> tuple[Kind, float | None]:
    """What the loop does after an attempt: the next kind of run and how long to wait
    (None: end the loop)."""
    stopped_now = report.result is not None and report.result.stopped
    if report.verdict is Verdict.STOPPED or stopped_now:
        logger.info("%s is stopped: %s", service.name,
                    "max_failures" if stopped_now else report.decision.detail)
        return Kind.LOOP, None
    if report.result is not None and report.failed:
        return Kind.RETRY, service.retry_delay_seconds
    retry_at = report.decision.retry_at
    if retry_at is not None:  # backing off after a failure recorded elsewhere
        # Ask again at least every retry delay (or interval), however far off retry_at is.
        return Kind.RETRY, min(max(0.0, retry_at - report.decision.now_ms / 1000),
                               max(service.retry_delay_seconds, service.interval_seconds))
    return Kind.LOOP, service.interval_seconds


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
