"""What a test needs, said by its markers and checked where the need arises.

Markers (``pyproject.toml`` lists them): ``redis``, ``postgres``, ``mysql`` are added to a
test by the fixtures it uses (``tests/conftest.py``); ``browser`` to everything under
``tests/browser``; ``celery`` a test declares itself, and starting a Celery process in a test
that did not declare it fails (``require``), so ``pytest -m 'not celery'`` really runs none.
"""

from __future__ import annotations

import pytest

# The markers of the test running now (set by an autouse fixture in tests/conftest.py).
declared: frozenset[str] = frozenset()

# Fixtures that reach a server: using one marks the test.
BY_FIXTURE = {
    "redis_url": "redis", "redis_client": "redis", "prefix": "redis", "store": "redis",
    "own_redis": "redis", "postgres_url": "postgres", "mysql_url": "mysql",
}


def require(marker: str, what: str) -> None:
    """Fail the test running now unless it declared ``marker``."""
    if marker not in declared:
        pytest.fail(f"this test {what}, but is not marked @pytest.mark.{marker}: say so with "
                    f"the marker (pytest -m 'not {marker}' must leave it out)", pytrace=False)


def markers_for(fixtures: set[str], path: str) -> set[str]:
    """The markers a test earns by the fixtures it uses and where it lives."""
    found = {BY_FIXTURE[name] for name in fixtures & BY_FIXTURE.keys()}
    if "/tests/browser/" in path:
        found.add("browser")
    return found
