"""Alembic environment for the framework's own tables (``svc_*``).

Run through ``services.database.migrate`` (``svc migrate``, ``make run``), which hands over a
connection in ``config.attributes["connection"]``. The version table is
``svc_alembic_version``, so an application's own Alembic history in the same database is
left alone.
"""

from __future__ import annotations

from alembic import context

from services.database.models import Base

VERSION_TABLE = "svc_alembic_version"


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the framework's migrations through services.database.migrate "
                           "(svc migrate), which passes the connection")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) mode is not supported; run services.database.migrate")
run_migrations_online()
