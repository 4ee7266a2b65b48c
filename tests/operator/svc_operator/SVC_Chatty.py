"""Logs from update() through its own logger, as a user's service does: for the log tests."""

import logging

from services.AbstractService import AbstractService

logger = logging.getLogger(__name__)


class Chatty(AbstractService):
    interval_seconds = 0.5
    max_failures = 3
    retry_delay_seconds = 0.5

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        logger.warning("chatty says hello")
