"""Never returns: ``HANG_MODE=await`` awaits forever (cancellable at the soft limit),
``HANG_MODE=block`` blocks in a synchronous call (only the hard limit ends it)."""

import asyncio
import os
import time

from services.AbstractService import AbstractService


class Hanger(AbstractService):
    interval_seconds = 0.5
    max_failures = 1000
    retry_delay_seconds = 0.2
    timeout_seconds = 1.0

    def _configure_service(self) -> None:
        self.mode = os.environ.get("HANG_MODE", "await")

    async def update(self) -> None:
        if self.mode == "block":
            time.sleep(3600)
        await asyncio.Event().wait()
