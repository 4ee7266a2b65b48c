"""Beat's scheduler: due times in Redis, one leader at a time, ticks sent in batches.

``celery -A worker beat`` runs :class:`RedisScheduler` (``beat_scheduler`` in
``worker/celery_app.py``). Built on Celery's ``Scheduler`` base class rather than on
celery-redbeat: see docs/architecture.md for the measurement behind that choice.

One pass of the loop (``tick``): one round trip reads the lease, the schedule's version and
every service due now (``beat_poll.lua``, a range query on the due sorted set: nothing scans
every entry); the catch-up policy (``Schedule.plan``) decides which ticks to send; one
round trip advances the due times, fenced by the lease (``beat_advance.lua``); then the
ticks go out on one producer. A tick the broker refused puts its due time back, so it goes
out once the broker is back, by the catch-up policy, and is never lost to the outage; while
the broker is away, one send is tried per pass and the outage is logged once.

A standby polls every ``POLL_SECONDS``; the leader also reloads within one poll when the
schedule's version changes (a live change, a new registration). User entries in the app's
own ``beat_schedule`` still run, on the leader only, with Celery's semantics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery.beat import Scheduler
from kombu.exceptions import OperationalError
from redis.typing import EncodableT, FieldT

from beat_schedule import tick_id, tick_message_options
from beat_schedule.lateness import Lateness
from beat_schedule.leader import BeatLease
from beat_schedule.store import Resolved, ScheduleStore, resolve_all
from services.errors import StateCorruptError, StateUnavailableError
from services.heartbeat import BEAT, Heartbeat
from services.outage import Outage
from services.redis_client import text, text_map
from services.schedule import is_catchup
from services.settings import get_settings, redact_url
from services.state import StateStore

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# Passes at least this far apart while ticks are due one after another: one poll and one
# advance then serve every tick of the window (measured: 9-11% of a core at 1,000 services
# every 10 s with a pass per tick, about 7% with passes coalesced), for at most this much
# lateness.
MIN_PASS_SECONDS = 0.05
# One reconnect and one more try, not Celery's default three: a tick the broker refuses keeps
# its due time anyway, and the shorter a failing send blocks, the shorter the time a due
# time is advanced for a tick not yet sent (lost if Beat is killed just then).
SEND_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
BATCH_SIZE = 1000
STATS_EVERY_SECONDS = 2.0
STATS_TTL_SECONDS = 300
# Celery's own line (which ops grep), and the tick's id; logged once the broker took the tick.
SENDING = "Scheduler: Sending due task %s (%s) as %s"
Change = tuple[str, int | str, int | str, str]  # name, expected due, new due, signature


@dataclass(frozen=True)
class Planned:
    """What one pass sends for one due service."""

    name: str
    resolved: Resolved
    ticks: list[int]
    """Slots to send, oldest first (none: skipped by the catch-up policy)."""
    due_ms: int
    following_ms: int
    kind: str
    """``tick``, or ``catchup`` for replayed missed slots."""


class RedisScheduler(Scheduler):
    """Celery Beat scheduler whose schedule lives in Redis (see the module's docstring)."""

    # Celery has no annotations. pyproject.toml's untyped_calls_exclude lets calls into it
    # through, but only calls mypy can name: one through super() or an inherited method on
    # self cannot be, hence the four ignores of no-untyped-call below.

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        settings = get_settings()
        self.state = StateStore.from_settings(settings)
        self.store = ScheduleStore(self.state)
        self.lease = BeatLease(self.state, settings.beat_lease_seconds)
        self.lateness = Lateness()
        self.resolved: dict[str, Resolved] = {}
        self.registrations: dict[str, dict[str, Any]] = {}
        self.version: str | None = None
        self.followed_version: str | None = None
        self.stats_at = 0.0
        self.redis_outage = Outage(logger, f"service state (Redis at {self.state.redis_url})")
        self.broker_outage = Outage(logger, f"the broker ({redact_url(app.conf.broker_url)})")
        self.pass_failure = Outage(logger, "beat's scheduler pass")
        # Written from the scheduler's own loop, so a Beat stuck in a pass stops beating.
        self.heartbeat = Heartbeat(self.state, BEAT, settings)
        self.beaten_at = -float("inf")
        super().__init__(app, *args, **kwargs)  # type: ignore[no-untyped-call]
        # No task-sent event per tick from Beat (a fifth of its CPU at 1,000 ticks/s):
        # Flower still sees every run from the workers' received/started/succeeded events.
        app.conf.task_send_sent_event = False

    # -- Celery's Scheduler interface ------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass; returns how long Beat may sleep before the next."""
        try:
            delay = self._pass()
            self._beat_if_due()
        except (StateUnavailableError, StateCorruptError) as exc:
            self.redis_outage.failed(exc)
            if self.lease.leading and self.lease.expired_locally():
                self.lease.deposed("")
            return POLL_SECONDS
        except Exception as exc:  # a bug must not end Beat (and with it every schedule)
            if self.pass_failure.failed(f"{type(exc).__name__}: {exc}"):
                logger.error("beat: the scheduler's pass failed", exc_info=True)
            return POLL_SECONDS
        self.redis_outage.recovered()
        self.pass_failure.recovered()
        if self.lease.leading:
            # The app's own beat_schedule entries (not services): Celery's scheduler, leader only.
            delay = min(delay, super().tick(*args, **kwargs))  # type: ignore[no-untyped-call]
        return max(0.0, delay)

    def close(self) -> None:
        try:
            self.lease.release()
            self.heartbeat.retire()
        except StateUnavailableError as exc:
            logger.warning("beat: could not release the leader lease (%s); a standby takes "
                           "over when it expires", exc)
        super().close()  # type: ignore[no-untyped-call]

    def _beat_if_due(self) -> None:
        """This Beat's heartbeat (role leader or standby), every SVC_HEARTBEAT_SECONDS."""
        if time.monotonic() - self.beaten_at < self.heartbeat.interval:
            return
        self.heartbeat.beat(role="leader" if self.lease.leading else "standby",
                            holder=self.lease.holder)
        self.beaten_at = time.monotonic()

    @property
    def info(self) -> str:
        return (f"    . due times: Redis {self.state.redis_url} ({self.state.keys.due()})\n"
                f"    . leader lease: {self.lease.lease_ms / 1000:g}s")

    # -- one pass --------------------------------------------------------------------------

    def _pass(self) -> float:
        if not self.lease.leading:
            if not self.lease.try_claim():
                self._follow_registrations()
                return POLL_SECONDS
            self._begin_term()
        if not self.lease.renew_if_due():
            return POLL_SECONDS
        polled_at = time.monotonic()
        with self.state.reaching():
            now_ms, leader, version, flat_due, next_ms = self.state.scripts.beat_poll(
                keys=[self.state.keys.beat_leader(), self.state.keys.schedule_version(),
                      self.state.keys.due()], args=[BATCH_SIZE])
        now_ms = int(now_ms)
        if leader != self.lease.value:
            self.lease.deposed(str(leader))
            return POLL_SECONDS
        upcoming = [int(float(next_ms))] if next_ms != "" else []
        if version != self.version:
            upcoming += self._reload(now_ms, str(version))
        due = [(str(flat_due[i]), int(float(flat_due[i + 1]))) for i in range(0, len(flat_due), 2)]
        if due:
            upcoming += self._send_due(due, now_ms, polled_at)
            if not self.lease.leading:  # deposed in the middle of the pass
                return POLL_SECONDS
        self._write_stats(now_ms)
        if len(due) >= BATCH_SIZE:
            return 0.0
        elapsed_ms = (time.monotonic() - polled_at) * 1000
        wait_ms = min(upcoming, default=now_ms + POLL_SECONDS * 1000) - now_ms - elapsed_ms
        return min(POLL_SECONDS, max(MIN_PASS_SECONDS, wait_ms / 1000))

    def _send_due(self, due: Sequence[tuple[str, int]], now_ms: int,
                  polled_at: float) -> list[int]:
        """Plan, advance (fenced) and send the ticks of every service in ``due``; returns the
        new due times."""
        changes: list[Change] = []
        plans: dict[str, Planned] = {}
        for name, due_ms in due:
            resolved = self.resolved.get(name)
            if resolved is None:  # no longer registered
                changes.append((name, due_ms, "", ""))
                continue
            ticks, following = resolved.schedule.plan(name, due_ms, now_ms)
            changes.append((name, due_ms, following, ""))
            kind = "catchup" if is_catchup(ticks, due_ms, now_ms) else "tick"
            plans[name] = Planned(name, resolved, ticks, due_ms, following, kind)
        advanced = self._advance(changes)
        reverts: list[Change] = []
        for name in advanced:
            plan = plans.get(name)
            if plan is None:
                continue
            sent_ms = now_ms + int((time.monotonic() - polled_at) * 1000)
            # Once the broker refused one tick, the rest of this pass is not even tried: one
            # failed send per pass while it is away, not one per due service.
            if reverts or not self._publish(plan, sent_ms):
                reverts.append((name, plan.following_ms, plan.due_ms, ""))
        if reverts:
            self._advance(reverts)
        return [plan.following_ms for plan in plans.values()]

    def _publish(self, plan: Planned, sent_ms: int) -> bool:
        """Send the ticks of one service; False when the broker could not take them."""
        task = f"svc.{plan.name}"
        options = tick_message_options(plan.resolved, sent_ms, plan.following_ms)
        for fire_ms, arguments in _messages(plan):
            identifier = tick_id(plan.name, fire_ms)
            try:
                self.app.send_task(task, kwargs=arguments, producer=self.producer,
                                   task_id=identifier, retry_policy=SEND_RETRY, **options)
            except Exception as exc:  # the broker's error, or a bug: never stop the loop
                cause = self._broker_error(exc)
                if cause is None:
                    logger.error("could not send %s: %s", task, exc, exc_info=True)
                    continue
                self.broker_outage.failed(f"{task} not sent (kept due): "
                                          f"{type(cause).__name__}: {cause}")
                return False
            logger.info(SENDING, task, task, identifier)
            self.broker_outage.recovered()
            if plan.kind == "tick":
                self.lateness.add((sent_ms - fire_ms) / 1000)
            else:  # a replay of missed slots is late by design: counted, not timed
                self.lateness.catchups += 1
        return True

    def _broker_error(self, exc: BaseException) -> BaseException | None:
        # The transport's own connection errors (Celery's connection is unannotated).
        errors: tuple[type[BaseException], ...] = (
            OperationalError, *self.connection.connection_errors)
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, errors):
                return seen
            seen = seen.__cause__ or seen.__context__
        return None

    def _advance(self, changes: Sequence[Change]) -> list[str]:
        """Apply due-time changes through the fenced script; [] (standing by) if deposed."""
        changed: list[str] = []
        keys = self.state.keys
        for start in range(0, len(changes), BATCH_SIZE):
            batch = changes[start:start + BATCH_SIZE]
            flat = [part for change in batch for part in change]
            with self.state.reaching():
                reply = self.state.scripts.beat_advance(
                    keys=[keys.beat_leader(), keys.due(), keys.due_signature()],
                    args=[self.lease.value, len(batch), *flat])
            if reply[0] == "deposed":
                self.lease.deposed(str(reply[1]))
                return []
            changed += [str(name) for name in reply[1:]]
        return changed

    # -- terms and reloads ------------------------------------------------------------------

    def _begin_term(self) -> None:
        """This Beat just became the leader."""
        # Reload everything: a reload cut short by losing the lease before must not count.
        self.version = None
        # The app's own beat_schedule entries start afresh (last run: now), as at a start:
        # a standby never ran them, and its idea of their last run would make every one
        # the old leader already sent look due again.
        self.data = {}
        self.setup_schedule()  # type: ignore[no-untyped-call]
        self._heap = None

    def _follow_registrations(self) -> None:
        """A standby keeps a copy of what workers registered (read when the schedule's
        version changes), so that after Redis lost its data it can put them back when it
        leads, as the leader would have."""
        with self.state.reaching():
            version = text(self.state.client.get(self.state.keys.schedule_version())) or "0"
        if version != self.followed_version:
            registrations = self.state.registered()
            if registrations:
                self.registrations = registrations
            self.followed_version = version

    def _reload(self, now_ms: int, version: str) -> list[int]:
        """Read registrations and overrides again, and schedule what is new or changed;
        returns the due times written (so that the pass does not sleep past them)."""
        registrations = self.state.registered()
        if not registrations and self.registrations and version == "0":
            # Redis lost its data (the version counter is gone too; `svc forget` of the last
            # service bumps it): put back what workers had registered, as they would.
            logger.warning("beat: the registered services are gone from Redis (it lost its "
                           "data?); registering the %d this Beat knew again",
                           len(self.registrations))
            self.state.register_services(self.registrations)
            registrations = self.registrations
        resolved = _resolve(self.store, registrations, self.resolved)
        due = self.store.due_times()
        with self.state.reaching():
            signatures = text_map(self.state.client.hgetall(self.state.keys.due_signature()))
        changes: list[Change] = []
        for name, entry in sorted(resolved.items()):
            signature = entry.schedule.signature()
            if name in due and signatures.get(name) == signature:
                continue
            first = entry.schedule.next_fire_ms(name, now_ms)
            changes.append((name, due.get(name, ""), first, signature))
            logger.info("beat: %s %s: %s; next tick at %.3f", name,
                        "rescheduled" if name in due else "scheduled",
                        entry.schedule.describe(), first / 1000)
        changes += [(name, due_ms, "", "") for name, due_ms in due.items() if name not in resolved]
        if not registrations:
            logger.warning("beat: no service is registered under %s, so there is nothing to "
                           "schedule: workers register their services when they start",
                           self.state.keys.index())
        changed = set(self._advance(changes))
        self.resolved, self.registrations, self.version = resolved, registrations, version
        return [int(change[2]) for change in changes if change[0] in changed and change[2] != ""]

    def _write_stats(self, now_ms: int) -> None:
        if time.monotonic() - self.stats_at < STATS_EVERY_SECONDS:
            return
        self.stats_at = time.monotonic()
        # Redis's clock, as every stored time: svc compares it with Redis's TIME. Typed as
        # redis-py types HSET's mapping (whose keys a dict[str, ...] cannot stand for).
        stats: dict[FieldT, EncodableT] = {
            "leader": self.lease.value, "services": len(self.resolved),
            "updated_at": f"{now_ms / 1000:.3f}"}
        stats.update(self.lateness.summary().items())
        key = self.state.keys.beat_stats()
        with self.state.reaching(), self.state.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=stats)
            pipe.expire(key, STATS_TTL_SECONDS)
            pipe.execute()


def _messages(plan: Planned) -> list[tuple[int, dict[str, Any]]]:
    """(first slot, task kwargs) of each message a plan sends: one per tick, except that
    several missed slots go in one message, which the worker runs in order."""
    if not plan.ticks:
        return []
    if plan.kind == "catchup":
        first, *more = plan.ticks
        arguments: dict[str, Any] = {"kind": "catchup", "slot": first}
        if more:
            arguments["more_slots"] = more
        return [(first, arguments)]
    # A regular tick carries the next slot too: the guard's duplicate window is its period.
    return [(fire_ms, {"kind": "tick", "slot": fire_ms, "next_slot": plan.following_ms})
            for fire_ms in plan.ticks]


def _resolve(store: ScheduleStore, registrations: dict[str, dict[str, Any]],
             before: dict[str, Resolved]) -> dict[str, Resolved]:
    resolved = resolve_all(registrations, store.overrides())
    for name, entry in resolved.items():
        previous = before.get(name)
        if entry.problem and (previous is None or previous.problem != entry.problem):
            logger.error("beat: %s: %s", name, entry.problem)
    return resolved
