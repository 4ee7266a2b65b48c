"""A prefork pool process builds a service on that service's first task in it, not at start:
the process that ran it configured it once and cleans it up at shutdown; the other process,
which never ran it, neither built nor cleans it up."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
import redis
from celery import Celery

from tests.cluster import Cluster
from tests.svc_celery.probes import probe_key
from tests.waiting import wait_for

pytestmark = pytest.mark.celery


def trigger(redis_url: str, prefix: str, name: str) -> None:
    app = Celery("test-first-use", broker=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    broker_transport_options={"global_keyprefix": f"{prefix}-broker:"})
    try:
        app.send_task(f"svc.{name}", kwargs={"kind": "trigger"})
    finally:
        app.close()


def test_only_the_pool_process_that_ran_a_service_built_and_cleans_it_up(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    configured = probe_key(prefix, "lifecycle", "configured")
    cleaned = probe_key(prefix, "lifecycle", "cleaned")
    with Cluster(tmp_path, prefix, redis_url, ["lifecycle", "ticker"]) as c:
        worker = c.worker("w1", concurrency=2)
        pool = wait_for(lambda: len(p := psutil.Process(worker.pid).children()) == 2 and p,
                        20, f"two pool processes\n{c.logs()}")
        pool_pids = {process.pid for process in pool}
        assert redis_client.hgetall(configured) == {}, "nothing is built at start"
        trigger(redis_url, prefix, "lifecycle")
        store = c.store()
        (run,) = wait_for(lambda: store.history("lifecycle"), 20, f"one run\n{c.logs()}")
        built = redis_client.hgetall(configured)
        c.warm_stop(worker)
        assert worker.popen.returncode == 0, worker.output()[-3000:]
        done = redis_client.hgetall(cleaned)

    assert run["outcome"] == "ok", run
    ran_on = int(run["worker"].rsplit(":", 1)[1])
    # Built once, in the one pool process that ran it, before its update().
    assert built == {str(ran_on): "1"}, (built, pool_pids)
    assert ran_on in pool_pids, (ran_on, pool_pids)
    # cleanup() ran where it was built, and nowhere else.
    assert done == built, (built, done)
