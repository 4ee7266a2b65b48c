"""One SQLAlchemy engine per process, from ``DATABASE_URL``, and the sessions services use.

The engine is made lazily in the process that uses it, so a Celery worker's children each
build their own after the fork and never share a connection with their parent.

Backends: SQLite (the one-machine default), PostgreSQL (``postgresql+psycopg://``), and
MySQL/MariaDB (``mysql+pymysql://``; sessions there run at READ COMMITTED, in UTC). Every
error about the URL itself (malformed, a driver that is not installed, a server that does
not answer) is a :class:`DatabaseConfigError` whose message names the URL with its password
hidden.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, inspect
from sqlalchemy.engine import URL, CursorResult, Result, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from services.errors import DatabaseConfigError, SchemaNotMigrated
from services.settings import Settings, get_settings, redact_url

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}
_factories: dict[tuple[int, str], sessionmaker[Session]] = {}
_known_tables: set[tuple[int, str, str]] = set()

MIGRATE_HINT = ("run the migrations: `svc migrate` (or `python -m services.database.migrate "
                "upgrade`)")


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise DatabaseConfigError(
            f"DATABASE_URL {redact_url(url)!r} is not a database URL "
            f"(expected e.g. sqlite:///var/services.db or postgresql+psycopg://host/db): {exc}"
        ) from None


def create_db_engine(url: str, settings: Settings | None = None) -> Engine:
    """An engine for ``url`` with worker-friendly pool settings, or a
    :class:`DatabaseConfigError` that names the URL (password hidden) and what is wrong."""
    settings = settings or get_settings()
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        _ensure_sqlite_dir(parsed.database)
        kwargs["connect_args"] = {"timeout": settings.db_sqlite_busy_timeout_ms / 1000,
                                  "check_same_thread": False}
    else:
        kwargs.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_recycle=settings.db_pool_recycle_seconds,
        )
        if backend in ("postgresql", "mysql", "mariadb"):
            # Without it a host that drops packets hangs a run for minutes.
            kwargs["connect_args"] = {"connect_timeout": settings.db_connect_timeout_seconds}
        if backend in ("mysql", "mariadb"):
            # PostgreSQL's default. Under InnoDB's REPEATABLE READ a locking read also locks
            # the gaps it scanned, so concurrent claims deadlock: each moves its rows'
            # index entries into a gap the other holds (the outbox dispatcher's claims did,
            # several times in seconds with four claimers; never under READ COMMITTED).
            kwargs["isolation_level"] = "READ COMMITTED"
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseConfigError(
            f"DATABASE_URL {redact_url(url)!r} needs a driver that is not installed: {exc}. "
            "Install it (PostgreSQL: pip install 'periodic-services[postgres]'; "
            "MySQL/MariaDB: pip install 'periodic-services[mysql]' and use mysql+pymysql://)"
        ) from None
    if backend == "sqlite":
        busy_ms = settings.db_sqlite_busy_timeout_ms
        event.listen(engine, "connect", lambda conn, _rec: _sqlite_pragmas(conn, busy_ms))
    else:
        if backend in ("mysql", "mariadb"):
            event.listen(engine, "connect", lambda conn, _rec: _mysql_utc(conn))
        _ping_when_idle(engine, settings.db_ping_after_idle_seconds)
    return engine


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use when it sat idle longer than ``idle_seconds``.

    A worker idles between ticks and the server (or a proxy) may close its connections
    meanwhile, so a check beats a failed run. SQLAlchemy's ``pool_pre_ping`` checks at every
    checkout, which a Session does once per transaction: a round trip more per claim, about
    40% of the throughput of one-row claims. A connection back in the pool a moment ago is
    very likely alive; one that died anyway fails that run, which is retried.
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info["svc_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("svc_idle_since")
        if since is None or time.monotonic() - since < idle_seconds:
            return  # a new connection, or one used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError(f"pooled connection is gone: {exc}") from exc


def _ensure_sqlite_dir(database: str | None) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    # WAL lets readers work beside the one writer SQLite allows; busy_timeout makes writers
    # queue for the write lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.close()


def _mysql_utc(dbapi_connection: Any) -> None:
    # DATETIME keeps no time zone: the framework stores UTC, so CURRENT_TIMESTAMP (the
    # outbox's column defaults) and NOW() must be UTC too, whatever the server's zone.
    cursor = dbapi_connection.cursor()
    cursor.execute("SET time_zone = '+00:00'")
    cursor.close()


def get_engine(url: str | None = None) -> Engine:
    """This process's engine for ``url`` (default ``DATABASE_URL``); made again after a fork."""
    url = url or get_settings().database_url
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_db_engine(url)
            _factories[key] = sessionmaker(bind=engine, expire_on_commit=False)
        return engine


def new_session(url: str | None = None) -> Session:
    """A new session on this process's engine. Nothing commits for you: call ``commit()``."""
    url = url or get_settings().database_url
    get_engine(url)
    return _factories[(os.getpid(), url)]()


@contextmanager
def transaction(url: str | None = None) -> Iterator[Session]:
    """A session whose work is committed when the block ends, rolled back if it raises, and
    closed either way: for code outside a service run (an API handler, a script, a test)."""
    session = new_session(url)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def describe_url(bind: Engine | Connection | Session) -> str:
    """The URL a bind talks to, password hidden."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    if isinstance(engine, Connection):
        engine = engine.engine
    return engine.url.render_as_string(hide_password=True)


def check_connection(url: str | None = None) -> None:
    """Connect once, turning a failure into an error that names the URL, password hidden."""
    engine = get_engine(url)
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        raise DatabaseConfigError(
            f"cannot connect to DATABASE_URL {describe_url(engine)!r}: "
            f"{str(exc.orig).strip()}") from None


def require_tables(session: Session, tables: Iterable[Table | str]) -> None:
    """Raise :class:`SchemaNotMigrated`, naming the tables and the command that creates them,
    when any of ``tables`` is missing. A table once seen is not looked up again by this
    process, so the check costs one catalog query per process, not one per run."""
    bind = session.connection()
    url = str(bind.engine.url)
    names = [t if isinstance(t, str) else t.name for t in tables]
    todo = [n for n in names if (os.getpid(), url, n) not in _known_tables]
    if not todo:
        return
    inspector = inspect(bind)
    missing = [n for n in todo if not inspector.has_table(n)]
    if missing:
        raise SchemaNotMigrated(
            f"table{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"do{'' if len(missing) > 1 else 'es'} not exist in {describe_url(bind)}: "
            f"{MIGRATE_HINT}")
    _known_tables.update((os.getpid(), url, n) for n in todo)


def rowcount(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE run by ``Session.execute`` matched. The session types
    every result as ``Result``; a DML statement's is a ``CursorResult``, which counts them."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"expected an UPDATE's or DELETE's CursorResult, got "
                        f"{type(result).__name__}")
    return result.rowcount


def dispose_engines() -> None:
    """Close this process's pools (worker shutdown, end of a test)."""
    with _lock:
        for (pid, url), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
                del _engines[(pid, url)]
                _factories.pop((pid, url), None)
        _known_tables.clear()
