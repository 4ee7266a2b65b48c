"""What the task wrapper costs: a no-op service run through ``svc.<name>`` against a raw
Celery no-op task, in the same worker, on the same broker, in the same run.

    .venv/bin/python bench/overhead.py [--rounds 5] [--tasks 2000] [--pools prefork,solo]

For each pool (prefork with concurrency 2, then solo) the bench starts one real
``celery -A worker worker`` on a key prefix and a broker prefix of its own
(``SVC_KEY_PREFIX``, ``SVC_BROKER_PREFIX``), with only the no-op service of
``bench/svc_bench/SVC_Noop.py`` registered (``SVC_PACKAGES``, ``SVC_SERVICES``) and the raw
task of ``bench/raw_tasks.py`` added by ``-I bench.raw_tasks``. The worker's code is the
production code, unchanged; Beat is not started (the service's interval is an hour).

Throughput. Rounds alternate raw/wrapped and wrapped/raw (ABBA, so drift of a shared machine
hits both sides alike). For each round the bench stops the worker consuming the queue
(``cancel_consumer``), publishes all N messages (so that publishing never competes with the
worker for CPU), lets the worker consume again (``add_consumer``) and times from the first
completion it sees to the last: tasks/s = completions in that window / its length. Wrapped
messages carry ``kwargs={"kind": "trigger"}``: a trigger skips the duplicate-tick window, so
every message really runs the guard, ``update()`` and the finish script; the service allows 4
concurrent runs so the two prefork processes never refuse each other by the lease.
Completions are counted without a result backend and without a Redis round trip: each worker
process bumps its own slot of a shared memory-mapped file (``bench/counters.py``), once per
raw task and once per ``update()``, so both sides pay the same few hundred nanoseconds. The
service's ``runs`` field in Redis is checked against that count after every wrapped round
(a refused guard would show up as a shortfall).

Round trips. ``INFO commandstats`` counts every client of the server, and other processes
(tests, other workers) use the same Redis, so its deltas are not exact. Instead, for a
separate batch of wrapped runs after the timed rounds, the bench listens with ``MONITOR``
and counts the top-level commands (those clients sent, not the ones scripts ran) that name
one of the service's keys (``<prefix>:noop``, ``:lease``, ``:history``, ``:audit``) and do
not come from the bench's own connection. Those are exactly the wrapper's round trips,
whatever else the server is doing. Divided by the runs that batch made (counted as above),
that is round trips per run; the same pass reports the request bytes per run (RESP framing
included). MONITOR slows the server, so it never runs during the timed rounds.

The summary gives, per pool, tasks/s of each kind over all rounds and their ratio, and the
ratio per round (each round pairs a raw and a wrapped batch run back to back). The verdict
uses the median of the per-round ratios: on a shared machine a burst of foreign load that
hits one batch skews that round, and the median of the pairs shrugs it off where the overall
ratio does not; both are printed, with the load average before and after.

Targets: prefork c=2 keeps >= 0.90 of raw throughput, solo >= 0.75, 2 round trips
per run. ``--breakdown`` also times, inside the worker, ``ProcessRuntime.run`` and the guard
and finish calls (see ``bench/raw_tasks.py``), to split the wrapper's cost per run; it adds
a few microseconds per run, so the reference figures are taken without it. ``--profile FILE``
runs the solo worker under cProfile and writes its stats to FILE (for ``python -m pstats``);
the profiler slows everything, so its figures are not the reference ones.

Every process and every key the bench creates is removed at the end, also on Ctrl-C or an
error.
"""

from __future__ import annotations

import argparse
import contextlib
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
TARGETS = {"prefork": 0.90, "solo": 0.75}
TARGET_ROUND_TRIPS = 2.0
MONITOR_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Round:
    kind: str
    tasks: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


@dataclass
class PoolResult:
    pool: str
    concurrency: int
    rounds: list[tuple[Round, Round]] = field(default_factory=list)
    round_trips: float = float("nan")
    commands: dict[str, float] = field(default_factory=dict)
    request_bytes: float = float("nan")
    counted_runs: int = 0
    breakdown: list[int] = field(default_factory=lambda: [0] * counters.FIELDS)

    def total(self, kind: str) -> float:
        picked = [r for pair in self.rounds for r in pair if r.kind == kind]
        return sum(r.tasks for r in picked) / sum(r.seconds for r in picked)

    @property
    def ratio(self) -> float:
        return self.total("wrapped") / self.total("raw")

    @property
    def ratios(self) -> list[float]:
        return [wrapped.rate / raw.rate for raw, wrapped in self.rounds]

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def label(self) -> str:
        return f"{self.pool} c={self.concurrency}" if self.pool == "prefork" else self.pool


