import asyncio
import logging
from sqlalchemy.orm import Session

from services.AbstractService import AbstractService

logger = logging.getLogger(__name__)

class ExampleService(AbstractService):
    """An example background service."""

    def _configure_service(self) -> None:
        """Perform one-time setup for the service."""
        logger.info(f"Configuring ExampleService ({self.service_id})")
        # Example: Load configuration, initialize clients, etc.
        self.some_client = ...

    async def update(self) -> None:
        """Core logic performed by the service periodically."""
        logger.debug(f"ExampleService ({self.service_id}) executing update...")
        
        # Use self.db for database operations
        # session = self.db
        # items = session.query(SomeModel).filter(...).all()

        # Perform actions...
        # await self.some_client.process(items)
        
        # Simulate work
        await asyncio.sleep(0.5)

        logger.debug(f"ExampleService ({self.service_id}) update finished.")

    def cleanup(self) -> None:
        """Perform cleanup when the service stops."""
        super().cleanup() # Ensure parent cleanup runs
        logger.info(f"Cleaning up ExampleService ({self.service_id})")
        # Example: Close connections, release resources
        # if self.some_client:
        #     self.some_client.close()
