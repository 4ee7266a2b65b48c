"""Deletes rows whose time is up, in small batches, each its own short transaction.

Built in: sent outbox messages older than ``SVC_OUTBOX_RETENTION_SECONDS``. Each batch
deletes at most ``SVC_CLEANUP_BATCH_SIZE`` rows, skipping rows another transaction holds
(``FOR UPDATE SKIP LOCKED``), so it never waits behind an API request and never holds a lock
for long. Idempotent: a run only finds what is still expired. Add your own tables with a
subclass that extends ``targets()``.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sqlalchemy import ColumnElement, Table, bindparam

from services.AbstractService import AbstractService
from services.database.locking import delete_rows
from services.database.models import SENT, status_is, utcnow
from services.database.outbox import OUTBOX, OutboxOptions
from services.database.sessions import require_tables
from services.settings import ComponentSettings, load

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupTarget:
    """Rows of ``table`` matching ``expired`` (which may use ``bindparam("cutoff")``: now
    minus ``retention_seconds``) are deleted, in ``order_by`` order."""

    label: str
    table: Table
    expired: ColumnElement[bool]
    order_by: tuple[Any, ...]
    retention_seconds: float = 0.0


class CleanupSettings(ComponentSettings):
    """This service's own settings, ``SVC_CLEANUP_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SVC_CLEANUP_")

    batch_size: int = Field(1000, ge=1, le=100000)
    """Rows deleted per (short) transaction."""
    run_budget_seconds: float = Field(20.0, gt=0)
    """One run deletes batches for at most about this long."""


class ExpiredRowsCleanup(AbstractService):
    """Deletes expired rows in bounded batches."""

    interval_seconds = 60.0
    max_failures = 3
    retry_delay_seconds = 30.0

    def _configure_service(self) -> None:
        settings = load(CleanupSettings)
        self.batch_size = settings.batch_size
        self.run_budget_seconds = settings.run_budget_seconds
        self.retention_seconds = load(OutboxOptions).retention_seconds
        logger.info("ExpiredRowsCleanup (%s): batches of %d, %s", self.service_id,
                    self.batch_size, ", ".join(t.label for t in self.targets()))

    def targets(self) -> list[CleanupTarget]:
        outbox = OUTBOX
        return [CleanupTarget(
            "sent outbox messages", outbox,
            status_is(outbox.c.status, SENT) & (outbox.c.sent_at < bindparam("cutoff")),
            (outbox.c.sent_at,), self.retention_seconds)]

    async def update(self) -> None:
        session = self.db
        targets = self.targets()
        require_tables(session, [t.table for t in targets])
        deadline = time.monotonic() + self.run_budget_seconds
        for target in targets:
            cutoff = utcnow() - timedelta(seconds=target.retention_seconds)
            deleted = 0
            while True:
                count = delete_rows(session, target.table, where=target.expired,
                                    limit=self.batch_size, order_by=target.order_by,
                                    params={"cutoff": cutoff})
                session.commit()  # one short transaction per batch
                deleted += count
                if count < self.batch_size or time.monotonic() >= deadline or self.paused:
                    break
                await asyncio.sleep(0)
            if deleted:
                logger.info("deleted %d %s", deleted, target.label)
            if time.monotonic() >= deadline:
                logger.info("run budget spent; the rest waits for the next run")
                break

    def cleanup(self) -> None:
        super().cleanup()
        logger.info("Cleaning up ExpiredRowsCleanup (%s)", self.service_id)
