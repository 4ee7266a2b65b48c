"""Celery Beat's schedule, built from the service registry: one entry per service, sending
``svc.<name>`` every ``interval_seconds``.

Each tick expires: a tick nobody took in time is dropped rather than piling up behind a slow
worker (the next tick is already on its way). The floor keeps a small clock skew between
Beat's host and a worker's from expiring every tick of a very short interval.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from services.config import ServiceConfig
from services.registry import Registry

MIN_TICK_EXPIRES_SECONDS = 2.0


def task_name(service_name: str) -> str:
    """The Celery task that runs one service: ``svc.<name>``."""
    return f"svc.{service_name}"


def tick_expires(config: ServiceConfig) -> float:
    return max(config.interval_seconds, MIN_TICK_EXPIRES_SECONDS)


def tick_options(config: ServiceConfig) -> dict[str, Any]:
    """``apply_async`` options for a tick of this service (Beat's, and ``svc trigger``'s)."""
    options: dict[str, Any] = {"expires": tick_expires(config)}
    if config.queue:
        options["queue"] = config.queue
    return options


def build_schedule(registry: Registry) -> dict[str, dict[str, Any]]:
    """The ``beat_schedule`` setting for every registered service."""
    return {
        task_name(name): {
            "task": task_name(name),
            "schedule": timedelta(seconds=spec.config.interval_seconds),
            "kwargs": {"kind": "tick"},
            "options": tick_options(spec.config),
        }
        for name, spec in sorted(registry.specs.items())
    }


def service_queues(registry: Registry) -> list[str]:
    """The queues services name for themselves, each once."""
    return sorted({spec.config.queue for spec in registry.specs.values() if spec.config.queue})


def build_routes(registry: Registry) -> dict[str, dict[str, str]]:
    """``task_routes`` for services that name their own queue."""
    return {task_name(name): {"queue": spec.config.queue}
            for name, spec in registry.specs.items() if spec.config.queue}
