"""Redis loses the framework's state for real (FLUSHDB, a restart without persistence) on a
redis-server of the test's own, while a worker runs a paused, a stopped and a running
service: the paused and stopped ones never run again before an operator says so, the running
one goes on, and the worker log, ``svc status`` and the metrics say that the state was lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from services.state import StateStore
from tests.cluster import REPO, Cluster
from tests.servers import OwnRedis
from tests.waiting import wait_for

pytestmark = pytest.mark.celery
SERVICES = ["ticker", "lifecycle", "queued"]  # running, paused, stopped


def svc(own: OwnRedis, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": own.url,
           "SVC_KEY_PREFIX": prefix, "SVC_PACKAGES": "tests.svc_celery",
           "SVC_SERVICES": ",".join(SERVICES)}
    return subprocess.run([str(Path(sys.executable).with_name("svc")), *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def runs(store: StateStore, name: str) -> int:
    return store.read(name).runs


@pytest.mark.parametrize("loss", ["flushdb", "restart"])
def test_lost_state_never_undoes_an_operator(loss: str, tmp_path: Path, prefix: str,
                                             own_redis: OwnRedis) -> None:
    with Cluster(tmp_path, prefix, own_redis.url, SERVICES) as c:
        worker = c.worker("w1")
        c.beat()
        store = c.store()
        wait_for(lambda: all(runs(store, n) >= 1 for n in SERVICES), 30,
                 f"every service to run\n{c.logs()}")
        store.control("lifecycle", "pause", who="ana@ops", reason="maintenance")
        store.control("queued", "stop", who="ana@ops", reason="retired")
        # The worker sees both flags at their next ticks (a few runs of ticker later).
        seen = runs(store, "ticker")
        wait_for(lambda: runs(store, "ticker") >= seen + 4, 30, f"ticks\n{c.logs()}")

        if loss == "flushdb":
            redis.Redis.from_url(own_redis.url).flushdb()
        else:
            own_redis.restart()  # --save "" --appendonly no: it comes back empty
        wait_for(lambda: runs(store, "ticker") >= 5, 60,
                 f"ticker to run on after the loss\n{c.logs()}")
        paused, stopped = store.read("lifecycle"), store.read("queued")
        history = {n: store.history(n, 100) for n in ("lifecycle", "queued")}
        status = json.loads(svc(own_redis, prefix, "status", "--json").stdout)
        metrics = svc(own_redis, prefix, "metrics", "--once").stdout
        log = worker.output()
        # The operator's all-clear closes the loss on every surface.
        assert svc(own_redis, prefix, "acknowledge-loss").returncode == 0
        after = json.loads(svc(own_redis, prefix, "status", "--json").stdout)
        metrics_after = svc(own_redis, prefix, "metrics", "--once").stdout

    # Neither ran after the loss: no runs, no history, and their flags are back.
    assert paused.runs == 0 and stopped.runs == 0, (paused, stopped)
    assert history == {"lifecycle": [], "queued": []}, history
    assert paused.paused and not stopped.running
    # Every surface says so.
    assert log.count("lost its data (detected at") == 1, log[-3000:]
    assert status["state_lost"]["lost_at"], status
    conditions = {s["name"]: s["condition"] for s in status["services"]}
    assert conditions == {"ticker": "running", "lifecycle": "paused", "queued": "stopped"}
    assert "svc_state_lost_timestamp_seconds" in metrics
    assert restored(status, "lifecycle")
    assert after["state_lost"] is None
    assert "svc_state_lost_timestamp_seconds" not in metrics_after
    assert {s["name"]: s["condition"] for s in after["services"]} == conditions


def restored(status: dict[str, Any], name: str) -> bool:
    (service,) = [s for s in status["services"] if s["name"] == name]
    return any("restored" in note for note in service["warnings"])


def test_workers_warn_when_redis_keeps_nothing(tmp_path: Path, prefix: str,
                                               own_redis: OwnRedis) -> None:
    with Cluster(tmp_path, prefix, own_redis.url, ["ticker"]) as c:
        worker = c.worker("w1")
        log = worker.output()
    assert "keeps nothing on disk" in log, log[-3000:]
