"""The cluster, for real: ``celery worker`` and ``celery beat`` processes against real Redis,
each test on its own key prefix (state keys and the broker's keys).

Every time compared here is a Redis-clock time from the history or the state hash; the test's
own clock is used only for deadlines. Tests wait on conditions (``wait_for``), never a sleep.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from services.schedule import tick_gap
from services.state import StateStore
from tests.cluster import Cluster, Proc
from tests.svc_celery.probes import probe_key
from tests.waiting import wait_for

pytestmark = pytest.mark.celery


# -- helpers -----------------------------------------------------------------------------------


def runs(store: StateStore, name: str, limit: int = 100) -> list[dict[str, Any]]:
    """Finished runs, oldest first."""
    return sorted(store.history(name, limit), key=lambda row: row["started_at"])


def wait_runs(store: StateStore, name: str, count: int, timeout: float = 30,
              cluster: Cluster | None = None) -> list[dict[str, Any]]:
    wait_for(lambda: len(store.history(name, count + 50)) >= count, timeout,
             f"{count} finished runs of {name}" + (
                 f"\n{cluster.logs()}" if cluster is not None else ""))
    return runs(store, name)


def gaps(history: list[dict[str, Any]]) -> list[float]:
    """Seconds between the starts of consecutive runs (Redis clock)."""
    return [b["started_at"] - a["started_at"] for a, b in itertools.pairwise(history)]


def worker_of(cluster: Cluster, worker_id: str) -> Proc:
    """The worker (its main process) that owns pool process ``host:pid``."""
    pid = int(worker_id.rsplit(":", 1)[1])
    group = os.getpgid(pid)  # Cluster starts each worker in a session of its own
    return next(proc for proc in cluster.procs if proc.pid == group)


def publish_tick(redis_url: str, prefix: str, service: str, serializer: str,
                 task_id: str | None = None) -> str:
    """Publish a Celery (protocol 2) message for ``svc.<service>`` straight to the test's
    broker, serialized with ``serializer``; returns its task id."""
    task_id = task_id or str(uuid.uuid4())
    headers = {
        "lang": "py", "task": f"svc.{service}", "id": task_id, "root_id": task_id,
        "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None,
        "shadow": None, "timelimit": [None, None], "argsrepr": "()",
        "kwargsrepr": "{'kind': 'tick'}", "origin": "test@pytest", "ignore_result": True,
    }
    body = ((), {"kind": "tick"}, {"callbacks": None, "errbacks": None, "chain": None,
                                   "chord": None})
    exchange = Exchange("celery", type="direct")
    queue = Queue("celery", exchange, routing_key="celery")
    with Connection(redis_url, transport_options={"global_keyprefix": f"{prefix}-broker:"}) as conn:
        conn.Producer().publish(body, exchange=exchange, routing_key="celery", declare=[queue],
                                serializer=serializer, headers=headers, correlation_id=task_id)
    return task_id


def unacked_tasks(client: redis.Redis, prefix: str) -> dict[str, str]:
    """Messages a worker took from the broker and has not acknowledged: delivery tag -> task id.
    Kombu puts them back in the queue after the visibility timeout (an hour by default)."""
    raw = client.hgetall(f"{prefix}-broker:unacked")
    return {tag: json.loads(value)[0]["headers"]["id"] for tag, value in raw.items()}


def wait_held(client: redis.Redis, prefix: str, cluster: Cluster,
              seconds: float = 1.0) -> dict[str, str]:
    """Unacknowledged messages that stayed so for ``seconds``: held by a busy worker, not the
    ones an idle worker takes and acknowledges at once."""
    first_seen: dict[str, float] = {}

    def held() -> dict[str, str]:
        now = time.monotonic()
        current = unacked_tasks(client, prefix)
        for tag in list(first_seen):
            if tag not in current:
                del first_seen[tag]
        for tag in current:
            first_seen.setdefault(tag, now)
        return {tag: task for tag, task in current.items() if now - first_seen[tag] >= seconds}

    return wait_for(held, 10, f"a busy worker to hold a prefetched tick\n{cluster.logs()}")


def restore_unacked(redis_url: str, prefix: str, tags: list[str]) -> None:
    """What kombu does to a dead worker's unacknowledged messages once the visibility timeout
    has passed: put them back in their queue, for any worker to take."""
    options = {"global_keyprefix": f"{prefix}-broker:"}
    with Connection(redis_url, transport_options=options) as conn:
        channel = conn.default_channel
        for tag in tags:
            channel.qos.restore_by_tag(tag)


def cluster(tmp_path: Path, prefix: str, redis_url: str, services: list[str],
            **kwargs: Any) -> Cluster:
    return Cluster(tmp_path, prefix, redis_url, services=services, **kwargs)


# -- cadence -----------------------------------------------------------------------------------


def test_service_runs_at_its_interval(tmp_path: Path, prefix: str, redis_url: str) -> None:
    interval = 0.5
    with cluster(tmp_path, prefix, redis_url, ["ticker"],
                 env={"SVC_TICKER_INTERVAL_SECONDS": str(interval)}) as c:
        w1 = c.worker("w1")
        c.beat()
        store = c.store()
        history = wait_runs(store, "ticker", 10, cluster=c)

    # Task events are opt-in, as in plain Celery (Flower turns them on in the workers it
    # watches: tests/browser/test_flower.py); they cost a quarter of a worker's throughput.
    assert "task events: OFF" in w1.output()
    assert all(row["outcome"] == "ok" for row in history), history
    between = gaps(history)
    # The guard never lets two ticks closer than the tick gap run.
    assert min(between) >= tick_gap(interval), between
    # Over the window, about one run per interval (generous: scheduling jitter, slow CI).
    mean = (history[-1]["started_at"] - history[0]["started_at"]) / (len(history) - 1)
    assert interval * 0.8 <= mean <= interval * 1.8, (mean, between)


# -- mutual exclusion --------------------------------------------------------------------------


def test_slow_service_never_overlaps_itself_on_two_workers(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    # Slow: interval 0.3 s, update 1 s: a tick arrives while a run is in progress.
    with cluster(tmp_path, prefix, redis_url, ["slow"], env={"SLOW_SECONDS": "1.0"}) as c:
        w1 = c.worker("w1")
        w2 = c.worker("w2")
        c.beat()
        store = c.store()
        history = wait_runs(store, "slow", 5, cluster=c)
        refused = (w1.output() + w2.output()).count("not running: leased")

    for row in history:
        assert row["outcome"] == "ok", row
        assert row["duration"] >= 1.0, row
        assert not row["lease_lost"], row
    for before, after in itertools.pairwise(history):
        assert after["started_at"] >= before["finished_at"], (before, after)
    # Ticks did arrive while a run held the lease, and the guard refused them.
    assert refused >= 1, c.logs()


# -- pause and resume through plain Redis ------------------------------------------------------


def test_hset_paused_stops_every_worker_and_resume_brings_runs_back(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    interval = 0.5
    state_key = f"{prefix}:ticker"
    with cluster(tmp_path, prefix, redis_url, ["ticker"],
                 env={"SVC_TICKER_INTERVAL_SECONDS": str(interval)}) as c:
        workers = [c.worker("w1"), c.worker("w2")]
        c.beat()
        store = c.store()
        wait_runs(store, "ticker", 3, cluster=c)

        marks = [len(w.output()) for w in workers]
        redis_client.hset(state_key, "paused", 1)
        paused_at = store.now()
        runs_at_pause = store.read("ticker").runs
        # Every worker refuses ticks: each says so at least twice after the pause.
        for worker, mark in zip(workers, marks, strict=True):
            wait_for(lambda w=worker, m=mark: w.output()[m:].count("'skipped: paused'") >= 2,
                     20, f"{worker.name} to refuse ticks while paused\n{c.logs()}")
        started_while_paused = [row for row in store.history("ticker", 100)
                                if row["started_at"] > paused_at]
        assert started_while_paused == []
        assert store.read("ticker").runs == runs_at_pause

        redis_client.hset(state_key, "paused", 0)
        resumed_at = store.now()
        wait_for(lambda: sum(row["started_at"] > resumed_at
                             for row in store.history("ticker", 100)) >= 2,
                 15, f"runs after resume\n{c.logs()}")
        # The first run after resume comes within a couple of intervals.
        first = min(row["started_at"] for row in store.history("ticker", 100)
                    if row["started_at"] > resumed_at)
        assert first - resumed_at < 4 * interval


# -- failures, retries, max_failures -----------------------------------------------------------


def test_failures_count_across_workers_retry_once_and_stop_at_max_failures(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    # Failing: interval 1 s, retry_delay 0.4 s, max_failures 4. The failure count must carry
    # over from one worker to the next: worker 1 fails first, then (paused while workers
    # change) worker 2 goes on counting from where worker 1 left off.
    state_key = f"{prefix}:failing"
    with cluster(tmp_path, prefix, redis_url, ["failing"]) as c:
        w1 = c.worker("w1")
        c.beat()
        store = c.store()
        wait_for(lambda: store.read("failing").failures >= 1, 20,
                 f"a first failure\n{c.logs()}")
        redis_client.hset(state_key, "paused", 1)
        c.stop(w1)
        first_workers = {row["worker"] for row in store.history("failing")}
        failures_on_w1 = store.read("failing").failures
        assert 1 <= failures_on_w1 < 4

        w2 = c.worker("w2")
        redis_client.hset(state_key, "paused", 0)
        wait_for(lambda: not store.read("failing").running, 30,
                 f"the service to stop itself\n{c.logs()}")
        wait_for(lambda: "not running: stopped" in w2.output(), 10,
                 f"a tick refused as stopped\n{c.logs()}")
        state = store.read("failing")
        history = runs(store, "failing")
        logs = w1.output() + w2.output()

    assert state.failures == 4
    assert not state.running
    assert state.stop_reason is not None
    assert "max_failures=4" in state.stop_reason
    assert "upstream said no" in state.stop_reason
    # Every failure counted exactly once, on whichever worker ran it.
    assert [row["outcome"] for row in history] == ["error"] * 4, history
    assert [row["seq"] for row in history] == [1, 2, 3, 4]
    later = [row["worker"] for row in history[failures_on_w1:]]
    assert later and not set(later) & first_workers, (first_workers, history)
    # Celery retried a failed run once after retry_delay_seconds...
    assert "retrying once in" in logs
    assert "Retry in" in logs
    # ...which shows in the history as two failures closer together than a tick interval.
    between = gaps(history)
    assert any(0.4 <= gap < 0.9 for gap in between), between


def test_a_run_that_lost_its_lease_does_not_overwrite_the_newer_run(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    with cluster(tmp_path, prefix, redis_url, ["slow"], env={"SLOW_SECONDS": "3"}) as c:
        workers = [c.worker("w1"), c.worker("w2")]
        c.beat()
        store = c.store()
        ((old_token, _),) = wait_for(lambda: store.lease_holders("slow"), 20,
                                     f"a run to start\n{c.logs()}")
        before = store.read("slow")
        assert before.last_started_at is not None
        # A second into the run, its lease disappears (an expiry, an operator's DEL).
        wait_for(lambda: store.now() - before.last_started_at >= 1.0, 10, "a second of run")
        redis_client.delete(f"{prefix}:slow:lease")
        ((new_token, _),) = wait_for(
            lambda: [h for h in store.lease_holders("slow") if h[0] != old_token], 10,
            f"a newer run on the idle worker\n{c.logs()}")
        old_id, new_id = old_token.split("@")[0], new_token.split("@")[0]

        # The newer run's guard first records the old run as lost (its lease is gone); the old
        # run's own finish then replaces that entry: one entry per run.
        old = wait_for(lambda: [r for r in store.history("slow")
                                if r["run_id"] == old_id and r["outcome"] != "lost"], 10,
                       f"the old run to finish\n{c.logs()}")[0]
        assert [r["outcome"] for r in store.history("slow") if r["run_id"] == old_id] == ["ok"]
        after_old = store.read("slow")
        new = wait_for(lambda: [r for r in store.history("slow") if r["run_id"] == new_id], 10,
                       f"the newer run to finish\n{c.logs()}")[0]
        after_new = store.read("slow")
        logs = "".join(w.output() for w in workers)
        for worker in workers:
            c.kill(worker)  # the next 3 s run would only slow the shutdown down

    assert old["lease_lost"] is True and old["superseded"] is True, old
    assert new["lease_lost"] is False and new["superseded"] is False, new
    assert old["worker"] != new["worker"]
    # The old run's finish left the state to the newer run...
    assert after_old.last_finished_at == before.last_finished_at, (before, after_old)
    assert after_old.runs == before.runs + 1
    assert after_old.last_started_at == new["started_at"]
    # ...whose own finish is the one recorded.
    assert after_new.last_finished_at == new["finished_at"]
    assert "lost its lease" in logs
    assert "only its history entry was written" in logs


# -- crash recovery ----------------------------------------------------------------------------


def test_sigkill_mid_run_frees_the_service_after_the_lease_and_is_not_replayed(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    lease = 3.0
    with cluster(tmp_path, prefix, redis_url, ["sleeper"], lease_seconds=lease,
                 env={"SLEEPER_SECONDS": "6"}) as c:
        c.worker("w1")
        c.worker("w2")
        c.beat()
        store = c.store()
        holders = wait_for(lambda: store.lease_holders("sleeper"), 20,
                           f"a run of sleeper to start\n{c.logs()}")
        killed_token = holders[0][0]
        state = store.read("sleeper")
        victim = worker_of(c, killed_token.split("@", 1)[1])
        # While its pool process is busy, the victim's main process has prefetched the next
        # tick (prefetch 1, acks early): a message that dies with it, unacknowledged.
        held = wait_held(redis_client, prefix, c)
        c.kill(victim)
        assert [t for t, _ in store.lease_holders("sleeper")] == [killed_token]  # mid-run
        assert store.client.hget(f"{prefix}:sleeper", "last_run_id") == killed_token
        killed_started = state.last_started_at
        assert killed_started is not None
        survivor = next(p for p in c.procs if p.name in ("w1", "w2") and p is not victim)

        new_holders = wait_for(
            lambda: [t for t, _ in store.lease_holders("sleeper") if t != killed_token],
            20, f"another run after the lease expired\n{c.logs()}")
        new_token = new_holders[0]
        assert worker_of(c, new_token.split("@", 1)[1]) is survivor
        new_started = store.read("sleeper").last_started_at
        assert new_started is not None
        # Nobody ran the service until the killed run's lease had expired.
        assert new_started - killed_started >= lease - 0.002, (killed_started, new_started)
        assert store.read("sleeper").runs == state.runs + 1

        # "Hours later" the broker hands the dead worker's messages out again: the ticks have
        # expired by then and are dropped, not replayed.
        assert set(held) <= set(unacked_tasks(redis_client, prefix)), held
        restore_unacked(redis_url, prefix, list(held))
        for task_id in held.values():
            wait_for(lambda t=task_id: f"Discarding revoked task: svc.sleeper[{t}]"
                     in survivor.output(), 10, f"restored tick {task_id} to be dropped\n{c.logs()}")
        assert store.read("sleeper").runs == state.runs + 1

        new_run_id = new_token.split("@", 1)[0]
        wait_for(lambda: any(row["run_id"] == new_run_id for row in store.history("sleeper")),
                 20, f"the new run to finish\n{c.logs()}")
        history = store.history("sleeper")
        c.kill(survivor)  # its next 6 s run would only slow the shutdown down

    killed_run_id = killed_token.split("@", 1)[0]
    # The killed run is in the history once, as lost, with the dead worker's name (found by
    # the next run's guard when its lease had lapsed); the new run is there as ok.
    assert [row["run_id"] for row in history] == [new_run_id, killed_run_id], history
    row, lost = history
    assert row["outcome"] == "ok"
    assert not row["lease_lost"]
    assert row["worker"] == new_token.split("@", 1)[1]
    assert lost["outcome"] == "lost" and lost["worker"] == killed_token.split("@", 1)[1]
    assert "worker died" in lost["error"]


def test_sigkill_of_a_pool_process_mid_run_is_recovered_after_the_lease(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    # The OOM killer's way: only the pool process dies; its worker lives on and forks another.
    lease = 3.0
    with cluster(tmp_path, prefix, redis_url, ["sleeper"], lease_seconds=lease,
                 env={"SLEEPER_SECONDS": "4"}) as c:
        workers = [c.worker("w1"), c.worker("w2")]
        c.beat()
        store = c.store()
        ((killed_token, _),) = wait_for(lambda: store.lease_holders("sleeper"), 20,
                                        f"a run of sleeper to start\n{c.logs()}")
        state = store.read("sleeper")
        killed_pid = int(killed_token.rsplit(":", 1)[1])
        owner = worker_of(c, killed_token.split("@", 1)[1])
        os.kill(killed_pid, signal.SIGKILL)
        wait_for(lambda: "exited with 'signal 9 (SIGKILL)'" in owner.output(), 10,
                 f"the worker to notice its pool process died\n{c.logs()}")

        ((new_token, _),) = wait_for(
            lambda: [h for h in store.lease_holders("sleeper") if h[0] != killed_token], 20,
            f"another run after the lease expired\n{c.logs()}")
        new_state = store.read("sleeper")
        new_run_id = new_token.split("@", 1)[0]
        wait_for(lambda: any(row["run_id"] == new_run_id for row in store.history("sleeper")),
                 20, f"the new run to finish\n{c.logs()}")
        history = store.history("sleeper")
        alive = [w.popen.poll() is None for w in workers]
        for worker in workers:
            c.kill(worker)

    assert alive == [True, True]
    assert int(new_token.rsplit(":", 1)[1]) != killed_pid
    assert state.last_started_at is not None and new_state.last_started_at is not None
    assert new_state.last_started_at - state.last_started_at >= lease - 0.002
    # The killed tick was acknowledged on receipt: it is neither retried nor replayed.
    assert new_state.runs == state.runs + 1
    # The killed run is in the history once, as lost, with its pool process's name.
    killed_run_id = killed_token.split("@", 1)[0]
    assert [row["run_id"] for row in history] == [new_run_id, killed_run_id], history
    assert history[1]["outcome"] == "lost"
    assert history[1]["worker"] == killed_token.split("@", 1)[1]
    assert history[0]["outcome"] == "ok" and not history[0]["lease_lost"]


# -- duplicate ticks ---------------------------------------------------------------------------


def test_two_beat_processes_one_leads_and_nothing_runs_twice(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    interval = 1.0
    with cluster(tmp_path, prefix, redis_url, ["ticker"],
                 env={"SVC_TICKER_INTERVAL_SECONDS": str(interval)}) as c:
        workers = [c.worker("w1"), c.worker("w2")]
        beats = [c.beat("beat1"), c.beat("beat2")]
        store = c.store()
        wait_runs(store, "ticker", 6, cluster=c)
        started = store.read("ticker").runs
        sent = sorted(b.output().count("Sending due task svc.ticker") for b in beats)
        history = runs(store, "ticker")
        refused = sum(w.output().count("not running: duplicate") for w in workers)

    # One leader sends; the standby sends nothing, so no tick is refused as a duplicate.
    assert sent[0] == 0 and sent[1] >= 5, c.logs()
    assert sum("standing by" in b.output() for b in beats) == 1, c.logs()
    assert min(gaps(history)) >= tick_gap(interval), gaps(history)
    assert started <= sent[1], (started, sent)
    assert refused == 0, c.logs()


def test_a_tick_delivered_twice_runs_once(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    with cluster(tmp_path, prefix, redis_url, ["ticker"],
                 env={"SVC_TICKER_INTERVAL_SECONDS": "5"}) as c:
        workers = [c.worker("w1"), c.worker("w2")]  # no Beat: only this message
        store = c.store()
        task_id = publish_tick(redis_url, prefix, "ticker", "json")
        publish_tick(redis_url, prefix, "ticker", "json", task_id=task_id)
        logs = wait_for(
            lambda: (text := "".join(w.output() for w in workers)).count(
                f"svc.ticker[{task_id}] succeeded") >= 2 and text,
            20, f"both deliveries to be handled\n{c.logs()}")
        history = store.history("ticker")

    assert len(history) == 1, history
    assert store.read("ticker").runs == 1
    assert "not running: duplicate" in logs


def test_ticks_nobody_took_in_time_are_dropped_not_piled_up(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    # Ticker: interval 0.5 s, so its ticks expire after the 2 s floor.
    with cluster(tmp_path, prefix, redis_url, ["ticker"]) as c:
        c.stop(c.worker("w0"))  # registers the service, then no worker is left
        beat = c.beat()
        wait_for(lambda: beat.output().count("Sending due task svc.ticker") >= 10, 20,
                 f"ticks to pile up with no worker\n{c.logs()}")
        w1 = c.worker("w1")
        store = c.store()
        wait_runs(store, "ticker", 3, cluster=c)
        log = w1.output()
        history = runs(store, "ticker")

    # The ticks sent more than 2 s before the worker came were discarded, unrun...
    assert log.count("Discarding revoked task: svc.ticker[") >= 3, log
    # ...and of those still fresh, the first ran (late) and the others were refused as
    # duplicates: no burst. The next on-time tick runs whenever it comes, so at most one gap
    # is shorter than the tick gap (the late run, then the rhythm).
    assert "not running: duplicate" in log, log
    assert sum(gap < tick_gap(0.5) for gap in gaps(history)) <= 1, gaps(history)


# -- queues ----------------------------------------------------------------------------------


def test_a_service_that_names_its_queue_runs_on_workers_that_consume_it(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    # Queued names the queue "svc-test-queued"; Ticker uses the default one.
    with cluster(tmp_path, prefix, redis_url, ["queued", "ticker"]) as c:
        only_default = c.worker("w1", extra=["-Q", "celery"])
        plain = c.worker("w2")  # no -Q: every queue the services name, and the default
        c.beat()
        store = c.store()
        queued = wait_runs(store, "queued", 4, cluster=c)
        wait_runs(store, "ticker", 2, cluster=c)
        plain_pids = pool_pids(plain)
        default_log = only_default.output()

    assert {int(row["worker"].rsplit(":", 1)[1]) for row in queued} <= plain_pids, queued
    assert "Task svc.queued[" not in default_log
    assert "Task svc.ticker[" in default_log + plain.output()


# -- serialization -----------------------------------------------------------------------------


def test_a_pickled_message_is_refused_and_logged(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    with cluster(tmp_path, prefix, redis_url, ["ticker"]) as c:
        w1 = c.worker("w1")  # no Beat: the only messages are the ones published here
        store = c.store()
        pickled_id = publish_tick(redis_url, prefix, "ticker", "pickle")
        wait_for(lambda: "Refusing to deserialize" in w1.output(), 20,
                 f"the worker to refuse the pickled message\n{c.logs()}")
        # The worker is alive and runs the very same message when it is JSON: the pickled one
        # was refused for its serializer, not for its shape.
        publish_tick(redis_url, prefix, "ticker", "json")
        wait_runs(store, "ticker", 1, cluster=c)
        state = store.read("ticker")
        log = w1.output()

    assert state.runs == 1  # the JSON message's run, and no other
    assert ("Received invalid task message: Refusing to deserialize untrusted content of type "
            "pickle") in log, log
    assert pickled_id not in log.split("Refusing to deserialize", 1)[0]
    assert f"svc.ticker[{pickled_id}]" not in log


# -- the per-process runtime -------------------------------------------------------------------


def pool_pids(worker: Proc) -> set[int]:
    """The pids of ``worker``'s pool processes (its children, same process group)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == worker.pid:
            continue
        try:
            if os.getpgid(int(entry.name)) == worker.pid:
                found.add(int(entry.name))
        except ProcessLookupError:
            continue
    return found


