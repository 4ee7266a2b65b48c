"""The framework's Alembic migrations: a fresh database goes up to head and back down to
nothing, on SQLite, PostgreSQL and MariaDB/MySQL, and the models match what the migrations
build."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from services.database import migrate
from services.database.models import Base
from tests.cluster import REPO


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def partial_index_predicates(url: str) -> dict[str, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                rows = conn.execute(text(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = current_schema() AND tablename = 'svc_outbox'"))
            else:
                rows = conn.execute(text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                    "AND tbl_name = 'svc_outbox' AND sql IS NOT NULL"))
            return {name: sql.split(" WHERE ", 1)[1] for name, sql in rows if " WHERE " in sql}
    finally:
        engine.dispose()


def index_columns(url: str) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        return {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("svc_outbox")}
    finally:
        engine.dispose()


def assert_claim_indexes(url: str) -> None:
    """Claims read pending rows and the cleanup sent ones: each through an index that holds
    (or, on MySQL, starts with) only those rows."""
    if url.startswith("mysql"):
        # No partial indexes: the pending index leads with the status instead, so claims
        # skip the sent rows all the same. The sent index needs nothing: only sent rows
        # have a sent_at.
        columns = index_columns(url)
        assert columns["ix_svc_outbox_pending"] == ["status", "available_at", "id"], columns
        assert columns["ix_svc_outbox_sent"] == ["sent_at"], columns
        return
    predicates = partial_index_predicates(url)
    assert "pending" in predicates["ix_svc_outbox_pending"], predicates
    assert "sent" in predicates["ix_svc_outbox_sent"], predicates


def test_upgrade_a_fresh_database_then_downgrade_cleanly(bare_url: str) -> None:
    assert migrate.current(bare_url) is None
    migrate.upgrade(bare_url)
    assert migrate.current(bare_url) == migrate.head()
    assert {"svc_outbox", "svc_alembic_version"} <= tables(bare_url)
    assert_claim_indexes(bare_url)

    migrate.upgrade(bare_url)  # already at head: nothing to do, nothing fails
    migrate.downgrade(bare_url)
    assert migrate.current(bare_url) is None
    assert "svc_outbox" not in tables(bare_url)
    assert tables(bare_url) <= {"svc_alembic_version"}, "only Alembic's (empty) version table"

    migrate.upgrade(bare_url)  # and up again: the downgrade left nothing in the way
    assert migrate.current(bare_url) == migrate.head()


def test_the_models_match_the_migrations(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "version_table": migrate.VERSION_TABLE,
                "compare_server_default": False})
            diffs = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    if db_url.startswith("mysql"):
        diffs = without_mysql_pending_index(diffs)
    assert diffs == [], diffs


def without_mysql_pending_index(diffs: list[Any]) -> list[Any]:
    """The one difference MySQL/MariaDB must show: the model's pending index is partial,
    which MySQL cannot build, so the migration leads it with the status instead (see
    0002_mysql_outbox). The model cannot state columns per database; every other difference
    is still reported."""
    expected = {("remove_index", ("status", "available_at", "id")),
                ("add_index", ("available_at", "id"))}
    found = {(diff[0], tuple(c.name for c in diff[1].columns)) for diff in diffs
             if diff[0] in ("remove_index", "add_index")
             and diff[1].name == "ix_svc_outbox_pending"}
    assert found == expected, diffs
    return [diff for diff in diffs if not (diff[0] in ("remove_index", "add_index")
                                           and diff[1].name == "ix_svc_outbox_pending")]


def test_migrations_leave_an_applications_own_tables_alone(bare_url: str) -> None:
    engine = create_engine(bare_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            conn.execute(text("INSERT INTO alembic_version VALUES ('the_apps_own')"))
        migrate.upgrade(bare_url)
        migrate.downgrade(bare_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
                ("the_apps_own",)]
    finally:
        engine.dispose()


def test_the_command_line(sqlite_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.database.migrate", *args, "--url",
                               sqlite_url], capture_output=True, text=True, cwd=REPO,
                              timeout=60, check=False)

    assert run("current").stdout.strip() == "base (no migration applied)"
    assert run("upgrade").returncode == 0
    assert run("current").stdout.strip() == migrate.head()
    assert run("downgrade").returncode == 0
    assert "svc_outbox" not in tables(sqlite_url)
