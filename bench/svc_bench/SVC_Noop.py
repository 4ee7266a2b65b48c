"""A service whose ``update()`` does nothing but count itself done: the wrapper's overhead is
everything else. Its interval is an hour, so Beat never matters; the bench sends
``svc.noop`` itself, with ``kind="trigger"`` so that the duplicate-tick window never refuses
a message. Four concurrent runs let the processes of a prefork worker run side by side
instead of refusing each other's lease."""

from bench import counters
from services.AbstractService import AbstractService


class Noop(AbstractService):
    interval_seconds = 3600.0
    max_failures = 3
    retry_delay_seconds = 1.0
    max_concurrent_runs = 4

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        counters.bump(counters.WRAPPED)
