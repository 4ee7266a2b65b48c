"""pause / resume / stop / start / --all / --reason / --wait and trigger, against a real worker
(and Beat where ticks matter): every change reaches the workers and lands in the audit."""

from __future__ import annotations

import re
import time

import pytest

from tests.operator.conftest import Svc
from tests.waiting import wait_for
from worker.ops import actor

pytestmark = pytest.mark.celery


def refusals(proc, verdict: str) -> int:
    """How often the worker's guard refused a tick with ``verdict``: Celery's line for each
    task's result (``succeeded in ...: 'skipped: paused'``). The guard's own ``not running``
    line comes once per change of verdict, not per tick."""
    return proc.output().count(f"'skipped: {verdict}")


def test_pause_resume_stop_start_reach_workers_and_the_audit(make_cluster, svc_for) -> None:
    cluster = make_cluster(["ticker", "slow"])
    worker = cluster.worker("w1", concurrency=2)
    cluster.beat()
    svc: Svc = svc_for(cluster)
    store = cluster.store()
    wait_for(lambda: store.read("ticker").runs >= 2, 30, "ticker to run")

    paused = svc.json("pause", "ticker", "--reason", "maintenance")
    (change,) = paused["changes"]
    assert change["service"] == "ticker" and change["action"] == "pause"
    assert change["by"] == actor() and change["reason"] == "maintenance"
    assert change["at"] == pytest.approx(store.now(), abs=5)
    # Beat keeps ticking; the worker refuses every tick while paused.
    runs = store.read("ticker").runs
    before = refusals(worker, "paused")
    wait_for(lambda: refusals(worker, "paused") >= before + 3, 20, "three refused ticks")
    assert store.read("ticker").runs == runs

    status = svc.json("status", "ticker")["service"]
    assert status["condition"] == "paused"
    assert (status["change"], status["changed_by"], status["change_reason"]) == (
        "pause", actor(), "maintenance")
    table = svc("status", "ticker")
    assert f"pause by {actor()}" in table.stdout and ": maintenance" in table.stdout
    assert "next tick" in table.stdout and "- (paused)" in table.stdout

    assert svc("resume", "ticker").exit_code == 0
    wait_for(lambda: store.read("ticker").runs > runs, 20, "ticker to run after resume")

    stopped = svc("stop", "ticker", "-r", "bad data")
    assert stopped.exit_code == 0 and "stop" in stopped.stdout and "bad data" in stopped.stdout
    state = store.read("ticker")
    assert not state.running and state.stop_reason == f"stopped by {actor()}: bad data"
    assert f"stopped: stopped by {actor()}: bad data" in svc("list").stdout
    runs = state.runs
    before = refusals(worker, "stopped")
    wait_for(lambda: refusals(worker, "stopped") >= before + 2, 20, "refused ticks while stopped")
    assert store.read("ticker").runs == runs

    assert svc("start", "ticker").exit_code == 0
    wait_for(lambda: store.read("ticker").runs > runs, 20, "ticker to run after start")

    everything = svc.json("pause", "--all", "--reason", "freeze")
    assert {c["service"] for c in everything["changes"]} == {"ticker", "slow"}
    assert store.read("slow").paused and store.read("ticker").paused
    assert svc("resume", "--all").exit_code == 0
    assert not store.read("slow").paused and not store.read("ticker").paused

    trail = svc.json("audit", "ticker")
    assert [(e["action"], e["reason"]) for e in trail] == [
        ("resume", ""), ("pause", "freeze"), ("start", ""), ("stop", "bad data"),
        ("resume", ""), ("pause", "maintenance")]
    assert {e["by"] for e in trail} == {actor()}
    assert [e["at"] for e in trail] == sorted((e["at"] for e in trail), reverse=True)
    assert "maintenance" in svc("audit", "ticker").stdout


def test_pause_wait_returns_once_the_run_in_progress_finished(make_cluster, svc_for) -> None:
    cluster = make_cluster(["slow"], env={"SLOW_SECONDS": "3.5"})
    cluster.worker("w1")
    svc: Svc = svc_for(cluster)
    store = cluster.store()

    sent = svc.json("trigger", "slow")
    assert sent[0]["will_run"] is True
    ((token, _),) = wait_for(lambda: store.lease_holders("slow"), 20, "slow's run to start")
    run_id, worker_id = token.split("@")
    # Who holds the lease, in every form.
    assert f"{run_id} on {worker_id}" in svc("status", "slow").stdout
    assert "running (run in progress)" in svc("list").stdout
    assert worker_id in svc("list").stdout
    leases = svc.json("status", "slow")["service"]["leases"]
    assert [(lease["run_id"], lease["worker"]) for lease in leases] == [(run_id, worker_id)]

    started = time.monotonic()
    report = svc.json("pause", "slow", "--wait", "--timeout", "30")
    waited = time.monotonic() - started
    assert report["wait"]["idle"] is True
    assert waited > 0.5, "returned while the run was still going"
    assert store.lease_holders("slow") == []
    last = store.history("slow", 1)[0]
    assert last["outcome"] == "ok" and last["finished_at"] <= store.now()

    # A run longer than the timeout: exit 1, naming the run still in progress.
    assert svc("resume", "slow").exit_code == 0
    svc.json("trigger", "slow")
    (holder,) = wait_for(lambda: store.lease_holders("slow"), 20, "the second run to start")
    result = svc("pause", "slow", "--wait", "--timeout", "0.3")
    assert result.exit_code == 1
    assert "--wait timed out; still in progress: slow:" in result.stderr
    assert holder[0].split("@")[0] in result.stderr
    wait_for(lambda: not store.lease_holders("slow"), 20, "the second run to finish")


def test_trigger_runs_now_but_honours_the_guard(make_cluster, svc_for) -> None:
    cluster = make_cluster(["ticker"])
    worker = cluster.worker("w1")  # no Beat: only svc trigger sends ticks
    svc: Svc = svc_for(cluster)
    store = cluster.store()
    assert store.read("ticker").runs == 0

    result = svc("trigger", "ticker")
    assert result.exit_code == 0, result.output
    task_id = re.search(r"task ([0-9a-f-]{36})", result.stdout).group(1)
    wait_for(lambda: store.read("ticker").runs == 1, 20, "the triggered run")
    assert store.history("ticker", 1)[0]["outcome"] == "ok"
    wait_for(lambda: task_id in worker.output(), 10, "the worker to log the task")

    svc("pause", "ticker")
    sent = svc.json("trigger", "ticker")
    assert sent[0]["state"] == "paused" and sent[0]["will_run"] is False
    refused = re.compile(re.escape(sent[0]["task_id"]) + r"\] succeeded.*skipped: paused")
    wait_for(lambda: refused.search(worker.output()), 20, "the worker to refuse the trigger")
    assert store.read("ticker").runs == 1
    note = svc("trigger", "ticker")
    assert "it is paused, so the guard will refuse it" in note.stdout

    assert svc("trigger", "tikcer").exit_code == 2
