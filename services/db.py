"""One SQLAlchemy engine per process, from ``DATABASE_URL``, and the sessions services use.

The engine is made lazily in the process that uses it, so a Celery worker's children each
build their own after the fork and never share a connection with their parent.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.errors import DatabaseConfigError
from services.settings import Settings, get_settings, redact_url

_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}
_factories: dict[tuple[int, str], sessionmaker[Session]] = {}


def create_db_engine(url: str, settings: Settings | None = None) -> Engine:
    """An engine for ``url`` with worker-friendly pool settings, or a
    :class:`DatabaseConfigError` that names the URL (password hidden) and what is wrong."""
    settings = settings or get_settings()
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseConfigError(
            f"DATABASE_URL {redact_url(url)!r} is not a database URL "
            f"(expected e.g. sqlite:///var/services.db or postgresql+psycopg://host/db): {exc}"
        ) from None
    kwargs: dict[str, object] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        _ensure_sqlite_dir(parsed.database)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_recycle=settings.db_pool_recycle_seconds,
        )
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        raise DatabaseConfigError(
            f"DATABASE_URL {redact_url(url)!r} needs a driver that is not installed: {exc}. "
            "Install it (for PostgreSQL: pip install 'periodic-services[postgres]')"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _ensure_sqlite_dir(database: str | None) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers work beside the one writer SQLite allows; busy_timeout makes writers
    # queue instead of failing at once.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
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
    """A new session on this process's engine."""
    url = url or get_settings().database_url
    get_engine(url)
    return _factories[(os.getpid(), url)]()


def check_connection(url: str | None = None) -> None:
    """Connect once, turning a failure into an error that names the URL, password hidden."""
    engine = get_engine(url)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise DatabaseConfigError(
            f"cannot connect to DATABASE_URL {redact_url(str(engine.url.render_as_string(hide_password=False)))!r}: "
            f"{exc.orig}") from None


def dispose_engines() -> None:
    """Close this process's pools (worker shutdown)."""
    with _lock:
        for (pid, url), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
                del _engines[(pid, url)]
                _factories.pop((pid, url), None)
