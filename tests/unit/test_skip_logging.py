"""A refused run is logged once per change of verdict, not at every tick: a service paused
for a week must not write an INFO line per tick for a week. Real Redis, the worker's own
path (runner.run_once)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.AbstractService import AbstractService
from services.lease import LeaseKeeper
from services.runner import RunReport, run_once
from services.state import StateStore

TICKS = 5


class Quiet(AbstractService):
    name = "quiet"
    interval_seconds = 1.0

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


@pytest.fixture
def quiet(store: StateStore) -> Quiet:
    return Quiet(state=store)


def trigger(service: Quiet) -> RunReport:
    """One run through the worker's path; a trigger, so the duplicate window never refuses."""
    keeper = LeaseKeeper(service.state)
    try:
        return asyncio.run(run_once(service, "trigger", keeper))
    finally:
        keeper.close()


def refusals(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "services.runner" and r.levelno == level
            and r.getMessage().startswith("not running")]


def control(service: Quiet, action: str, reason: str = "") -> None:
    service.state.control(service.name, action, who="test", reason=reason)


def test_a_paused_service_says_so_once_per_pause(quiet: Quiet, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="services.runner")
    control(quiet, "pause")
    assert [trigger(quiet).verdict for _ in range(TICKS)] == ["paused"] * TICKS
    assert refusals(caplog, logging.INFO) == ["not running: paused"]
    assert len(refusals(caplog, logging.DEBUG)) == TICKS - 1  # still there when asked for

    control(quiet, "resume")
    assert trigger(quiet).verdict == "go"
    control(quiet, "pause")
    assert [trigger(quiet).verdict for _ in range(TICKS)] == ["paused"] * TICKS
    assert refusals(caplog, logging.INFO) == ["not running: paused"] * 2


def test_another_verdict_or_cause_is_news(quiet: Quiet, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="services.runner")
    control(quiet, "pause")
    trigger(quiet)
    control(quiet, "stop", "disk full")
    trigger(quiet)
    trigger(quiet)
    control(quiet, "stop", "migrating")  # a new reason, no run in between
    trigger(quiet)
    control(quiet, "start")
    control(quiet, "pause")  # paused again, this time after stopped: news as well
    trigger(quiet)
    assert refusals(caplog, logging.INFO) == [
        "not running: paused", "not running: stopped (stopped by test: disk full)",
        "not running: stopped (stopped by test: migrating)", "not running: paused"]


def test_a_corrupt_flag_is_an_error_once(quiet: Quiet, store: StateStore, redis_client,
                                         caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="services.runner")
    redis_client.hset(store.keys.state(quiet.name), "paused", "maybe")
    assert [trigger(quiet).verdict for _ in range(3)] == ["corrupt"] * 3
    assert len(refusals(caplog, logging.ERROR)) == 1
    assert "paused=maybe" in refusals(caplog, logging.ERROR)[0]
    assert len(refusals(caplog, logging.DEBUG)) == 2


def test_each_service_is_remembered_apart(quiet: Quiet, store: StateStore,
                                                    caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="services.runner")
    other = Quiet(state=store, name="other")
    control(quiet, "pause")
    control(other, "pause")
    for _ in range(3):
        trigger(quiet)
        trigger(other)
    assert refusals(caplog, logging.INFO) == ["not running: paused"] * 2
