"""The seed's ``AbstractService``, with its state in Redis so every process agrees.

A service written as the seed shows runs unchanged: standalone with ``run_service_loop()``,
or on Celery workers (see ``worker/``), on the same Redis state, never twice at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar, overload

from services import SYSTEM_ID, logs
from services.config import resolve_config
from services.fields import PAUSED, RUNNING
from services.runner import RunContext, describe, record_failure
from services.runs import FinishResult, worker_identity
from services.standalone import run_until_stopped
from services.state import StateStore, default_store

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy.orm import Session

logger = logging.getLogger("services.AbstractService")

_Declared = TypeVar("_Declared")
_Resolved = TypeVar("_Resolved")


class ResolvedSetting(Generic[_Declared, _Resolved]):
    """A class attribute a service may set, which ``__init__`` resolves per instance.

    On the class it reads as declared, None meaning "work it out" (``name``: from the file
    name; ``timeout_seconds``: from the interval), which is what ``services.config`` reads.
    On an instance it reads as resolved, never None, which is what the runner needs. A
    subclass that sets it (``name = "foo"``) puts a plain value in this descriptor's place,
    and its instances still read what ``__init__`` stored in their own ``__dict__``."""

    def __init__(self, declared: _Declared) -> None:
        self.declared = declared
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Declared: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _Resolved: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> _Declared | _Resolved:
        if obj is None:
            return self.declared
        # Before __init__ resolved it (a subclass's __init__ reading it first): the declared
        # value, as a plain class attribute would give.
        value: _Declared | _Resolved = obj.__dict__.get(self.attr, self.declared)
        return value

    def __set__(self, obj: object, value: _Resolved) -> None:
        obj.__dict__[self.attr] = value


class AbstractService(ABC):
    """A long-running background service: ``update()`` every ``interval_seconds``.

    Class attributes give the defaults; constructor arguments override them; the environment
    (``SVC_<NAME>_INTERVAL_SECONDS`` ...) overrides both.
    """

    name: ResolvedSetting[str | None, str] = ResolvedSetting(None)
    """The service's name; default: ``SVC_<Name>.py``'s ``<Name>`` in snake case."""
    interval_seconds: float = 60.0
    max_failures: int = 3
    retry_delay_seconds: float = 30.0
    max_concurrent_runs: int = 1
    """How many runs may be in progress at once across the cluster."""
    timeout_seconds: ResolvedSetting[float | None, float] = ResolvedSetting(None)
    """A run's time limit; past it ``update()`` is cancelled and the run counts as a failure
    (outcome ``timeout``). Default: 300 s, or ``interval_seconds`` when that is longer."""
    stop_cooldown_seconds: float = 0.0
    """After ``max_failures`` stopped the service, one probe run every this many seconds; a
    probe that succeeds starts the service again. 0 (the default): stay stopped."""
    cron: ClassVar[str | None] = None
    """A cron expression (``"0 3 * * *"``): ticks follow it, in ``timezone``, instead of
    ``interval_seconds``. See docs/scheduling.md."""
    timezone: ClassVar[str] = "UTC"
    """The IANA time zone a ``cron`` expression is read in (``"Europe/Berlin"``)."""
    jitter_seconds: ClassVar[float] = 0.0
    """Each tick is delayed by a stable amount below this, so that many services on one cron
    line do not all start in the same second."""
    catchup: ClassVar[str] = "latest"
    """Ticks missed while no Beat ran: ``latest`` (one run now, if the newest missed slot is
    within ``catchup_window_seconds``), ``skip`` (wait for the next slot) or ``all``."""
    catchup_window_seconds: ClassVar[float] = 3600.0
    overdue_after_seconds: ClassVar[float | None] = None
    """Health: the service is ``overdue`` after this long without a successful run (default:
    three intervals) or, on a cron schedule, this long after a slot that brought no success
    (default: ``timeout_seconds`` plus a minute). See docs/operating.md."""
    duration_histogram: ClassVar[bool] = False
    """Metrics: export the run-duration histogram (``svc_run_duration_seconds``, 17 series)
    for this service; without it, ``svc metrics`` exports only the mean (``svc_run_seconds``).
    ``SVC_<NAME>_DURATION_HISTOGRAM=1`` sets it too. See docs/alerting.md."""
    queue: ClassVar[str | None] = None
    """The Celery queue this service's task goes to; default: Celery's default queue."""

    def __init__(
        self,
        interval_seconds: float | None = None,
        max_failures: int | None = None,
        retry_delay_seconds: float | None = None,
        requester_id: str = SYSTEM_ID,
        db: Session | None = None,
        *,
        name: str | None = None,
        max_concurrent_runs: int | None = None,
        state: StateStore | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        config = resolve_config(type(self), {
            "interval_seconds": interval_seconds, "max_failures": max_failures,
            "retry_delay_seconds": retry_delay_seconds,
            "max_concurrent_runs": max_concurrent_runs}, environ, name)
        self.config = config
        self.name = config.name
        self.interval_seconds = config.interval_seconds
        self.max_failures = config.max_failures
        self.retry_delay_seconds = config.retry_delay_seconds
        self.max_concurrent_runs = config.max_concurrent_runs
        self.timeout_seconds = config.timeout_seconds
        self.stop_cooldown_seconds = config.stop_cooldown_seconds
        self.requester_id = requester_id
        self.service_id = f"{config.name}-{uuid.uuid4().hex[:12]}"
        self._state = state
        self._external_db = db
        self._own_db: Session | None = None
        self._run_db: Session | None = None
        self._current_run: RunContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._cleaned_up = False
        with logs.bound(config.name):
            self._configure_service()

    # -- what subclasses write ---------------------------------------------------------------

    @abstractmethod
    def _configure_service(self) -> None:
        """One-time setup, called once from ``__init__`` (once per worker process)."""

    @abstractmethod
    async def update(self) -> None:
        """One unit of the service's work, run every ``interval_seconds``."""

    def cleanup(self) -> None:
        """Release resources; called when the loop ends or the worker process shuts down.
        Subclasses call ``super().cleanup()``."""
        self._cleaned_up = True
        if self._own_db is not None:
            self._own_db.close()
            self._own_db = None

    # -- shared state, as every process sees it -------------------------------------------------

    @property
    def state(self) -> StateStore:
        if self._state is None:
            self._state = default_store()
        return self._state

    @property
    def running(self) -> bool:
        return self.state.flag(self.name, RUNNING)

    @running.setter
    def running(self, value: bool) -> None:
        self.start() if value else self.stop()

    @property
    def paused(self) -> bool:
        return self.state.flag(self.name, PAUSED)

    @paused.setter
    def paused(self, value: bool) -> None:
        self.pause() if value else self.resume()

    @property
    def failures(self) -> int:
        return self.state.failures(self.name)

    @failures.setter
    def failures(self, value: int) -> None:
        self.state.set_failures(self.name, value)

    @property
    def run_id(self) -> str | None:
        """The id of the run in progress in this instance, if any."""
        return self._current_run.run_id if self._current_run else None

    @property
    def lease_lost(self) -> bool:
        """True when the run in progress lost its lease: another run may own the service now,
        so stop early and do not act as its owner."""
        return bool(self._current_run and self._current_run.lease_lost)

    @property
    def db(self) -> Session:
        """The session passed in, else this run's own session (rolled back on error and closed
        after the run), else a session this instance keeps until ``cleanup()``."""
        if self._external_db is not None:
            return self._external_db
        from services.database import (
            sessions as database,  # SQLAlchemy loads only for services that use it
        )

        if self._current_run is not None:
            if self._run_db is None:
                self._run_db = database.new_session()
            return self._run_db
        if self._own_db is None:
            self._own_db = database.new_session()
        return self._own_db

    # -- lifecycle: every call is seen by every process ------------------------------------------

    def _actor(self) -> str:
        return f"{self.service_id}@{worker_identity()}"

    def start(self, reason: str = "") -> None:
        """Run again: clears a stop (an operator's or max_failures') and the failure count."""
        self.state.control(self.name, "start", who=self._actor(), reason=reason)

    def stop(self, reason: str = "") -> None:
        """Stop on every worker; a local ``run_service_loop()`` ends promptly (even when Redis
        cannot be reached to record the stop, which then raises)."""
        try:
            self.state.control(self.name, "stop", who=self._actor(), reason=reason)
        finally:
            loop, event = self._loop, self._stop_event
            if loop is not None and event is not None and not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def pause(self, reason: str = "") -> None:
        self.state.control(self.name, "pause", who=self._actor(), reason=reason)

    def resume(self, reason: str = "") -> None:
        self.state.control(self.name, "resume", who=self._actor(), reason=reason)

    # -- failure accounting (the seed's hooks; overriding them and calling super() works) --------

    def _handle_failure(self, error: BaseException) -> FinishResult | None:
        """Count a failure. Inside ``update()`` it marks the current run as failed (recorded
        when the run ends); outside any run it records the failure in Redis. The runner calls
        it once a failed run is recorded, with that record."""
        run = self._current_run
        if run is None:
            return record_failure(self, error)
        if run.result is None:
            run.failure = describe(error)
        return run.result

    def _reset_failures(self) -> FinishResult | None:
        """Reset the failure count. The runner calls it once a successful run is recorded
        (which reset the count), with that record."""
        run = self._current_run
        if run is not None and run.result is not None:
            return run.result
        self.state.set_failures(self.name, 0)
        return None

    # -- the run lifecycle, driven by services.runner ----------------------------------------

    def _begin_run(self, run: RunContext) -> None:
        self._current_run = run
        self._run_db = None

    def _end_run(self, run: RunContext) -> None:
        session, self._run_db = self._run_db, None
        self._current_run = None
        if session is not None:
            try:
                if run.failure is not None or (run.result and run.result.failures):
                    session.rollback()
            finally:
                session.close()

    # -- standalone -------------------------------------------------------------------------

    async def run_service_loop(self) -> None:
        """Run ``update()`` every ``interval_seconds`` until stopped, on the same Redis state
        (and the same guard) as the Celery workers; then ``cleanup()``."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            with logs.bound(self.name):
                await run_until_stopped(self, self._stop_event)
        finally:  # a later stop() has no loop to wake
            self._loop = self._stop_event = None
