"""What ``bench/beat.py`` puts inside each Beat it measures: the same probe for every arm.

A ``before_task_publish`` receiver stamps two headers on every message the Beat sends, just
before the producer publishes it: ``bench_sent_ms`` (this process's wall clock) and
``bench_due_ms`` (when the scheduler meant the tick to go out). The bench's drain reads them
back from the broker, so lateness (sent minus due) is measured the same way for all three.

Where the due time comes from:

* ours (``RedisScheduler``, unchanged): the tick's ``slot`` kwarg, which is its due time;
* plain Beat and RedBeat: a scheduler subclass with :class:`DueProbe` mixed in
  (``bench/beat_apps.py``), whose ``apply_async`` notes the entry's due time,
  ``last_run_at + run_every`` (the time Celery's ``is_due`` compares with), for the
  receiver. Nothing else about those schedulers changes. An entry that never ran has no due
  time (-1): its first send is left out of the lateness figures.

``BENCH_BEAT_PROFILE`` or ``BENCH_BEAT_TIMING`` also arm cProfile or coarse timers for the
bench's window (``bench/beat_profile.py``).
"""

from __future__ import annotations

import os
import time
from datetime import UTC
from typing import Any

from celery.signals import before_task_publish

from bench.beat_profile import arm_profiler, arm_timers

_sending: list[float] = []
"""The due time of the entry a plain or RedBeat scheduler is sending (empty: ours)."""


@before_task_publish.connect
def _stamp(body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    due = _sending[-1] if _sending else None
    if due is None:
        kwargs = body[1] if isinstance(body, (tuple, list)) and len(body) > 1 else None
        slot = kwargs.get("slot") if isinstance(kwargs, dict) else None
        due = float(slot) if isinstance(slot, (int, float)) else -1.0
    headers["bench_due_ms"] = due
    headers["bench_sent_ms"] = time.time() * 1000


def entry_due_ms(entry: Any) -> float:
    """``last_run_at + run_every`` of a Celery schedule entry, epoch ms; -1 if it never ran."""
    last = entry.last_run_at
    run_every = getattr(entry.schedule, "run_every", None)
    if last is None or run_every is None:
        return -1.0
    aware = entry.schedule.maybe_make_aware(last)
    if aware.tzinfo is None:
        aware = aware.replace(tzinfo=UTC)
    return (aware + run_every).timestamp() * 1000


class DueProbe:
    """Mixed in before a Celery scheduler class: notes each entry's due time for the probe
    while ``apply_async`` sends it."""

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True,
                    **kwargs: Any) -> Any:
        _sending.append(entry_due_ms(entry))
        try:
            return super().apply_async(  # type: ignore[misc]
                entry, producer, advance, **kwargs)
        finally:
            _sending.pop()


if os.environ.get("BENCH_BEAT_PROFILE"):
    arm_profiler(os.environ["BENCH_BEAT_PROFILE"])
elif os.environ.get("BENCH_BEAT_TIMING"):
    arm_timers(os.environ["BENCH_BEAT_TIMING"])
