"""Blocks for a long time, so a test can kill its worker mid-run."""

import os
import time

from services.AbstractService import AbstractService


class Sleeper(AbstractService):
    interval_seconds = 0.5
    max_failures = 3
    retry_delay_seconds = 0.5

    def _configure_service(self) -> None:
        self.seconds = float(os.environ.get("SLEEPER_SECONDS", "60"))

    async def update(self) -> None:
        time.sleep(self.seconds)
