"""Runs that block the event loop (a synchronous call in ``update()``): past the soft limit
they are a timeout even when they return before the hard limit, and past the hard limit the
service still hears of the failure where its process lives on."""

from __future__ import annotations

import asyncio
import time

from services.AbstractService import AbstractService
from services.fields import Kind, Outcome
from services.lease import LeaseKeeper
from services.runner import RunReport, run_once
from services.runs import FinishResult
from services.state import StateStore


class Blocking(AbstractService):
    interval_seconds = 60.0
    timeout_seconds = 0.3

    def _configure_service(self) -> None:
        self.block_for = 0.0
        self.told: list[str] = []

    async def update(self) -> None:
        time.sleep(self.block_for)  # noqa: ASYNC251 - blocking on purpose, as sync I/O does

    def _handle_failure(self, error: BaseException) -> FinishResult | None:
        self.told.append(str(error))
        return super()._handle_failure(error)


def attempt(service: Blocking, grace: float) -> RunReport:
    keeper = LeaseKeeper(service.state, grace_seconds=grace)
    try:
        return asyncio.run(run_once(service, Kind.TRIGGER, keeper))
    finally:
        keeper.close()


def test_a_run_that_blocked_past_its_soft_limit_is_a_timeout(store: StateStore) -> None:
    service = Blocking(state=store, name="blocker")
    service.block_for = 0.6  # past timeout_seconds (0.3), well before the hard limit (10.3)
    report = attempt(service, grace=10.0)
    assert report.outcome is Outcome.TIMEOUT, report
    assert "blocked the event loop" in (report.failure or "")
    assert store.history("blocker", 1)[0]["outcome"] == "timeout"
    assert service.told, "the service was told of the failure"


def test_a_run_past_its_hard_limit_is_told_where_the_process_lives_on(
        store: StateStore) -> None:
    service = Blocking(state=store, name="hung")
    service.block_for = 1.2  # past the hard limit (0.3 + 0.4): the keeper thread records it
    report = attempt(service, grace=0.4)
    assert report.outcome is Outcome.TIMEOUT and report.result is not None, report
    assert "hard limit" in (report.failure or "")
    assert [row["outcome"] for row in store.history("hung", 5)] == ["timeout"]
    assert len(service.told) == 1 and "hard limit" in service.told[0]
