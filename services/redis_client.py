"""The Redis client the state store uses: how it is made, how its errors become the
framework's own (``StateUnavailableError``, ``StateCorruptError``) with the password hidden,
and its replies as the text they are."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal

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
                 tb: TracebackType | None) -> Literal[False]:
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


# Replies as text. redis-py types every reply ``bytes | str`` whatever the client; ours are
# made with decode_responses=True (connect_redis), so they are ``str`` already and these only
# say so. A client made without it (passed to a StateStore by hand) still gets text: its
# bytes are decoded as that option would have, and bytes that are not UTF-8 raise
# UnicodeDecodeError, which RedisErrors reports as a corrupt key.


def text(reply: bytes | str | None) -> str | None:
    """One reply (GET, HGET) as text; None stays None (no such key or field)."""
    return reply.decode() if isinstance(reply, bytes) else reply


def text_list(reply: Iterable[bytes | str]) -> list[str]:
    """A list reply (LRANGE) as text."""
    return [item.decode() if isinstance(item, bytes) else item for item in reply]


def text_map(reply: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash (HGETALL) as text."""
    return {_str(field): _str(value) for field, value in reply.items()}


def scored(reply: Iterable[Any]) -> list[tuple[str, float]]:
    """A sorted-set range read ``withscores=True`` (ZRANGE, ZRANGEBYSCORE): (member, score)
    pairs. redis-py types such a reply as either plain members or pairs, as it cannot tell
    from ``withscores``; with it, every item is a pair."""
    return [(_str(member), float(score)) for member, score in reply]


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
