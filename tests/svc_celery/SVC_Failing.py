"""Always fails: for failure counts, retries and max_failures across workers."""

from services.AbstractService import AbstractService


class Failing(AbstractService):
    interval_seconds = 1.0
    max_failures = 4
    retry_delay_seconds = 0.4

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        raise RuntimeError("upstream said no")
