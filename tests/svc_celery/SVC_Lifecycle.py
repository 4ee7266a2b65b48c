"""Counts, per process, how often it is configured and cleaned up (Redis hashes pid -> count),
so tests can check ``_configure_service()`` runs once per worker process and ``cleanup()``
runs on worker shutdown. Its update blocks ``LIFECYCLE_SECONDS`` (default 0)."""

import os
import time

from services.AbstractService import AbstractService
from tests.svc_celery.probes import probe_key


class Lifecycle(AbstractService):
    interval_seconds = 0.3
    max_failures = 3
    retry_delay_seconds = 0.5

    def _probe(self, what: str) -> None:
        key = probe_key(self.state.keys.prefix, self.name, what)
        self.state.client.hincrby(key, str(os.getpid()), 1)

    def _configure_service(self) -> None:
        self.seconds = float(os.environ.get("LIFECYCLE_SECONDS", "0"))
        self._probe("configured")

    async def update(self) -> None:
        if self.seconds:
            time.sleep(self.seconds)

    def cleanup(self) -> None:
        super().cleanup()
        self._probe("cleaned")
