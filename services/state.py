"""The Redis state store: flags, failure counters, leases, run history and audit, shared by
every process that runs a service. Operators read and change state here; the run path (guard,
renew, record) is ``StateStore.runs`` (``services.runs``). Each decision is one Lua script, one
round trip.

Times in Redis are the Redis server's clock (``TIME``), so workers with skewed clocks still
agree on leases, backoff and tick windows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from redis import Redis

from services import durability
from services.fields import (
    FAILURES,
    PAUSED,
    REGISTERED_AT,
    RETRY_AT,
    RUNNING,
    ServiceState,
    parse_flag,
    parse_number,
)
from services.keys import Keys, validate_name
from services.redis_client import RedisErrors, connect_redis, scored, text, text_list, text_map
from services.runs import RunLedger, worker_identity
from services.scripts import Scripts
from services.settings import Settings, get_settings, redact_url

logger = logging.getLogger(__name__)


class StateStore:
    """Every read and write of service state, as operators and the services page make them;
    the run path is ``runs``. Thread-safe: redis-py pools connections."""

    def __init__(
        self,
        client: Redis,
        keys: Keys | None = None,
        *,
        lease_seconds: float = 30.0,
        history_length: int = 100,
        history_bytes: int = 32768,
        audit_length: int = 200,
        redis_url: str = "",
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.lease_ms = int(lease_seconds * 1000)
        self.history_length = history_length
        self.history_bytes = history_bytes
        self.audit_length = audit_length
        self.redis_url = redact_url(redis_url) if redis_url else "<redis>"
        self.scripts = Scripts.register(client)
        self._reaching_cm = RedisErrors(self.redis_url, self.keys.prefix)
        self.runs = RunLedger(self)
        """The run path: guard, lease renewals, record (used by ``services.runner``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> StateStore:
        return cls(
            connect_redis(settings.redis_url),
            Keys(settings.key_prefix),
            lease_seconds=settings.lease_seconds,
            history_length=settings.history_length,
            history_bytes=settings.history_max_bytes,
            audit_length=settings.audit_length,
            redis_url=settings.redis_url,
        )

    @property
    def lease_seconds(self) -> float:
        return self.lease_ms / 1000

    def reaching(self) -> RedisErrors:
        """A context that turns Redis's errors into the framework's (for callers that send
        their own commands on ``client``)."""
        return self._reaching_cm

    def restore(self, name: str, epoch: str) -> str:
        """After Redis lost its data (the store's epoch is now ``epoch``), put back the flags
        this process saw of ``name``: how it restored them, or '' when it saw none."""
        seen = self.memory.seen.get(name)
        if seen is None:
            return ""
        with self._reaching_cm:
            verdict = self.scripts.restore_state(
                keys=[self.keys.state(name), self.keys.audit(name), self.keys.epoch()],
                args=[epoch, int(seen.running), int(seen.paused), seen.stop_reason,
                      f"{seen.at:.3f}", worker_identity(), self.audit_length])
        logger.warning("%s: Redis lost its data; %s its flags as this process saw them "
                       "(running=%s paused=%s)", name, verdict, seen.running, seen.paused)
        return str(verdict)

    @property
    def memory(self) -> durability.StoreMemory:
        return durability.memory_for(self.redis_url, self.keys.prefix)

    def remember_epoch(self) -> str:
        """Read the store's epoch (making one for a new store) into this process's memory.
        A worker's main process calls it before forking its pool."""
        key = self.keys.epoch()
        with self.reaching():
            now_s, _ = self.client.time()
            self.client.hsetnx(key, "id", durability.new_epoch_id())
            self.client.hsetnx(key, "created_at", now_s * 1000)
            epoch = text(self.client.hget(key, "id")) or ""
        self.memory.epoch = epoch
        return epoch

    def acknowledge_loss(self, who: str) -> dict[str, str]:
        """An operator's all-clear after a data loss: the loss moves to ``last_lost_at`` and
        services nobody restored are no longer held. Returns the epoch hash as it was."""
        key = self.keys.epoch()
        with self.reaching():
            before = text_map(self.client.hgetall(key))
            if before.get("lost_at"):
                with self.client.pipeline() as pipe:  # MULTI: all of it or nothing
                    pipe.hset(key, mapping={"last_lost_at": before["lost_at"],
                                            "acknowledged_by": who})
                    pipe.hdel(key, "lost_at")
                    pipe.execute()
        return before

    def epoch_info(self) -> dict[str, str]:
        """The store's epoch hash: ``id``, ``created_at`` and, after a loss, ``lost_at``..."""
        with self.reaching():
            return text_map(self.client.hgetall(self.keys.epoch()))

    # -- operator actions -------------------------------------------------------------------

    def control(self, name: str, action: str, *, who: str, reason: str = "") -> dict[str, Any]:
        """pause, resume, stop, start or reset one service, recorded in its audit list."""
        validate_name(name)
        with self.reaching():
            entry = self.scripts.control(
                keys=[self.keys.state(name), self.keys.audit(name)],
                args=[action, who, reason, self.audit_length],
            )
        parsed: dict[str, Any] = json.loads(entry)  # the script's JSON object, as written
        return parsed

    def set_failures(self, name: str, failures: int) -> None:
        """Set the failure count; 0 also ends a backoff."""
        key = self.keys.state(name)
        with self.reaching(), self.client.pipeline() as pipe:
            pipe.hset(key, FAILURES, int(failures))
            if not failures:
                pipe.hdel(key, RETRY_AT)
            pipe.execute()

    def failures(self, name: str) -> int:
        with self.reaching():
            raw = text(self.client.hget(self.keys.state(name), FAILURES))
        value = parse_number(raw) if raw else 0.0
        if value is None:
            logger.error("%s field failures=%r is not a number; treating it as 0",
                         self.keys.state(name), raw)
            return 0
        return int(value)

    # -- reads ------------------------------------------------------------------------------

    def read(self, name: str) -> ServiceState:
        with self.reaching():
            raw = text_map(self.client.hgetall(self.keys.state(name)))
        state = ServiceState.from_hash(name, raw)
        if state.corrupt:
            logger.error(
                "state of service %r in %s holds unreadable values %s; using safe defaults "
                "(expected flags 1/0 and numbers)", name, self.keys.state(name),
                ", ".join(state.corrupt))
        return state

    def flag(self, name: str, flag: str) -> bool:
        """``running`` or ``paused`` as every process sees it (an unreadable value is safe:
        paused, not running)."""
        if flag not in (RUNNING, PAUSED):
            raise ValueError(f"flag {flag!r}: expected {RUNNING!r} or {PAUSED!r}")
        default = flag == RUNNING
        with self.reaching():
            raw = text(self.client.hget(self.keys.state(name), flag))
        parsed = parse_flag(raw, default)
        if parsed is None:
            logger.error("%s field %s=%r is not a flag (expected 1 or 0); treating it as %s",
                         self.keys.state(name), flag, raw,
                         "paused" if flag == PAUSED else "stopped")
            return flag == PAUSED
        return parsed

    def history(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        with self.reaching():
            rows = text_list(self.client.lrange(self.keys.history(name), 0, max(limit, 1) - 1))
        return _json_rows(rows, self.keys.history(name))

    def audit(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        with self.reaching():
            rows = text_list(self.client.lrange(self.keys.audit(name), 0, max(limit, 1) - 1))
        return _json_rows(rows, self.keys.audit(name))

    def lease_holders(self, name: str) -> list[tuple[str, float]]:
        """``(token, expires_at)`` for every lease still held."""
        with self.reaching():
            now_s, now_us = self.client.time()
            rows = scored(self.client.zrangebyscore(
                self.keys.lease(name), now_s * 1000 + now_us // 1000, "+inf", withscores=True))
        return [(token, score / 1000) for token, score in rows]

    def ping(self) -> None:
        """Fail now, with the URL (password hidden), if Redis is unreachable."""
        with self.reaching():
            self.client.ping()

    def now(self) -> float:
        """The Redis server's clock, which every stored time uses."""
        with self.reaching():
            seconds, micros = self.client.time()
        return seconds + micros / 1_000_000

    # -- the index of services workers have registered --------------------------------------

    def register_services(self, configs: Mapping[str, Mapping[str, Any]]) -> None:
        if not configs:
            return
        with self.reaching(), self.client.pipeline(transaction=True) as pipe:
            seconds, micros = self.client.time()
            pipe.hset(self.keys.index(), mapping={
                name: json.dumps(dict(cfg), sort_keys=True) for name, cfg in configs.items()})
            for name in configs:  # the first registration only: a restart does not move it
                pipe.hsetnx(self.keys.state(name), REGISTERED_AT, f"{seconds}.{micros:06d}")
            # Beat reloads on a new version: a service new to the cluster is scheduled at once.
            pipe.incr(self.keys.schedule_version())
            pipe.execute()

    def registered(self) -> dict[str, dict[str, Any]]:
        with self.reaching():
            raw = text_map(self.client.hgetall(self.keys.index()))
        found: dict[str, dict[str, Any]] = {}
        for name, entry in raw.items():
            try:
                found[name] = json.loads(entry)
            except ValueError:
                logger.error("%s holds unreadable JSON for %r; ignoring it",
                             self.keys.index(), name)
        return found


def _json_rows(rows: list[str], key: str) -> list[dict[str, Any]]:
    parsed = []
    for row in rows:
        try:
            parsed.append(json.loads(row))
        except ValueError:
            logger.error("%s holds an entry that is not JSON; skipping it: %.80r", key, row)
    return parsed


_default: tuple[int, StateStore] | None = None


def default_store() -> StateStore:
    """This process's store, from settings; made again after a fork."""
    global _default  # noqa: PLW0603 - one store per process is the point
    if _default is None or _default[0] != os.getpid():
        _default = (os.getpid(), StateStore.from_settings(get_settings()))
    return _default[1]

