"""Where a wrapped run's time goes, in one process, without Celery: the guard and finish
calls of the run ledger (``StateStore.runs``) timed directly, next to plain Redis round
trips, and the whole of ``ProcessRuntime.run`` (what the task body calls: persistent loop,
lease keeper, logging context, both scripts), once against Redis and once with the two
scripts' round trips replaced by canned replies at the ``ScriptChannel``, which leaves the
wrapper's own Python. A counter of the commands written to Redis checks that the canned
batches send none (the script channel writes on a connection of its own, never through
``Redis.execute_command``, so canning that would have changed nothing).

    .venv/bin/python bench/guard_micro.py [--calls 3000] [--repeat 7] [--profile]

Every figure is microseconds per call, the best of ``--repeat`` batches of ``--calls`` calls
(the best batch is the one least disturbed by the rest of the machine), so the figures are
floors, not averages. ``--profile`` adds a cProfile of ``ProcessRuntime.run`` (Redis
included, then with the scripts canned) sorted by own time; the profiler inflates small
calls, so read it for proportions. Keys live under a prefix of their own and are deleted at the end.

Three runs on a 2 vCPU Intel Xeon VM (load average 0.5-0.7), medians: ``ProcessRuntime.run``
190 us wall (110 us of CPU), of which the wrapper's own Python is 35 us (canned: 35 us wall
and CPU; 2 commands written per real run, none in the canned batches); a PING 70 us. The
own Python was 44 us before the script channel packed with hiredis directly, the lease watch
became a plain flag and ``logs.bound`` a small class (three runs at load 2.4-2.5 then).
Canning at ``Redis.execute_command``, as this script did before, intercepted nothing: its
"own Python" was a whole run with its I/O (166 us in one run here).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from celery.utils.saferepr import saferepr  # noqa: E402
from redis.commands.core import Script  # noqa: E402
from redis.connection import AbstractConnection  # noqa: E402

from bench.svc_bench.SVC_Noop import Noop  # noqa: E402
from services import logs  # noqa: E402
from services.fields import Kind  # noqa: E402
from services.keys import Keys  # noqa: E402
from services.registry import Registry  # noqa: E402
from services.scripts import ScriptChannel  # noqa: E402
from services.state import StateStore, connect_redis  # noqa: E402
from worker.runtime import ProcessRuntime  # noqa: E402

NAME = "noop"


def best_us(fn: Callable[[], object], calls: int, repeat: int) -> tuple[float, float]:
    """Wall-clock and CPU (this process, user + system) microseconds per call."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fn()
        best_cpu = min(best_cpu, (time.process_time() - cpu) / calls)
        best_wall = min(best_wall, (time.perf_counter() - wall) / calls)
    return best_wall * 1e6, best_cpu * 1e6


@contextlib.contextmanager
def canned_scripts(store: StateStore) -> Iterator[None]:
    """Answer the guard's and the finish script's round trips at once with the replies of a
    run that goes and succeeds: what remains is the wrapper's own Python, without redis-py
    and without I/O.

    The per-run scripts go through this process's ``ScriptChannel`` (``call`` for the guard
    and a failure, ``send`` for a success recorded without waiting), straight onto a pinned
    connection: that is the level replaced here. A deferred success's reply is handed to
    ``on_late_reply`` at once, as the next call's drain would hand it. Any other script still
    goes to Redis, and :class:`SendCounter` shows whether anything did.
    """
    store.runs.flush()  # a reply a real run still owes is read now, not by a canned call
    now_ms = int(time.time() * 1000)
    epoch = store.memory.epoch  # the store's own, so the canned guard sees no data loss
    replies: dict[str, Callable[[Sequence[Any]], list[Any]]] = {
        # verdict, seq, now, warnings, epoch, kind (ARGV[4]): begin_run.lua's reply to a go
        store.scripts.begin_run.sha: lambda args: ["go", "7", now_ms, [], epoch, args[3]],
        # failures, stopped, superseded, lease lost, retry at, counted: a clean success
        store.scripts.finish_run.sha: lambda args: [0, 0, 0, 0, 0, 1],
    }
    real_call, real_send = ScriptChannel.call, ScriptChannel.send

    def call(self: ScriptChannel, script: Script, keys: Sequence[Any],
             args: Sequence[Any]) -> Any:
        canned = replies.get(script.sha)
        return real_call(self, script, keys, args) if canned is None else canned(args)

    def send(self: ScriptChannel, script: Script, keys: Sequence[Any], args: Sequence[Any],
             context: Any) -> None:
        canned = replies.get(script.sha)
        if canned is None:
            real_send(self, script, keys, args, context)
        else:
            self.on_late_reply(canned(args), context, None)

    ScriptChannel.call = call  # type: ignore[method-assign]
    ScriptChannel.send = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        ScriptChannel.call = real_call  # type: ignore[method-assign]
        ScriptChannel.send = real_send  # type: ignore[method-assign]


