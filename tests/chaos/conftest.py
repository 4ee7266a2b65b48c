"""Servers a chaos test may stop, crash, wipe or restart: its own PostgreSQL and Redis on free
ports (``tests/servers.py``), never the shared ones. Each fixture yields a started server and
stops it, and removes its files, afterwards; it skips the test when the binaries are missing.

- ``own_postgres``: an ``OwnPostgres`` (empty;
  ``services.database.migrate.upgrade(own_postgres.url)`` for the framework's tables).
- ``own_redis``: an ``OwnRedis`` with ``--save "" --appendonly no``.
- ``make_own_redis(options)``: more Redis servers, or other options
  (``make_own_redis({"appendonly": "yes"})``); all are stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from services.database import sessions as db
from tests.servers import OwnPostgres, OwnRedis, ServerUnavailable


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    try:
        server = OwnPostgres()
    except ServerUnavailable as exc:
        pytest.skip(f"needs PostgreSQL's server binaries: {exc}")
    with server:
        try:
            yield server
        finally:
            # Pooled connections of this process point at a server about to vanish.
            db.dispose_engines()


@pytest.fixture
def make_own_redis() -> Iterator[Callable[..., OwnRedis]]:
    servers: list[OwnRedis] = []

    def make(options: dict[str, str] | None = None) -> OwnRedis:
        try:
            server = OwnRedis(options)
        except ServerUnavailable as exc:
            pytest.skip(f"needs a redis-server: {exc}")
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def own_redis(make_own_redis: Callable[..., OwnRedis]) -> OwnRedis:
    return make_own_redis()