def test_configure_service_runs_once_per_worker_process(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    configured = probe_key(prefix, "lifecycle", "configured")
    with cluster(tmp_path, prefix, redis_url, ["lifecycle"]) as c:
        w1 = c.worker("w1", concurrency=2)
        w2 = c.worker("w2", concurrency=1)
        c.beat()
        store = c.store()
        history = wait_runs(store, "lifecycle", 12, cluster=c)
        counts = {int(pid): int(n) for pid, n in redis_client.hgetall(configured).items()}
        children = {w.name: pool_pids(w) for w in (w1, w2)}

    # Built once in each pool process that ran it (on its first task there), never in a
    # worker's main process, and not again for each of the many runs.
    assert len(children["w1"]) == 2 and len(children["w2"]) == 1, children
    assert set(counts) <= children["w1"] | children["w2"], (counts, children)
    assert set(counts.values()) == {1}, counts
    ran_on = {int(row["worker"].rsplit(":", 1)[1]) for row in history}
    assert ran_on <= set(counts), (ran_on, counts)


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_warm_shutdown_lets_the_run_finish_then_cleans_up(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis,
        pool: str) -> None:
    configured = probe_key(prefix, "lifecycle", "configured")
    cleaned = probe_key(prefix, "lifecycle", "cleaned")
    with cluster(tmp_path, prefix, redis_url, ["lifecycle"],
                 env={"LIFECYCLE_SECONDS": "1.5"}) as c:
        w1 = c.worker("w1", pool=pool, concurrency=2 if pool == "prefork" else 1)
        c.beat()
        store = c.store()
        ((token, _),) = wait_for(lambda: store.lease_holders("lifecycle"), 20,
                                 f"a run to start\n{c.logs()}")
        assert redis_client.hgetall(cleaned) == {}
        c.warm_stop(w1)  # SIGTERM to the main process, mid-run
        assert w1.popen.returncode == 0, w1.output()[-3000:]
        history = store.history("lifecycle")
        built = redis_client.hgetall(configured)
        done = redis_client.hgetall(cleaned)

    # The run in progress finished normally before the worker exited...
    run = next(row for row in history if row["token"] == token)
    assert run["outcome"] == "ok" and run["duration"] >= 1.5, run
    assert store.lease_holders("lifecycle") == []
    # ...and cleanup() ran once in every process that built the service (on its first task
    # there: the other prefork process may not have had one yet).
    assert 1 <= len(built) <= (2 if pool == "prefork" else 1), built
    assert done == built, (built, done)


def test_sigterm_to_every_worker_process_interrupts_the_run_and_frees_the_lease(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    # systemd (KillMode=control-group) and Ctrl-C signal every process of the worker: the
    # pool process mid-run is interrupted. That is a shutdown, not the service's failure.
    configured = probe_key(prefix, "lifecycle", "configured")
    cleaned = probe_key(prefix, "lifecycle", "cleaned")
    with cluster(tmp_path, prefix, redis_url, ["lifecycle"], lease_seconds=30,
                 env={"LIFECYCLE_SECONDS": "20"}) as c:
        w1 = c.worker("w1")
        c.beat()
        store = c.store()
        ((token, _),) = wait_for(lambda: store.lease_holders("lifecycle"), 20,
                                 f"a run to start\n{c.logs()}")
        c.stop(w1)  # SIGTERM to the process group
        # Freed now, not when the 30 s lease would have expired. The pool process records
        # the run as it exits, which under load can come a moment after the main process.
        wait_for(lambda: not store.lease_holders("lifecycle"), 10,
                 f"the lease to be freed\n{c.logs()}")
        holders = store.lease_holders("lifecycle")
        state = store.read("lifecycle")
        history = store.history("lifecycle")
        built = redis_client.hgetall(configured)
        done = redis_client.hgetall(cleaned)

    assert holders == []
    (run,) = history
    assert run["token"] == token
    assert run["outcome"] == "interrupted", run
    assert run["duration"] < 20, run
    assert state.failures == 0 and state.running, state
    assert done == built, (built, done)


def test_a_long_update_keeps_its_lease(tmp_path: Path, prefix: str, redis_url: str) -> None:
    # The update (4 s, blocking the loop) outlives the lease (1.5 s) more than twice over;
    # the renewal thread keeps the lease, so no other worker starts a run meanwhile.
    with cluster(tmp_path, prefix, redis_url, ["slow"], lease_seconds=1.5,
                 env={"SLOW_SECONDS": "4"}) as c:
        workers = [c.worker("w1"), c.worker("w2")]
        c.beat()
        store = c.store()
        (first,) = wait_runs(store, "slow", 1, timeout=30, cluster=c)
        state = store.read("slow")
        logs = "".join(w.output() for w in workers)
        for worker in workers:
            c.kill(worker)  # a second 4 s run would only slow the shutdown down

    assert first["outcome"] == "ok", first
    assert first["duration"] >= 4.0, first
    assert first["lease_lost"] is False, first
    assert first["superseded"] is False, first
    # At most one more run has started, and only after the first one finished.
    assert state.runs in (1, 2), state
    if state.runs == 2:
        assert state.last_started_at is not None
        assert state.last_started_at >= first["finished_at"], (state, first)
    assert "not running: leased" in logs, logs
    assert "lost its lease" not in logs, logs


def test_recycled_pool_processes_configure_and_clean_up_once_each(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    configured = probe_key(prefix, "lifecycle", "configured")
    cleaned = probe_key(prefix, "lifecycle", "cleaned")
    with cluster(tmp_path, prefix, redis_url, ["lifecycle"]) as c:
        w1 = c.worker("w1", concurrency=1, extra=["--max-tasks-per-child", "2"])
        c.beat()
        store = c.store()
        # Every pool process runs two ticks, then exits and is replaced.
        wait_for(lambda: len(redis_client.hgetall(configured)) >= 3, 20,
                 f"pool processes to be replaced\n{c.logs()}")
        wait_runs(store, "lifecycle", 2, cluster=c)
        c.stop(w1)
        built = redis_client.hgetall(configured)
        done = redis_client.hgetall(cleaned)

    assert set(built.values()) == {"1"}, built
    # Each retired process cleaned up what it built, once; so did the last one at shutdown.
    assert done == built, (built, done)


# -- cooperative pause -------------------------------------------------------------------------


def test_paused_running_and_lease_lost_read_inside_update_reflect_redis(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    events_key = probe_key(prefix, "cooperative", "events")
    state_key = f"{prefix}:cooperative"

    def events() -> list[str]:
        return redis_client.lrange(events_key, 0, -1)

    def started_runs() -> list[str]:
        return [e.split()[1] for e in events() if e.startswith("started ")]

    def next_run(after: list[str]) -> str:
        return wait_for(lambda: [r for r in started_runs() if r not in after], 20,
                        f"a run after {after}\n{c.logs()}")[0]

    with cluster(tmp_path, prefix, redis_url, ["cooperative"]) as c:
        c.worker("w1")
        c.worker("w2")
        c.beat()
        store = c.store()
        first = next_run([])
        redis_client.hset(state_key, "paused", 1)
        wait_for(lambda: f"paused {first}" in events(), 10,
                 f"the run to see the pause\n{c.logs()}")

        redis_client.hset(state_key, "paused", 0)
        second = next_run([first])
        redis_client.hset(state_key, "running", 0)
        wait_for(lambda: f"stopped {second}" in events(), 10,
                 f"the run to see the stop\n{c.logs()}")

        redis_client.hset(state_key, "running", 1)
        third = next_run([first, second])
        redis_client.delete(f"{prefix}:cooperative:lease")  # as if it had expired
        wait_for(lambda: f"lost {third}" in events(), 10,
                 f"the run to see its lease lost\n{c.logs()}")
        redis_client.hset(state_key, "paused", 1)  # any run started since ends now
        wait_for(lambda: len(store.history("cooperative")) >= 3, 10,
                 f"the runs recorded\n{c.logs()}")
        history = {row["run_id"]: row for row in store.history("cooperative")}

    seen = events()
    assert seen[:5] == [f"started {first}", f"paused {first}",
                        f"started {second}", f"stopped {second}", f"started {third}"], seen
    # Another worker may start a run before the third notices; nothing else ended the third.
    assert [e for e in seen if e.endswith(third)] == [f"started {third}", f"lost {third}"], seen
    # Every run ended early (the update would have lasted 30 s) and ended well.
    for run_id in (first, second, third):
        assert history[run_id]["outcome"] == "ok", history
        assert history[run_id]["duration"] < 10, history
    assert history[third]["lease_lost"] is True, history
