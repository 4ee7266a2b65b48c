"""Raises what ``RAISE_KIND`` names from update(): a BaseException that is not the worker's
shutdown, which must count as this run's failure and never take the process down."""

import asyncio
import os
import sys

from services.AbstractService import AbstractService


class Custom(BaseException):
    """A BaseException of the service's own."""


async def _cancelled_inner() -> None:
    inner = asyncio.ensure_future(asyncio.sleep(10))
    await asyncio.sleep(0)
    inner.cancel()
    await inner  # re-raises CancelledError: a cancelled inner task leaking out


RAISERS = {
    "cancelled": _cancelled_inner,
    "base": lambda: (_ for _ in ()).throw(Custom("custom base exception")),
    "systemexit": lambda: sys.exit(3),
    "keyboard": lambda: (_ for _ in ()).throw(KeyboardInterrupt()),
}


class Raiser(AbstractService):
    interval_seconds = 0.3
    max_failures = 1000
    retry_delay_seconds = 0.1

    def _configure_service(self) -> None:
        self.kind = os.environ.get("RAISE_KIND", "base")

    async def update(self) -> None:
        result = RAISERS[self.kind]()
        if asyncio.iscoroutine(result):
            await result
