"""Schema migrations of the framework's own tables, usable from code, ``svc migrate`` and
``make run``:

    from services.database import migrate
    migrate.upgrade()                 # DATABASE_URL, to the newest revision
    migrate.downgrade(url, "base")    # remove every svc_* table
    migrate.current(url)              # the revision the database is at, or None

or ``python -m services.database.migrate upgrade|downgrade|current [revision] [--url URL]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from services.database.sessions import create_db_engine, parse_url
from services.errors import DatabaseConfigError, ServiceConfigError
from services.settings import get_settings, redact_url

logger = logging.getLogger(__name__)

SCRIPT_LOCATION = "services.database:migrations"
VERSION_TABLE = "svc_alembic_version"


class RevisionNotFound(ServiceConfigError):
    """The revision asked for is none the code knows, or no path leads to it from where the
    database is: the command was wrong, and nothing was migrated."""


def alembic_config() -> Config:
    """Alembic's configuration for the framework's migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head() -> str:
    """The newest revision the code knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


@contextmanager
def _connected(url: str | None) -> Iterator[Connection]:
    url = url or get_settings().database_url
    parse_url(url)  # a malformed URL fails here, password hidden
    engine = create_db_engine(url)
    try:
        try:
            connection = engine.connect()
        except DBAPIError as exc:
            raise DatabaseConfigError(
                f"cannot connect to DATABASE_URL {redact_url(url)!r} to migrate: "
                f"{str(exc.orig).strip()}") from None
        with connection:
            yield connection
    finally:
        engine.dispose()


def revisions() -> list[str]:
    """Every revision the code knows, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def _refused(action: str, revision: str, why: object) -> RevisionNotFound:
    return RevisionNotFound(
        f"cannot {action} to revision {revision!r}: {why}; expected 'head', 'base', one of "
        f"{', '.join(revisions())}, or a step such as +1 or -1 that exists from where the "
        "database is")


def _run(url: str | None, action: str, revision: str) -> None:
    if not revision.strip():  # alembic fails an assertion on it
        raise _refused(action, revision, "it is empty")
    with _connected(url) as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        try:
            getattr(command, action)(config, revision)
        except (CommandError, RevisionError) as exc:
            # Alembic's wording names the revision; ours adds what would have been accepted.
            raise _refused(action, revision, exc) from None
        connection.commit()
        where = connection.engine.url.render_as_string(hide_password=True)
        logger.info("%s %s: now at %s", where, action, _revision_of(connection) or "base")


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` (default ``DATABASE_URL``) up to ``revision``."""
    _run(url, "upgrade", revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    """Take the database back to ``revision`` (``base`` drops every table made here)."""
    _run(url, "downgrade", revision)


def current(url: str | None = None) -> str | None:
    """The revision the database is at; None before the first migration."""
    with _connected(url) as connection:
        return _revision_of(connection)


def _revision_of(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.database.migrate",
                                     description="Migrate the framework's tables (svc_*).")
    parser.add_argument("action", choices=["upgrade", "downgrade", "current"])
    parser.add_argument("revision", nargs="?", help="default: head (upgrade), base (downgrade)")
    parser.add_argument("--url", help="default: DATABASE_URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.action == "current":
            print(current(args.url) or "base (no migration applied)")
        elif args.action == "upgrade":
            upgrade(args.url, args.revision or "head")
        else:
            downgrade(args.url, args.revision or "base")
    except (DatabaseConfigError, RevisionNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
