"""Databases for the database-layer tests: a SQLite file per test, and a PostgreSQL schema
per test (dropped afterwards), both migrated by the real migrations unless a test asks for a
bare one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from services import db, migrate


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


@pytest.fixture(params=["sqlite", "postgres"])
def bare_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind (PostgreSQL skips only when none is reachable)."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def db_url(bare_url: str) -> str:
    """A database of each kind with the framework's tables, by the real migrations."""
    migrate.upgrade(bare_url)
    return bare_url


@pytest.fixture
def pg_db_url(pg_url: str) -> str:
    migrate.upgrade(pg_url)
    return pg_url
