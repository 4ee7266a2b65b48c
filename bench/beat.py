"""Beat at scale: what one Beat process costs and how late its ticks go out, for our
``RedisScheduler`` side by side with plain Celery Beat and celery-redbeat, in one run.

    .venv/bin/python bench/beat.py [--services 1000,10000] [--seconds 60] [--warmup 15]
                                   [--arms ours,plain,redbeat] [--repeat 1] [--profile DIR]

For each N (default 1,000 and 10,000 services, each every 10 s) and each arm, one Beat runs
(``celery -A bench.beat_apps beat -l INFO``, as the Procfile runs it), alone: arms run one
after another, never at once, so they do not take each other's CPU (the order is reversed
on every other repeat). Each arm gets a redis-server of its own on a free port
(``tests/servers.py`` ``OwnRedis``, ``/usr/bin/redis-server`` when present) as its broker and
store; the shared Redis on 6379 is never used. The arms (``bench/beat_apps.py``):

* ours: the project's app, unchanged (``RedisScheduler``), with N registrations written by
  ``StateStore.register_services`` under a unique ``SVC_KEY_PREFIX``; no workers;
* plain: Celery Beat on its defaults (``PersistentScheduler``), a ``beat_schedule`` of N
  entries every 10 s;
* redbeat: celery-redbeat's ``RedBeatScheduler`` with the same N entries.

Measured per arm, over a window of ``--seconds`` (rounded up to whole periods) that
starts ``--warmup`` seconds after the first tick arrived: the Beat process's CPU (utime +
stime from psutil) as % of one core (and per tick sent); ticks sent per second against due
per second (N / interval); and tick lateness p50/p99/max, due time to send. Lateness comes
from the same probe in every arm (``bench/beat_probe.py``): a ``before_task_publish``
receiver stamps the send time and the due time (ours: the tick's slot; plain and RedBeat:
the entry's ``last_run_at + run_every``) into each message's headers, and the bench's drain
thread (``bench/beat_drain.py``) reads them back while it empties the queue (LRANGE + DEL in
one transaction, every 20 ms), so nothing piles up in Redis. For ours the leader's own
``<prefix>:_beat:stats`` (p50/p99 over the last minute) is printed too, as a cross-check.

``--profile DIR`` runs each Beat with cProfile armed for the measurement window
(``BENCH_BEAT_PROFILE``) and prints where its time went; the profiler slows the Beat, so
those runs' figures are not the reference ones; ``--timing DIR`` times a few coarse steps
instead, at about 1 us a call. ``--experiment`` changes ours to measure a suggestion
(``bench/beat_experiments.py``); such figures are not ours as it is. Targets (pass/fail):
ours at most 10% of one core at 1,000 x 10 s; ours p99 lateness under 1 s at 10,000 x 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import redis  # noqa: E402

from bench.beat_apps import service_names  # noqa: E402
from bench.beat_drain import Drain  # noqa: E402
from bench.beat_experiments import EXPERIMENTS  # noqa: E402
from bench.beat_profile import report_profile, report_timing  # noqa: E402
from services.config import ServiceConfig  # noqa: E402
from services.keys import Keys  # noqa: E402
from services.state import StateStore  # noqa: E402
from tests.servers import OwnRedis  # noqa: E402

ARMS = ("ours", "plain", "redbeat")
SYSTEM_REDIS = "/usr/bin/redis-server"
CPU_TARGET_PCT = 10.0
P99_TARGET_S = 1.0
STOP_TIMEOUT = 30.0


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Result:
    arm: str
    services: int
    interval: float
    window: float
    cpu_seconds: float
    sent: float
    p50: float
    p99: float
    worst: float
    errors: int
    stats: dict[str, str]
    redis_peak: str

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_seconds / self.window

    @property
    def sent_rate(self) -> float:
        return self.sent / self.window

    @property
    def due_rate(self) -> float:
        return self.services / self.interval



def quantiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max (nan when there are none)."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    ordered = sorted(values)
    return (ordered[int(0.5 * len(ordered))], ordered[min(len(ordered) - 1,
            int(0.99 * len(ordered)))], ordered[-1])


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs, {model}, {platform.platform()}"


def versions(server: str) -> str:
    found = [f"python {platform.python_version()}"]
    for package in ("celery", "kombu", "redis", "celery-redbeat"):
        found.append(f"{package} {version(package)}")
    done = subprocess.run([server, "--version"], capture_output=True, text=True, check=False)
    found.append(done.stdout.split(" sha=")[0].strip() or server)
    return ", ".join(found)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def own_redis() -> OwnRedis:
    server = OwnRedis()
    if os.access(SYSTEM_REDIS, os.X_OK):
        server.executable = SYSTEM_REDIS
    return server


def register(url: str, prefix: str, count: int, interval: float) -> None:
    """What workers would have written: one registration per service."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        configs = {name: ServiceConfig(name=name, interval_seconds=interval, max_failures=3,
                                       retry_delay_seconds=1.0).as_dict()
                   for name in service_names(count)}
        StateStore(client, Keys(prefix)).register_services(configs)
    finally:
        client.close()


