"""Names its own Celery queue: for routing tests."""

from typing import ClassVar

from services.AbstractService import AbstractService


class Queued(AbstractService):
    interval_seconds = 0.5
    max_failures = 3
    retry_delay_seconds = 0.5
    queue: ClassVar[str | None] = "svc-test-queued"

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass
