"""Databases for the database-layer tests: a SQLite file per test, a PostgreSQL schema per
test and a MariaDB/MySQL database per test (both dropped afterwards), migrated by the real
migrations unless a test asks for a bare one.

``bare_url`` and ``db_url`` run a test on every kind; ``locking_db_url`` on the kinds with row
locks (PostgreSQL and MariaDB/MySQL), for what SQLite, which has none, cannot promise. A kind
whose server is not reachable skips, as ``make test`` says at the start.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from services.database import migrate
from services.database import sessions as db

_FIXTURE_OF = {"sqlite": "sqlite_url", "postgres": "pg_url", "mysql": "my_url"}
ALL_KINDS = [
    pytest.param("sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]
ROW_LOCKING_KINDS = ALL_KINDS[1:]


def schema_url(base_url: str, schema: str) -> str:
    """``base_url`` whose connections use ``schema`` first (libpq ``options``)."""
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'test.db'}"
    db.dispose_engines()


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL schema of this test's own; dropped, with everything in it, afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema_url(postgres_url, schema)
    finally:
        db.dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def my_url(mysql_url: str) -> Iterator[str]:
    """A MariaDB/MySQL database of this test's own (MySQL's schemas are databases); dropped,
    with everything in it, afterwards. Named ``svc_test_*`` so it cannot be anyone else's."""
    name = f"svc_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(mysql_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    try:
        yield make_url(mysql_url).set(database=name).render_as_string(hide_password=False)
    finally:
        db.dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture(params=ALL_KINDS)
def bare_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind (a server kind skips only when none is reachable)."""
    return request.getfixturevalue(_FIXTURE_OF[request.param])


@pytest.fixture(params=ROW_LOCKING_KINDS)
def server_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each kind of server: PostgreSQL, MariaDB/MySQL."""
    return request.getfixturevalue(_FIXTURE_OF[request.param])


@pytest.fixture
def db_url(bare_url: str) -> str:
    """A database of each kind with the framework's tables, by the real migrations."""
    migrate.upgrade(bare_url)
    return bare_url


@pytest.fixture(params=ROW_LOCKING_KINDS)
def locking_db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each kind that has row locks: PostgreSQL, MariaDB/MySQL."""
    url = request.getfixturevalue(_FIXTURE_OF[request.param])
    migrate.upgrade(url)
    return url


@pytest.fixture
def pg_db_url(pg_url: str) -> str:
    migrate.upgrade(pg_url)
    return pg_url


@pytest.fixture
def my_db_url(my_url: str) -> str:
    migrate.upgrade(my_url)
    return my_url


@contextmanager
def fail_lock_waits_after(session: Session, seconds: int) -> Iterator[None]:
    """Make a statement of ``session``'s current transaction that waits for a row lock fail
    after ``seconds`` instead of hanging the test: a test of "skips, never waits" fails
    clearly if it waits. (PostgreSQL: until the transaction ends; MySQL: on its connection.)"""
    if session.connection().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = '{int(seconds)}s'"))
        yield
        return
    old = session.execute(text("SELECT @@SESSION.innodb_lock_wait_timeout")).scalar()
    session.execute(text(f"SET SESSION innodb_lock_wait_timeout = {int(seconds)}"))
    try:
        yield
    finally:
        session.execute(text(f"SET SESSION innodb_lock_wait_timeout = {int(old)}"))
