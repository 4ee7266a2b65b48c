"""Surviving a Redis that lost its data (a restart without persistence, FLUSHDB, a failover to
an empty replica): an operator's pause or stop must not be undone by it, and a service that
was running must not turn into an outage.

The store carries an epoch (``<prefix>:_epoch``: a random ``id``). Every process remembers the
epoch it saw and, from each guard's verdict, each service's flags. When the guard
(``begin_run.lua``) finds the epoch gone while this process remembers one, it records the loss
(``lost_at``) in a new epoch, and from then on a service runs only once its flags were
*restored* by a process that saw them (``restore_state.lua``; a remembered pause or stop
always wins) or an operator acted on it. A service no process remembers stays ``held``.

A worker's main process reads the epoch at start, before it forks its pool, so every pool
process (recycled ones included) knows the store it started with.

Limit: a change made since the last tick any worker saw of that service is unknown to every
worker; with Redis persistence on (``appendonly yes``), nothing is lost in the first place,
which is why workers warn at start when it is off.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from services.fields import Verdict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seen:
    """A service's flags as this process last saw them, and when (Redis clock, seconds)."""

    running: bool
    paused: bool
    stop_reason: str
    at: float


@dataclass
class StoreMemory:
    """What this process knows of one store: its epoch and every service it saw."""

    epoch: str = ""
    seen: dict[str, Seen] = field(default_factory=dict)
    announced: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, name: str, verdict: Verdict, detail: str, now_ms: int) -> None:
        """Remember the flags a guard verdict shows (held and corrupt say nothing of them)."""
        at = now_ms / 1000
        if verdict is Verdict.STOPPED:
            self.seen[name] = Seen(False, False, detail, at)
        elif verdict is Verdict.PAUSED:
            self.seen[name] = Seen(True, True, "", at)
        elif verdict not in (Verdict.HELD, Verdict.CORRUPT):
            self.seen[name] = Seen(True, False, "", at)

    def remembered(self, name: str) -> str:
        """'paused' or 'stopped' when this process last saw ``name`` so, else ''."""
        seen = self.seen.get(name)
        if seen is None:
            return ""
        if not seen.running:
            return Verdict.STOPPED.value
        return Verdict.PAUSED.value if seen.paused else ""

    def announce_loss(self, epoch: str, lost_at_ms: str, store_name: str) -> None:
        """Log the loss at ERROR once per process and loss, not once per tick."""
        with self.lock:
            if epoch in self.announced:
                return
            self.announced.add(epoch)
        try:
            when = datetime.fromtimestamp(int(lost_at_ms) / 1000, UTC).isoformat()
        except ValueError:
            when = lost_at_ms
        logger.error(
            "%s lost its data (detected at %s): services a worker saw paused or stopped stay "
            "so, services it saw running run on, and any other service is held until an "
            "operator acts on it (svc status lists them; svc resume NAME confirms one)",
            store_name, when)


_memories: dict[tuple[str, str], StoreMemory] = {}
_memories_lock = threading.Lock()


def memory_for(redis_url: str, prefix: str) -> StoreMemory:
    """This process's memory of one store. A module global on purpose: forked pool processes
    inherit what the worker's main process read at start."""
    key = (redis_url, prefix)
    memory = _memories.get(key)  # every guard asks: no lock, no allocation once it exists
    if memory is None:
        with _memories_lock:
            memory = _memories.setdefault(key, StoreMemory())
    return memory


def new_epoch_id() -> str:
    return os.urandom(8).hex()


def persistence_warnings(client: redis.Redis, url: str) -> list[str]:
    """Why this Redis could lose the framework's state, from its own configuration; empty
    when it keeps its data (or will not say: CONFIG is disabled on some managed services)."""
    try:
        config = client.config_get("appendonly")
        config.update(client.config_get("save"))
        config.update(client.config_get("maxmemory-policy"))
    except redis.ResponseError:
        return []
    problems = []
    if config.get("appendonly") == "no" and not config.get("save"):
        problems.append(
            f"Redis at {url} keeps nothing on disk (appendonly no, no save points): a restart "
            "loses every pause, stop, failure count, history and audit entry; run it with "
            "appendonly yes")
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        problems.append(
            f"Redis at {url} evicts keys under memory pressure (maxmemory-policy {policy}): an "
            "evicted state key silently unpauses or resets a service; use noeviction")
    return problems
