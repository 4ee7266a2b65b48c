"""The chaos tests' own servers do what tests/servers.py promises: stop, crash and come back on
the same port with (or, for a Redis without persistence, without) their data."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
import redis

from tests.servers import OwnPostgres, OwnRedis

pytestmark = pytest.mark.postgres


def query(server: OwnPostgres, sql: str) -> object:
    with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres",
                         dbname="postgres", connect_timeout=3, autocommit=True) as conn:
        cursor = conn.execute(sql)
        row = cursor.fetchone() if cursor.description else None
        return row[0] if row else None


def test_own_postgres_stops_crashes_and_comes_back_with_its_data(
        own_postgres: OwnPostgres) -> None:
    port = own_postgres.port
    query(own_postgres, "CREATE TABLE kept AS SELECT 42 AS n")
    assert query(own_postgres, "SHOW fsync") == "off"

    own_postgres.stop()
    assert not own_postgres.running
    with pytest.raises(psycopg.OperationalError):
        query(own_postgres, "SELECT 1")
    own_postgres.start()
    assert query(own_postgres, "SELECT n FROM kept") == 42

    own_postgres.stop(crash=True)
    own_postgres.start()  # crash recovery replays the WAL
    assert (own_postgres.port, query(own_postgres, "SELECT n FROM kept")) == (port, 42)
    assert own_postgres.url.endswith(f"127.0.0.1:{port}/postgres")


def test_own_redis_restarts_on_its_port_and_forgets_without_persistence(
        own_redis: OwnRedis, make_own_redis: Callable[..., OwnRedis]) -> None:
    client = redis.Redis.from_url(own_redis.url)
    client.set("k", "v")
    own_redis.restart()
    assert client.get("k") is None, "--save '' --appendonly no: a restart starts empty"
    client.set("k", "v")
    own_redis.restart(kill=True)
    assert client.get("k") is None

    durable = make_own_redis({"appendonly": "yes", "appendfsync": "always"})
    client = redis.Redis.from_url(durable.url)
    client.set("k", "v")
    durable.kill()
    assert not durable.running
    durable.start()
    assert client.get("k") == b"v", "the AOF survives a SIGKILL"
