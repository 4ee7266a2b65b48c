"""Bad DATABASE_URLs and missing tables get clear errors, with the password hidden."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
from sqlalchemy.engine import make_url

from services.database import migrate
from services.database import sessions as db
from services.errors import DatabaseConfigError, SchemaNotMigrated
from services.examples.SVC_ExpiredRowsCleanup import ExpiredRowsCleanup
from services.examples.SVC_OutboxDispatcher import OutboxDispatcher
from services.lease import LeaseKeeper
from services.runner import run_once
from services.state import StateStore
from tests.db.conftest import schema_url

SECRET = "s3cr3t-pw"


def assert_redacted(message: str) -> None:
    assert SECRET not in message, message
    assert "***" in message, message


def test_a_driver_that_is_not_installed() -> None:
    # The dev install has pymysql; mysqlclient (mysql+mysqldb://) is the driver it lacks.
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed here")
    with pytest.raises(DatabaseConfigError, match="driver that is not installed") as caught:
        db.create_db_engine(f"mysql+mysqldb://app:{SECRET}@127.0.0.1/app")
    assert_redacted(str(caught.value))
    assert "periodic-services[mysql]" in str(caught.value)
    assert "mysql+pymysql://" in str(caught.value), "the driver the project supports"


def test_an_unknown_database_kind() -> None:
    with pytest.raises(DatabaseConfigError, match="driver that is not installed") as caught:
        db.create_db_engine(f"nosuchdb://app:{SECRET}@127.0.0.1/app")
    assert_redacted(str(caught.value))


def test_not_a_url() -> None:
    with pytest.raises(DatabaseConfigError, match="is not a database URL"):
        db.create_db_engine("just some words")


def test_a_server_that_does_not_answer() -> None:
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:1/app"
    try:
        with pytest.raises(DatabaseConfigError, match="cannot connect") as caught:
            db.check_connection(url)
        assert_redacted(str(caught.value))
        with pytest.raises(DatabaseConfigError, match="cannot connect") as caught:
            migrate.upgrade(url)
        assert_redacted(str(caught.value))
    finally:
        db.dispose_engines()


def test_a_database_that_does_not_exist(server_url: str) -> None:
    url = make_url(server_url).set(password=SECRET, database="no_such_database_here")
    text_url = url.render_as_string(hide_password=False)
    try:
        with pytest.raises(DatabaseConfigError, match="no_such_database_here") as caught:
            db.check_connection(text_url)
        assert_redacted(str(caught.value))
    finally:
        db.dispose_engines()


@pytest.mark.postgres
def test_missing_tables_name_the_command_that_creates_them(pg_url: str) -> None:
    # Trust authentication ignores the password, so this connects, and the message must
    # still not show it.
    url = make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    with db.transaction(url) as session, pytest.raises(SchemaNotMigrated) as caught:
        db.require_tables(session, ["svc_outbox"])
    message = str(caught.value)
    assert "svc_outbox" in message and "svc migrate" in message
    assert_redacted(message)


@pytest.mark.parametrize("service_class", [OutboxDispatcher, ExpiredRowsCleanup])
def test_a_service_on_an_unmigrated_database_fails_clearly_and_counts_it(
        service_class: type, sqlite_url: str, store: StateStore) -> None:
    session = db.new_session(sqlite_url)
    service = service_class(state=store, db=session)
    keeper = LeaseKeeper(store)
    try:
        report = asyncio.run(run_once(service, "trigger", keeper))
    finally:
        keeper.close()
        session.close()
    assert report.failed, "a missing table is the run's failure, not a crash"
    assert isinstance(report.error, SchemaNotMigrated)
    state = store.read(service.name)
    assert state.failures == 1
    assert "svc_outbox" in (state.last_error or "") and "svc migrate" in (state.last_error or "")


def test_schema_url_keeps_the_schema_in_the_options() -> None:
    url = schema_url("postgresql+psycopg://u@h/db", "abc")
    assert make_url(url).query["options"] == "-csearch_path=abc"


# How to find a connection's server-side id, end it, and see it gone.
_BACKEND = {
    "postgresql": ("SELECT pg_backend_pid()", "SELECT pg_terminate_backend(:pid)",
                   "SELECT 1 FROM pg_stat_activity WHERE pid = :pid"),
    "mysql": ("SELECT CONNECTION_ID()", "KILL :pid",
              "SELECT 1 FROM information_schema.processlist WHERE id = :pid"),
}


@pytest.mark.parametrize("idle_seconds", [0.0, 3600.0])
def test_a_pooled_connection_the_server_closed_while_idle(server_url: str,
                                                          idle_seconds: float) -> None:
    """Idle longer than SVC_DB_PING_AFTER_IDLE_SECONDS: checked and replaced unseen. Used a
    moment ago: not checked (no round trip), so a connection that died anyway fails once."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from services.settings import load_settings
    from tests.waiting import wait_for

    engine = db.create_db_engine(server_url,
                                 load_settings(db_ping_after_idle_seconds=idle_seconds))
    whoami, kill, alive = _BACKEND[engine.dialect.name]
    admin = create_engine(server_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text(whoami)).scalar()
        with admin.begin() as conn:
            conn.execute(text(kill), {"pid": pid})

        def gone() -> bool:
            # A transaction of its own each time: PostgreSQL shows one transaction the same
            # pg_stat_activity throughout, so polling in one would never see the backend go.
            with admin.connect() as conn:
                return not conn.execute(text(alive), {"pid": pid}).first()

        wait_for(gone, 10, "the backend to go")
        if idle_seconds:
            with pytest.raises(OperationalError), engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
        admin.dispose()