class Bench:
    """One benchmark run: its prefixes, temporary directory, worker and Redis keys."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
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
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log: Path | None = None
        self.hostname = ""

    # -- the worker ------------------------------------------------------------------------

    def start_worker(self, pool: str, concurrency: int, profile: str | None = None) -> None:
        self.hostname = f"{self.prefix}-{pool}@{socket.gethostname()}"
        self.worker_log = self.workdir / f"worker-{pool}.log"
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
                "PYTHONUNBUFFERED": "1",
                "REDIS_URL": self.args.redis_url,
                "SVC_KEY_PREFIX": self.prefix,
                "SVC_BROKER_PREFIX": self.broker_prefix,
                "SVC_PACKAGES": "bench.svc_bench",
                "SVC_SERVICES": SERVICE,
                "DATABASE_URL": f"sqlite:///{self.workdir / 'services.db'}",
                counters.ENV_VAR: str(self.counter_file),
                "BENCH_BREAKDOWN": "1" if self.args.breakdown else "0",
            }
        )
        runner = [sys.executable]
        if profile:
            runner += ["-m", "cProfile", "-o", str(Path(profile).resolve())]
        command = [
            *runner,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            self.hostname,
            "-l",
            self.args.loglevel,
            "-I",
            "bench.raw_tasks",
            "--without-gossip",
            "--without-mingle",
        ]
        with self.worker_log.open("wb") as out:
            self.worker = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.tail()}")
            if self.app.control.ping(destination=[self.hostname], timeout=0.5):
                return
        raise RuntimeError(f"worker not ready after 60s:\n{self.tail()}")

    def stop_worker(self) -> None:
        proc, self.worker = self.worker, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Pool children left behind by a parent that died first.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def tail(self) -> str:
        if self.worker_log is None or not self.worker_log.exists():
            return ""
        return self.worker_log.read_text(errors="replace")[-4000:]

    def control(self, command: str) -> None:
        call = getattr(self.app.control, command)
        replies = call(QUEUE, destination=[self.hostname], reply=True, timeout=5)
        if not replies:
            raise RuntimeError(f"worker did not answer {command}:\n{self.tail()}")

    # -- measuring -------------------------------------------------------------------------

    def done(self, kind: str) -> int:
        raw, wrapped = self.counters.totals()
        return raw if kind == "raw" else wrapped

    def publish(self, kind: str, n: int) -> None:
        name, kwargs = (
            (counters.RAW_TASK, {}) if kind == "raw" else (WRAPPED_TASK, {"kind": "trigger"})
        )
        with self.app.producer_or_acquire() as producer:
            for _ in range(n):
                self.app.send_task(name, kwargs=kwargs, producer=producer)

    def wait_done(self, kind: str, target: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.done(kind) < target:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{kind}: {self.done(kind)} of {target} done after "
                    f"{seconds:.0f}s:\n{self.tail()}"
                )
            if self.worker is None or self.worker.poll() is not None:
                raise RuntimeError(f"worker died:\n{self.tail()}")
            time.sleep(0.001)

    def timed_round(self, kind: str, n: int) -> Round:
        """Queue n messages while the worker does not consume, then time the drain."""
        self.control("cancel_consumer")
        start = self.done(kind)
        self.publish(kind, n)
        self.control("add_consumer")
        target = start + n
        deadline = time.monotonic() + max(60.0, n / 50)
        first_t, first_done = None, start
        while True:
            now, done = time.perf_counter(), self.done(kind)
            if first_t is None and done > start:
                first_t, first_done = now, done
            if done >= target:
                break
            if time.monotonic() > deadline or self.worker is None or self.worker.poll() is not None:
                raise RuntimeError(f"{kind}: {done - start} of {n} done:\n{self.tail()}")
            time.sleep(0.001)
        assert first_t is not None
        return Round(kind, done - first_done, now - first_t)

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
        self.wait_done("wrapped", done_before + n, 60)
        runs = self.done("wrapped") - done_before
        self.redis.echo(marker)
        thread.join(30)
        if failure:
            raise RuntimeError(f"MONITOR failed: {failure[0]!r}")
        if thread.is_alive():
            raise RuntimeError("MONITOR did not see the end marker")
        if self.runs_in_redis() - runs_before != runs:
            raise RuntimeError("runs in Redis disagree with completed update() calls")
        result.counted_runs = runs
        result.round_trips = sum(per_command.values()) / runs
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
        self.start_worker(pool, concurrency, profile)
        try:
            for kind in ("raw", "wrapped"):  # connections, scripts, services, caches
                self.timed_round(kind, self.args.warmup)
            log(f"{'round':>5} {'raw/s':>9} {'wrapped/s':>10} {'ratio':>6}")
            for index in range(self.args.rounds):
                order = ("raw", "wrapped") if index % 2 == 0 else ("wrapped", "raw")
                runs_before, sums_before = self.runs_in_redis(), self.counters.sums()
                measured = {kind: self.timed_round(kind, self.args.tasks) for kind in order}
                sums_after = self.counters.sums()
                for index_, (after, before) in enumerate(zip(sums_after, sums_before, strict=True)):
                    result.breakdown[index_] += after - before
                refused = self.args.tasks - (self.runs_in_redis() - runs_before)
                if refused:
                    raise RuntimeError(f"{refused} wrapped messages did not run update()")
                raw, wrapped = measured["raw"], measured["wrapped"]
                result.rounds.append((raw, wrapped))
                log(
                    f"{index + 1:>5} {raw.rate:>9.0f} {wrapped.rate:>10.0f} "
                    f"{wrapped.rate / raw.rate:>6.3f}"
                )
            self.count_round_trips(result, self.args.count_runs)
        finally:
            self.stop_worker()
        return result

    # -- cleaning up -------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.stop_worker()
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


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: list[PoolResult], args: argparse.Namespace) -> bool:
    log(
        f"\n== summary ({args.rounds} rounds x {args.tasks} tasks of each kind per pool; "
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
    for r in results:
        commands = ", ".join(f"{name} {count:.2f}" for name, count in sorted(r.commands.items()))
        good = abs(r.round_trips - TARGET_ROUND_TRIPS) < 1e-9
        log(
            f"{r.label:>12}: {r.round_trips:.2f} Redis round trips per wrapped run "
            f"({commands}; {r.request_bytes:.0f} request bytes per run; {r.counted_runs} runs "
            f"under MONITOR)  target {TARGET_ROUND_TRIPS:.0f}: {verdict(good)}"
        )
        ok &= good
    return ok


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
    parser.add_argument("--tasks", type=int, default=2000, help="tasks of each kind per round")
    parser.add_argument("--warmup", type=int, default=300, help="tasks of each kind first")
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
