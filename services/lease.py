"""Keeps the leases of running runs alive from a thread of its own.

The thread keeps working while ``update()`` blocks the event loop with synchronous calls.
A run shorter than the renewal period is never renewed, so it costs no extra round trip.
"""

from __future__ import annotations

import logging
import threading
import time

from services.errors import StateUnavailableError
from services.state import RunTicket, StateStore

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """One per process; renews every tracked run's lease about every third of the lease."""

    def __init__(self, store: StateStore, period_seconds: float | None = None) -> None:
        self.store = store
        self.period = period_seconds or store.lease_seconds / 3
        self._tracked: dict[str, tuple[RunTicket, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def track(self, ticket: RunTicket) -> None:
        with self._lock:
            self._tracked[ticket.token] = (ticket, time.monotonic())
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="svc-lease-keeper", daemon=True)
                self._thread.start()

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
            self._wake.wait(self.period)
            if self._stopping:
                return
            self.renew_due()

    def renew_due(self) -> None:
        """Renew every tracked lease last renewed a period or more ago."""
        now = time.monotonic()
        with self._lock:
            due = [(t, at) for t, at in self._tracked.values() if now - at >= self.period]
        for ticket, _ in due:
            try:
                renewed = self.store.renew(ticket)
            except StateUnavailableError as exc:
                logger.warning("could not renew lease of %s run %s: %s",
                               ticket.name, ticket.run_id, exc)
                continue
            if not renewed:
                with self._lock:
                    if ticket.token not in self._tracked:
                        continue  # the run finished (and freed its lease) meanwhile
                ticket.lease_lost = True
                logger.error("service %s run %s lost its lease; its result will not overwrite "
                             "a newer run", ticket.name, ticket.run_id)
                self.untrack(ticket)
                continue
            with self._lock:
                if ticket.token in self._tracked:
                    self._tracked[ticket.token] = (ticket, now)
