"""What an operator's reads cost at scale: ``svc list`` and ``svc status --json`` as fresh
processes, and one ``svc metrics`` scrape, against a raw pipelined read of the same keys, for
1,000, 5,000 and 10,000 services, side by side in one run.

    .venv/bin/python bench/cli_reads.py [--services 1000,5000,10000] [--rounds 5]
                                        [--redis-url URL]

For each N the bench writes, under a key prefix of its own (``bench-health-cli<random>-<N>``),
what a running cluster holds, with bench/health.py's own cluster: N registrations
(``StateStore.register_services``) plus this machine's own services (a worker of this code
registers them too, so ``svc`` reads the index alone), each service's state hash with a recent
success and one history row, the due set, two workers' heartbeats serving every service and
the leader Beat's lease. Heartbeats and successes are stamped again between timed calls, never
during one, so every service stays ``ok``.

Arms, each round timing every arm once in an order that rotates from round to round (drift
on a shared machine hits all arms alike); medians of the rounds:

* raw (the baseline): a fresh ``python -c`` that imports redis-py, reads the index's names
  (HKEYS) and pipelines HGETALL state, ZRANGE lease, LINDEX history and HGETALL inflight per
  service: the same keys ``svc`` reads, interpreter start included, as it is in ``svc``;
* ``svc list``, ``svc status --json`` and ``svc status`` (every service in full, as text),
  as fresh processes (COLUMNS=200, output to a pipe): wall time, ratio to raw (target <= 4x
  for the first two; the text of every service in full is printed with no target), and the
  output's size;
* one ``svc metrics`` scrape: ``worker.metrics.exposition(op)`` in this process (target
  under 1 s at 10,000 services), and the same over HTTP from ``worker.metrics.serve``,
  gzip accepted as Prometheus asks (and decompressed here); bytes and series per scrape.
  The scraper is long-lived, as ``svc metrics`` is: its first scrape (untimed) parses the
  index's settings, later ones only what changed.

Every process runs with bytecode cached in the bench's temporary directory (an installed svc
has its bytecode; PYTHONDONTWRITEBYTECODE in the caller's environment is dropped for them),
and each arm is called once untimed before the rounds.

Every key the bench writes is deleted at the end (SCAN + DEL on its own prefix only), also on
an error; its own redis-server (the default; ``/usr/bin/redis-server`` when present) is
stopped and its directory removed. It never flushes, stops or reconfigures a server it did
not start.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from bench import health  # noqa: E402
from bench.health import SYSTEM_REDIS, load, machine  # noqa: E402
from tests.servers import OwnRedis  # noqa: E402
from worker.metrics import exposition, serve  # noqa: E402
from worker.ops import Operator  # noqa: E402

SVC = REPO / ".venv" / "bin" / "svc"
TARGET_RATIO = 4.0
TARGETS_AT_10K = {"svc list": 2.0, "svc status --json": 2.0, "scrape": 1.0}
# The reads a script or a dashboard makes of every service. ``svc status`` as text (every
# service in full, for a person) is timed and printed beside them, with no target.
RATIO_TARGETS = ("svc list", "svc status --json")
RAW = """
import sys, redis
prefix = sys.argv[1]
r = redis.Redis.from_url(sys.argv[2], decode_responses=True)
names = sorted(r.hkeys(prefix + ":_services"))
with r.pipeline(transaction=False) as pipe:
    for n in names:
        pipe.hgetall(f"{prefix}:{n}")
        pipe.zrange(f"{prefix}:{n}:lease", 0, -1, withscores=True)
        pipe.lindex(f"{prefix}:{n}:history", 0)
        pipe.hgetall(f"{prefix}:{n}:inflight")
    replies = pipe.execute()
sys.stdout.write(str(len(replies)))
"""


def log(message: str = "") -> None:
    print(message, flush=True)


@contextlib.contextmanager
def cluster_of(url: str, run_id: str, count: int) -> Iterator[health.Cluster]:
    """bench/health.py's cluster, with this machine's own services registered too, as a
    worker of this code registers them: so ``svc`` reads the index alone."""
    with health.cluster_of(url, run_id, count) as cluster:
        cluster.store.register_services(cluster.op.registry.configs())
        yield cluster


def env_for(cluster: health.Cluster, pycache: Path) -> dict[str, str]:
    """The processes' environment. Bytecode is cached (in the bench's own directory, not the
    repository), as it is for an installed svc: with PYTHONDONTWRITEBYTECODE every svc would
    compile the project's modules anew, which the baseline, all site-packages, never does."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SVC_", "CELERY_"))
           and key not in ("REDIS_URL", "PYTHONDONTWRITEBYTECODE")}
    env.update(REDIS_URL=cluster.settings.redis_url, SVC_KEY_PREFIX=cluster.prefix,
               COLUMNS="200", NO_COLOR="1", PYTHONPYCACHEPREFIX=str(pycache))
    return env


