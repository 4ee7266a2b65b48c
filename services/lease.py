"""Keeps the leases of running runs alive from a thread of its own, and enforces each run's
hard time limit.

The thread keeps working while ``update()`` blocks the event loop with synchronous calls.
A run shorter than the renewal period is never renewed, so it costs no extra round trip.
A lease is never renewed past its run's hard limit: there the keeper hands the run to its
``on_expiry`` callback (the runner records it as a ``timeout``; a Celery pool process then
replaces itself), so a hung run holds its service for at most its limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.errors import StateUnavailableError
from services.outage import Outage
from services.runs import RunTicket
from services.state import StateStore

logger = logging.getLogger(__name__)
# A renewal has this share of the lease to arrive before the lease lapses.
RENEWAL_FRACTION = 1 / 3


class LeaseWatch:
    """The keeper's word on one run's lease: the one flag its thread shares with the run.

    A plain attribute, not an ``Event``: the keeper's thread only ever sets it and the run
    only reads it (nobody waits on it), and each is a single store or load, atomic under the
    interpreter. An Event cost every run a lock and a condition it never used."""

    __slots__ = ("_lost",)

    def __init__(self) -> None:
        self._lost = False

    @property
    def lost(self) -> bool:
        """True once a renewal found the lease taken: another run may own the service."""
        return self._lost

    def mark_lost(self) -> None:
        self._lost = True


@dataclass
class _Tracked:
    ticket: RunTicket
    watch: LeaseWatch
    renewed_at: float
    hard_deadline: float | None
    on_expiry: Callable[[RunTicket], None] | None


class LeaseKeeper:
    """One per process; renews every tracked run's lease about every third of the lease."""

    def __init__(self, store: StateStore, period_seconds: float | None = None, *,
                 grace_seconds: float = 10.0) -> None:
        self.store = store
        self.period = period_seconds or store.lease_seconds * RENEWAL_FRACTION
        if self.period >= store.lease_seconds / 2:
            raise ValueError(
                f"lease renewal period {self.period}s must be under half the lease "
                f"({store.lease_seconds}s), or the lease lapses before a renewal arrives")
        self.grace = grace_seconds
        """How long past a run's soft limit its hard limit falls."""
        self.on_hard_limit: Callable[[RunTicket], None] | None = None
        """What the host does once a run past its hard limit is recorded (a Celery pool
        process exits, to be replaced); None: nothing more."""
        self._tracked: dict[str, _Tracked] = {}
        self._outage = Outage(logger, f"Redis at {store.redis_url} (lease renewal)")
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def track(self, ticket: RunTicket, hard_limit_seconds: float | None = None,
              on_expiry: Callable[[RunTicket], None] | None = None) -> LeaseWatch:
        """Renew ``ticket``'s lease until ``untrack``; at ``hard_limit_seconds`` after now stop
        renewing and call ``on_expiry(ticket)`` from the keeper's thread. The watch says
        whether the lease was lost meanwhile."""
        now = time.monotonic()
        deadline = now + hard_limit_seconds if hard_limit_seconds is not None else None
        watch = LeaseWatch()
        with self._lock:
            self._tracked[ticket.token] = _Tracked(ticket, watch, now, deadline, on_expiry)
            if deadline is not None and deadline - now < self.period:
                self._wake.set()  # sooner than the keeper's next look: look again now
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="svc-lease-keeper", daemon=True)
                self._thread.start()
        return watch

    def untrack(self, ticket: RunTicket) -> None:
        with self._lock:
            self._tracked.pop(ticket.token, None)

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self._stopping:
                return
            self.expire_due()
            self.renew_due()

    def _next_wait(self) -> float:
        with self._lock:
            deadlines = [t.hard_deadline for t in self._tracked.values() if t.hard_deadline]
        if not deadlines:
            return self.period
        return max(0.01, min(self.period, min(deadlines) - time.monotonic()))

    def expire_due(self) -> None:
        """Hand every run past its hard limit to its ``on_expiry``; its lease is not renewed
        again."""
        now = time.monotonic()
        with self._lock:
            due = [t for t in self._tracked.values()
                   if t.hard_deadline is not None and now >= t.hard_deadline]
            for tracked in due:
                del self._tracked[tracked.ticket.token]
        for tracked in due:
            if tracked.on_expiry is None:
                continue
            try:
                tracked.on_expiry(tracked.ticket)
            except Exception:  # the thread must go on renewing every other run's lease
                logger.exception("handling the hard time limit of %s run %s failed",
                                 tracked.ticket.name, tracked.ticket.run_id)

    def renew_due(self) -> None:
        """Renew every tracked lease last renewed a period or more ago."""
        now = time.monotonic()
        with self._lock:
            due = [(t.ticket, t.watch, t.hard_deadline) for t in self._tracked.values()
                   if now - t.renewed_at >= self.period and not t.watch.lost]
        for ticket, watch, deadline in due:
            # Never much past the hard limit, even if this thread wakes late for the expiry;
            # a third of a lease beyond it, so that at the limit this thread records the
            # timeout itself rather than a guard elsewhere finding the lease lapsed.
            lease_ms = self.store.lease_ms
            if deadline is not None:
                margin = self.store.lease_seconds * RENEWAL_FRACTION
                lease_ms = max(1, min(lease_ms, int((deadline + margin - now) * 1000)))
            try:
                renewed = self.store.runs.renew(ticket, lease_ms)
            except StateUnavailableError as exc:
                self._outage.failed(f"could not renew the lease of {ticket.name} run "
                                    f"{ticket.run_id}: {exc}")
                continue
            self._outage.recovered()
            if not renewed:
                with self._lock:
                    if ticket.token not in self._tracked:
                        continue  # the run finished (and freed its lease) meanwhile
                watch.mark_lost()  # no more renewals, but the hard limit still holds
                logger.error("service %s run %s lost its lease; its result will not overwrite "
                             "a newer run", ticket.name, ticket.run_id)
                continue
            with self._lock:
                tracked = self._tracked.get(ticket.token)
                if tracked is not None:
                    tracked.renewed_at = now