def beat_env(args: argparse.Namespace, arm: str, count: int, url: str, prefix: str,
             workdir: Path, profile: Path | None) -> dict[str, str]:
    interval = args.interval
    foreign = ("SVC_", "CELERY_", "BENCH_")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(foreign) and key not in ("REDIS_URL", "DATABASE_URL")}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
               BENCH_BEAT_ARM=arm, BENCH_BEAT_SERVICES=str(count),
               BENCH_BEAT_INTERVAL=str(interval), BENCH_BEAT_BROKER_URL=url,
               BENCH_BEAT_PREFIX=prefix, REDIS_URL=url, SVC_KEY_PREFIX=prefix,
               DATABASE_URL=f"sqlite:///{workdir / 'services.db'}")
    if profile is not None:
        env["BENCH_BEAT_PROFILE" if args.profile else "BENCH_BEAT_TIMING"] = str(profile)
    if args.experiment:
        env["BENCH_BEAT_EXPERIMENTS"] = args.experiment
    return env


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)


def sleep_while_alive(proc: subprocess.Popen[bytes], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if proc.poll() is not None:
            raise RuntimeError(f"Beat exited ({proc.returncode}) during {what}")
        time.sleep(min(0.5, left))


def run_arm(args: argparse.Namespace, arm: str, count: int, root: Path) -> Result:
    workdir = root / f"{arm}-{count}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    prefix = f"benchbeat-{uuid.uuid4().hex[:8]}"
    probe_dir = args.profile or args.timing
    profile = Path(probe_dir).resolve() / f"{arm}-{count}.out" if probe_dir else None
    with own_redis() as server:
        if arm == "ours":
            register(server.url, prefix, count, args.interval)
        drain = Drain(server.url)
        drain.start()
        beat_log = workdir / "beat.log"
        command = [sys.executable, "-m", "celery", "-A", "bench.beat_apps", "beat",
                   "-l", args.loglevel, "-s", str(workdir / "celerybeat-schedule"),
                   "--pidfile", str(workdir / "beat.pid")]
        with beat_log.open("wb") as out:
            proc = subprocess.Popen(
                command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                env=beat_env(args, arm, count, server.url, prefix, workdir, profile))
        try:
            deadline = time.monotonic() + args.interval + 90
            while drain.first_at is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{arm}: no tick arrived; Beat's log ends:\n"
                                       f"{beat_log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.1)
            sleep_while_alive(proc, drain.first_at + args.warmup - time.time(), "warm-up")
            process = psutil.Process(proc.pid)
            if profile is not None:
                os.kill(proc.pid, signal.SIGUSR1)
            cpu0, t0 = sum(process.cpu_times()[:2]), time.time()
            sleep_while_alive(proc, args.seconds, "the window")
            cpu1, t1 = sum(process.cpu_times()[:2]), time.time()
            if profile is not None:
                os.kill(proc.pid, signal.SIGUSR2)
            client = redis.Redis.from_url(server.url, decode_responses=True)
            stats = client.hgetall(Keys(prefix).beat_stats()) if arm == "ours" else {}
            time.sleep(0.5)  # the last messages of the window reach the drain
            peak = str(client.info("memory").get("used_memory_peak_human", "?"))
            client.close()
        finally:
            stop(proc)
            drain.stop()
        sent, lateness = drain.window(t0 * 1000, t1 * 1000)
        if profile is not None and args.profile:
            report_profile(profile, f"{arm} x {count}", args.profile_top)
        elif profile is not None:
            report_timing(profile, f"{arm} x {count}", t1 - t0, sent, cpu1 - cpu0)
        errors = sum(1 for line in beat_log.read_text(errors="replace").splitlines()
                     if "ERROR" in line or "Traceback" in line)
        return Result(arm, count, args.interval, t1 - t0, cpu1 - cpu0, sent,
                      *quantiles(lateness), errors, stats, peak)


HEADER = (f"{'arm':<8} {'N':>6} {'CPU %core':>9} {'ms/tick':>7} {'sent/s':>8} {'due/s':>7} "
          f"{'sent/due':>8} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'errors':>6}  notes")


def row(result: Result) -> str:
    per_tick = 1000 * result.cpu_seconds / result.sent if result.sent else float("nan")
    notes = f"redis peak {result.redis_peak}"
    if result.stats:
        notes += (f"; own stats p50 {result.stats.get('lateness_p50', '?')} "
                  f"p99 {result.stats.get('lateness_p99', '?')}")
    return (f"{result.arm:<8} {result.services:>6} {result.cpu_pct:>9.1f} {per_tick:>7.3f} "
            f"{result.sent_rate:>8.1f} {result.due_rate:>7.1f} "
            f"{result.sent_rate / result.due_rate:>8.3f} {result.p50:>7.3f} "
            f"{result.p99:>7.3f} {result.worst:>7.3f} {result.errors:>6}  "
            f"{notes}")


def ratios(results: list[Result]) -> list[str]:
    lines = []
    by = {(r.arm, r.services): r for r in results}
    for count in sorted({r.services for r in results}):
        ours = by.get(("ours", count))
        for other in ("plain", "redbeat"):
            theirs = by.get((other, count))
            if ours is None or theirs is None:
                continue
            lines.append(
                f"  N={count:>6} ours/{other:<7}: CPU {_ratio(ours.cpu_pct, theirs.cpu_pct)}, "
                f"sent/s {_ratio(ours.sent_rate, theirs.sent_rate)}, "
                f"p99 {_ratio(ours.p99, theirs.p99)}")
    return lines


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "inf"


def targets(results: list[Result]) -> list[str]:
    lines = []
    for result in results:
        if result.arm != "ours" or result.interval != 10:
            continue
        if result.services == 1000:
            verdict = "PASS" if result.cpu_pct <= CPU_TARGET_PCT else "FAIL"
            lines.append(f"  {verdict}: ours CPU at 1,000 x 10 s = {result.cpu_pct:.1f}% of one "
                         f"core (target <= {CPU_TARGET_PCT:g}%)")
        if result.services == 10000:
            p99 = result.p99
            verdict = "PASS" if p99 < P99_TARGET_S else "FAIL"
            lines.append(f"  {verdict}: ours p99 lateness at 10,000 x 10 s = {p99:.3f} s "
                         f"(target < {P99_TARGET_S:g} s)")
    return lines or ["  (no ours arm at 1,000 or 10,000 x 10 s in this run)"]


def median_result(group: list[Result]) -> Result:
    """Median CPU, rate and quantiles of repeats of one arm and N, as one Result."""
    first = group[0]
    mid = statistics.median
    return Result(first.arm, first.services, first.interval, 1.0,
                  mid(r.cpu_pct for r in group) / 100, mid(r.sent_rate for r in group),
                  mid(r.p50 for r in group), mid(r.p99 for r in group),
                  mid(r.worst for r in group), sum(r.errors for r in group), {}, "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="1000,10000", help="comma-separated N")
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="seconds after the first tick before the window opens")
    parser.add_argument("--interval", type=float, default=10.0, help="every service's period")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--loglevel", default="INFO", help="Beat's -l (the Procfile's INFO)")
    parser.add_argument("--profile", metavar="DIR", help="cProfile each Beat's window into DIR")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--timing", metavar="DIR",
                        help="time a few coarse steps inside each Beat over the window")
    parser.add_argument("--experiment", default="", help="ours changed, to measure a "
                        f"suggestion: comma-separated {', '.join(EXPERIMENTS)}")
    args = parser.parse_args()
    counts = [int(part) for part in args.services.split(",") if part]
    arms = [arm for arm in args.arms.split(",") if arm]
    if unknown := set(arms) - set(ARMS):
        parser.error(f"unknown arms {sorted(unknown)}; expected some of {', '.join(ARMS)}")
    if unknown := set(filter(None, args.experiment.split(","))) - set(EXPERIMENTS):
        parser.error(f"unknown experiments {sorted(unknown)}; expected {', '.join(EXPERIMENTS)}")
    if args.profile and args.timing:
        parser.error("--profile and --timing exclude each other")
    for directory in (args.profile, args.timing):
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
    # Whole periods: plain Beat sends in bursts, and a window holding one burst more or less
    # than another would skew its rate.
    args.seconds = math.ceil(args.seconds / args.interval - 1e-9) * args.interval
    server = own_redis().executable
    log(f"machine: {machine()}")
    log(f"versions: {versions(server)}")
    log(f"load average at start: {load()}")
    log(f"arms {', '.join(arms)} x N {', '.join(map(str, counts))}, every {args.interval:g} s; "
        f"window {args.seconds:g} s after {args.warmup:g} s of warm-up; Beat -l {args.loglevel}; "
        f"arms run one at a time, never concurrently, each with a redis-server of its own"
        + ("; UNDER cProfile (figures not reference)" if args.profile else "")
        + ("; with coarse step timers" if args.timing else "")
        + (f"; EXPERIMENT (ours changed): {args.experiment}" if args.experiment else ""))
    results: list[Result] = []
    root = Path(tempfile.mkdtemp(prefix="svc-bench-beat-"))
    for repeat in range(args.repeat):
        order = arms if repeat % 2 == 0 else arms[::-1]
        for count in counts:
            for arm in order:
                log(f"[{repeat + 1}/{args.repeat}] {arm} x {count}: starting "
                    f"(load {load()})")
                result = run_arm(args, arm, count, root)
                results.append(result)
                log(f"[{repeat + 1}/{args.repeat}] {row(result)}")
    log(f"\nresults (load average at end: {load()}; Beat logs under {root})")
    log(HEADER)
    for result in sorted(results, key=lambda r: (r.services, ARMS.index(r.arm))):
        log(row(result))
    if args.repeat > 1:
        log("\nmedians over repeats (notes: none; max = median of maxima)")
        log(HEADER)
        groups: dict[tuple[int, str], list[Result]] = {}
        for result in results:
            groups.setdefault((result.services, result.arm), []).append(result)
        medians = [median_result(groups[key])
                   for key in sorted(groups, key=lambda k: (k[0], ARMS.index(k[1])))]
        for result in medians:
            log(row(result))
        results = medians
    log("\nratios (below 1: ours uses less CPU / sends fewer per s / is less late)")
    for line in ratios(results):
        log(line)
    log("\ntargets")
    for line in targets(results):
        log(line)


if __name__ == "__main__":
    main()
