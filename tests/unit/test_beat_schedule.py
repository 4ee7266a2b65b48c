"""What a tick is: ``svc.<name>``, routed to the service's queue, with ``expires`` so that a
tick nobody took in time is dropped."""

from __future__ import annotations

from typing import ClassVar

from beat_schedule import (
    task_name,
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


def test_task_names() -> None:
    assert task_name("ticker") == "svc.ticker"
    assert task_name("queued.reports") == "svc.queued.reports"
