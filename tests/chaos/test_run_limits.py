"""Hung runs, for real: an ``update()`` that awaits forever is cancelled at its soft limit; one
that blocks in a synchronous call is ended by the hard limit, which replaces the pool process.
Either way the lease is freed, the history says ``timeout``, the service runs again, and
warm shutdown and ``pause --wait`` finish within the limit. Celery's own soft limit agrees."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from services.settings import Settings
from tests.cluster import Cluster
from tests.waiting import wait_for
from worker.ops import Operator

pytestmark = pytest.mark.celery

TIMEOUT = 1.0
GRACE = 1.5


def hanger(tmp_path: Path, prefix: str, redis_url: str, mode: str,
           **env: str) -> Cluster:
    return Cluster(tmp_path, prefix, redis_url, ["hanger"], packages="tests.svc_chaos",
                   env={"HANG_MODE": mode, "SVC_HARD_LIMIT_GRACE_SECONDS": str(GRACE),
                        "SVC_HANGER_TIMEOUT_SECONDS": str(TIMEOUT), **env})


def timeouts(c: Cluster, at_least: int) -> list[dict[str, Any]]:
    store = c.store()
    return wait_for(
        lambda: len(rows := [r for r in store.history("hanger", 100)
                             if r["outcome"] == "timeout"]) >= at_least and rows,
        40, f"{at_least} timed-out runs of hanger\n{c.logs()}")


def test_an_update_awaiting_forever_is_cancelled_at_its_soft_limit(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    with hanger(tmp_path, prefix, redis_url, "await") as c:
        worker = c.worker("w1")
        c.beat()
        rows = timeouts(c, 3)
        state = c.store().read("hanger")
        log = worker.output()

    for row in rows:
        assert "timeout_seconds=1" in row["error"] and "cancelled" in row["error"], row
        # Ended by the soft limit, well before the hard one (Redis-clock durations).
        assert TIMEOUT <= row["duration"] < TIMEOUT + GRACE, row
    # The same pool process ran every one of them: cancelling needs no new process.
    assert len({row["worker"] for row in rows}) == 1, rows
    assert state.failures >= 1 and state.running
    assert "update() timed out" in log
    assert "ending this pool process" not in log


def test_a_blocking_update_is_ended_by_the_hard_limit_and_its_process_replaced(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    with hanger(tmp_path, prefix, redis_url, "block") as c:
        worker = c.worker("w1")
        c.beat()
        rows = timeouts(c, 2)
        holders = c.store().lease_holders("hanger")
        alive = worker.popen.poll() is None
        log = worker.output()

    assert alive, log[-3000:]
    for row in rows:
        assert "hard limit" in row["error"], row
        assert row["duration"] < TIMEOUT + GRACE + 1.0, row  # the keeper's wake-up slack
    # Each hung run's pool process ended itself and the pool started a fresh one, which
    # took the next tick: the service ran again.
    assert len({row["worker"] for row in rows}) == len(rows), rows
    assert log.count("ending this pool process") >= 2, log[-3000:]
    # No process keeps the lease of a run past its hard limit.
    finished = {row["token"] for row in rows}
    assert not finished & {token for token, _ in holders}


def test_warm_shutdown_and_pause_wait_finish_within_the_limit(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    with hanger(tmp_path, prefix, redis_url, "await", SVC_HANGER_TIMEOUT_SECONDS="3") as c:
        worker = c.worker("w1")
        c.beat()
        store = c.store()
        wait_for(lambda: store.lease_holders("hanger"), 20, f"a hung run\n{c.logs()}")
        op = Operator(Settings(redis_url=redis_url, key_prefix=prefix,
                               packages="tests.svc_chaos", services="hanger"))
        try:
            op.control(["hanger"], "pause", "test")
            started = time.monotonic()
            busy = op.wait_idle(["hanger"], 3 + GRACE + 2)
            waited = time.monotonic() - started
            assert not busy, f"pause --wait still waiting after {waited:.1f}s: {busy}"
            op.control(["hanger"], "resume", "test")
        finally:
            op.close()
        wait_for(lambda: store.lease_holders("hanger"), 20, f"another hung run\n{c.logs()}")
        c.warm_stop(worker, timeout=3 + GRACE + 5)  # raises if the worker is still running
        assert worker.popen.poll() is not None


def test_celerys_own_soft_time_limit_agrees_with_the_history(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    # Our own limit is far away (60 s): Celery's --soft-time-limit ends the run first, while
    # the event loop waits, outside update().
    with hanger(tmp_path, prefix, redis_url, "await", SVC_HANGER_TIMEOUT_SECONDS="60") as c:
        worker = c.worker("w1", extra=["--soft-time-limit", "1"])
        c.beat()
        rows = timeouts(c, 2)
        log = worker.output()

    assert all(row["duration"] < 5 for row in rows), rows
    assert "SoftTimeLimitExceeded" in rows[0]["error"], rows[0]
    # Flower's view (the task's state) says it failed, as the history does.
    assert "failed (timeout)" in log, log[-3000:]

