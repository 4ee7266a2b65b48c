"""Where a Beat's time goes, for ``bench/beat.py --profile DIR`` and ``--timing DIR``.

Inside the Beat (armed by ``bench/beat_probe.py`` from the environment): SIGUSR1 starts, and
SIGUSR2 stops and writes out, one of

* ``BENCH_BEAT_PROFILE=<file>``: cProfile (every call; it slows Python code more than socket
  waits, so read it for the call tree, not for proportions);
* ``BENCH_BEAT_TIMING=<file>``: ``perf_counter`` and thread CPU time around a few coarse
  steps (:data:`STEPS`), patched in at class level, nothing else: about 1-2 us per wrapped
  call, so the proportions are close to an unprofiled Beat's. Steps nest (``send_task``
  holds the two ``Producer.publish`` calls, which hold the client creations), so the rows
  do not add up to the pass.

In the bench: :func:`report_profile` and :func:`report_timing` print what was written.
"""

from __future__ import annotations

import cProfile
import functools
import json
import pstats
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

# (module, class, method, label); the ones that cannot be imported in an arm are skipped.
STEPS = (
    ("beat_schedule.scheduler", "RedisScheduler", "tick", "RedisScheduler.tick (one pass)"),
    ("redis.commands.core", "Script", "__call__", "Lua scripts (poll, advance, lease)"),
    ("beat_schedule.scheduler", "RedisScheduler", "_advance", "  _advance (beat_advance.lua)"),
    ("services.schedule", "Schedule", "plan", "  Schedule.plan"),
    ("beat_schedule.scheduler", "RedisScheduler", "_publish", "  _publish (log + send)"),
    ("beat_schedule.scheduler", "RedisScheduler", "_write_stats", "  _write_stats"),
    ("logging", "Logger", "_log", "logging (a record made and emitted)"),
    ("celery.app.base", "Celery", "send_task", "Celery.send_task"),
    ("celery.app.amqp", "AMQP", "as_task_v2", "  as_task_v2 (message built)"),
    ("kombu.messaging", "Producer", "publish", "  Producer.publish (task and event)"),
    ("celery.events.dispatcher", "EventDispatcher", "publish", "  task-sent event publish"),
    ("kombu.transport.redis", "Channel", "_create_client", "    redis.Redis() per command"),
)


class _Timers:
    def __init__(self) -> None:
        self.active = False
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: type, attr: str, label: str) -> None:
        original: Callable[..., Any] = getattr(owner, attr)
        self.wall[label], self.cpu[label], self.calls[label] = 0.0, 0.0, 0

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.wall[label] += time.perf_counter() - wall
                self.cpu[label] += time.thread_time() - cpu
                self.calls[label] += 1

        setattr(owner, attr, timed)

    def dump(self, path: str) -> None:
        rows = [{"step": label, "calls": self.calls[label], "wall": self.wall[label],
                 "cpu": self.cpu[label]} for label in self.wall]
        Path(path).write_text(json.dumps(rows))


def arm_profiler(path: str) -> None:
    profiler = cProfile.Profile()
    _on_signals(profiler.enable,
                lambda: (profiler.disable(), profiler.dump_stats(path)))


def arm_timers(path: str) -> None:
    timers = _Timers()
    for module, cls, attr, label in STEPS:
        try:
            owner = getattr(__import__(module, fromlist=[cls]), cls)
        except (ImportError, AttributeError):
            continue
        timers.wrap(owner, attr, label)

    def start() -> None:
        timers.active = True

    def stop() -> None:
        timers.active = False
        timers.dump(path)

    _on_signals(start, stop)


def _on_signals(start: Callable[[], object], stop: Callable[[], object]) -> None:
    def on_start(_signum: int, _frame: FrameType | None) -> None:
        start()

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGUSR1, on_start)
    signal.signal(signal.SIGUSR2, on_stop)


def _wait_for(path: Path) -> bool:
    deadline = time.monotonic() + 15
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return path.exists()


def report_profile(path: Path, title: str, top: int) -> None:
    if not _wait_for(path):
        print(f"  (no profile written for {title})", flush=True)
        return
    print(f"\n--- cProfile of {title} over the window ({path}) ---", flush=True)
    for key in ("tottime", "cumulative"):
        pstats.Stats(str(path), stream=sys.stdout).strip_dirs().sort_stats(key).print_stats(top)


def report_timing(path: Path, title: str, window: float, ticks: int, cpu: float) -> None:
    if not _wait_for(path):
        print(f"  (no timings written for {title})", flush=True)
        return
    rows = json.loads(path.read_text())
    print(f"\n--- timed steps of {title}: {ticks} ticks in {window:.0f} s, Beat CPU {cpu:.2f} s "
          f"({1e6 * cpu / max(ticks, 1):.0f} us/tick) ---", flush=True)
    print(f"{'step':<40} {'calls':>8} {'wall s':>7} {'CPU s':>7} {'CPU us/tick':>11} "
          f"{'% of Beat CPU':>13}")
    for row in rows:
        if not row["calls"]:
            continue
        print(f"{row['step']:<40} {row['calls']:>8} {row['wall']:>7.2f} {row['cpu']:>7.2f} "
              f"{1e6 * row['cpu'] / max(ticks, 1):>11.1f} {100 * row['cpu'] / cpu:>13.1f}")
