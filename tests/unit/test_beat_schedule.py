"""Beat's schedule from the registry: one entry per service, ``svc.<name>`` every
``interval_seconds``, with ``expires`` so that a tick nobody took in time is dropped."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import ClassVar

import pytest
from celery import Celery
from celery.beat import ScheduleEntry

from beat_schedule import (
    MIN_TICK_EXPIRES_SECONDS,
    build_routes,
    build_schedule,
    service_queues,
    task_name,
    tick_expires,
    tick_options,
)
from services.AbstractService import AbstractService
from services.config import resolve_config
from services.registry import Registry, ServiceSpec


class Hourly(AbstractService):
    name = "hourly"
    interval_seconds = 3600.0

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


class Quick(AbstractService):
    name = "quick"
    interval_seconds = 0.25

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


class Queued(AbstractService):
    name = "queued.reports"
    interval_seconds = 10.0
    queue: ClassVar[str | None] = "reports"

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


def registry_of(*classes: type[AbstractService], environ: dict[str, str] | None = None) -> Registry:
    return Registry(specs={
        cls.name: ServiceSpec(cls, resolve_config(cls, environ=environ or {}), "test")
        for cls in classes if cls.name})


def test_one_entry_per_service_named_after_its_task() -> None:
    schedule = build_schedule(registry_of(Hourly, Quick, Queued))
    assert sorted(schedule) == ["svc.hourly", "svc.queued.reports", "svc.quick"]
    for key, entry in schedule.items():
        assert entry["task"] == key
        assert entry["kwargs"] == {"kind": "tick"}


def test_each_entry_runs_at_the_service_interval() -> None:
    schedule = build_schedule(registry_of(Hourly, Quick, Queued))
    assert schedule["svc.hourly"]["schedule"] == timedelta(hours=1)
    assert schedule["svc.quick"]["schedule"] == timedelta(seconds=0.25)
    assert schedule["svc.queued.reports"]["schedule"] == timedelta(seconds=10)


def test_ticks_expire_after_one_interval_with_a_floor_for_short_intervals() -> None:
    schedule = build_schedule(registry_of(Hourly, Quick, Queued))
    assert schedule["svc.hourly"]["options"]["expires"] == 3600.0
    assert schedule["svc.queued.reports"]["options"]["expires"] == 10.0
    # A 0.25 s tick expiring after 0.25 s would be dropped by a small clock skew.
    assert schedule["svc.quick"]["options"]["expires"] == MIN_TICK_EXPIRES_SECONDS
    assert tick_expires(resolve_config(Quick, environ={})) == MIN_TICK_EXPIRES_SECONDS


def test_a_service_that_names_a_queue_is_routed_and_scheduled_there() -> None:
    registry = registry_of(Hourly, Queued)
    schedule = build_schedule(registry)
    assert schedule["svc.queued.reports"]["options"]["queue"] == "reports"
    assert "queue" not in schedule["svc.hourly"]["options"]
    assert build_routes(registry) == {"svc.queued.reports": {"queue": "reports"}}
    assert service_queues(registry) == ["reports"]
    assert service_queues(registry_of(Hourly)) == []
    assert tick_options(resolve_config(Queued, environ={})) == {"expires": 10.0,
                                                                "queue": "reports"}


def test_the_environment_overrides_the_interval_and_the_expiry_follows() -> None:
    registry = registry_of(Hourly, environ={"SVC_HOURLY_INTERVAL_SECONDS": "90"})
    entry = build_schedule(registry)["svc.hourly"]
    assert entry["schedule"] == timedelta(seconds=90)
    assert entry["options"]["expires"] == 90.0


def test_the_registry_of_test_services_gives_one_entry_each() -> None:
    registry = Registry.discover(packages=["tests.svc_celery"], environ={},
                                 only=["ticker", "slow"])
    schedule = build_schedule(registry)
    assert sorted(schedule) == ["svc.slow", "svc.ticker"]
    assert schedule["svc.ticker"]["schedule"] == timedelta(seconds=0.5)
    assert schedule["svc.slow"]["schedule"] == timedelta(seconds=0.3)


def test_no_services_no_entries() -> None:
    assert build_schedule(Registry()) == {}
    assert build_routes(Registry()) == {}


def test_task_names() -> None:
    assert task_name("ticker") == "svc.ticker"
    assert task_name("queued.reports") == "svc.queued.reports"


def test_entries_are_json_only_and_celery_beat_reads_them() -> None:
    schedule = build_schedule(registry_of(Hourly, Quick, Queued))
    app = Celery("schedule-test", set_as_current=False)
    app.conf.update(beat_schedule=schedule, accept_content=["json"], task_serializer="json")
    for key, entry in schedule.items():
        # Whatever Beat puts in the message must survive the JSON serializer.
        json.dumps({"kwargs": entry["kwargs"], "options": entry["options"]})
        parsed = ScheduleEntry(name=key, app=app, **entry)
        assert parsed.task == key
        assert parsed.schedule.run_every == entry["schedule"]
        assert parsed.options["expires"] == entry["options"]["expires"]


@pytest.mark.parametrize("interval", [0.3, 1.0, 2.0, 2.5, 60.0])
def test_expiry_is_never_shorter_than_the_interval(interval: float) -> None:
    registry = registry_of(Hourly, environ={"SVC_HOURLY_INTERVAL_SECONDS": str(interval)})
    expires = build_schedule(registry)["svc.hourly"]["options"]["expires"]
    assert expires >= interval
    assert expires == max(interval, MIN_TICK_EXPIRES_SECONDS)
