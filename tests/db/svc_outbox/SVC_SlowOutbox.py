"""The real outbox dispatcher, pausing between delivering a batch and settling it: the window
in which a worker that dies leaves messages delivered but not marked sent."""

import os
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row

from services.examples.SVC_OutboxDispatcher import OutboxDispatcher


class SlowOutbox(OutboxDispatcher):
    def deliver(self, rows: Sequence[Row[Any]]) -> dict[int, str | None]:
        outcome = super().deliver(rows)
        time.sleep(float(os.environ.get("SLOW_OUTBOX_SETTLE_DELAY", "1.0")))
        return outcome
