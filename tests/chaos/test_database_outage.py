"""A 20 s PostgreSQL outage under the outbox dispatcher, on real Celery workers and Beat.

The database (a server of the test's own) is shut down while the dispatcher is delivering a
backlog, and started again 20 s later. An outage shorter than max_failures ×
retry_delay_seconds (5 × 5 s) must not stop the service, however many of its concurrent runs
and Celery retries fail meanwhile; once the database is back every message is delivered
exactly once, every row ends ``sent`` and ``failures`` is back to 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from services.database import migrate
from services.database import sessions as db
from services.database.models import SENT, OutboxMessage
from services.database.outbox import enqueue
from services.state import StateStore
from tests.cluster import REPO, Cluster
from tests.servers import OwnPostgres
from tests.waiting import wait_for

pytestmark = [pytest.mark.celery, pytest.mark.postgres]

T = OutboxMessage.__table__
SERVICE = "outbox_dispatcher"
MESSAGES = 4000
OUTAGE_SECONDS = 20.0
BUSY_RUNS = 3
"""The database goes away while at least this many runs drain the backlog at once: all of
them fail within one backoff window, and each one's Celery retry fails again in the next."""


def write_messages(url: str) -> list[str]:
    """The backlog, written the way an application writes it: ``enqueue`` in a transaction."""
    with db.transaction(url) as session:
        messages = [enqueue(session, "orders", {"n": i}) for i in range(MESSAGES)]
        session.flush()
        return [message.message_id for message in messages]


def statuses(url: str) -> Counter[str]:
    with db.transaction(url) as session:
        return Counter(dict(session.execute(
            select(T.c.status, func.count()).group_by(T.c.status)).all()))


def stream_ids(client: redis.Redis, store: StateStore) -> Counter[str]:
    entries = client.xrange(store.keys.outbox_stream("outbox"))
    return Counter(fields["message_id"] for _, fields in entries)


def failed_runs(store: StateStore) -> list[dict[str, Any]]:
    return [run for run in store.history(SERVICE, 1000) if run["outcome"] == "error"]


def state_report(store: StateStore, client: redis.Redis, down_at: float) -> str:
    """The service's state and its failed runs, times in seconds since the database went
    down (Redis's clock), for an assertion message."""
    raw = client.hgetall(store.keys.state(SERVICE))

    def since(value: str | float | None) -> str:
        return "-" if value in (None, "") else f"{float(value) - down_at:+.1f}s"

    lines = [f"running={raw.get('running')} failures={raw.get('failures')} "
             f"stopped_at={since(raw.get('stopped_at'))} "
             f"stop_reason={(raw.get('stop_reason') or '')[:120]!r}",
             "failed runs, oldest first (start, worker, error):"]
    for run in reversed(failed_runs(store)):
        error = (run["error"] or "").splitlines()[0][:110]
        lines.append(f"  {since(run['started_at'])} {run['worker']} {error}")
    return "\n".join(lines)


@pytest.mark.timeout(180)
def test_a_20s_database_outage_neither_stops_the_dispatcher_nor_loses_a_message(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis,
        own_postgres: OwnPostgres) -> None:
    url = own_postgres.url
    migrate.upgrade(url)
    ids = write_messages(url)
    env = {
        "DATABASE_URL": url,
        # Small batches and frequent ticks: the backlog takes several runs at once a while.
        "SVC_OUTBOX_BATCH_SIZE": "5",
        "SVC_OUTBOX_DISPATCHER_INTERVAL_SECONDS": "0.3",
        "SVC_OUTBOX_RUN_BUDGET_SECONDS": "2",
        # A claim cut off by the outage (claimed, perhaps delivered, never settled) lapses
        # soon after the database is back instead of after the default minute.
        "SVC_OUTBOX_CLAIM_TIMEOUT_SECONDS": "5",
        "SVC_DB_CONNECT_TIMEOUT_SECONDS": "3",
        "SVC_HISTORY_LENGTH": "1000",
    }
    with Cluster(tmp_path, prefix, redis_url, services=[SERVICE], packages="",
                 env=env) as cluster:
        store = cluster.store()
        state_key = store.keys.state(SERVICE)
        cluster.worker("w1", concurrency=2)
        cluster.worker("w2", concurrency=2)
        cluster.beat()

        def busy() -> int:
            runs = len(store.lease_holders(SERVICE))
            delivered = redis_client.xlen(store.keys.outbox_stream("outbox"))
            assert delivered < MESSAGES, (
                f"the backlog was drained before {BUSY_RUNS} runs overlapped: raise MESSAGES")
            return runs if runs >= BUSY_RUNS and delivered else 0

        runs_at_once = wait_for(busy, 45, f"{BUSY_RUNS} runs delivering at once",
                                interval=0.02)
        db.dispose_engines()  # this process's pooled connections die with the server
        own_postgres.stop()
        down_at, down_at_redis = time.monotonic(), store.now()
        sent_before = len(stream_ids(redis_client, store))
        assert sent_before < MESSAGES, "the backlog was still being delivered at the outage"

        def outage_over() -> bool:
            # Measured, not slept: the outage lasts OUTAGE_SECONDS and was noticed.
            return time.monotonic() - down_at >= OUTAGE_SECONDS and bool(failed_runs(store))

        wait_for(outage_over, OUTAGE_SECONDS + 20, "20 s down and a failed run recorded",
                 interval=0.2)
        during = len(failed_runs(store))
        own_postgres.start()
        print(f"down {time.monotonic() - down_at:.1f}s under {runs_at_once} runs; "
              f"{sent_before} of {MESSAGES} in the stream before, {during} failed runs\n"
              f"{state_report(store, redis_client, down_at_redis)}")

        def settled() -> bool:
            return (statuses(url)[SENT] == MESSAGES
                    or redis_client.hget(state_key, "running") == "0")

        wait_for(settled, 45, "every message sent (or the service stopped)", interval=0.2)
        assert redis_client.hget(state_key, "running") != "0", (
            "the dispatcher stopped itself during a 20 s outage (shorter than max_failures "
            f"× retry_delay_seconds = 25 s):\n{state_report(store, redis_client, down_at_redis)}")
        wait_for(lambda: store.read(SERVICE).failures == 0, 15,
                 "failures back to 0 after the outage")

        state = store.read(SERVICE)
        assert state.running and state.stop_reason is None, state
        shown = subprocess.run(
            [sys.executable, "-c", "from worker.cli import main; main()",
             "status", SERVICE, "--json"],
            cwd=REPO, env=cluster.base_env(), capture_output=True, text=True, timeout=60,
            check=False)
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)["service"]
        assert (status["condition"], status["running"], status["failures"]) == (
            "running", True, 0), status

        assert statuses(url) == Counter({SENT: MESSAGES}), "every row ends sent"
        delivered = stream_ids(redis_client, store)
        assert delivered == Counter(ids), (
            f"every message exactly once: missing {set(ids) - set(delivered)}, twice "
            f"{[m for m, n in delivered.items() if n > 1]}")
        print(f"{during} failed runs during the outage; all {MESSAGES} delivered once")
