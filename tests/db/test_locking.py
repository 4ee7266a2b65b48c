"""The row-locking helpers on SQLite, PostgreSQL and MariaDB/MySQL, with real concurrent
connections."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, select, text, update
from sqlalchemy.orm import Session

from services.database import sessions as db
from services.database.locking import LIMIT_PARAM, Claim, claim_rows, delete_rows, lock_row
from services.database.models import PENDING, SENT, OutboxMessage, utcnow
from services.database.outbox import OutboxDispatch, OutboxOptions, enqueue
from services.errors import RowLockTimeout
from tests.db.conftest import fail_lock_waits_after

T = OutboxMessage.__table__


def fill(url: str, count: int, topic: str = "t") -> list[int]:
    with db.transaction(url) as session:
        messages = [enqueue(session, topic, {"n": n}) for n in range(count)]
        session.flush()
        return [m.id for m in messages]


def claim(session: Session, limit: int, token: str = "x") -> list[Any]:
    return claim_rows(session, T, where=T.c.status == PENDING, limit=limit,
                      values={"status": SENT, "claimed_by": token, "attempts": T.c.attempts + 1})


def test_claim_changes_state_and_returns_rows_after_the_change(db_url: str) -> None:
    ids = fill(db_url, 5)
    with db.transaction(db_url) as session:
        rows = claim(session, 3, token="me")
    assert sorted(r.id for r in rows) == ids[:3], "oldest first (primary key order)"
    assert {(r.status, r.claimed_by, r.attempts) for r in rows} == {(SENT, "me", 1)}
    with db.transaction(db_url) as session:
        left = session.scalars(select(T.c.id).where(T.c.status == PENDING)).all()
    assert sorted(left) == ids[3:]


def test_the_dispatchers_claim_hands_its_batch_over_in_id_order(db_url: str) -> None:
    """The claim picks rows by (available_at, id) and RETURNING keeps no order, so
    ``claim_batch`` sorts the batch by id (the outbox delivers each batch oldest first). Here
    available_at runs against the ids; without the sort, PostgreSQL handed over 6, 3, 5, 4."""
    ids = fill(db_url, 6)
    start = utcnow() - timedelta(hours=1)
    with db.transaction(db_url) as session:
        for n, key in enumerate(ids):
            session.execute(update(T).where(T.c.id == key)
                            .values(available_at=start - timedelta(minutes=n)))
    dispatch = OutboxDispatch(OutboxOptions(batch_size=4))
    with db.transaction(db_url) as session:
        rows = dispatch.claim_batch(session, "me")
    assert [r.id for r in rows] == ids[2:], "the 4 earliest available, lowest id first"
    assert [r.attempts for r in rows] == [1] * 4


def test_a_rolled_back_claim_releases_its_rows(db_url: str) -> None:
    ids = fill(db_url, 3)
    session = db.new_session(db_url)
    assert len(claim(session, 10)) == 3
    session.rollback()
    session.close()
    with db.transaction(db_url) as session:
        assert sorted(r.id for r in claim(session, 10)) == ids


def test_concurrent_claimers_each_take_disjoint_rows(db_url: str) -> None:
    """Four threads with their own connections claim until nothing is left: every row is
    claimed exactly once (attempts counts the claims of each row)."""
    ids = fill(db_url, 600)
    taken: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def claimer(slot: int) -> None:
        try:
            session = db.new_session(db_url)
            while rows := claim(session, 7, token=f"c{slot}"):
                taken[slot].extend(r.id for r in rows)
                session.commit()
            session.close()
        except BaseException as exc:  # reported below, so a thread's failure fails the test
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    everything = [i for slot in taken for i in slot]
    assert Counter(everything).most_common(1)[0][1] == 1, "a row was claimed twice"
    assert sorted(everything) == ids
    with db.transaction(db_url) as session:
        attempts = session.execute(select(T.c.attempts, func.count()).group_by(T.c.attempts))
        assert dict(attempts.all()) == {1: 600}
        owners = session.execute(select(T.c.claimed_by, func.count()).group_by(T.c.claimed_by))
        assert dict(owners.all()) == {f"c{i}": len(taken[i]) for i in range(4) if taken[i]}


def test_claim_skips_a_row_an_api_transaction_holds_without_waiting(
        locking_db_url: str) -> None:
    ids = fill(locking_db_url, 5)
    api = db.new_session(locking_db_url)
    assert lock_row(api, OutboxMessage, ids[0]).id == ids[0]
    try:
        # Had the claim waited for the lock, it would fail instead of hanging.
        with db.transaction(locking_db_url) as session, fail_lock_waits_after(session, 3):
            rows = claim(session, 10)
        assert sorted(r.id for r in rows) == ids[1:]
    finally:
        api.rollback()
        api.close()
    with db.transaction(locking_db_url) as session:
        assert [r.id for r in claim(session, 10)] == [ids[0]], "free again once released"


def test_sqlite_claims_take_turns_with_the_writer(sqlite_url: str) -> None:
    """What SQLite promises instead of row locks: a claim waits for the transaction holding
    the write lock, then sees its outcome. It never takes a row twice."""
    from services.database import migrate

    migrate.upgrade(sqlite_url)
    ids = fill(sqlite_url, 3)
    holder = db.new_session(sqlite_url)
    lock_row(holder, OutboxMessage, ids[0])
    holder.execute(T.update().where(T.c.id == ids[0]).values(status=SENT))
    result: dict[str, Any] = {}

    def claimer() -> None:
        with db.transaction(sqlite_url) as session:
            result["rows"] = claim(session, 10)
            result["at"] = time.monotonic()

    thread = threading.Thread(target=claimer)
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive(), "the claim should wait for SQLite's write lock"
    released = time.monotonic()
    holder.commit()
    holder.close()
    thread.join(timeout=30)
    assert result["at"] >= released
    assert sorted(r.id for r in result["rows"]) == ids[1:], "the row sent meanwhile is not claimed"


def test_lock_row_nowait_names_the_row_and_leaves_the_transaction_usable(db_url: str) -> None:
    [first] = fill(db_url, 1)
    holder = db.new_session(db_url)
    lock_row(holder, OutboxMessage, first)
    waiter = db.new_session(db_url)
    try:
        started = time.monotonic()
        with pytest.raises(RowLockTimeout) as caught:
            lock_row(waiter, T, first, nowait=True)
        assert time.monotonic() - started < 2, "NOWAIT must not wait"
        assert f"svc_outbox.id={first}" in str(caught.value)
        assert "NOWAIT" in str(caught.value)
        assert (caught.value.table, caught.value.key) == ("svc_outbox", first)
        assert waiter.execute(select(func.count()).select_from(T)).scalar() == 1
        holder.commit()
        row = lock_row(waiter, T, first, nowait=True)
        assert row.id == first and row.status == PENDING
    finally:
        holder.close()
        waiter.rollback()
        waiter.close()


def test_lock_row_timeout_is_reported_after_waiting(db_url: str) -> None:
    [first] = fill(db_url, 1)
    holder = db.new_session(db_url)
    lock_row(holder, OutboxMessage, first)
    waiter = db.new_session(db_url)
    try:
        started = time.monotonic()
        with pytest.raises(RowLockTimeout, match=r"within 0\.3s"):
            lock_row(waiter, OutboxMessage, first, timeout=0.3)
        waited = time.monotonic() - started
        assert 0.25 <= waited < 5, waited
    finally:
        holder.rollback()
        holder.close()
        waiter.rollback()
        waiter.close()


def test_lock_row_returns_an_object_a_row_or_none(db_url: str) -> None:
    [first] = fill(db_url, 1)
    with db.transaction(db_url) as session:
        message = lock_row(session, OutboxMessage, first)
        assert isinstance(message, OutboxMessage) and message.topic == "t"
        message.status = SENT  # the caller changes the row it holds, then commits
    with db.transaction(db_url) as session:
        assert lock_row(session, T, first).status == SENT
        assert lock_row(session, OutboxMessage, first + 1000) is None


def lock_wait_setting(session: Session) -> Any:
    if session.connection().dialect.name == "postgresql":
        return session.execute(text("SHOW lock_timeout")).scalar()
    return session.execute(text("SELECT @@SESSION.innodb_lock_wait_timeout")).scalar()


def test_lock_timeout_setting_is_restored(locking_db_url: str) -> None:
    [first] = fill(locking_db_url, 1)
    with db.transaction(locking_db_url) as session:
        before = lock_wait_setting(session)
        lock_row(session, OutboxMessage, first, timeout=0.5)
        assert lock_wait_setting(session) == before


def test_lock_timeout_setting_is_restored_after_a_lock_fails(locking_db_url: str) -> None:
    """MySQL's lock wait timeout is a session setting, kept by the pooled connection: a
    failed lock must not leave the next user of the connection with a 1 s timeout."""
    [first] = fill(locking_db_url, 1)
    holder = db.new_session(locking_db_url)
    lock_row(holder, OutboxMessage, first)
    waiter = db.new_session(locking_db_url)
    try:
        before = lock_wait_setting(waiter)
        with pytest.raises(RowLockTimeout, match=r"within 0\.4s") as caught:
            lock_row(waiter, OutboxMessage, first, timeout=0.4)
        assert lock_wait_setting(waiter) == before
        if locking_db_url.startswith("mysql"):
            assert "whole seconds: waited 1s" in str(caught.value)
    finally:
        holder.rollback()
        holder.close()
        waiter.rollback()
        waiter.close()


def test_a_lock_that_hits_the_databases_own_timeout_says_so(locking_db_url: str) -> None:
    [first] = fill(locking_db_url, 1)
    holder = db.new_session(locking_db_url)
    lock_row(holder, OutboxMessage, first)
    waiter = db.new_session(locking_db_url)
    try:
        with fail_lock_waits_after(waiter, 1), pytest.raises(
                RowLockTimeout, match="within the database's lock wait timeout"):
            lock_row(waiter, OutboxMessage, first)
    finally:
        holder.rollback()
        holder.close()
        waiter.rollback()
        waiter.close()


def test_nowait_and_timeout_together_is_refused(db_url: str) -> None:
    with db.transaction(db_url) as session, pytest.raises(ValueError, match="not both"):
        lock_row(session, OutboxMessage, 1, nowait=True, timeout=1)


def test_the_select_then_update_path_skips_a_locked_row(locking_db_url: str) -> None:
    """MySQL/MariaDB have no UPDATE ... RETURNING: the claim selects FOR UPDATE SKIP LOCKED,
    updates and re-reads. That path, on MySQL and on PostgreSQL, with a locked row to skip."""
    ids = fill(locking_db_url, 6)
    prepared = Claim(T, where=T.c.status == PENDING, values={"status": SENT, "claimed_by": "m"})
    api = db.new_session(locking_db_url)
    lock_row(api, T, ids[1])
    try:
        with db.transaction(locking_db_url) as session, fail_lock_waits_after(session, 3):
            rows = prepared._claim_in_steps(session, 3, {})
        assert [r.id for r in rows] == [ids[0], ids[2], ids[3]]
        assert {(r.status, r.claimed_by) for r in rows} == {(SENT, "m")}
    finally:
        api.rollback()
        api.close()


def test_delete_rows_is_bounded(db_url: str) -> None:
    ids = fill(db_url, 25)
    with db.transaction(db_url) as session:
        assert delete_rows(session, T, where=T.c.id <= ids[19], limit=8) == 8
    with db.transaction(db_url) as session:
        left = session.scalars(select(T.c.id).order_by(T.c.id)).all()
    assert left == ids[8:], "the oldest matching rows go first"


def test_delete_rows_skips_locked_rows(locking_db_url: str) -> None:
    ids = fill(locking_db_url, 4)
    api = db.new_session(locking_db_url)
    lock_row(api, T, ids[0])
    try:
        with db.transaction(locking_db_url) as session, fail_lock_waits_after(session, 3):
            assert delete_rows(session, T, where=T.c.id > 0, limit=10) == 3
    finally:
        api.rollback()
        api.close()
    with db.transaction(locking_db_url) as session:
        assert session.scalars(select(T.c.id)).all() == [ids[0]]


def test_targets_without_one_primary_key_column_are_refused() -> None:
    with pytest.raises(TypeError, match="Table or a mapped class"):
        Claim(object(), where=T.c.id > 0, values={})
    pairs = Table("pairs", MetaData(), Column("a", Integer, primary_key=True),
                  Column("b", Integer, primary_key=True))
    with pytest.raises(ValueError, match="single-column primary key"):
        Claim(pairs, where=pairs.c.a > 0, values={})


def claim_or_cleanup(which: str) -> tuple[Any, str]:
    """The dispatcher's claim or the cleanup's pick, and the index it must read."""
    from services.database.outbox import OutboxDispatch, OutboxOptions
    from services.examples.SVC_ExpiredRowsCleanup import ExpiredRowsCleanup

    if which == "claim":
        return OutboxDispatch(OutboxOptions()).claim, "ix_svc_outbox_pending"
    cleanup = ExpiredRowsCleanup.__new__(ExpiredRowsCleanup)  # targets() needs no setup
    cleanup.retention_seconds = 60
    target = cleanup.targets()[0]
    statement = (select(T.c.id).where(target.expired).order_by(*target.order_by).limit(10)
                 .with_for_update(skip_locked=True))
    return statement, "ix_svc_outbox_sent"


@pytest.mark.postgres
@pytest.mark.parametrize("which", ["claim", "cleanup"])
def test_prepared_statements_use_the_partial_indexes(pg_db_url: str, which: str) -> None:
    """Statements are prepared after a few runs, and PostgreSQL may then plan them once for
    any parameter values. Such a generic plan can use a partial index only if the status is
    written into the SQL; with it bound, every claim would walk every row already sent."""
    import re

    from sqlalchemy.dialects import postgresql

    statement, index = claim_or_cleanup(which)
    if which == "claim":
        statement = statement._statement
    sql = str(statement.compile(dialect=postgresql.dialect()))
    names: list[str] = []
    for name in re.findall(r"%\((\w+)\)s", sql):
        if name not in names:
            names.append(name)
    numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", sql)
    with db.transaction(pg_db_url) as session:
        session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        session.execute(text(f"PREPARE probe AS {numbered}"))
        unknown = ", ".join("NULL" for _ in names)
        plan = "\n".join(session.scalars(text(f"EXPLAIN EXECUTE probe({unknown})")))
        session.execute(text("DEALLOCATE probe"))
    assert index in plan, plan


@pytest.mark.mysql
@pytest.mark.parametrize("which", ["claim", "cleanup"])
def test_mysql_claims_and_cleanup_read_only_the_rows_they_want(my_db_url: str,
                                                               which: str) -> None:
    """MySQL has no partial indexes. With 990 sent rows and 10 pending, a claim of 5 must
    read about 5 index entries, not walk the sent ones (it read 1001 with the index 0001
    built there), and the cleanup's batch of 10 about 10. InnoDB's handler counters count
    the entries a statement read."""
    ids = fill(my_db_url, 1000)
    past = utcnow() - timedelta(days=1)
    with db.transaction(my_db_url) as session:
        session.execute(update(T).where(T.c.id <= ids[989]).values(
            status=SENT, sent_at=past - timedelta(days=30), available_at=past))
    statement, _ = claim_or_cleanup(which)
    with db.transaction(my_db_url) as session:
        before = rows_read(session)
        if which == "claim":
            rows = session.execute(statement._pick, {LIMIT_PARAM: 5, "now": utcnow()}).all()
        else:
            rows = session.execute(statement, {"cutoff": past}).all()
        read = rows_read(session) - before
    assert len(rows) == (5 if which == "claim" else 10)
    assert read <= 2 * len(rows) + 2, f"{which} read {read} index entries for {len(rows)} rows"


def rows_read(session: Session) -> int:
    status = session.execute(text("SHOW SESSION STATUS LIKE 'Handler_read%'"))
    return sum(int(value) for _, value in status)


@pytest.mark.mysql
def test_mysql_sessions_run_at_read_committed_and_in_utc(my_db_url: str) -> None:
    """READ COMMITTED, or concurrent claims deadlock on gap locks (test_outbox shows it).
    UTC, because DATETIME keeps no zone: a row written with the column defaults (an
    application's own INSERT) must be due now, not hours away, on a server in another zone."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from services.database.outbox import OutboxDispatch, OutboxOptions

    elsewhere = make_url(my_db_url).update_query_dict(
        {"init_command": "SET time_zone = '+05:00'"}).render_as_string(hide_password=False)
    plain = create_engine(elsewhere)
    with plain.connect() as conn:
        assert conn.execute(text("SELECT @@SESSION.time_zone")).scalar() == "+05:00"
    plain.dispose()
    with db.transaction(elsewhere) as session:
        assert session.connection().get_isolation_level() == "READ COMMITTED"
        assert session.execute(text("SELECT @@SESSION.time_zone")).scalar() == "+00:00"
        session.execute(text("INSERT INTO svc_outbox (message_id, topic, payload) "
                             "VALUES ('by-sql', 'orders', '{}')"))
    session = db.new_session(elsewhere)
    rows = OutboxDispatch(OutboxOptions()).claim_batch(session, "now")
    session.close()
    assert [row.message_id for row in rows] == ["by-sql"], "due at once, not in 5 hours"
