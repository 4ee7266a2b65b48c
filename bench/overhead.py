"""What the task wrapper costs: a no-op service run through ``svc.<name>`` against a raw
Celery no-op task, in the same worker, on the same broker, in the same run; and what the
project's Celery settings cost: that raw task against a no-op task of a plain Celery app on
its defaults, in a worker of its own, on the same broker, in the same rounds.

    .venv/bin/python bench/overhead.py [--rounds 5] [--tasks 2000] [--pools prefork,solo]

For each pool (prefork with concurrency 2, then solo) the bench starts one real
``celery -A worker worker`` on a key prefix and a broker prefix of its own
(``SVC_KEY_PREFIX``, ``SVC_BROKER_PREFIX``), with only the no-op service of
``bench/svc_bench/SVC_Noop.py`` registered (``SVC_PACKAGES``, ``SVC_SERVICES``) and the raw
task of ``bench/raw_tasks.py`` added by ``-I bench.raw_tasks``. The worker's code is the
production code, unchanged; Beat is not started (the service's interval is an hour). Next to
it runs a second worker, ``celery -A bench.default_app worker`` with the same pool and
concurrency: a plain ``Celery("default")`` app with nothing set but the broker (the same
URL, the bench's broker prefix as kombu's ``global_keyprefix``) and one no-op task with
``ignore_result=True`` (``bench/default_app.py``). Both workers get the same command-line
flags (``-n``, ``-l``, ``--without-gossip``, ``--without-mingle``); neither is given ``-E``.

Throughput. There are three arms: raw (the raw task, project app), wrapped (the service,
project app) and default (the default app's task). Each round runs one batch of each, in an
order that changes from round to round: the three rotations of raw, wrapped, default, then
the three rotations of the reverse order, so that over six rounds every arm takes every
place twice and comes right before each other arm as often as right after it (what ABBA
does for two: drift of a shared machine hits every arm alike). Both workers share the queue
``celery`` and neither consumes it between batches (``cancel_consumer``, confirmed with
``active_queues``).
For each batch the bench publishes all N messages (so that publishing never competes with
the worker for CPU), lets the arm's worker consume (``add_consumer``) and times from the
first completion it sees to the last: tasks/s = completions in that window / its length;
then that worker stops consuming again. With the default 7 rounds, the seventh repeats the
first order. Wrapped messages carry ``kwargs={"kind": "trigger"}``: a trigger skips the
duplicate-tick window, so every message really runs the guard, ``update()`` and the finish
script; the service allows 4 concurrent runs so the two prefork processes never refuse each
other by the lease. Completions are counted without a result backend and without a Redis
round trip: each worker process bumps its own slot of a shared memory-mapped file
(``bench/counters.py``), once per raw or default task and once per ``update()``, so every
arm pays the same few hundred nanoseconds. The service's ``runs`` field in Redis is checked
against that count after every round (a refused guard would show up as a shortfall).

Round trips. ``INFO commandstats`` counts every client of the server, and other processes
(tests, other workers) use the same Redis, so its deltas are not exact. Instead, for a
separate batch of wrapped runs after the timed rounds, the bench listens with ``MONITOR``
and counts the top-level commands (those clients sent, not the ones scripts ran) that name
one of the service's keys (``<prefix>:noop``, ``:lease``, ``:history``, ``:audit``) and do
not come from the bench's own connection. Those are exactly the wrapper's round trips,
whatever else the server is doing. Divided by the runs that batch made (counted as above),
that is round trips per run; the same pass reports the request bytes per run (RESP framing
included). The figure is printed with as many decimals as one command in that many runs
needs (1,001 commands in 500 runs is 2.002, not 2.00), next to the counts themselves.
MONITOR slows the server, so it never runs during the timed rounds.

The summary gives, per pool, tasks/s of each arm over all rounds and three ratios: wrapped /
raw (the wrapper), raw / default (the project's Celery settings) and wrapped / default (both),
each over all rounds and per round (each round runs the three batches back to back). The
verdicts use the median of the per-round ratios: on a shared machine a burst of foreign load
that hits one batch skews that round, and the median of the rounds shrugs it off where the
overall ratio does not; both are printed, with the load average before and after each pool
and the whole run.

Targets: prefork c=2 keeps >= 0.95 of raw throughput, solo >= 0.85; the raw task on the
project's app keeps >= 0.97 of the default app's (any pool); 2 round trips per run. Wrapped /
default has no target of its own (it is the product of the other two) and is printed for
information. ``--breakdown`` also times, inside the worker, ``ProcessRuntime.run`` and the guard
and finish calls (see ``bench/raw_tasks.py``), to split the wrapper's cost per run; it adds
a few microseconds per run, so the reference figures are taken without it. ``--profile FILE``
runs the solo worker under cProfile and writes its stats to FILE (for ``python -m pstats``);
``--hollow`` replaces ``ProcessRuntime.run`` in the worker with a canned report of a
successful run (no guard, no ``update()``, no record: see ``bench/raw_tasks.py``), so that
wrapped / raw is what the task around the run costs, and skips the round-trip count;
``--floor`` does the same after one PING on the state store's client, the smallest round
trip there is: wrapped / raw is then the best any guard that hears from Redis before
``update()`` could do on this machine, whatever its script. The profiler slows everything,
so its figures are not the reference ones. The summary also
gives each arm's CPU per task over its batches: its worker's processes (``/proc``) and the
Redis server (``INFO cpu``, which serves every client, so an upper bound), which splits the
wrapper's cost between the worker and Redis.

Every process and every key the bench creates is removed at the end, also on Ctrl-C or an
error.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402
from celery import Celery  # noqa: E402

from bench import counters  # noqa: E402

SERVICE = "noop"
WRAPPED_TASK = f"svc.{SERVICE}"
QUEUE = "celery"
TARGETS = {"prefork": 0.95, "solo": 0.85}
TARGET_RAW_DEFAULT = 0.97
TARGET_ROUND_TRIPS = 2
ARMS = ("raw", "wrapped", "default")
# Rotations of the three arms, then of their reverse: over six rounds every arm holds every
# place twice and comes right before and right after each other arm equally often.
ORDERS = (
    ("raw", "wrapped", "default"),
    ("wrapped", "default", "raw"),
    ("default", "raw", "wrapped"),
    ("default", "wrapped", "raw"),
    ("wrapped", "raw", "default"),
    ("raw", "default", "wrapped"),
)
TASKS = {"raw": counters.RAW_TASK, "wrapped": WRAPPED_TASK, "default": counters.DEFAULT_TASK}
MONITOR_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Round:
    kind: str
    tasks: int
    seconds: float
    worker_cpu: float = 0.0
    """CPU seconds per task of the arm's worker (all its processes) draining the batch."""
    redis_cpu: float = 0.0
    """CPU seconds per task of the Redis server meanwhile (any client's: an upper bound)."""

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


