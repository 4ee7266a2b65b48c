"""Does nothing, quickly: for cadence, pause/resume and duplicate-tick tests."""

from services.AbstractService import AbstractService


class Ticker(AbstractService):
    interval_seconds = 0.5
    max_failures = 3
    retry_delay_seconds = 0.5

    def _configure_service(self) -> None:
        self.updates = 0

    async def update(self) -> None:
        self.updates += 1
