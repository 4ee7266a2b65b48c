"""``svc metrics``: scraped over HTTP while a real worker runs, pauses and fails services."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from beat_schedule.leader import BeatLease
from services.heartbeat import BEAT, WORKER, Heartbeat
from services.keys import Keys
from services.registry import Registry
from services.settings import load_settings
from services.state import StateStore
from tests.operator.conftest import Svc
from tests.waiting import wait_for
from worker.metrics import DURATION_BUCKETS_MS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse(text: str) -> Samples:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read().decode())


def value(samples: Samples, name: str, service: str, **labels: str) -> float | None:
    key = (name, tuple(sorted({"service": service, **labels}.items())))
    return samples.get(key)


def start_metrics(svc: Svc, processes: list, workdir: Path) -> str:
    port = free_port()
    processes.append(svc.popen("metrics", "--port", str(port), "--address", "127.0.0.1",
                               log=workdir / "metrics.log"))
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        try:
            return bool(scrape(url))
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_for(answers, 20, f"svc metrics to answer on {url}")
    return url


@pytest.mark.celery
def test_metrics_follow_runs_pauses_and_failures(make_cluster, svc_for, processes,
                                                 tmp_path: Path, prefix: str) -> None:
    cluster = make_cluster(["ticker", "failing"])
    cluster.worker("w1")
    url = start_metrics(svc_for(cluster), processes, tmp_path)

    first = scrape(url)
    assert first[("svc_redis_up", ())] == 1
    for service in ("ticker", "failing"):
        assert value(first, "svc_running", service) == 1
        assert value(first, "svc_paused", service) == 0
        assert value(first, "svc_failures", service) == 0
        assert value(first, "svc_runs_started_total", service) == 0
        assert value(first, "svc_last_success_timestamp_seconds", service) is None
    assert value(first, "svc_max_failures", "failing") == 4
    assert value(first, "svc_interval_seconds", "ticker") == 0.5

    cluster.beat()
    ran = wait_for(lambda: (s := scrape(url)) and (value(s, "svc_runs_started_total", "ticker")
                                                   or 0) >= 2 and s, 30, "ticker runs in metrics")
    success = value(ran, "svc_last_success_timestamp_seconds", "ticker")
    assert success is not None
    wait_for(lambda: value(scrape(url), "svc_last_success_timestamp_seconds", "ticker") > success,
             20, "a later success")

    wait_for(lambda: value(scrape(url), "svc_running", "failing") == 0, 30,
             "failing to stop in the metrics")
    stopped = scrape(url)
    assert value(stopped, "svc_failures", "failing") == 4
    assert value(stopped, "svc_last_success_timestamp_seconds", "failing") is None
    assert value(stopped, "svc_last_run_timestamp_seconds", "failing") is not None

    # A plain Redis HSET pauses it; the next scrape says so and the run count stands still.
    store = cluster.store()
    store.client.hset(Keys(prefix).state("ticker"), "paused", 1)
    assert value(scrape(url), "svc_paused", "ticker") == 1
    store.client.hset(Keys(prefix).state("ticker"), "paused", 0)
    assert value(scrape(url), "svc_paused", "ticker") == 0


@pytest.mark.celery
def test_runs_total_and_duration_histogram(make_cluster, svc_for, processes,
                                           tmp_path: Path) -> None:
    # The histogram is opt-in per service: these three ask for it (as the workers register).
    cluster = make_cluster(["ticker", "failing", "slow"], env={
        "SLOW_SECONDS": "0.3", **{f"SVC_{name.upper()}_DURATION_HISTOGRAM": "1"
                                  for name in ("ticker", "failing", "slow")}})
    cluster.worker("w1", concurrency=2)
    url = start_metrics(svc_for(cluster), processes, tmp_path)
    cluster.beat()
    samples = wait_for(
        lambda: (s := scrape(url)) and value(s, "svc_running", "failing") == 0
        and (value(s, "svc_runs_total", "ticker", outcome="ok") or 0) >= 3
        and (value(s, "svc_runs_total", "slow", outcome="ok") or 0) >= 2 and s,
        40, "runs counted by outcome")
    assert value(samples, "svc_runs_total", "failing", outcome="error") == 4
    assert value(samples, "svc_runs_total", "failing", outcome="ok") == 0
    for service in ("ticker", "failing", "slow"):
        total = sum(value(samples, "svc_runs_total", service, outcome=o)
                    for o in ("ok", "error", "interrupted"))
        buckets = [value(samples, "svc_run_duration_seconds_bucket", service,
                         le=f"{b / 1000:g}") for b in DURATION_BUCKETS_MS]
        buckets.append(value(samples, "svc_run_duration_seconds_bucket", service, le="+Inf"))
        assert buckets == sorted(buckets), f"{service}: buckets must be cumulative"
        assert buckets[-1] == total == value(samples, "svc_run_duration_seconds_count", service)
    # Slow's runs take 0.3 s: none in the buckets below it, all by 0.5 s, and in the sum.
    slow_ok = value(samples, "svc_runs_total", "slow", outcome="ok")
    assert value(samples, "svc_run_duration_seconds_bucket", "slow", le="0.25") == 0
    assert value(samples, "svc_run_duration_seconds_bucket", "slow", le="0.5") == slow_ok
    assert value(samples, "svc_run_duration_seconds_sum", "slow") >= 0.3 * slow_ok
    assert value(samples, "svc_run_duration_seconds_bucket", "ticker", le="0.01") >= 3

    # Counters survive a restart of svc metrics: they live in Redis, not in its process.
    before = value(scrape(url), "svc_runs_total", "failing", outcome="error")
    processes[-1].terminate()
    processes[-1].wait(timeout=10)
    again = start_metrics(svc_for(cluster), processes, tmp_path)
    assert value(scrape(again), "svc_runs_total", "failing", outcome="error") == before


def test_lua_and_collector_agree_on_bucket_bounds() -> None:
    lua = resources.files("services").joinpath("lua", "finish_run.lua").read_text()
    listed = re.search(r"ipairs\(\{([0-9,\s]+)\}\)", lua)
    assert listed, "finish_run.lua lists no duration bounds"
    assert tuple(int(b) for b in listed.group(1).replace("\n", " ").split(",")) == \
        DURATION_BUCKETS_MS


def test_once_prints_a_scrape_and_reports_redis_down(svc: Svc, store, prefix: str) -> None:
    store.client.hset(Keys(prefix).state("failing"), mapping={"failures": 2, "paused": 1})
    result = svc("metrics", "--once")
    assert result.exit_code == 0, result.output
    samples = parse(result.stdout)
    assert value(samples, "svc_failures", "failing") == 2
    assert value(samples, "svc_paused", "failing") == 1
    assert value(samples, "svc_paused", "ticker") == 0
    assert "# HELP svc_runs_total" in result.stdout

    down = svc("metrics", "--once", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert down.exit_code == 0, down.output
    assert parse(down.stdout) == {("svc_redis_up", ()): 0}


def test_metrics_port_in_use_is_one_line(svc: Svc) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = svc.run("metrics", "--port", str(port), "--address", "127.0.0.1", timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.startswith("svc: OSError") and "Traceback" not in proc.stderr


# -- health and liveness: the metrics the alerting rules read --------------------------------


def once(svc: Svc) -> Samples:
    result = svc("metrics", "--once")
    assert result.exit_code == 0, result.output
    return parse(result.stdout)


def problems(samples: Samples, service: str) -> set[str]:
    """The svc_health_problem codes the scrape holds for ``service`` (each with value 1)."""
    found = {dict(labels)["problem"]: v for (name, labels), v in samples.items()
             if name == "svc_health_problem" and dict(labels)["service"] == service}
    assert set(found.values()) <= {1.0}
    return set(found)


def register(store: StateStore, *names: str) -> None:
    """As a worker does at start: the services' settings in the index, so Beat schedules them
    and health knows their schedule."""
    store.register_services(Registry.discover(packages=["tests.svc_celery"],
                                              only=list(names)).configs())


def test_stopped_service_is_unhealthy_and_a_paused_one_healthy(svc: Svc) -> None:
    assert svc("stop", "ticker", "--reason", "disk full").exit_code == 0
    assert svc("pause", "slow", "--reason", "db maintenance").exit_code == 0
    samples = once(svc)
    assert value(samples, "svc_running", "ticker") == 0
    assert value(samples, "svc_healthy", "ticker") == 0
    assert value(samples, "svc_health_problem", "ticker", problem="stopped") == 1
    # Stopped runs nothing, so no worker or Beat is missing for it: the one problem is stopped.
    assert problems(samples, "ticker") == {"stopped"}
    # Paused counts as healthy, and has no problem series at all.
    assert value(samples, "svc_healthy", "slow") == 1
    assert problems(samples, "slow") == set()
    # Failing is untouched: running, with neither a worker nor a Beat in this test.
    assert value(samples, "svc_healthy", "failing") == 0
    assert problems(samples, "failing") == {"no_beat", "no_worker"}
    for service in ("ticker", "slow", "failing"):
        assert value(samples, "svc_overdue_seconds", service) == 0

    assert svc("start", "ticker").exit_code == 0
    assert value(once(svc), "svc_health_problem", "ticker", problem="stopped") is None


def test_worker_heartbeat_sets_workers_alive_and_service_workers(svc: Svc,
                                                                 store: StateStore) -> None:
    before = once(svc)
    assert before[("svc_workers_alive", ())] == 0
    assert value(before, "svc_service_workers", "ticker") == 0
    assert "no_worker" in problems(before, "ticker")

    heartbeat = Heartbeat(store, WORKER, load_settings())
    heartbeat.beat(services=["ticker"], queues=["celery"])
    alive = once(svc)
    assert alive[("svc_workers_alive", ())] == 1
    assert alive[("svc_beats_alive", ())] == 0
    assert value(alive, "svc_service_workers", "ticker") == 1
    assert "no_worker" not in problems(alive, "ticker")
    # A worker that does not have failing's task does not serve it.
    assert value(alive, "svc_service_workers", "failing") == 0
    assert "no_worker" in problems(alive, "failing")

    heartbeat.retire()  # a graceful stop: gone at once, not three heartbeats later
    gone = once(svc)
    assert gone[("svc_workers_alive", ())] == 0
    assert value(gone, "svc_service_workers", "ticker") == 0


def test_beat_leader_up_follows_the_lease(svc: Svc, store: StateStore) -> None:
    settings = load_settings()
    none = once(svc)
    assert none[("svc_beat_leader_up", ())] == 0
    assert none[("svc_beat_leader", ())] == 0
    assert "no_beat" in problems(none, "ticker")

    # A Beat alive on standby is not a leader: still no ticks.
    Heartbeat(store, BEAT, settings).beat(role="standby")
    standby = once(svc)
    assert standby[("svc_beats_alive", ())] == 1
    assert standby[("svc_beat_leader_up", ())] == 0

    lease = BeatLease(store, lease_seconds=30)
    assert lease.try_claim()
    leading = once(svc)
    assert leading[("svc_beat_leader_up", ())] == 1
    assert leading[("svc_beat_leader", ())] == 1
    assert "no_beat" not in problems(leading, "ticker")

    lease.release()
    assert once(svc)[("svc_beat_leader_up", ())] == 0


def test_overdue_seconds_grow_when_nothing_runs_a_served_service(svc: Svc,
                                                                 store: StateStore) -> None:
    # A worker serves ticker and a Beat leads, but no tick is ever run: ticker (every 0.5 s)
    # is overdue three intervals after the worker started, and more so with every scrape.
    register(store, "ticker")
    Heartbeat(store, WORKER, load_settings()).beat(services=["ticker"], queues=["celery"])
    lease = BeatLease(store, lease_seconds=30)
    assert lease.try_claim()
    try:
        first = wait_for(lambda: (value(s := once(svc), "svc_overdue_seconds", "ticker")
                                  or 0) > 0 and s, 10, "ticker to be overdue")
        assert value(first, "svc_healthy", "ticker") == 0
        assert value(first, "svc_health_problem", "ticker", problem="overdue") == 1
        late = value(first, "svc_overdue_seconds", "ticker")
        wait_for(lambda: value(once(svc), "svc_overdue_seconds", "ticker") > late, 10,
                 "overdue seconds to grow")
    finally:
        lease.release()
