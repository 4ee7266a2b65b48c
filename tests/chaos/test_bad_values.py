"""Unsafe values are refused with one clear line naming the input, by the real processes that
read them: a lease too short to renew, an interval that would flood Beat, prefixes that could
reach each other's keys. (``svc``'s own refusals are in test_operator_faults.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.keys import Keys
from services.lease import LeaseKeeper
from services.state import StateStore
from tests.cluster import REPO, Cluster
from tests.waiting import wait_for


def celery(tmp_path: Path, redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", *args], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": redis_url, **env},
        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("SVC_LEASE_SECONDS", "0.001", "greater than or equal to 1"),
    ("SVC_KEY_PREFIX", "svc:x", "no ':'"),
    ("SVC_BROKER_PREFIX", "svc:", "could collide with service state"),
    ("SVC_FLOWER_ADDRESS", "127.0.0.1 --port=1 & touch F #", "a host name or an IP address"),
])
def test_a_worker_refuses_an_unsafe_setting_in_one_line(
        variable: str, value: str, says: str, tmp_path: Path, redis_url: str) -> None:
    done = celery(tmp_path, redis_url, "worker", "-P", "solo", **{variable: value})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("svc:")]
    assert variable in line and says in line, line


@pytest.mark.celery
def test_an_interval_below_the_floor_is_refused_and_never_scheduled(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    with Cluster(tmp_path, prefix, redis_url, ["ticker", "lifecycle"],
                 env={"SVC_TICKER_INTERVAL_SECONDS": "0.001"}) as c:
        worker = c.worker("w1")
        beat = c.beat()
        wait_for(lambda: "Sending due task svc.lifecycle" in beat.output(), 30,
                 f"Beat to send the other service's ticks\n{c.logs()}")
        log = worker.output()
        registered = c.store().registered()
        sent = beat.output()
    assert "service not loaded" in log and "SVC_TICKER_INTERVAL_SECONDS" in log, log[-3000:]
    assert "interval_seconds must be a number >= 0.1" in log
    # Refused where it is read: the worker registers only the other service, so Beat, which
    # schedules what workers registered, never sends a tick of it.
    assert sorted(registered) == ["lifecycle"], registered
    assert "svc.ticker" not in sent, sent[-3000:]


def test_a_renewal_period_that_leaves_no_margin_is_refused(redis_client: object,
                                                          prefix: str) -> None:
    store = StateStore(redis_client, Keys(prefix), lease_seconds=3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be under half the lease"):
        LeaseKeeper(store, period_seconds=2.0)
