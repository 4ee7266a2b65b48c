"""Changes to ours that ``bench/beat.py --experiment`` can measure, each a suggestion for
``RedisScheduler`` or its app tried without touching them (the bench's Beat only):

* ``no-sent-event``: ``task_send_sent_event`` off for Beat (each tick also publishes a
  task-sent event to the ``celeryev`` fanout);
* ``coalesce``: a pass waits at least :data:`COALESCE_SECONDS` after the one before when it
  would sleep at all, so ticks due close together go out in one pass (one poll and one
  advance for several ticks) at the cost of up to that much lateness;
* ``cached-client``: kombu's Redis channel keeps one ``redis.Redis`` for publishing instead of
  building one (about 170 response callbacks) per command; safe in Beat's single sending
  thread, not in general.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from beat_schedule.scheduler import RedisScheduler

COALESCE_SECONDS = 0.05
EXPERIMENTS = ("no-sent-event", "coalesce", "cached-client")


def apply_experiments(app: Celery, names: str) -> None:
    chosen = {name for name in names.split(",") if name}
    if "no-sent-event" in chosen:
        app.conf.task_send_sent_event = False
    if "coalesce" in chosen:
        app.conf.beat_scheduler = "bench.beat_experiments:CoalescingScheduler"
    if "cached-client" in chosen:
        _cache_publish_clients()


def _cache_publish_clients() -> None:
    from kombu.transport.redis import Channel

    create = Channel._create_client

    def cached(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return create(self, asynchronous=True)
        client = self.__dict__.get("_bench_publish_client")
        if client is None:
            client = self.__dict__["_bench_publish_client"] = create(self)
        return client

    Channel._create_client = cached


class CoalescingScheduler(RedisScheduler):
    """``RedisScheduler`` whose passes are at least ``COALESCE_SECONDS`` apart when idle."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay = super().tick(*args, **kwargs)
        return delay if delay <= 0 else max(delay, COALESCE_SECONDS)
