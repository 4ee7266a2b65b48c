"""The Redis client the state store uses: how it is made, and how its errors become the
framework's own (``StateUnavailableError``, ``StateCorruptError``) with the password hidden."""

from __future__ import annotations

from types import TracebackType

import redis
from redis import Redis

from services.errors import StateCorruptError, StateUnavailableError
from services.settings import redact_url

SOCKET_TIMEOUT_SECONDS = 10.0


def connect_redis(url: str) -> Redis:
    """A client for ``url``. Connecting is lazy; the first command reports an unreachable
    server as :class:`StateUnavailableError` with the password hidden."""
    try:
        return Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30,
            # A Redis that stops answering (a frozen host, a blackholed route) must not block
            # a guard or the lease keeper for ever: every command here is short.
            socket_timeout=SOCKET_TIMEOUT_SECONDS)
    except ValueError as exc:
        raise StateUnavailableError(
            f"REDIS_URL {redact_url(url)!r} is not a Redis URL: {exc}") from exc


class RedisErrors:
    """Turns "Redis is down" and "a state key has the wrong type" into the framework's own
    errors. A plain class rather than ``@contextmanager``: it is entered twice per run."""

    __slots__ = ("prefix", "redis_url")

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc_type is None:
            return False
        if issubclass(exc_type, (redis.ConnectionError, redis.TimeoutError)):
            raise StateUnavailableError(
                f"cannot reach Redis at {self.redis_url}: {exc}") from exc
        if issubclass(exc_type, UnicodeDecodeError):
            raise StateCorruptError(
                f"a state key under {self.prefix}: holds bytes that are not UTF-8 "
                f"text ({exc}); expected flags 1/0 and numbers: fix it with HSET") from exc
        if issubclass(exc_type, redis.ResponseError) and "WRONGTYPE" not in str(exc):
            # OOM under noeviction, READONLY after a failover: Redis is there but refuses.
            raise StateUnavailableError(
                f"Redis at {self.redis_url} refused the command: {exc}") from exc
        if issubclass(exc_type, redis.ResponseError):
            # Someone replaced a state key with another type (SET instead of HSET): refuse to
            # run, say which keys, and keep the process alive until it is fixed.
            raise StateCorruptError(
                f"a state key under {self.prefix}: holds the wrong Redis type "
                f"({exc}); expected the documented layout (see services/keys.py)") from exc
        return False
