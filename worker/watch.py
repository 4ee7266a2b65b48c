"""Watching health from the processes that are up anyway: each worker's main process (and
``svc web`` and ``svc metrics``) runs a :class:`services.heartbeat.Pulse` thread that
writes its heartbeat and, when it is its turn, evaluates every service's health and notifies
the transitions (``services.notify``).

Turns: one process of the cluster per ``SVC_HEALTH_WATCH_SECONDS`` (``SET NX PX`` on
``<p>:_health:watch``), so the cluster reads every service's state once per round however
many workers it has. The notification itself is decided by compare-and-set, not by the
turn: two processes that both evaluate still notify a transition once.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from types import TracebackType

from services.heartbeat import WORKER, Heartbeat, Pulse
from services.notify import Hook, Notifier
from services.settings import Settings
from services.state import StateStore
from worker.ops import Operator

logger = logging.getLogger(__name__)


class HealthWatcher:
    def __init__(self, op: Operator, notifier: Notifier, who: str) -> None:
        self.op = op
        self.notifier = notifier
        self.who = who
        self.turn_ms = int(op.settings.health_watch_seconds * 1000)

    def maybe_watch(self) -> int | None:
        """Evaluate every service if it is this process's turn; how many transitions it won
        (None when it was not its turn, or when it has nowhere to send them)."""
        if not self.notifier.has_destination or not self._take_turn():
            return None
        return self.watch()

    def watch(self) -> int:
        self.op.refresh()  # services registered since the last round
        _, statuses = self.op.statuses(self.op.known())
        won = self.notifier.observe_all({s.name: s.health for s in statuses})
        self._forget_gone({s.name for s in statuses})
        return len(won)

    def _forget_gone(self, known: set[str]) -> None:
        """Drop the recorded health of services no longer known (``svc forget``)."""
        store = self.op.store
        with store.reaching():
            gone = set(store.client.hkeys(store.keys.health())) - known
            if gone:
                store.client.hdel(store.keys.health(), *gone)

    def _take_turn(self) -> bool:
        store = self.op.store
        key = store.keys.health_watch()
        with store.reaching():
            if store.client.set(key, self.who, nx=True, px=self.turn_ms):
                return True
            # A turn that never ends (the key written by hand, without an expiry) would
            # silence every notification: treat it as over.
            if store.client.pttl(key) == -1:
                store.client.delete(key)
        return False


def watcher_for(settings: Settings, who: str, hook: Hook | None = None) -> HealthWatcher:
    """A watcher with its own Operator; ``hook`` defaults to SVC_ON_HEALTH_CHANGE's."""
    op = Operator(settings)
    return HealthWatcher(op, Notifier(op.store, settings, hook), who)


class WorkerPulse:
    """A worker's heartbeat and health watch, started once the worker consumes."""

    def __init__(self, settings: Settings, store: StateStore, services: list[str],
                 queues: Callable[[], list[str]], *, node: str,
                 hook: Hook | None = None) -> None:
        self.heartbeat = Heartbeat(store, WORKER, settings)
        self.watcher = watcher_for(settings, self.heartbeat.id, hook)
        self.services, self.queues, self.node = services, queues, node
        self.pulse = Pulse(settings.heartbeat_seconds, {
            "worker heartbeat (Redis)": self._beat, "health watch": self.watcher.maybe_watch})

    def _beat(self) -> None:
        # The queues are asked at every beat: `celery control add_consumer` changes them.
        self.heartbeat.beat(services=self.services, queues=self.queues(), node=self.node)

    def start(self) -> None:
        self.pulse.start()

    def stop(self) -> None:
        self.pulse.stop()
        if not self.pulse.failing("worker heartbeat (Redis)"):  # else it would wait too
            try:
                self.heartbeat.retire()
            except Exception as exc:  # Redis went away just now: the hash expires by itself
                logger.warning("could not retire this worker's heartbeat: %s", exc)
        self.watcher.notifier.close()
        self.watcher.op.close()


class BackgroundWatch:
    """The health watch alone, for a process that is not a worker (``svc metrics``, ``svc
    web``), so that transitions are still notified when every worker is gone::

        with BackgroundWatch(settings, "metrics"):
            serve()
    """

    def __init__(self, settings: Settings, role: str) -> None:
        self.watcher = watcher_for(settings, f"{role}:{socket.gethostname()}:{os.getpid()}")
        self.pulse = Pulse(settings.heartbeat_seconds, {"health watch": self.watcher.maybe_watch})

    def __enter__(self) -> BackgroundWatch:
        self.pulse.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.pulse.stop()
        self.watcher.notifier.close()
        self.watcher.op.close()
