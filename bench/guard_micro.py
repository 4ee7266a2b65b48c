"""Where a wrapped run's time goes, in one process, without Celery: the guard and finish
calls of the state store timed directly, next to plain Redis round trips, and the whole of
``ProcessRuntime.run`` (what the task body calls: persistent loop, lease keeper, logging
context, both scripts), once against Redis and once with the two scripts replaced by canned
replies, which leaves the wrapper's own Python.

    .venv/bin/python bench/guard_micro.py [--calls 3000] [--repeat 7] [--profile]

Every figure is microseconds per call, the best of ``--repeat`` batches of ``--calls`` calls
(the best batch is the one least disturbed by the rest of the machine), so the figures are
floors, not averages. ``--profile`` adds a cProfile of ``ProcessRuntime.run`` (Redis
included) sorted by own time; the profiler inflates small calls, so read it for proportions.
Keys live under a prefix of their own and are deleted at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from celery.utils.saferepr import saferepr  # noqa: E402

from bench.svc_bench.SVC_Noop import Noop  # noqa: E402
from services import logs  # noqa: E402
from services.keys import Keys  # noqa: E402
from services.registry import Registry  # noqa: E402
from services.state import StateStore, connect_redis  # noqa: E402
from worker.runtime import ProcessRuntime  # noqa: E402

NAME = "noop"


def best_us(fn: Callable[[], object], calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


class CannedScript:
    """Stands in for a registered script: the reply without the round trip."""

    def __init__(self, reply: Callable[[], list[Any]]) -> None:
        self.reply = reply

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> list[Any]:
        return self.reply()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    prefix = f"bench-micro-{uuid.uuid4().hex[:10]}"
    client = connect_redis(args.redis_url)
    store = StateStore(client, Keys(prefix), redis_url=args.redis_url)
    runtime = ProcessRuntime(Registry(), store)
    service = Noop(name=NAME, state=store, max_concurrent_runs=4)
    runtime.instances[NAME] = service
    loop = runtime.loop
    state_key, lease_key, history_key = store.keys.for_service(NAME)
    noop_sha = client.script_load("return 1")

    def begin() -> Any:
        return store.begin(NAME, kind="trigger", max_runs=4, tick_gap_seconds=1.0)

    def finish(ticket: Any) -> None:
        store.finish(ticket, error=None, max_failures=3, retry_delay_seconds=1.0)

    def split_us() -> tuple[float, float]:
        """begin and finish timed apart, each the best of ``repeat`` batches."""
        best_begin = best_finish = float("inf")
        for _ in range(args.repeat):
            spent_begin = spent_finish = 0.0
            for _ in range(args.calls):
                t0 = time.perf_counter()
                decision = begin()
                t1 = time.perf_counter()
                finish(decision.ticket)
                spent_begin += t1 - t0
                spent_finish += time.perf_counter() - t1
            best_begin = min(best_begin, spent_begin / args.calls)
            best_finish = min(best_finish, spent_finish / args.calls)
        return best_begin * 1e6, best_finish * 1e6

    async def empty() -> None:
        return None

    def bound_once() -> None:
        with logs.bound(NAME, "run"):
            pass

    def measure(label: str, fn: Callable[[], object]) -> float:
        value = best_us(fn, args.calls, args.repeat)
        rows.append((label, value))
        return value

    rows: list[tuple[str, float]] = []
    try:
        finish(begin().ticket)  # loads the scripts, opens the connection
        ping = measure("PING (a plain round trip through redis-py)", client.ping)
        measure(
            "EVALSHA 'return 1' with the same 3 keys",
            lambda: client.evalsha(noop_sha, 3, state_key, lease_key, history_key),
        )
        begin_us, finish_us = split_us()
        rows.append(("store.begin (guard script)", begin_us))
        rows.append(("store.finish (outcome script)", finish_us))
        total = measure(
            "ProcessRuntime.run (what the task body calls)", lambda: runtime.run(NAME, "trigger")
        )

        real_scripts = store.scripts
        now_ms = int(time.time() * 1000)
        store.scripts = replace(
            real_scripts,
            begin_run=CannedScript(lambda: ["go", "7", now_ms, []]),
            finish_run=CannedScript(lambda: [0, 0, 0, 0, 0]),
        )
        try:
            python = measure(
                "ProcessRuntime.run, scripts canned (the wrapper's Python)",
                lambda: runtime.run(NAME, "trigger"),
            )
            measure("  store.begin + store.finish, scripts canned", lambda: finish(begin().ticket))
            measure(
                "  loop.run_until_complete(empty coroutine)",
                lambda: loop.run_until_complete(empty()),
            )
            measure("  logs.bound(name, run_id) enter + exit", bound_once)
            report = runtime.run(NAME, "trigger")
            measure(
                "celery's saferepr of the task's result (outside the body)",
                lambda: saferepr(report.summary(), 1024),
            )
        finally:
            store.scripts = real_scripts
        width = max(len(label) for label, _ in rows)
        print(f"{'per call':<{width}}  {'us':>7}")
        for label, value in rows:
            print(f"{label:<{width}}  {value:7.1f}")
        print(
            f"\nProcessRuntime.run {total:.0f} us = guard {begin_us:.0f} + finish "
            f"{finish_us:.0f} (two PINGs would be {2 * ping:.0f}) + "
            f"{total - begin_us - finish_us:.0f} other; its own Python alone is {python:.0f}"
        )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.calls):
                runtime.run(NAME, "trigger")
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(30)
    finally:
        runtime.shutdown()
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