@dataclass
class PoolResult:
    pool: str
    concurrency: int
    rounds: list[dict[str, Round]] = field(default_factory=list)
    round_trips: float = float("nan")
    counted_commands: int = 0
    commands: dict[str, float] = field(default_factory=dict)
    request_bytes: float = float("nan")
    counted_runs: int = 0
    breakdown: list[int] = field(default_factory=lambda: [0] * counters.FIELDS)
    load_before: float = float("nan")
    load_after: float = float("nan")

    def total(self, kind: str) -> float:
        picked = [arms[kind] for arms in self.rounds]
        return sum(r.tasks for r in picked) / sum(r.seconds for r in picked)

    def cpu_us(self, kind: str) -> tuple[float, float]:
        """CPU microseconds per task of ``kind``'s worker and of Redis, over all rounds."""
        picked = [arms[kind] for arms in self.rounds]
        return (
            statistics.mean(r.worker_cpu for r in picked) * 1e6,
            statistics.mean(r.redis_cpu for r in picked) * 1e6,
        )

    def overall(self, top: str, bottom: str) -> float:
        """``top`` tasks/s over ``bottom`` tasks/s, each over all rounds."""
        return self.total(top) / self.total(bottom)

    def per_round(self, top: str, bottom: str) -> list[float]:
        return [arms[top].rate / arms[bottom].rate for arms in self.rounds]

    def median(self, top: str, bottom: str) -> float:
        return statistics.median(self.per_round(top, bottom))

    @property
    def ratio(self) -> float:
        return self.overall("wrapped", "raw")

    @property
    def ratios(self) -> list[float]:
        return self.per_round("wrapped", "raw")

    @property
    def median_ratio(self) -> float:
        return self.median("wrapped", "raw")

    @property
    def label(self) -> str:
        return f"{self.pool} c={self.concurrency}" if self.pool == "prefork" else self.pool


