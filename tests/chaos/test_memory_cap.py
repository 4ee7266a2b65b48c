"""A leaking service against the memory cap (``SVC_WORKER_MAX_MEMORY_MB``): the pool process
that passes the cap after a run is replaced, so its memory stays bounded and the service runs
on in a fresh process."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.cluster import Cluster, Proc
from tests.waiting import wait_for

pytestmark = pytest.mark.celery

CAP_MB = 150
LEAK_MB = 20  # SVC_Leaky keeps this much more after every run
MIB = 1024 * 1024


def pool_rss(worker: Proc) -> int:
    """The largest resident size among the worker's pool processes right now, in bytes."""
    sizes = [0]
    for child in psutil.Process(worker.pid).children():
        try:
            sizes.append(child.memory_info().rss)
        except psutil.NoSuchProcess:  # replaced since the listing
            continue
    return max(sizes)


def test_a_leaking_pool_process_is_replaced_at_the_cap(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    peak = 0
    with Cluster(tmp_path, prefix, redis_url, ["leaky"],
                 env={"SVC_WORKER_MAX_MEMORY_MB": str(CAP_MB), "LEAKY_MB": str(LEAK_MB)}) as c:
        worker = c.worker("w1")
        c.beat()
        store = c.store()

        def runs_per_process() -> Counter[int] | None:
            nonlocal peak
            peak = max(peak, pool_rss(worker))
            done = Counter(int(row["worker"].rsplit(":", 1)[1])
                           for row in store.history("leaky", 1000) if row["outcome"] == "ok")
            return done if len(done) >= 3 else None  # replaced at least twice

        per_process = wait_for(runs_per_process, 90, f"pool processes to be replaced\n{c.logs()}")
        alive = worker.popen.poll() is None
        log = worker.output()

    assert alive, log[-3000:]
    # The replacement is announced, once per process, with the service that leaked.
    said = [line for line in log.splitlines() if "over SVC_WORKER_MAX_MEMORY_MB" in line]
    assert said and all("svc.leaky" in line for line in said), log[-3000:]
    assert len(said) <= len(per_process), said
    # No process lived past the run that took it over the cap: at most one run more than the
    # cap holds, whatever the process started with.
    assert max(per_process.values()) <= CAP_MB // LEAK_MB + 1, per_process
    assert peak <= (CAP_MB + LEAK_MB + 30) * MIB, f"{peak / MIB:.0f} MiB"
