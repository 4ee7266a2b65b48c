"""The Celery app each arm of ``bench/beat.py`` runs Beat with:
``celery -A bench.beat_apps beat``, the arm chosen by ``BENCH_BEAT_ARM``.

* ``ours``: the project's app (``worker.celery_app``), unchanged, so its ``beat_scheduler``
  is ``RedisScheduler``; the services come from registrations in Redis (the bench writes
  them under its own ``SVC_KEY_PREFIX`` before Beat starts).
* ``plain``: a bare Celery app on its defaults (``PersistentScheduler``, its shelve file in
  the working directory), with a ``beat_schedule`` of ``BENCH_BEAT_SERVICES`` entries every
  ``BENCH_BEAT_INTERVAL`` seconds.
* ``redbeat``: the same app and entries with celery-redbeat's ``RedBeatScheduler``
  (``redbeat_redis_url`` = the broker, ``redbeat_key_prefix`` = ``BENCH_BEAT_PREFIX``).

Every entry sends ``svc.<name>`` with ``expires`` = the interval, as ours does, so the
messages are alike. ``bench.beat_probe`` is imported in every arm (the same probe).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler

from bench.beat_probe import DueProbe

ARM = os.environ.get("BENCH_BEAT_ARM")
"""Unset when the bench itself imports this module (for :func:`service_names`): no app."""


def service_names(count: int) -> list[str]:
    """The services' names, the same in every arm (valid ``services.keys`` names)."""
    return [f"bench-{index:05d}" for index in range(count)]


def beat_schedule(count: int, interval: float) -> dict[str, dict[str, Any]]:
    return {name: {"task": f"svc.{name}", "schedule": interval, "options": {"expires": interval}}
            for name in service_names(count)}


class PlainProbeScheduler(DueProbe, PersistentScheduler):
    """Celery's default scheduler, with the probe's due-time note."""


def _bare_app() -> Celery:
    bare = Celery("bench_beat", broker=os.environ["BENCH_BEAT_BROKER_URL"])
    bare.conf.update(
        beat_schedule=beat_schedule(int(os.environ["BENCH_BEAT_SERVICES"]),
                                    float(os.environ.get("BENCH_BEAT_INTERVAL", "10"))),
        timezone="UTC", enable_utc=True, task_ignore_result=True,
        broker_connection_retry_on_startup=True)
    return bare


if ARM == "ours":
    from bench.beat_experiments import apply_experiments
    from worker.celery_app import app

    # Off unless bench/beat.py --experiment asked: the project's app as it is.
    apply_experiments(app, os.environ.get("BENCH_BEAT_EXPERIMENTS", ""))
elif ARM == "plain":
    app = _bare_app()
    app.conf.beat_scheduler = "bench.beat_apps:PlainProbeScheduler"
elif ARM == "redbeat":
    # Imported only here: redbeat connects a beat_init receiver that expects its scheduler.
    from redbeat import RedBeatScheduler

    class RedBeatProbeScheduler(DueProbe, RedBeatScheduler):
        """celery-redbeat's scheduler, with the probe's due-time note."""

    app = _bare_app()
    app.conf.update(beat_scheduler="bench.beat_apps:RedBeatProbeScheduler",
                    redbeat_redis_url=os.environ["BENCH_BEAT_BROKER_URL"],
                    redbeat_key_prefix=os.environ.get("BENCH_BEAT_PREFIX", "redbeat"))
elif ARM is not None:
    raise SystemExit(f"BENCH_BEAT_ARM must be ours, plain or redbeat, got {ARM!r}")
