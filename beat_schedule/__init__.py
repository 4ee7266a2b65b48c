"""What a tick is: the task ``svc.<name>`` a service runs as, its id and its message options.
The schedule itself lives in Redis (``beat_schedule.scheduler``, ``beat_schedule.store``).

Each tick expires: a tick nobody took in time is dropped rather than piling up behind a slow
worker (the next tick is already on its way). The floor keeps a small clock skew between
Beat's host and a worker's from expiring every tick of a very short interval.
"""

from __future__ import annotations

from typing import Any

from beat_schedule.store import Resolved
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


def tick_id(service_name: str, fire_ms: int) -> str:
    """A tick's Celery task id: the service and its due time, the same from every Beat, so
    that each tick can be counted (and told apart from a duplicate) by id."""
    return f"tick:{service_name}@{fire_ms}"


def tick_message_options(resolved: Resolved, sent_ms: int, following_ms: int) -> dict[str, Any]:
    """``send_task`` options for a tick sent at ``sent_ms``: it expires when the service's
    next tick is due (a replayed missed slot too), and at least 2 s after it was sent."""
    options: dict[str, Any] = {
        "expires": max((following_ms - sent_ms) / 1000, MIN_TICK_EXPIRES_SECONDS)}
    if resolved.queue:
        options["queue"] = resolved.queue
    return options


def service_queues(registry: Registry) -> list[str]:
    """The queues services name for themselves, each once."""
    return sorted({spec.config.queue for spec in registry.specs.values() if spec.config.queue})


def build_routes(registry: Registry) -> dict[str, dict[str, str]]:
    """``task_routes`` for services that name their own queue."""
    return {task_name(name): {"queue": spec.config.queue}
            for name, spec in registry.specs.items() if spec.config.queue}
