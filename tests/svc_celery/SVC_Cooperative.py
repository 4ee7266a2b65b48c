"""A long update that polls ``self.paused``, ``self.running`` and ``self.lease_lost`` and returns
early when one says so (cooperative pause/stop). It logs what it saw to a Redis list, oldest
first: ``started <run_id>``, then ``paused``, ``stopped``, ``lost`` or ``done <run_id>``."""

import asyncio
import os

from services.AbstractService import AbstractService
from tests.svc_celery.probes import probe_key


class Cooperative(AbstractService):
    interval_seconds = 0.5
    max_failures = 3
    retry_delay_seconds = 0.5

    def _configure_service(self) -> None:
        self.seconds = float(os.environ.get("COOPERATIVE_SECONDS", "30"))

    def _say(self, what: str) -> None:
        key = probe_key(self.state.keys.prefix, self.name, "events")
        self.state.client.rpush(key, f"{what} {self.run_id}")

    async def update(self) -> None:
        self._say("started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        while loop.time() < deadline:
            if self.paused:
                self._say("paused")
                return
            if not self.running:
                self._say("stopped")
                return
            if self.lease_lost:
                self._say("lost")
                return
            await asyncio.sleep(0.05)
        self._say("done")
