"""The framework's Alembic migrations: a fresh database goes up to head and back down to
nothing, on SQLite and PostgreSQL, and the models match what the migrations build."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from services import migrate
from services.models import Base
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


def test_upgrade_a_fresh_database_then_downgrade_cleanly(bare_url: str) -> None:
    assert migrate.current(bare_url) is None
    migrate.upgrade(bare_url)
    assert migrate.current(bare_url) == migrate.head()
    assert {"svc_outbox", "svc_alembic_version"} <= tables(bare_url)
    predicates = partial_index_predicates(bare_url)
    assert "pending" in predicates["ix_svc_outbox_pending"], predicates
    assert "sent" in predicates["ix_svc_outbox_sent"], predicates

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
    assert diffs == [], diffs


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
        return subprocess.run([sys.executable, "-m", "services.migrate", *args, "--url",
                               sqlite_url], capture_output=True, text=True, cwd=REPO,
                              timeout=60, check=False)

    assert run("current").stdout.strip() == "base (no migration applied)"
    assert run("upgrade").returncode == 0
    assert run("current").stdout.strip() == migrate.head()
    assert run("downgrade").returncode == 0
    assert "svc_outbox" not in tables(sqlite_url)
