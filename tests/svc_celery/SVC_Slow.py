"""An update longer than its interval, blocking the loop the way synchronous DB calls do."""

import os
import time

from services.AbstractService import AbstractService


class Slow(AbstractService):
    interval_seconds = 0.3
    max_failures = 3
    retry_delay_seconds = 0.5

    def _configure_service(self) -> None:
        self.seconds = float(os.environ.get("SLOW_SECONDS", "1.0"))

    async def update(self) -> None:
        time.sleep(self.seconds)
