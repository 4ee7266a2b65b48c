"""An outage is logged once, then reminded at most every ``REMINDER_SECONDS``, and its end is
logged once: never a line (or a traceback) per tick while Redis or the broker is away.

    outage = Outage(logger, "Redis")
    try:
        ...
    except StateUnavailableError as exc:
        outage.failed(exc)      # ERROR the first time, then a reminder every 30 s
    else:
        outage.recovered()      # INFO "... is back after 12.3s", once

Thread-safe; one instance per thing that can be out (per process).
"""

from __future__ import annotations

import logging
import threading
import time

REMINDER_SECONDS = 30.0


class Outage:
    def __init__(self, logger: logging.Logger, what: str,
                 reminder_seconds: float = REMINDER_SECONDS) -> None:
        self.logger = logger
        self.what = what
        self.reminder_seconds = reminder_seconds
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last_said = 0.0
        self._suppressed = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException | str) -> bool:
        """Note a failure; returns True when this call logged it."""
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since, self._last_said, self._suppressed = now, now, 0
                self.logger.error("%s unavailable: %s (logged once; a reminder every %.0fs "
                                  "while it lasts)", self.what, error, self.reminder_seconds)
                return True
            if now - self._last_said < self.reminder_seconds:
                self._suppressed += 1
                return False
            self.logger.error("%s still unavailable after %.0fs (%d more failures since the "
                              "last line): %s", self.what, now - self._since, self._suppressed,
                              error)
            self._last_said, self._suppressed = now, 0
            return True

    def recovered(self) -> None:
        """Note a success; logs the end of an outage once."""
        if self._since is None:  # the common case: no lock, no work
            return
        with self._lock:
            if self._since is None:
                return
            self.logger.warning("%s is back after %.1fs", self.what,
                                time.monotonic() - self._since)
            self._since = None
