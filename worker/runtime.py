"""What one worker process holds: its services (each built on its first task in that
process, so ``_configure_service()`` runs once there, before its first ``update()``), one
persistent event loop every ``update()`` runs on, and the lease keeper thread.

Everything here is made lazily in the process that runs tasks, i.e. after the prefork pool
forked, so no Redis connection, engine or loop is ever shared with a parent process. A pool
process builds only the services it runs: with 1,000 services registered, building them all
in every pool process cost each about 9 MiB it never used (bench/worker_memory.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading

from billiard.common import terminate_handler_fired
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker import state as worker_state

from services import logs
from services import shutdown as shutdown_signals
from services.AbstractService import AbstractService
from services.errors import ServiceConfigError
from services.fields import Kind
from services.lease import LeaseKeeper
from services.registry import Registry
from services.runner import RunReport, describe, run_once
from services.runs import RunTicket
from services.schedule import TickSlot
from services.settings import get_settings
from services.state import StateStore, default_store

logger = logging.getLogger(__name__)
# Celery's own soft time limit (--soft-time-limit): a run it ends is a timeout, like ours.
LIMIT_ERRORS: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded,)
# sysexits' EX_SOFTWARE: the pool process ends itself, and billiard replaces it.
EXIT_HARD_LIMIT = 70
in_pool_process = False
"""True in a prefork pool process (set by worker_process_init): there the hard limit ends the
process, which the pool replaces. The solo pool's only process is the worker itself, so there
a run past its hard limit is recorded and its lease freed, and the process waits for it."""


def _celery_is_stopping() -> bool:
    # billiard's flag: this pool process got its terminate signal (a cold shutdown);
    # Celery's: the worker is shutting down (the solo pool runs tasks in the main process).
    return bool(terminate_handler_fired() or worker_state.should_terminate
                or worker_state.should_stop)


shutdown_signals.register(_celery_is_stopping)


def _end_this_process(ticket: RunTicket) -> None:
    """At a run's hard limit (its outcome already recorded): replace a blocked pool process."""
    if not in_pool_process:
        return
    with logs.bound(ticket.name, ticket.run_id):
        logger.critical("ending this pool process (pid %d): a run is blocked past its hard "
                        "limit; the pool starts a fresh process", os.getpid())
    logging.shutdown()
    os._exit(EXIT_HARD_LIMIT)


class ProcessRuntime:
    def __init__(self, registry: Registry, store: StateStore) -> None:
        self.registry = registry
        self.store = store
        self.pid = os.getpid()
        self.thread = threading.get_ident()
        self.loop = asyncio.new_event_loop()
        # Clients made in _configure_service() that look up "the" loop must find this one.
        asyncio.set_event_loop(self.loop)
        self.keeper = LeaseKeeper(store, grace_seconds=get_settings().hard_limit_grace_seconds)
        self.keeper.on_hard_limit = _end_this_process
        self.instances: dict[str, AbstractService] = {}
        # The worker moves on to its next task while Redis records a short run's success;
        # the reply is read before the next command (see services.scripts.ScriptChannel).
        store.runs.defer_success = True

    def service(self, name: str) -> AbstractService:
        """This process's instance of ``name``, built on first use: a ``_configure_service()``
        that raises fails this task, and the next task for ``name`` builds it again."""
        instance = self.instances.get(name)
        if instance is None:
            try:
                instance = self.registry.build(name, state=self.store)
            except Exception as exc:
                # Said with the service's name: Celery's own line names only the task.
                with logs.bound(name):
                    logger.error("_configure_service() failed: %s; the next task for %s "
                                 "builds it again", describe(exc), name, exc_info=exc)
                raise ServiceConfigError(
                    f"service {name}: _configure_service() failed: {describe(exc)}") from exc
            self.instances[name] = instance
        return instance

    def run(self, name: str, kind: Kind, slot: TickSlot | None = None) -> RunReport:
        """Run one attempt of ``name`` to completion on this process's loop."""
        if threading.get_ident() != self.thread:
            raise RuntimeError(
                "services run on one event loop per worker process: use the prefork or solo "
                "pool (celery worker -P prefork|solo), not threads, gevent or eventlet")
        service = self.service(name)
        run = self.loop.create_task(run_once(service, kind, self.keeper, LIMIT_ERRORS, slot))
        while True:
            try:
                return self.loop.run_until_complete(run)
            except LIMIT_ERRORS as exc:
                # Celery's soft limit fired while the loop was waiting, outside update():
                # end update() now, as a timeout, and let the runner record it.
                ticket = service._current_run
                if run.done() or ticket is None or ticket.expire is None:
                    raise
                ticket.expired_by = f"Celery's soft time limit ({type(exc).__name__})"
                self.loop.call_soon(ticket.expire, 0)  # runs once the loop runs again

    def shutdown(self) -> None:
        """``cleanup()`` every instance this process built (none other), then stop the keeper
        and close the loop."""
        for name, instance in self.instances.items():
            with logs.bound(name):
                try:
                    instance.cleanup()
                except Exception:
                    logger.exception("cleanup() failed")
        self.instances.clear()
        self.keeper.close()
        try:
            self.store.runs.flush()
        except Exception:
            logger.exception("could not read the last run's recorded outcome")
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
        from services.database import sessions as db

        db.dispose_engines()


_runtime: ProcessRuntime | None = None


def freeze_shared_heap() -> None:
    """In a prefork worker's main process, before it forks pool processes: move every object
    made so far (the imported modules, the services' classes, the app) out of the garbage
    collector's reach. A collection walks every object it tracks and writes to each one's
    header, so one collection in the parent or in a pool process copied nearly every page the
    two shared: 31 MiB of a pool process's 58 MiB of private memory with 1,000 services
    (bench/worker_memory.py). Frozen objects are still freed by reference counting; only a
    cycle among them is never collected, and the modules and classes are kept for the
    process's life anyway."""
    gc.freeze()


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
