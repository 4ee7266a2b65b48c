"""Health from real causes, with real processes: heartbeats appear and expire, and each reason
comes from the fault itself: Beat SIGKILLed (no beat, then overdue), every worker SIGKILLed
(no worker), a queue nobody consumes (no worker), max_failures (stopped), a run frozen past
its hard limit (stuck), Redis losing its data (state lost). ``svc health`` exits 0/1/2 as
documented, and with two workers each transition reaches the webhook exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.cluster import REPO, Cluster
from tests.servers import OwnRedis
from tests.waiting import wait_for

pytestmark = pytest.mark.celery
FAST = {"SVC_HEARTBEAT_SECONDS": "0.3", "SVC_HEALTH_WATCH_SECONDS": "0.3",
        "SVC_BEAT_LEASE_SECONDS": "1"}
SVC = str(Path(sys.executable).with_name("svc"))


def svc(c: Cluster, *args: str, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SVC, *args], env={**c.base_env(), **(env or {})}, cwd=c.workdir,
                          capture_output=True, text=True, timeout=60, check=False)


def health(c: Cluster, *names: str) -> dict[str, Any]:
    """``svc health --json``: service -> its health."""
    found = svc(c, "health", *names, "--json")
    assert found.returncode in (0, 1), found.stderr
    return json.loads(found.stdout)["services"]  # type: ignore[no-any-return]


def codes(c: Cluster, name: str) -> set[str]:
    return {p["code"] for p in health(c, name)[name]["problems"]}


def processes(c: Cluster) -> list[dict[str, Any]]:
    return json.loads(svc(c, "workers", "--json").stdout)["processes"]  # type: ignore[no-any-return]


def test_heartbeats_and_health_follow_beat_and_workers(tmp_path: Path, prefix: str,
                                                       redis_url: str) -> None:
    with Cluster(tmp_path, prefix, redis_url, ["ticker", "queued"], env=FAST) as c:
        # Only the default queue: `queued` names its own, which nobody consumes here.
        worker = c.worker("w1", extra=["-Q", "celery"])
        beat = c.beat()
        wait_for(lambda: svc(c, "health", "ticker").returncode == 0, 30,
                 f"ticker to be healthy\n{c.logs()}")
        alive = {p["kind"]: p for p in processes(c) if p["alive"]}
        assert set(alive) == {"worker", "beat"}, alive
        assert alive["worker"]["services"] == ["queued", "ticker"]
        assert alive["worker"]["queues"] == ["celery"] and alive["beat"]["role"] == "leader"
        everything = svc(c, "health")
        assert everything.returncode == 1
        assert everything.stdout.startswith("queued: no worker: no live worker runs it on queue "
                                            "svc-test-queued (1 worker alive)"), everything
        assert "ticker" not in everything.stdout  # only what is wrong is printed
        assert svc(c, "health", "--process", "worker").returncode == 0
        assert svc(c, "health", "--process", "beat").returncode == 0

        c.kill(beat)
        wait_for(lambda: {"no_beat", "overdue"} <= codes(c, "ticker"), 30,
                 f"no beat, then overdue\n{c.logs()}")
        assert svc(c, "health", "--process", "beat").returncode == 1

        c.kill(worker)
        wait_for(lambda: "no_worker" in codes(c, "ticker"), 30, "no worker")
        gone = [p for p in processes(c) if p["kind"] == "worker"]
        assert [p["alive"] for p in gone] == [False], gone  # listed, as gone
        lost = svc(c, "health", "--process", "worker")
        assert lost.returncode == 1 and "no live worker heartbeat from host" in lost.stderr


def test_health_exit_codes_without_a_cluster(tmp_path: Path, prefix: str,
                                             redis_url: str) -> None:
    c = Cluster(tmp_path, prefix, redis_url, ["ticker"])
    unknown = svc(c, "health", "nope")
    assert unknown.returncode == 2 and "unknown service 'nope'" in unknown.stderr
    away = svc(c, "health", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert away.returncode == 1 and away.stderr.count("\n") == 1, away.stderr
    assert "Traceback" not in away.stderr


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.received  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_one_webhook_call_per_transition_with_two_workers(
        tmp_path: Path, prefix: str, redis_url: str,
        webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    hooked = tmp_path / "hook.jsonl"
    env = {**FAST, "SVC_ALERT_WEBHOOK_URL": url, "SVC_ALERT_AFTER_SECONDS": "5",
           "SVC_FAILING_MAX_FAILURES": "2", "HEALTH_HOOK_FILE": str(hooked),
           "SVC_ON_HEALTH_CHANGE": "tests.svc_celery.health_hook:record"}

    def calls() -> list[tuple[str, str]]:
        return [(r["service"], r["status"]) for r in received]

    with Cluster(tmp_path, prefix, redis_url, ["ticker", "failing"], env=env) as c:
        c.worker("w1")
        c.worker("w2")
        c.beat()
        store = c.store()
        wait_for(lambda: ("failing", "stopped") in calls(), 30,
                 f"failing to stop at max_failures\n{c.logs()}")
        stopped = svc(c, "health", "failing")
        assert stopped.returncode == 1
        assert stopped.stdout.startswith("failing: stopped: "), stopped.stdout
        wait_for(lambda: svc(c, "health", "ticker").returncode == 0, 30, "ticker healthy")
        assert svc(c, "stop", "ticker", "--reason", "maintenance").returncode == 0
        wait_for(lambda: ("ticker", "stopped") in calls(), 30, "ticker's stop notified")
        assert svc(c, "start", "ticker").returncode == 0
        wait_for(lambda: ("ticker", "ok") in calls(), 30, "ticker's recovery notified")
        # Further watch rounds after the last transition (by either worker, whichever takes
        # the turn) notify nothing again.
        key = f"{prefix}:_health:watch"
        seen: dict[str, int] = {"turns": 0, "last_ttl": 0}

        def rounds(count: int) -> bool:
            ttl = store.client.pttl(key)
            if ttl > seen["last_ttl"]:  # the key was set again: a new round began
                seen["turns"] += 1
            seen["last_ttl"] = ttl
            return seen["turns"] >= count
        wait_for(lambda: rounds(5), 30, "five more watch rounds", interval=0.02)

    assert sorted(calls()) == [("failing", "stopped"), ("ticker", "ok"),
                               ("ticker", "stopped")], received
    # The project's hook saw the same transitions, in the process that won each.
    hook_calls = [json.loads(line) for line in hooked.read_text().splitlines()]
    assert sorted((h["service"], h["status"]) for h in hook_calls) == sorted(calls())
    stop = next(r for r in received if r["service"] == "ticker" and r["status"] == "stopped")
    assert stop["text"].startswith("service ticker is unhealthy: stopped: stopped by "), stop
    assert stop["text"].endswith(": maintenance"), stop
    assert stop["previous"] == "ok"


def test_a_run_frozen_past_its_hard_limit_is_stuck(tmp_path: Path, prefix: str,
                                                   redis_url: str) -> None:
    env = {**FAST, "SLOW_SECONDS": "60", "SVC_SLOW_TIMEOUT_SECONDS": "1",
           "SVC_HARD_LIMIT_GRACE_SECONDS": "1"}
    with Cluster(tmp_path, prefix, redis_url, ["slow"], env=env, lease_seconds=30) as c:
        worker = c.worker("w1")
        c.beat()
        store = c.store()
        wait_for(lambda: store.client.hlen(f"{prefix}:slow:inflight"), 30,
                 f"a run to start\n{c.logs()}")
        c.kill(worker, signal.SIGSTOP)  # the whole worker: its run, lease keeper, heartbeat
        try:
            wait_for(lambda: "stuck" in codes(c, "slow"), 30, "the run to show as stuck")
            (problem,) = [p for p in health(c, "slow")["slow"]["problems"]
                          if p["code"] == "stuck"]
            assert "past its hard limit (2s)" in problem["detail"], problem
        finally:
            c.kill(worker)


def test_state_lost_when_redis_loses_its_data(tmp_path: Path, prefix: str,
                                              own_redis: OwnRedis) -> None:
    # queued ticks once an hour, so after the loss nobody restores it before an operator.
    env = {**FAST, "SVC_QUEUED_INTERVAL_SECONDS": "3600"}
    with Cluster(tmp_path, prefix, own_redis.url, ["ticker", "queued"], env=env) as c:
        c.worker("w1")
        c.beat()
        store = c.store()
        wait_for(lambda: store.read("ticker").runs >= 2, 30, f"ticker runs\n{c.logs()}")
        redis.Redis.from_url(own_redis.url).flushdb()
        wait_for(lambda: "state_lost" in codes(c, "queued"), 30,
                 f"queued to show the loss\n{c.logs()}")
        assert codes(c, "ticker") == set(), health(c, "ticker")
        lost = svc(c, "health")
        assert lost.returncode == 1 and lost.stdout.startswith("queued: state lost: Redis lost")


def test_a_hook_that_cannot_be_loaded_stops_the_worker_in_one_line(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    with Cluster(tmp_path, prefix, redis_url, ["ticker"]) as c:
        worker = c.worker("w1", wait=False, env={"SVC_ON_HEALTH_CHANGE": "no.such.module:fn"})
        assert worker.popen.wait(timeout=60) == 2
    assert worker.output().strip().startswith(
        "svc: SVC_ON_HEALTH_CHANGE='no.such.module:fn' cannot be loaded (ModuleNotFoundError"
    ), worker.output()
    assert "Traceback" not in worker.output()


def test_compose_healthchecks_use_svc_health() -> None:
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for kind in ("worker", "beat"):
        assert compose[kind]["healthcheck"]["test"] == ["CMD", "svc", "health", "--process",
                                                        kind]
    assert os.access(SVC, os.X_OK)
