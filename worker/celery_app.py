"""The Celery application: ``celery -A worker worker``, ``... beat``, ``... flower``.

Settings come from the environment (``services.settings``); the schedule and one task per
service come from the registry. JSON is the only accepted content: a pickled message is
refused and logged by Celery before any code of ours sees it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, signals
from celery.utils.dispatch import Signal
from kombu.entity import Exchange, Queue

from beat_schedule import build_routes, service_queues
from services import logs
from services.durability import persistence_warnings
from services.errors import ServiceConfigError, StateUnavailableError
from services.notify import load_hook
from services.registry import Registry
from services.settings import get_settings
from services.state import default_store
from worker import extras, memory, runtime
from worker.flower_guard import flower_args, refuse_open_flower
from worker.messages import CheckedTask
from worker.sender import message_settings
from worker.tasks import register_tasks
from worker.watch import WorkerPulse

logger = logging.getLogger(__name__)
Handler = TypeVar("Handler", bound=Callable[..., None])


def on(*events: Signal) -> Callable[[Handler], Handler]:
    """Connect a handler to Celery's signals, as ``@signal.connect`` does, keeping the
    handler's type (Celery's ``Signal.connect`` is unannotated)."""
    def connect(handler: Handler) -> Handler:
        for event in events:
            event.connect(handler)
        return handler
    return connect


if flower_args(sys.argv) is not None and (
        missing := extras.needs("celery flower", "flower", "flower", "tornado")):
    # Without Flower installed, one line naming the extra, not the guard's ImportError.
    sys.stderr.write(f"svc: {missing}\n")
    raise SystemExit(2)
refuse_open_flower()  # `celery flower` on an open address without a login exits here
try:
    settings = get_settings()
    # The project's hook, loaded now so that a typo stops the worker at start, in one line.
    health_hook = load_hook(settings.on_health_change)
except ServiceConfigError as exc:
    # One line naming the variable, not Celery's "unable to load the app" traceback.
    sys.stderr.write(f"svc: {exc}\n")
    raise SystemExit(2) from None
registry = Registry.discover()

# CheckedTask: a malformed message is rejected and logged once instead of killing the worker.
app = Celery("svc", broker=settings.effective_broker_url, set_as_current=True,
             task_cls=CheckedTask)
app.conf.update(
    **message_settings(settings),
    task_ignore_result=True,
    # Task events are opt-in, as in plain Celery: on, they cost a worker about a quarter of
    # its throughput (bench/overhead.py, raw/default). Flower turns them on in the workers it
    # watches (its enable_events, every 5 s); `celery worker -E` keeps them on.
    worker_send_task_events=False,
    task_send_sent_event=False,
    # Ack on receipt: a worker killed mid-run loses that tick instead of having it replayed
    # later; the next tick (or the lease expiring) recovers, and the guard keeps runs unique.
    task_acks_late=False,
    # One tick at a time per process: prefetched ticks would wait behind a slow run and expire.
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    # A pool process whose resident memory passed the cap after a run is replaced (the run
    # itself completes): a leaking service costs a fork, not the machine. KiB; None is off.
    worker_max_memory_per_child=memory.cap_kib(settings),
    # Refuses a message whose task name is not a string: it fails before any task's checks.
    worker_consumer="worker.messages:CheckedConsumer",
    # The schedule lives in Redis: one leader Beat (any number may run), live changes, cron,
    # catch-up; an outage is logged once. The app's own beat_schedule (empty here) still runs.
    beat_scheduler="beat_schedule.scheduler:RedisScheduler",
    task_routes=build_routes(registry),
    # A plain `celery -A worker worker` consumes the default queue and every queue a service
    # names (otherwise such a service would never run); `-Q` still picks a subset.
    task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name)
                 for name in ["celery", *service_queues(registry)]],
    timezone="UTC",
    enable_utc=True,
)
register_tasks(app, registry)
# Importing the app writes nothing: the default SQLite database's folder (var/) is made when
# a process opens that database (services.database.sessions), the embedded Redis's by `svc up`.


@on(signals.after_setup_logger, signals.after_setup_task_logger)
def _service_aware_logs(logger: logging.Logger, **_: Any) -> None:
    for handler in logger.handlers:
        logs.install(handler, settings.log_json)


_task_log_context: dict[str, logs.LogContext] = {}


@on(signals.task_prerun)
def _name_task_lines(task_id: str, task: Any, **_: Any) -> None:
    # Celery's own lines for a service's task ("succeeded in ...", "raised ...") are logged
    # before task_postrun: give them the service name (and run id, once known) too.
    if task.name.startswith("svc."):
        _task_log_context[task_id] = logs.enter(task.name[4:])


@on(signals.task_postrun)
def _end_task_lines(task_id: str, **_: Any) -> None:
    tokens = _task_log_context.pop(task_id, None)
    if tokens is not None:
        logs.leave(tokens)


@on(signals.task_postrun)
def _note_memory(task: Any, **_: Any) -> None:
    memory.note_after_run(app.conf.worker_max_memory_per_child, task.name)


@on(signals.worker_init, signals.beat_init)
def _announce(**_: Any) -> None:
    for error in registry.errors:
        logger.error("service not loaded: %s", error)
    logger.info("services: %s", ", ".join(registry.names()) or "(none)")


_pulse: list[WorkerPulse] = []


@on(signals.worker_ready)
def _register(sender: Any, **_: Any) -> None:
    # The heartbeat says which services and queues this worker serves: its consumer's. It
    # starts first, so that it runs even when Redis is away right now.
    queues = sender.app.amqp.queues
    pulse = WorkerPulse(settings, default_store(), registry.names(),
                        lambda: sorted(queues.consume_from),
                        node=getattr(sender, "hostname", ""), hook=health_hook)
    pulse.start()
    _pulse.append(pulse)
    default_store().register_services(registry.configs())


@on(signals.worker_shutdown)
def _stop_pulse(**_: Any) -> None:
    while _pulse:
        _pulse.pop().stop()


@on(signals.worker_init)
def _check_state_store(**_: Any) -> None:
    # In the main process, before the pool forks: every pool process (recycled ones too)
    # inherits the store's epoch, so a store that loses its data is recognised as such.
    store = default_store()
    try:
        store.remember_epoch()
        problems = persistence_warnings(store.client, store.redis_url)
    except StateUnavailableError as exc:
        logger.error("cannot read the service state store: %s", exc)
        return
    for problem in problems:
        logger.warning("%s", problem)


_forks_pool: list[bool] = []


@on(signals.worker_init)
def _freeze_before_fork(sender: Any, **_: Any) -> None:
    # The services' modules were imported (and a broken one reported) when the app was; a
    # prefork pool's processes share that heap with this process as long as no collector
    # touches it. The solo pool never forks: its objects stay collectable.
    if _pool_forks(getattr(sender, "pool_cls", None)):
        _forks_pool.append(True)
        runtime.freeze_shared_heap()


@on(signals.worker_ready)
def _freeze_after_start(**_: Any) -> None:
    # What the consumer made at start, shared too with the pool processes forked later to
    # replace one (--max-tasks-per-child, the memory cap, a run past its hard limit).
    if _forks_pool:
        runtime.freeze_shared_heap()


def _pool_forks(pool_cls: Any) -> bool:
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    pool = get_implementation(pool_cls) if isinstance(pool_cls, str) else pool_cls
    return isinstance(pool, type) and issubclass(pool, TaskPool)


@on(signals.worker_process_init)
def _enter_pool_process(**_: Any) -> None:
    # Services are built on their first task in this process (worker.runtime), not here: a
    # pool process that never runs a service never pays for it, nor cleans it up.
    runtime.in_pool_process = True


@on(signals.worker_process_shutdown, signals.worker_shutdown)
def _cleanup(**_: Any) -> None:
    runtime.shutdown()