def run(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """One fresh process: wall time and the size of what it printed."""
    start = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace')[-1500:]}")
    return took, len(done.stdout)


def scrape_http(port: int) -> tuple[float, int]:
    """One scrape as Prometheus makes it (gzip accepted); the size of the text."""
    start = time.perf_counter()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        size = len(gzip.decompress(answer.read()))
    return time.perf_counter() - start, size


def measure(cluster: health.Cluster, rounds: int, pycache: Path) -> dict[str, float]:
    env = env_for(cluster, pycache)
    python = str(REPO / ".venv" / "bin" / "python")
    scraper = Operator(cluster.settings)
    server = serve(scraper, "127.0.0.1", 0)
    port = server.server_address[1]
    sizes: dict[str, int] = {}

    def timed(label: str, fn: Callable[[], tuple[float, int]]) -> Callable[[], float]:
        def arm() -> float:
            took, sizes[label] = fn()
            return took
        return arm

    def in_process() -> tuple[float, int]:
        start = time.perf_counter()
        text = exposition(scraper)
        took = time.perf_counter() - start
        sizes["series"] = sum(1 for line in text.splitlines() if not line.startswith("#"))
        return took, len(text)

    arms = {
        "raw": timed("raw", lambda: run(
            [python, "-c", RAW, cluster.prefix, cluster.settings.redis_url], env)),
        "svc list": timed("svc list", lambda: run([str(SVC), "list"], env)),
        "svc status --json": timed("svc status --json",
                                   lambda: run([str(SVC), "status", "--json"], env)),
        "svc status": timed("svc status", lambda: run([str(SVC), "status"], env)),
        "scrape": timed("scrape", in_process),
        "scrape (HTTP)": timed("scrape (HTTP)", lambda: scrape_http(port)),
    }
    times: dict[str, list[float]] = {label: [] for label in arms}
    order = list(arms)
    try:
        for arm in arms.values():  # warm: bytecode cached, the scraper's settings parsed
            arm()
        for i in range(rounds):
            cluster.pulse()
            for label in order[i % len(order):] + order[:i % len(order)]:
                times[label].append(arms[label]())
    finally:
        server.shutdown()
        server.server_close()
        scraper.close()
    medians = {label: statistics.median(values) for label, values in times.items()}
    raw = medians["raw"]
    log(f"\nN = {cluster.count:,} services ({cluster.count + len(cluster.own):,} with this "
        "machine's own); "
        f"{rounds} rounds; load {load()}")
    for label, value in medians.items():
        ratio = f"{value / raw:5.2f}x raw" if label.startswith("svc") else "         "
        target = ""
        if label in RATIO_TARGETS:
            verdict = "ok" if value / raw <= TARGET_RATIO else "MISSED"
            target = f"(target <= {TARGET_RATIO:g}x: {verdict})"
        limit = TARGETS_AT_10K.get(label) if cluster.count >= 10_000 else None
        if limit is not None:
            target += f" (target < {limit:g} s: {'ok' if value < limit else 'MISSED'})"
        log(f"  {label:18} {value * 1000:8.0f} ms  {ratio}  {sizes.get(label, 0) / 1024:8,.0f} "
            f"KiB  {target}")
    log(f"  one scrape: {sizes.get('series', 0):,} series")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="1000,5000,10000", help="comma-separated N")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per N")
    parser.add_argument("--redis-url", help="a Redis to use (a private key prefix on it) "
                        "instead of a redis-server of the bench's own")
    args = parser.parse_args()
    counts = [int(part) for part in args.services.split(",") if part]
    run_id = f"cli{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    log(f"machine: {machine()}")
    log(f"python {platform.python_version()}, redis-py {redis.__version__}; "
        f"load average at start: {load()}")
    with contextlib.ExitStack() as stack:
        if args.redis_url:
            url, where = args.redis_url, f"given Redis {args.redis_url.rsplit('@', 1)[-1]}"
        else:
            server = OwnRedis()
            if os.access(SYSTEM_REDIS, os.X_OK):
                server.executable = SYSTEM_REDIS
            stack.enter_context(server)
            url, where = server.url, f"redis-server of its own ({server.executable})"
        pycache = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="svc-bench-")))
        log(f"{where}; key prefix bench-health-{run_id}-<N>; medians of the rounds, after one "
            "untimed call of each arm")
        results = {}
        for count in counts:
            with cluster_of(url, run_id, count) as cluster:
                results[count] = measure(cluster, args.rounds, pycache)
    log("\nsummary (ms, ratio to raw in the same run; json: svc status --json, text: svc "
        "status)")
    log(f"  {'N':>7} {'raw':>7} {'list':>7} {'ratio':>6} {'json':>7} {'ratio':>6} "
        f"{'scrape':>7} {'http':>7} {'text':>7}")
    for count, m in results.items():
        log(f"  {count:7,} {m['raw'] * 1000:7.0f} {m['svc list'] * 1000:7.0f} "
            f"{m['svc list'] / m['raw']:5.2f}x {m['svc status --json'] * 1000:7.0f} "
            f"{m['svc status --json'] / m['raw']:5.2f}x {m['scrape'] * 1000:7.0f} "
            f"{m['scrape (HTTP)'] * 1000:7.0f} {m['svc status'] * 1000:7.0f}")
    log(f"\nload average at end: {load()}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
