"""The outbox dispatcher on real Celery workers against PostgreSQL: four concurrent runs on
two workers drain 10,000 rows exactly once, skip a row an API transaction holds, never
exceed max_concurrent_runs, and lose nothing when a worker is SIGKILLed mid-batch."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select, text

from services.database import sessions as db
from services.database.locking import lock_row
from services.database.models import PENDING, SENT, OutboxMessage
from services.state import StateStore
from tests.cluster import Cluster
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.celery]
T = OutboxMessage.__table__


def insert_messages(url: str, count: int) -> list[str]:
    salt = uuid.uuid4().hex
    with db.transaction(url) as session:
        session.execute(text(
            "INSERT INTO svc_outbox (message_id, topic, payload) "
            "SELECT md5(:salt || i::text), 'orders', jsonb_build_object('n', i) "
            "FROM generate_series(1, :count) AS i"), {"salt": salt, "count": count})
        return list(session.scalars(select(T.c.message_id)))


def count_sent(url: str) -> int:
    with db.transaction(url) as session:
        return session.execute(select(func.count()).where(T.c.status == SENT)).scalar_one()


def stream_ids(client: redis.Redis, store: StateStore) -> Counter[str]:
    entries = client.xrange(store.keys.outbox_stream("outbox"))
    return Counter(fields["message_id"] for _, fields in entries)


def max_overlap(history: list[dict[str, Any]]) -> int:
    """The most runs in progress at one moment, from their start and finish times."""
    events = []
    for run in history:
        events += [(float(run["started_at"]), 1), (float(run["finished_at"]), -1)]
    current = peak = 0
    for _, step in sorted(events):  # at equal times a finish (-1) sorts before a start
        current += step
        peak = max(peak, current)
    return peak


def test_four_runs_on_two_workers_deliver_10000_messages_exactly_once(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis,
        pg_db_url: str) -> None:
    ids = insert_messages(pg_db_url, 10_000)
    with db.transaction(pg_db_url) as session:
        held_id, held_message = session.execute(
            select(T.c.id, T.c.message_id).order_by(T.c.id).limit(1)).one()
    api = db.new_session(pg_db_url)  # an API request in the middle of changing one row
    lock_row(api, OutboxMessage, held_id)
    env = {
        "DATABASE_URL": pg_db_url,
        "SVC_OUTBOX_BATCH_SIZE": "20",
        "SVC_OUTBOX_DISPATCHER_INTERVAL_SECONDS": "0.3",
        "SVC_OUTBOX_RUN_BUDGET_SECONDS": "2",
        "SVC_HISTORY_LENGTH": "1000",
    }
    try:
        with Cluster(tmp_path, prefix, redis_url, services=["outbox_dispatcher"],
                     packages="tests.db.svc_outbox", env=env) as cluster:
            cluster.worker("w1", concurrency=2)
            cluster.worker("w2", concurrency=2)
            cluster.beat()
            store = cluster.store()
            wait_for(lambda: count_sent(pg_db_url) == 9_999, 180,
                     "every message but the held one to be sent")
            with db.transaction(pg_db_url) as session:
                held = session.execute(select(T).where(T.c.id == held_id)).one()
            assert (held.status, held.attempts, held.claimed_by) == (PENDING, 0, None), \
                "the dispatcher skipped the row the API transaction holds"
            api.commit()
            wait_for(lambda: count_sent(pg_db_url) == 10_000, 60,
                     "the held message once the API transaction ended")
            history = store.history("outbox_dispatcher", 1000)
    finally:
        api.close()

    delivered = stream_ids(redis_client, store)
    assert delivered == Counter(ids), "every message exactly once in the stream"
    assert delivered[held_message] == 1
    failed = [run for run in history if run["outcome"] != "ok"]
    assert not failed, f"runs failed (a held row must be skipped, not waited on): {failed}"
    peak = max_overlap(history)
    assert 2 <= peak <= 4, f"max_concurrent_runs=4 and a backlog: {peak} runs at once"
    worker_of = {run["run_id"]: run["worker"] for run in history}
    with db.transaction(pg_db_url) as session:
        claims = set(session.scalars(select(T.c.claimed_by).distinct()))
    workers = {worker_of.get(claim.split(":", 1)[0]) for claim in claims}
    assert len(workers - {None}) >= 2, f"both workers' processes claimed rows: {workers}"
    print(f"{len(history)} runs, at most {peak} at once, claims by {sorted(workers - {None})}")


def test_a_worker_killed_mid_batch_loses_no_message(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis,
        pg_db_url: str) -> None:
    ids = insert_messages(pg_db_url, 600)
    env = {
        "DATABASE_URL": pg_db_url,
        "SVC_OUTBOX_BATCH_SIZE": "50",
        "SVC_OUTBOX_CLAIM_TIMEOUT_SECONDS": "3",
        "SVC_SLOW_OUTBOX_INTERVAL_SECONDS": "0.3",
        "SLOW_OUTBOX_SETTLE_DELAY": "1.0",
    }
    with Cluster(tmp_path, prefix, redis_url, services=["slow_outbox"],
                 packages="tests.db.svc_outbox", env=env) as cluster:
        store = cluster.store()
        doomed = cluster.worker("doomed", concurrency=2)
        cluster.beat()
        wait_for(lambda: sum(stream_ids(redis_client, store).values()) > count_sent(pg_db_url),
                 60, "a batch delivered but not yet settled")
        cluster.kill(doomed)
        with db.transaction(pg_db_url) as session:
            sent = set(session.scalars(select(T.c.message_id).where(T.c.status == SENT)))
        in_flight = set(stream_ids(redis_client, store)) - sent
        assert in_flight, "the kill landed between delivery and settling"

        cluster.worker("survivor", concurrency=2)
        wait_for(lambda: count_sent(pg_db_url) == 600, 120,
                 "the survivor to take over the lapsed claims and finish")

    assert stream_ids(redis_client, store) == Counter(ids), "nothing lost, nothing twice"
    print(f"{len(in_flight)} messages delivered but unsettled when the worker died")
    with db.transaction(pg_db_url) as session:
        attempts = dict(session.execute(
            select(T.c.message_id, T.c.attempts).where(T.c.message_id.in_(in_flight))).all())
    assert all(n >= 2 for n in attempts.values()), \
        f"the dead worker's messages were claimed again after the claim lapsed: {attempts}"
