"""Beat's scheduler, logging a broker outage once instead of a traceback per tick.

Celery's own scheduler logs every tick it cannot send with the whole stack and traceback
(some 150 lines), so a broker away for 30 s buries the log in thousands of lines. Here a
failure to reach the broker goes to ``services.outage.Outage``: one line when the outage
starts, a reminder at most every 30 s with the number of ticks not sent, and one line when a
tick goes out again. Celery's one "Sending due task" line per tick stays as it is: it shows
Beat alive and trying. A tick that cannot be sent is not replayed later: the next one is
already scheduled (as with Celery's scheduler, which reserves the entry before sending).

Any other error sending one entry (not the broker's fault) is still logged each time, with
its traceback, as Celery does.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from kombu.exceptions import OperationalError

from services.outage import Outage
from services.settings import redact_url

logger = logging.getLogger(__name__)

SENDING = "Scheduler: Sending due task %s (%s)"  # Celery's own line, which tests and ops grep


class OutageAwareScheduler(PersistentScheduler):
    """``PersistentScheduler`` (the schedule file under ``var/``) with bounded outage logs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = Outage(logger, f"the broker ({redact_url(self.app.conf.broker_url)})")

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        logger.info(SENDING, entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception as exc:  # Celery's scheduler catches everything here, and so do we
            cause = self._broker_error(exc)
            if cause is None:
                logger.error("could not send %s: %s", entry.task, exc, exc_info=True)
                return
            self.outage.failed(f"{entry.task} not sent: {type(cause).__name__}: {cause}")
        else:
            self.outage.recovered()

    def _broker_error(self, exc: BaseException) -> BaseException | None:
        """The broker's connection error behind ``exc`` (Celery wraps it in a
        SchedulingError), or None when the failure is not the broker's."""
        errors = (OperationalError, *self.connection.connection_errors)
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, errors):
                return seen
            seen = seen.__cause__ or seen.__context__
        return None