class SendCounter:
    """Counts the commands this process writes to any Redis socket (every redis-py
    connection, the script channel's included, sends through ``send_packed_command``; a
    pipeline counts once), so a canned batch can be shown to send none."""

    def __init__(self) -> None:
        self.sends = 0
        self._real = AbstractConnection.send_packed_command

    def __enter__(self) -> SendCounter:
        real = self._real

        def counted(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
            self.sends += 1
            real(conn, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        AbstractConnection.send_packed_command = self._real  # type: ignore[method-assign]


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
    service_keys = store.keys.for_service(NAME)
    noop_sha = client.script_load("return 1")

    def begin() -> Any:
        return store.runs.begin(NAME, kind=Kind.TRIGGER, max_runs=4, tick_gap_seconds=1.0)

    def finish(ticket: Any) -> None:
        store.runs.finish(ticket, error=None, max_failures=3, retry_delay_seconds=1.0)

    def split_us() -> tuple[float, float]:
        """begin and finish timed apart (wall clock), each the best of ``repeat`` batches."""
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

    rows: list[tuple[str, float, float | None]] = []

    def measure(label: str, fn: Callable[[], object]) -> tuple[float, float]:
        wall, cpu = best_us(fn, args.calls, args.repeat)
        rows.append((label, wall, cpu))
        return wall, cpu

    def run() -> object:
        return runtime.run(NAME, Kind.TRIGGER)

    try:
        finish(begin().ticket)  # loads the scripts, opens the connection
        ping, _ = measure("PING (a plain round trip through redis-py)", client.ping)
        measure(
            f"EVALSHA 'return 1' with the same {len(service_keys)} keys",
            lambda: client.evalsha(noop_sha, len(service_keys), *service_keys),
        )
        begin_us, finish_us = split_us()
        rows.append(("runs.begin (guard script)", begin_us, None))
        rows.append(("runs.finish (outcome script)", finish_us, None))
        total, total_cpu = measure("ProcessRuntime.run (what the task body calls)", run)
        with SendCounter() as real_sends:
            for _ in range(args.calls):
                run()
        with canned_scripts(store), SendCounter() as canned_sends:
            python, _ = measure("ProcessRuntime.run, scripts canned (no redis-py, no I/O)", run)
            measure("  runs.begin + runs.finish, scripts canned", lambda: finish(begin().ticket))
            measure(
                "  loop.run_until_complete(empty coroutine)",
                lambda: loop.run_until_complete(empty()),
            )
            measure("  logs.bound(name, run_id) enter + exit", bound_once)
            report = run()
        measure(
            "celery's saferepr of the task's result (outside the body)",
            lambda: saferepr(report.summary(), 1024),
        )
        width = max(len(label) for label, _, _ in rows)
        print(f"{'per call':<{width}}  {'wall us':>7}  {'CPU us':>7}")
        for label, wall, cpu in rows:
            print(f"{label:<{width}}  {wall:7.1f}  " + (f"{cpu:7.1f}" if cpu is not None else ""))
        print(
            f"\nProcessRuntime.run {total:.0f} us ({total_cpu:.0f} us of CPU in this process) = "
            f"guard {begin_us:.0f} + finish {finish_us:.0f} (two PINGs: {2 * ping:.0f}) + "
            f"{total - begin_us - finish_us:.0f} other; the wrapper's own Python is {python:.0f}"
        )
        canned = 2 * args.calls * args.repeat + 1
        print(f"commands written to Redis: {real_sends.sends / args.calls:.2f} per real run; "
              f"{canned_sends.sends} in all the canned batches ({canned:,} canned guard + "
              "finish pairs)")
        if canned_sends.sends:
            print("the canned batches sent commands to Redis: their figures include I/O")
            return 1
        if args.profile:
            own = "scripts canned: the wrapper's own Python"
            for label, scripts in (("real scripts", contextlib.nullcontext()),
                                   (own, canned_scripts(store))):
                print(f"\n== cProfile of ProcessRuntime.run, {label}")
                with scripts:
                    profiler = cProfile.Profile()
                    profiler.enable()
                    for _ in range(args.calls):
                        runtime.run(NAME, Kind.TRIGGER)
                    profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    finally:
        runtime.shutdown()
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
