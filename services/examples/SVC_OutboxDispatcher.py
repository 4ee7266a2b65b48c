"""Delivers the transactional outbox (``svc_outbox``) to a Redis stream or an HTTP endpoint.

Applications write messages with ``services.database.outbox.enqueue(session, topic, payload)``
in the same transaction as the change they announce. Each run claims pending rows with
``SELECT ... FOR UPDATE SKIP LOCKED``, delivers them, marks them sent, and drains batch after
batch for up to ``SVC_OUTBOX_RUN_BUDGET_SECONDS``. Up to four runs work at once across the
cluster (``max_concurrent_runs``), each on rows no other run holds. Idempotent: running it
again only finds what is still pending. See docs/database.md.
"""

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row

from services.AbstractService import AbstractService
from services.database.outbox import (
    OUTBOX,
    BatchResult,
    HttpSink,
    OutboxDispatch,
    OutboxOptions,
    RedisStreamSink,
    Sink,
)
from services.database.sessions import require_tables
from services.settings import load

logger = logging.getLogger(__name__)


class OutboxDispatcher(AbstractService):
    """Claims pending outbox rows, delivers each message once, marks it sent."""

    interval_seconds = 1.0
    max_failures = 5
    retry_delay_seconds = 5.0
    max_concurrent_runs = 4

    def _configure_service(self) -> None:
        self.options = load(OutboxOptions)
        self.dispatch = OutboxDispatch(self.options)
        self.sink: Sink | None = None
        target = "HTTP " + self.options.http_url if self.options.http_url else (
            f"Redis stream {self.options.stream}")
        logger.info("OutboxDispatcher (%s) delivers to %s, batches of %d",
                    self.service_id, target, self.options.batch_size)

    def _sink(self) -> Sink:
        # Built at the first run, in the worker process, on the state store's Redis client.
        if self.sink is None:
            if self.options.http_url:
                self.sink = HttpSink(self.options.http_url, self.options.http_timeout_seconds)
            else:
                self.sink = RedisStreamSink(self.state.client, self.state.keys, self.options)
        return self.sink

    def deliver(self, rows: Sequence[Row[Any]]) -> dict[int, str | None]:
        """Deliver one claimed batch; ``{row id: None, or why it failed}``."""
        return self._sink().deliver(rows)

    async def update(self) -> None:
        session = self.db
        require_tables(session, [OUTBOX])
        deadline = time.monotonic() + self.options.run_budget_seconds
        total = BatchResult()
        while True:
            token = self.dispatch.new_token(self.run_id)
            rows = self.dispatch.claim_batch(session, token)
            if not rows:
                break
            result = self.dispatch.settle(session, token, rows, self.deliver(rows))
            self._add(total, result)
            for error in result.errors[:3]:
                logger.warning("delivery failed, will retry with backoff: %s", error)
            if len(rows) < self.options.batch_size or time.monotonic() >= deadline:
                break
            if self.lease_lost or self.paused:  # another run may own our slot, or an operator
                break
            await asyncio.sleep(0)
        if total.claimed:
            logger.info("claimed %d: sent %d, retrying %d, dead %d, taken over by another "
                        "run %d", total.claimed, total.sent, total.retried, total.dead,
                        total.lost_claims)

    @staticmethod
    def _add(total: BatchResult, result: BatchResult) -> None:
        total.claimed += result.claimed
        total.sent += result.sent
        total.retried += result.retried
        total.dead += result.dead
        total.lost_claims += result.lost_claims

    def cleanup(self) -> None:
        super().cleanup()
        logger.info("Cleaning up OutboxDispatcher (%s)", self.service_id)
