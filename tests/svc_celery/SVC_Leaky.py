"""Leaks on purpose: every run keeps ``LEAKY_MB`` (default 20) more MiB, touched so that it is
resident, for the worker's memory cap (``SVC_WORKER_MAX_MEMORY_MB``) to catch. It stops
growing at ``LEAKY_LIMIT_MB`` (default 400), so that a worker without the cap does not take
the test machine down with it."""

import os

from services.AbstractService import AbstractService


class Leaky(AbstractService):
    interval_seconds = 0.2
    max_failures = 3
    retry_delay_seconds = 0.5

    def _configure_service(self) -> None:
        self.chunk = int(float(os.environ.get("LEAKY_MB", "20")) * 1024 * 1024)
        self.limit = int(float(os.environ.get("LEAKY_LIMIT_MB", "400")) * 1024 * 1024)
        self.hoard: list[bytes] = []

    async def update(self) -> None:
        if len(self.hoard) * self.chunk < self.limit:
            self.hoard.append(b"x" * self.chunk)
