"""What one worker process holds: its services (each built once, ``_configure_service()``
once), one persistent event loop every ``update()`` runs on, and the lease keeper thread.

Everything here is made lazily in the process that runs tasks, i.e. after the prefork pool
forked, so no Redis connection, engine or loop is ever shared with a parent process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from services import logs
from services.AbstractService import AbstractService
from services.lease import LeaseKeeper
from services.registry import Registry
from services.runner import RunReport, run_once
from services.state import StateStore, default_store

logger = logging.getLogger(__name__)


class ProcessRuntime:
    def __init__(self, registry: Registry, store: StateStore) -> None:
        self.registry = registry
        self.store = store
        self.pid = os.getpid()
        self.thread = threading.get_ident()
        self.loop = asyncio.new_event_loop()
        # Clients made in _configure_service() that look up "the" loop must find this one.
        asyncio.set_event_loop(self.loop)
        self.keeper = LeaseKeeper(store)
        self.instances: dict[str, AbstractService] = {}
        # The worker moves on to its next task while Redis records a short run's success;
        # the reply is read before the next command (see services.scripts.ScriptChannel).
        store.defer_success = True

    def service(self, name: str) -> AbstractService:
        """This process's instance of ``name``, built on first use."""
        instance = self.instances.get(name)
        if instance is None:
            instance = self.registry.build(name, state=self.store)
            self.instances[name] = instance
        return instance

    def build_all(self) -> None:
        """Build every service now so configuration errors show at worker start; a service
        whose ``_configure_service()`` fails is logged and retried at its first task."""
        for name in self.registry.names():
            try:
                self.service(name)
            except Exception:
                with logs.bound(name):
                    logger.exception("_configure_service() failed; will try again at the next "
                                     "tick")

    def run(self, name: str, kind: str) -> RunReport:
        """Run one attempt of ``name`` to completion on this process's loop."""
        if threading.get_ident() != self.thread:
            raise RuntimeError(
                "services run on one event loop per worker process: use the prefork or solo "
                "pool (celery worker -P prefork|solo), not threads, gevent or eventlet")
        service = self.service(name)
        return self.loop.run_until_complete(run_once(service, kind, self.keeper))

    def shutdown(self) -> None:
        """``cleanup()`` every instance, then stop the keeper and close the loop."""
        for name, instance in self.instances.items():
            with logs.bound(name):
                try:
                    instance.cleanup()
                except Exception:
                    logger.exception("cleanup() failed")
        self.instances.clear()
        self.keeper.close()
        try:
            self.store.flush()
        except Exception:
            logger.exception("could not read the last run's recorded outcome")
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
        from services import db

        db.dispose_engines()


_runtime: ProcessRuntime | None = None


def current(registry: Registry) -> ProcessRuntime:
    """This process's runtime; a new one after a fork."""
    global _runtime  # noqa: PLW0603 - one runtime per process is the point
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = ProcessRuntime(registry, default_store())
    return _runtime


def shutdown() -> None:
    global _runtime  # noqa: PLW0603
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.shutdown()
        _runtime = None
