"""Shared fixtures: real Redis (and PostgreSQL and MariaDB where reachable), a key prefix per
test, and removal of every key a test made."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from services.keys import Keys
from services.state import StateStore
from tests import needs

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with what it needs (tests/needs.py), so ``-m`` can select by need."""
    for item in items:
        for marker in needs.markers_for(set(getattr(item, "fixturenames", ())), str(item.path)):
            item.add_marker(marker)


@pytest.fixture(autouse=True)
def _declared_needs(request: pytest.FixtureRequest) -> Iterator[None]:
    needs.declared = frozenset(marker.name for marker in request.node.iter_markers())
    yield
    needs.declared = frozenset()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"tests need Redis at {redis_url} (make test starts one): {exc}")
    return client


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    value = f"test-{uuid.uuid4().hex[:10]}"
    yield value
    for key in redis_client.scan_iter(f"{value}*", count=1000):
        redis_client.delete(key)


@pytest.fixture
def store(redis_client: redis.Redis, prefix: str) -> StateStore:
    return StateStore(redis_client.__class__.from_url(REDIS_URL, decode_responses=True),
                      Keys(prefix), lease_seconds=3.0, redis_url=REDIS_URL)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """``TEST_POSTGRES_URL``; the test skips only when no PostgreSQL is reachable."""
    url = os.environ.get("TEST_POSTGRES_URL",
                         "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    if not url:
        pytest.skip("no PostgreSQL reachable (make test says so at the start)")
    return url


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """``TEST_MYSQL_URL`` (MariaDB or MySQL); the test skips only when none is reachable."""
    url = os.environ.get("TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
    if not url:
        pytest.skip("no MariaDB/MySQL reachable (make test says so at the start)")
    return url
