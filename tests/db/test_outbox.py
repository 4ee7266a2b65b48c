"""The two example services run in this process, on SQLite, PostgreSQL and MariaDB/MySQL,
real Redis, and a real HTTP endpoint: delivery exactly once, take-over of lapsed claims,
backoff, cleanup."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select, update

from services.database import sessions as db
from services.database.locking import lock_row
from services.database.models import DEAD, PENDING, SENT, OutboxMessage, utcnow
from services.database.outbox import OutboxDispatch, OutboxOptions, RedisStreamSink, enqueue
from services.examples.SVC_ExpiredRowsCleanup import ExpiredRowsCleanup
from services.examples.SVC_OutboxDispatcher import OutboxDispatcher
from services.lease import LeaseKeeper
from services.runner import RunReport, run_once
from services.state import StateStore
from tests.db.conftest import fail_lock_waits_after
from tests.waiting import wait_for

T = OutboxMessage.__table__


def make_dispatcher(store: StateStore, url: str, **options: Any) -> OutboxDispatcher:
    service = OutboxDispatcher(state=store, db=db.new_session(url))
    service.options = OutboxOptions(**{"batch_size": 100, "retry_base_seconds": 0.05,
                                       "retry_max_seconds": 0.2, **options})
    service.dispatch = OutboxDispatch(service.options)
    return service


def run(service: Any, store: StateStore) -> RunReport:
    keeper = LeaseKeeper(store)
    try:
        return asyncio.run(run_once(service, "trigger", keeper))
    finally:
        keeper.close()


def fill(url: str, count: int) -> list[str]:
    with db.transaction(url) as session:
        return [enqueue(session, "orders", {"n": n}).message_id for n in range(count)]


def stream_ids(store: StateStore, stream: str = "outbox") -> Counter[str]:
    entries = store.client.xrange(store.keys.outbox_stream(stream))
    return Counter(fields["message_id"] for _, fields in entries)


def statuses(url: str) -> dict[str, int]:
    with db.transaction(url) as session:
        return dict(session.execute(select(T.c.status, func.count()).group_by(T.c.status)).all())


def test_every_message_is_delivered_once_and_a_second_run_changes_nothing(
        db_url: str, store: StateStore) -> None:
    ids = fill(db_url, 250)
    service = make_dispatcher(store, db_url)
    report = run(service, store)
    assert not report.failed, report
    assert statuses(db_url) == {SENT: 250}
    assert stream_ids(store) == Counter(ids)
    entry = store.client.xrange(store.keys.outbox_stream("outbox"), count=1)[0][1]
    assert entry["topic"] == "orders" and json.loads(entry["payload"]) == {"n": 0}

    assert not run(service, store).failed
    assert stream_ids(store) == Counter(ids), "idempotent: nothing pending, nothing sent again"
    service.cleanup()


def test_enqueue_belongs_to_the_callers_transaction(db_url: str) -> None:
    session = db.new_session(db_url)
    enqueue(session, "orders", {"n": 1})
    session.rollback()
    session.close()
    assert statuses(db_url) == {}, "a rolled-back change announces nothing"


def test_a_lapsed_claim_is_taken_over_without_a_second_stream_entry(
        db_url: str, store: StateStore) -> None:
    """A worker that dies after delivering and before settling: its claim lapses, another run
    claims the rows again, and the dedupe set keeps the stream at one entry per message."""
    ids = fill(db_url, 30)
    options = OutboxOptions(claim_timeout_seconds=0.2)
    dying = OutboxDispatch(options)
    session = db.new_session(db_url)
    rows = dying.claim_batch(session, "dead-run:1")
    assert len(rows) == 30
    RedisStreamSink(store.client, store.keys, options).deliver(rows)  # ... and then it died

    service = make_dispatcher(store, db_url)
    assert not run(service, store).failed
    assert statuses(db_url) == {PENDING: 30}, "the claim still holds: nothing taken over yet"

    with db.transaction(db_url) as check:
        wait_for(lambda: check.execute(select(func.max(T.c.available_at))).scalar() is not None
                 and utcnow() - timedelta(seconds=0.3) > _aware(
                     check.execute(select(func.max(T.c.available_at))).scalar()),
                 5, "the claim to lapse")
    assert not run(service, store).failed
    assert statuses(db_url) == {SENT: 30}
    assert stream_ids(store) == Counter(ids), "each message once, though delivered twice"
    assert isinstance(service.sink, RedisStreamSink) and service.sink.duplicates == 30
    with db.transaction(db_url) as check:
        assert set(check.scalars(select(T.c.attempts))) == {2}

    late = dying.settle(session, "dead-run:1", rows, {row.id: None for row in rows})
    assert (late.sent, late.lost_claims) == (0, 30), "a lapsed claim cannot settle rows"
    session.close()
    service.cleanup()


def _aware(value: Any) -> Any:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class Endpoint:
    status: int = 200
    requests: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    """A real HTTP server on a free port that records what it is sent."""
    state = Endpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((json.loads(body), self.headers.get("Idempotency-Key")))
            self.send_response(state.status)
            self.end_headers()
            self.wfile.write(b"nope" if state.status >= 400 else b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_an_http_endpoint_gets_each_message_with_its_idempotency_key(
        db_url: str, store: StateStore, endpoint: Endpoint) -> None:
    ids = fill(db_url, 12)
    service = make_dispatcher(store, db_url, http_url=endpoint.url)
    assert not run(service, store).failed
    assert statuses(db_url) == {SENT: 12}
    assert sorted(key for _, key in endpoint.requests) == sorted(ids)
    assert all(body["message_id"] == key and body["topic"] == "orders"
               for body, key in endpoint.requests)
    assert stream_ids(store) == Counter(), "HTTP instead of the stream, not both"
    service.cleanup()


def test_failed_deliveries_back_off_per_message_then_go_dead(
        db_url: str, store: StateStore, endpoint: Endpoint) -> None:
    endpoint.status = 500
    fill(db_url, 3)
    service = make_dispatcher(store, db_url, http_url=endpoint.url, max_attempts=2)
    assert not run(service, store).failed, "a failed message is retried, not a failed run"
    with db.transaction(db_url) as session:
        rows = session.execute(select(T)).all()
    assert {(r.status, r.attempts) for r in rows} == {(PENDING, 1)}
    assert all("HTTP 500" in r.last_error and "nope" in r.last_error for r in rows)
    assert all(_aware(r.available_at) > utcnow() for r in rows), "backed off into the future"
    assert not run(service, store).failed
    assert statuses(db_url) == {PENDING: 3}, "not retried before the backoff ends"

    wait_for(lambda: run(service, store) and statuses(db_url) == {DEAD: 3}, 10,
             "the second failure to bury every message")
    with db.transaction(db_url) as session:
        assert set(session.scalars(select(T.c.attempts))) == {2}
    assert len(endpoint.requests) == 6
    service.cleanup()


def test_a_run_stops_at_its_budget_and_the_next_run_goes_on(
        db_url: str, store: StateStore) -> None:
    fill(db_url, 50)
    service = make_dispatcher(store, db_url, batch_size=10, run_budget_seconds=0.000001)
    assert not run(service, store).failed
    assert statuses(db_url) == {SENT: 10, PENDING: 40}, "one batch, then the budget was spent"
    wait_for(lambda: run(service, store) and statuses(db_url) == {SENT: 50}, 10,
             "later runs to drain the rest")
    service.cleanup()


def test_cleanup_deletes_only_expired_rows_in_bounded_batches(
        db_url: str, store: StateStore) -> None:
    fill(db_url, 260)
    old, recent = utcnow() - timedelta(days=30), utcnow()
    with db.transaction(db_url) as session:
        ids = session.scalars(select(T.c.id).order_by(T.c.id)).all()
        session.execute(update(T).where(T.c.id <= ids[229]).values(status=SENT, sent_at=old))
        session.execute(update(T).where(T.c.id.between(ids[230], ids[249]))
                        .values(status=SENT, sent_at=recent))
        session.execute(update(T).where(T.c.id > ids[249]).values(available_at=old))
    service = ExpiredRowsCleanup(state=store, db=db.new_session(db_url))
    service.batch_size = 100
    service.retention_seconds = 86400
    assert not run(service, store).failed
    assert statuses(db_url) == {SENT: 20, PENDING: 10}, "recent sent rows and pending ones stay"
    assert not run(service, store).failed
    assert statuses(db_url) == {SENT: 20, PENDING: 10}
    service.cleanup()


def test_cleanup_skips_a_row_another_transaction_holds(locking_db_url: str,
                                                       store: StateStore) -> None:
    fill(locking_db_url, 5)
    with db.transaction(locking_db_url) as session:
        session.execute(update(T).values(status=SENT, sent_at=utcnow() - timedelta(days=30)))
        first = session.scalars(select(T.c.id).order_by(T.c.id)).first()
    api = db.new_session(locking_db_url)
    lock_row(api, OutboxMessage, first)
    try:
        service = ExpiredRowsCleanup(state=store, db=db.new_session(locking_db_url))
        service.retention_seconds = 86400
        with fail_lock_waits_after(service.db, 3):  # the run's first transaction deletes
            assert not run(service, store).failed, "skipped, not waited for"
        assert statuses(locking_db_url) == {SENT: 1}
    finally:
        api.rollback()
        api.close()
    service.db.close()
    service.cleanup()


def test_concurrent_dispatches_beside_new_messages_never_deadlock(locking_db_url: str) -> None:
    """Four dispatchers claim batches of 100 and settle them while two writers keep adding
    messages: no claim fails, and every message is claimed exactly once. On MariaDB at
    REPEATABLE READ (InnoDB's default) claims deadlocked on each other's gap locks."""
    url = locking_db_url
    ids = fill(url, 4000)
    dispatch = OutboxDispatch(OutboxOptions(batch_size=100))
    claimed: list[list[str]] = [[] for _ in range(4)]
    written: list[list[str]] = [[] for _ in range(2)]
    errors: list[BaseException] = []
    writing = threading.Event()
    writing.set()

    def dispatcher(slot: int) -> None:
        session = db.new_session(url)
        try:
            while (rows := dispatch.claim_batch(session, f"d{slot}")) or writing.is_set():
                dispatch.settle(session, f"d{slot}", rows, {row.id: None for row in rows})
                claimed[slot].extend(row.message_id for row in rows)
        except BaseException as exc:  # reported below, so a thread's failure fails the test
            errors.append(exc)
        finally:
            session.close()

    def writer(slot: int) -> None:
        try:
            for n in range(300):
                with db.transaction(url) as session:
                    written[slot].append(enqueue(session, "orders", {"n": n}).message_id)
        except BaseException as exc:
            errors.append(exc)

    dispatchers = [threading.Thread(target=dispatcher, args=(i,)) for i in range(4)]
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in dispatchers + writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    writing.clear()
    for thread in dispatchers:
        thread.join(timeout=120)
    assert not errors, errors
    everything = [message for slot in claimed for message in slot]
    assert Counter(everything) == Counter(ids + written[0] + written[1]), "each claimed once"
    assert statuses(url) == {SENT: len(everything)}
    with db.transaction(url) as session:
        assert set(session.scalars(select(T.c.attempts))) == {1}