@dataclass
class Worker:
    """One ``celery worker`` process the bench started, in a process group of its own."""

    name: str
    hostname: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        if not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-4000:]


class Bench:
    """One benchmark run: its prefixes, temporary directory, worker and Redis keys."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.canned = bool(args.hollow or args.floor)
        """No real run: the report is canned (``--hollow``, ``--floor``)."""
        self.run_id = uuid.uuid4().hex[:10]
        self.prefix = f"bench-{self.run_id}"
        self.broker_prefix = f"{self.prefix}-broker:"
        self.workdir = Path(tempfile.mkdtemp(prefix="svc-bench-"))
        self.counter_file = self.workdir / "counters"
        counters.create(self.counter_file)
        self.counters = counters.Counters(self.counter_file)
        self.redis = redis.Redis.from_url(
            args.redis_url, decode_responses=True, single_connection_client=True
        )
        self.redis.ping()
        self.app = Celery("bench", broker=args.redis_url)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_ignore_result=True,
            broker_transport_options={"global_keyprefix": self.broker_prefix},
            broker_connection_retry_on_startup=True,
        )
        self.workers: dict[str, Worker] = {}

    # -- the workers -----------------------------------------------------------------------

    def start_workers(self, pool: str, concurrency: int, profile: str | None = None) -> None:
        """The project's worker (raw and wrapped) and the default app's, both not consuming."""
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
                "PYTHONUNBUFFERED": "1",
                counters.ENV_VAR: str(self.counter_file),
            }
        )
        project_env = dict(env)
        project_env.update(
            {
                "REDIS_URL": self.args.redis_url,
                "SVC_KEY_PREFIX": self.prefix,
                "SVC_BROKER_PREFIX": self.broker_prefix,
                "SVC_PACKAGES": "bench.svc_bench",
                "SVC_SERVICES": SERVICE,
                "DATABASE_URL": f"sqlite:///{self.workdir / 'services.db'}",
                "BENCH_BREAKDOWN": "1" if self.args.breakdown else "0",
                "BENCH_HOLLOW": "1" if self.args.hollow else "0",
                "BENCH_FLOOR": "1" if self.args.floor else "0",
            }
        )
        default_env = dict(env)
        default_env.update(
            {"BENCH_BROKER_URL": self.args.redis_url, "BENCH_BROKER_PREFIX": self.broker_prefix}
        )
        self.workers["project"] = self._spawn(
            "project", pool, concurrency, "worker", ["-I", "bench.raw_tasks"], project_env, profile
        )
        self.workers["default"] = self._spawn(
            "default", pool, concurrency, "bench.default_app", [], default_env, None
        )
        deadline = time.monotonic() + 60
        waiting = dict(self.workers)
        while waiting:
            for name, worker in list(waiting.items()):
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"{name} worker exited at start:\n{worker.tail()}")
                if self.app.control.ping(destination=[worker.hostname], timeout=0.5):
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                name, worker = next(iter(waiting.items()))
                raise RuntimeError(f"{name} worker not ready after 60s:\n{worker.tail()}")
        for worker in self.workers.values():
            self.stop_consuming(worker)

    def _spawn(
        self,
        name: str,
        pool: str,
        concurrency: int,
        app: str,
        extra: list[str],
        env: dict[str, str],
        profile: str | None,
    ) -> Worker:
        hostname = f"{self.prefix}-{name}-{pool}@{socket.gethostname()}"
        log_path = self.workdir / f"worker-{name}-{pool}.log"
        runner = [sys.executable]
        if profile:
            runner += ["-m", "cProfile", "-o", str(Path(profile).resolve())]
        command = [
            *runner,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            hostname,
            "-l",
            self.args.loglevel,
            *extra,
            "--without-gossip",
            "--without-mingle",
        ]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Worker(name, hostname, proc, log_path)

    def stop_workers(self) -> None:
        workers, self.workers = self.workers, {}
        for worker in workers.values():
            if worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.proc.pid, signal.SIGTERM)
        for worker in workers.values():
            try:
                worker.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait(timeout=10)
            # Pool children left behind by a parent that died first.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGKILL)

    def worker_for(self, kind: str) -> Worker:
        return self.workers["default" if kind == "default" else "project"]

    def control(self, worker: Worker, command: str) -> None:
        call = getattr(self.app.control, command)
        replies = call(QUEUE, destination=[worker.hostname], reply=True, timeout=5)
        if not replies:
            raise RuntimeError(f"{worker.name} worker did not answer {command}:\n{worker.tail()}")

    def consuming(self, worker: Worker) -> bool:
        inspect = self.app.control.inspect(destination=[worker.hostname], timeout=5)
        replies = inspect.active_queues()
        if not replies or worker.hostname not in replies:
            raise RuntimeError(f"{worker.name} worker did not answer active_queues")
        return any(q.get("name") == QUEUE for q in replies[worker.hostname] or [])

    def stop_consuming(self, worker: Worker) -> None:
        """``cancel_consumer``, and wait until the worker says it did.

        The worker answers ``cancel_consumer`` before it acts on it (``call_soon``); the two
        workers share the queue, so a batch is published only once the other worker is
        known to be off it (one of them would refuse the other's task as unregistered)."""
        self.control(worker, "cancel_consumer")
        deadline = time.monotonic() + 10
        while self.consuming(worker):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{worker.name} worker still consumes {QUEUE}")
            time.sleep(0.01)

    # -- measuring -------------------------------------------------------------------------

    def done(self, kind: str) -> int:
        return self.counters.totals()[ARMS.index(kind)]

    def publish(self, kind: str, n: int) -> None:
        kwargs = {"kind": "trigger"} if kind == "wrapped" else {}
        with self.app.producer_or_acquire() as producer:
            for _ in range(n):
                self.app.send_task(TASKS[kind], kwargs=kwargs, producer=producer)

    def wait_done(self, kind: str, target: int, seconds: float) -> None:
        worker = self.worker_for(kind)
        deadline = time.monotonic() + seconds
        while self.done(kind) < target:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{kind}: {self.done(kind)} of {target} done after "
                    f"{seconds:.0f}s:\n{worker.tail()}"
                )
            if worker.proc.poll() is not None:
                raise RuntimeError(f"{worker.name} worker died:\n{worker.tail()}")
            time.sleep(0.001)

    def redis_cpu(self) -> float:
        info = self.redis.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def timed_round(self, kind: str, n: int) -> Round:
        """Queue n messages while no worker consumes, then time the drain by kind's worker."""
        worker = self.worker_for(kind)
        start = self.done(kind)
        self.publish(kind, n)
        cpu_before, redis_before = group_cpu(worker.proc.pid), self.redis_cpu()
        self.control(worker, "add_consumer")
        target = start + n
        deadline = time.monotonic() + max(60.0, n / 50)
        first_t, first_done = None, start
        while True:
            now, done = time.perf_counter(), self.done(kind)
            if first_t is None and done > start:
                first_t, first_done = now, done
            if done >= target:
                break
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                raise RuntimeError(f"{kind}: {done - start} of {n} done:\n{worker.tail()}")
            time.sleep(0.001)
        assert first_t is not None
        # Per task of the whole batch (its first task included), not of the timed window.
        cpu, redis_cpu = group_cpu(worker.proc.pid) - cpu_before, self.redis_cpu() - redis_before
        self.stop_consuming(worker)
        return Round(kind, done - first_done, now - first_t, cpu / n, redis_cpu / n)

    def runs_in_redis(self) -> int:
        return int(self.redis.hget(f"{self.prefix}:{SERVICE}", "runs") or 0)

    def count_round_trips(self, result: PoolResult, n: int) -> None:
        """MONITOR a batch of wrapped runs: commands naming the service's keys per run."""
        keys = {
            f"{self.prefix}:{SERVICE}{suffix}" for suffix in ("", ":lease", ":history", ":audit")
        }
        own = self.redis.client_info()["addr"]
        marker = f"{self.prefix}-monitor-end"
        per_command: Counter[str] = Counter()
        sizes: list[int] = []
        ready = threading.Event()
        failure: list[BaseException] = []

        def listen() -> None:
            client = redis.Redis.from_url(self.args.redis_url)
            try:
                with client.monitor() as monitor:
                    ready.set()
                    while True:
                        line = monitor.connection.read_response()
                        if isinstance(line, bytes):
                            line = line.decode("utf-8", "replace")
                        _, _, rest = line.partition(" [")
                        source, _, command = rest.partition("] ")
                        args = [
                            a.encode().decode("unicode_escape") if "\\" in a else a
                            for a in MONITOR_ARG.findall(command)
                        ]
                        if marker in args:
                            return
                        if source.endswith(" lua") or source.split(" ", 1)[-1] == own:
                            continue
                        if keys.intersection(args):
                            per_command[args[0].upper()] += 1
                            sizes.append(
                                len(f"*{len(args)}\r\n")
                                + sum(
                                    len(f"${len(a.encode())}\r\n") + len(a.encode()) + 2
                                    for a in args
                                )
                            )
            except BaseException as exc:
                failure.append(exc)
                ready.set()
            finally:
                client.close()

        thread = threading.Thread(target=listen, name="bench-monitor", daemon=True)
        thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"MONITOR did not start: {failure}")
        time.sleep(0.2)  # the MONITOR command is in effect once its reply has been read
        runs_before, done_before = self.runs_in_redis(), self.done("wrapped")
        self.publish("wrapped", n)
        self.control(self.worker_for("wrapped"), "add_consumer")
        self.wait_done("wrapped", done_before + n, 60)
        runs = self.done("wrapped") - done_before
        # The last run's success is sent after its update() counted itself done: let it reach
        # Redis before the end marker does (a command really missing still shows, 2 s later).
        deadline = time.monotonic() + 2
        while sum(per_command.values()) < TARGET_ROUND_TRIPS * runs:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.redis.echo(marker)
        thread.join(30)
        if failure:
            raise RuntimeError(f"MONITOR failed: {failure[0]!r}")
        if thread.is_alive():
            raise RuntimeError("MONITOR did not see the end marker")
        if self.runs_in_redis() - runs_before != runs:
            raise RuntimeError("runs in Redis disagree with completed update() calls")
        result.counted_runs = runs
        result.counted_commands = sum(per_command.values())
        result.round_trips = result.counted_commands / runs
        result.commands = {name: count / runs for name, count in per_command.items()}
        result.request_bytes = sum(sizes) / runs

    def bench_pool(self, pool: str, concurrency: int) -> PoolResult:
        profile = self.args.profile if pool == "solo" else None
        log(
            f"\n== {pool} pool"
            + (f", concurrency {concurrency}" if pool == "prefork" else "")
            + (" (under cProfile)" if profile else "")
        )
        result = PoolResult(pool, concurrency if pool == "prefork" else 1)
        result.load_before = os.getloadavg()[0]
        self.start_workers(pool, concurrency, profile)
        try:
            for kind in ARMS:  # connections, scripts, services, caches
                self.timed_round(kind, self.args.warmup)
            log(
                f"{'round':>5} {'raw/s':>9} {'wrapped/s':>10} {'ratio':>6} {'default/s':>10} "
                f"{'raw/def':>8} {'wrap/def':>8}  order"
            )
            for index in range(self.args.rounds):
                order = ORDERS[index % len(ORDERS)]
                runs_before, sums_before = self.runs_in_redis(), self.counters.sums()
                measured = {kind: self.timed_round(kind, self.args.tasks) for kind in order}
                sums_after = self.counters.sums()
                for index_, (after, before) in enumerate(zip(sums_after, sums_before, strict=True)):
                    result.breakdown[index_] += after - before
                refused = self.args.tasks - (self.runs_in_redis() - runs_before)
                if refused and not self.canned:  # a canned run records nothing
                    raise RuntimeError(f"{refused} wrapped messages did not run update()")
                raw, wrapped, default = (measured[kind] for kind in ARMS)
                result.rounds.append(measured)
                log(
                    f"{index + 1:>5} {raw.rate:>9.0f} {wrapped.rate:>10.0f} "
                    f"{wrapped.rate / raw.rate:>6.3f} {default.rate:>10.0f} "
                    f"{raw.rate / default.rate:>8.3f} {wrapped.rate / default.rate:>8.3f}  "
                    + ",".join(order)
                )
            if not self.canned:
                self.count_round_trips(result, self.args.count_runs)
        finally:
            self.stop_workers()
        result.load_after = os.getloadavg()[0]
        log(
            f"load average (1 min) before this pool {result.load_before:.2f}, "
            f"after {result.load_after:.2f}"
        )
        return result

    # -- cleaning up -------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.stop_workers()
        with contextlib.suppress(redis.RedisError):
            # Both prefixes start with self.prefix: state keys and the broker's own keys.
            keys = list(self.redis.scan_iter(f"{self.prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                self.redis.delete(*keys[start : start + 500])
        self.app.close()
        self.counters.close()
        self.redis.close()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in process group ``pgid`` (a worker
    and its pool processes: each is started in a session of its own)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == pgid:  # pgrp; then utime and stime are the 12th and 13th
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: list[PoolResult], args: argparse.Namespace) -> bool:
    log(
        f"\n== summary ({args.rounds} rounds x {args.tasks} tasks of each arm per pool; "
        "tasks/s over all rounds)"
    )
    ok = True
    for r in results:
        raw, wrapped = r.total("raw"), r.total("wrapped")
        target = TARGETS[r.pool]
        extra_us = (1 / wrapped - 1 / raw) * 1e6 * r.concurrency
        log(
            f"{r.label:>12}: raw {raw:7.0f}/s  wrapped {wrapped:7.0f}/s  ratio {r.ratio:.3f} "
            f"overall, per round {min(r.ratios):.3f}-{max(r.ratios):.3f}, median "
            f"{r.median_ratio:.3f}  (+{extra_us:.0f} us per task and process)  "
            f"target >= {target:.2f}: {verdict(r.median_ratio >= target)}"
        )
        ok &= r.median_ratio >= target
        default = r.total("default")
        settings_us = (1 / raw - 1 / default) * 1e6 * r.concurrency
        median_rd = r.median("raw", "default")
        log(
            f"{'':>12}  raw/default: default app {default:7.0f}/s  ratio "
            f"{r.overall('raw', 'default'):.3f} overall, per round {span(r, 'raw', 'default')}, "
            f"median {median_rd:.3f}  ({settings_us:+.0f} us per task and process)  "
            f"target >= {TARGET_RAW_DEFAULT:.2f}: {verdict(median_rd >= TARGET_RAW_DEFAULT)}"
        )
        ok &= median_rd >= TARGET_RAW_DEFAULT
        log(
            f"{'':>12}  wrapped/default: ratio {r.overall('wrapped', 'default'):.3f} overall, "
            f"per round {span(r, 'wrapped', 'default')}, median "
            f"{r.median('wrapped', 'default'):.3f}  (informational, no target)  load average "
            f"(1 min) {r.load_before:.2f} before this pool, {r.load_after:.2f} after"
        )
    log("CPU per task (us; the worker's processes, and Redis serving every client meanwhile):")
    for r in results:
        cpu = {kind: r.cpu_us(kind) for kind in ARMS}
        log(
            f"{r.label:>12}: "
            + "  ".join(
                f"{kind} {worker:.0f} + Redis {server:.0f}"
                for kind, (worker, server) in cpu.items()
            )
            + f"  (wrapped - raw: worker {cpu['wrapped'][0] - cpu['raw'][0]:+.0f}, Redis "
            f"{cpu['wrapped'][1] - cpu['raw'][1]:+.0f})"
        )
    if args.breakdown:
        log("where a wrapped task's extra time goes (us per wrapped run, in its process):")
        for r in results:
            b = r.breakdown
            runs = b[counters.WRAPPED]
            extra = (1 / r.total("wrapped") - 1 / r.total("raw")) * 1e6 * r.concurrency
            inside, begin, finish, inside_cpu, scripts_cpu = (
                b[i] / runs / 1e3
                for i in (
                    counters.RUN_NS,
                    counters.BEGIN_NS,
                    counters.FINISH_NS,
                    counters.RUN_CPU_NS,
                    counters.SCRIPTS_CPU_NS,
                )
            )
            log(
                f"{r.label:>12}: ProcessRuntime.run {inside:.0f} (guard {begin:.0f}, finish "
                f"{finish:.0f}, the rest {inside - begin - finish:.0f}); extra per task vs "
                f"raw {extra:.0f}, so {extra - inside:.0f} outside the task body"
            )
            log(
                f"{'':>12}  CPU of the worker's thread in ProcessRuntime.run {inside_cpu:.0f}, "
                f"in guard + finish {scripts_cpu:.0f}: waiting on Redis "
                f"{begin + finish - scripts_cpu:.0f} of the scripts' {begin + finish:.0f}"
            )
    for r in results if not (args.hollow or args.floor) else []:
        # Enough decimals that one command more or less in these runs shows: 1,001 commands
        # in 500 runs print as 2.002, never as a "2.00" next to FAIL.
        digits = max(2, math.ceil(math.log10(max(r.counted_runs, 1))))
        commands = ", ".join(
            f"{name} {count:.{digits}f}" for name, count in sorted(r.commands.items())
        )
        good = r.counted_commands == TARGET_ROUND_TRIPS * r.counted_runs
        log(
            f"{r.label:>12}: {r.round_trips:.{digits}f} Redis round trips per wrapped run "
            f"({r.counted_commands} commands in {r.counted_runs} runs under MONITOR: "
            f"{commands}; {r.request_bytes:.0f} request bytes per run)  "
            f"target {TARGET_ROUND_TRIPS}: {verdict(good)}"
        )
        ok &= good
    return ok


def span(r: PoolResult, top: str, bottom: str) -> str:
    ratios = r.per_round(top, bottom)
    return f"{min(ratios):.3f}-{max(ratios):.3f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--pools", default="prefork,solo", help="comma-separated")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks of each arm per round")
    parser.add_argument("--warmup", type=int, default=300, help="tasks of each arm first")
    parser.add_argument(
        "--count-runs",
        type=int,
        default=500,
        help="wrapped runs whose round trips are counted under MONITOR",
    )
    parser.add_argument(
        "--loglevel",
        default="WARNING",
        help="the worker's -l (celery's default is WARNING; INFO logs two lines per task)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="time ProcessRuntime.run and the two scripts inside the worker",
    )
    parser.add_argument(
        "--hollow",
        action="store_true",
        help="replace ProcessRuntime.run with a canned report: what the task costs around it",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="as --hollow, after one PING: the ceiling of any guard with one round trip",
    )
    parser.add_argument("--profile", metavar="FILE", help="cProfile the solo worker into FILE")
    parser.add_argument("--keep", action="store_true", help="keep the worker logs' directory")
    return parser.parse_args(argv)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    unknown = set(pools) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown pool(s): {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started ignoring it
    bench = Bench(args)
    log(
        f"bench {bench.prefix}: Redis {args.redis_url}, {os.cpu_count()} CPUs, "
        f"worker log level {args.loglevel}; logs in {bench.workdir}"
    )
    load_before = os.getloadavg()
    try:
        results = [bench.bench_pool(pool, args.concurrency) for pool in pools]
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        bench.cleanup()
    ok = report(results, args)
    after = os.getloadavg()[0]
    log(
        f"load average (1 min) before {load_before[0]:.2f}, after {after:.2f}: other processes "
        "on this machine share its CPUs with the worker and Redis"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
