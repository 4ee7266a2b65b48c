"""What ``svc`` knows and changes of the schedule: each service's effective schedule and its
true next tick, the leader Beat's state, and live overrides (``svc schedule``).

The effective schedule comes from :func:`beat_schedule.store.resolve_all`, the function Beat
resolves with, so ``svc`` cannot show a schedule Beat does not follow. The next tick is the
due time the leader Beat keeps in ``<p>:_due``, never recomputed here: with phases, jitter,
cron and catch-up, only Beat's own due time is the truth. Nothing here prints (``cli_render``,
``cli_schedule``) or reads settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from beat_schedule.store import Resolved, ScheduleStore, resolve_all
from services.config import ServiceConfig
from services.fields import parse_number
from services.keys import Keys
from services.schedule import Schedule, ScheduleError, from_registration
from services.state import StateStore
from worker.ops_keys import WrongTypeError, json_object, naming, wrong_types

# The leader writes its stats every 2 s (beat_schedule.scheduler.STATS_EVERY_SECONDS), stamped
# with Redis's clock; five missed writes mean it is stuck or gone, not merely busy.
STATS_STALE_SECONDS = 10.0
LATENESS_FIELDS = {"p50": "lateness_p50", "p99": "lateness_p99", "max": "lateness_max"}


@dataclass(frozen=True)
class ScheduleInfo:
    """One service's schedule as Beat follows it, and its next tick."""

    schedule: Schedule | None
    """The effective schedule; for a service no worker registered, what this machine's code
    says (Beat schedules only registered services); None when neither is usable."""
    registered: bool
    """A worker registered the service, so Beat schedules it."""
    code: Schedule | None = None
    """The schedule from code and environment, before any live override."""
    override: dict[str, Any] | None = None
    """The live override as stored (``svc schedule``), None when there is none."""
    problem: str = ""
    """Why the schedule is not what an operator would expect ('' when it is)."""
    due_at: float | None = None
    """The next tick (Unix time) from the due set; None when Beat has not scheduled it."""
    pending: bool = False
    """The due time was computed from another schedule (a change Beat has not applied yet:
    it reschedules at its next poll)."""

    @property
    def source(self) -> str:
        """``live`` (an override applies), ``code``, or '' when there is no schedule."""
        return self.schedule.source if self.schedule is not None else ""

    def text(self) -> str:
        """``every 10s`` or ``cron 0 3 * * * (UTC), jitter 5s``; '-' without a schedule."""
        return self.schedule.describe() if self.schedule is not None else "-"

    def as_json(self) -> dict[str, Any]:
        effective = _schedule_json(self.schedule)
        # Without an override both are one schedule: describe it once, copy the dict.
        code = dict(effective) if effective is not None and self.code is self.schedule \
            else _schedule_json(self.code)
        return {
            "text": effective["text"] if effective is not None else None,
            "source": self.source or None,
            "effective": effective,
            "code": code,
            "override": self.override,
            "registered": self.registered,
            "problem": self.problem,
            "next_tick_at": self.due_at,
            "reschedule_pending": self.pending,
        }


def _schedule_json(schedule: Schedule | None) -> dict[str, Any] | None:
    if schedule is None:
        return None
    # Schedule.as_dict's fields, copied shallow (they are plain values) rather than by asdict.
    return {**{name: getattr(schedule, name) for name in _SCHEDULE_FIELDS},
            "text": schedule.describe()}


_SCHEDULE_FIELDS = tuple(f.name for f in fields(Schedule))


def schedule_keys(keys: Keys) -> dict[str, str]:
    """key -> kind (``ops_keys.LAYOUT``) of what :func:`queue_reads` reads."""
    return {keys.schedules(): "schedules", keys.due(): "due",
            keys.due_signature(): "due_signature"}


def queue_reads(pipe: Any, keys: Keys) -> None:
    """Add the reads :func:`schedule_infos` takes to a pipeline (three replies), so that a
    caller's snapshot stays one round trip."""
    pipe.hgetall(keys.schedules())
    pipe.zrange(keys.due(), 0, -1, withscores=True)
    pipe.hgetall(keys.due_signature())


# name -> (the registration object resolved, its override, what resolve_all made of them:
# None for a registration with no usable schedule, so that it is not resolved, and its error
# logged, again at every scrape)
ResolvedCache = dict[str, tuple[Mapping[str, Any], Any, Resolved | None]]


def resolve_cached(usable: Mapping[str, Mapping[str, Any]],
                   overrides: Mapping[str, Mapping[str, Any]],
                   cache: ResolvedCache) -> dict[str, Resolved]:
    """:func:`resolve_all`, reusing what an earlier call made of a registration that is the
    same object (``read_index`` keeps an entry whose text did not change) with the same
    override: a long-running reader (``svc metrics``) parses only what changed."""
    found: dict[str, Resolved] = {}
    stale: dict[str, Mapping[str, Any]] = {}
    for name, entry in usable.items():
        hit = cache.get(name)
        if hit is not None and hit[0] is entry and hit[1] == overrides.get(name):
            if hit[2] is not None:
                found[name] = hit[2]
        else:
            stale[name] = entry
    fresh = resolve_all(stale, overrides)
    for name in [name for name in cache if name not in usable]:
        del cache[name]
    for name, entry in stale.items():
        cache[name] = (entry, overrides.get(name), fresh.get(name))
    return found | fresh


def schedule_infos(names: list[str], registered: Mapping[str, Mapping[str, Any] | None],
                   local: Callable[[str], ServiceConfig | None], replies: Sequence[Any],
                   keys: Keys, *, cache: ResolvedCache | None = None
                   ) -> dict[str, ScheduleInfo]:
    """Every named service's schedule from the replies of :func:`queue_reads` and this
    machine's code (``local``: its settings of a service); ``cache``: see
    :func:`resolve_cached`."""
    overrides_raw, due_rows, signatures = replies
    overrides: dict[str, dict[str, Any]] = {}
    unreadable: set[str] = set()
    for name, text in overrides_raw.items():
        parsed = json_object(text)
        if parsed is not None:
            overrides[name] = parsed
        else:
            unreadable.add(name)
    usable = {name: entry for name, entry in registered.items() if entry is not None}
    resolved = resolve_all(usable, overrides) if cache is None else \
        resolve_cached(usable, overrides, cache)
    due = {name: score / 1000 for name, score in due_rows}

    def pending(name: str, schedule: Schedule | None) -> bool:
        stored = signatures.get(name)
        return bool(stored) and name in due and (
            schedule is None or stored != schedule.signature())

    found: dict[str, ScheduleInfo] = {}
    for name in names:
        override = overrides.get(name)
        problem = (f"the live override in {keys.schedules()} is not a JSON object; Beat "
                   "ignores it" if name in unreadable else "")
        if name in resolved:
            entry = resolved[name]
            # Without a live override the effective schedule is the registered one: parse
            # it once (twice per service was a tenth of svc list at 10,000 services).
            code = entry.schedule if entry.schedule.source != "live" else \
                _code_schedule(usable[name])
            found[name] = ScheduleInfo(
                entry.schedule, True, code, override,
                problem or entry.problem, due.get(name), pending(name, entry.schedule))
            continue
        config = local(name)
        code = _safe_schedule(config)
        if name in registered:
            problem = problem or ("its registration holds no usable schedule, so Beat does not "
                                  "schedule it")
        found[name] = ScheduleInfo(code, name in registered, code, override, problem,
                                   due.get(name), pending(name, code))
    return found


def _code_schedule(registration: Mapping[str, Any]) -> Schedule | None:
    try:
        return from_registration(registration)
    except (ScheduleError, KeyError, TypeError, ValueError):
        return None


def _safe_schedule(config: ServiceConfig | None) -> Schedule | None:
    # A config read back from a worker's entry is not validated as a schedule: never fail on it.
    try:
        return config.schedule if config is not None else None
    except (ScheduleError, TypeError, ValueError):
        return None


def read_schedules(store: StateStore, names: list[str],
                   registered: Mapping[str, Mapping[str, Any] | None],
                   local: Callable[[str], ServiceConfig | None]) -> dict[str, ScheduleInfo]:
    """:func:`schedule_infos` for ``names``, read in one round trip."""
    keys = store.keys
    with naming(store, schedule_keys(keys)), store.reaching(), \
            store.client.pipeline(transaction=False) as pipe:
        queue_reads(pipe, keys)
        replies = pipe.execute()
    return schedule_infos(names, registered, local, replies, keys)


# -- the leader Beat -----------------------------------------------------------------------


@dataclass(frozen=True)
class BeatView:
    """The leader Beat as Redis knows it: its lease and the numbers it last wrote."""

    leader: str
    """The lease's value, ``<fence> <host:pid:nonce>``; '' when no Beat holds it."""
    stats: dict[str, str]
    now: float
    """Redis's clock when this was read."""

    @property
    def holder(self) -> str:
        return self.leader.split(" ", 1)[-1] if self.leader else ""

    @property
    def fence(self) -> str:
        return self.leader.split(" ", 1)[0] if " " in self.leader else ""

    @property
    def updated_at(self) -> float | None:
        return parse_number(self.stats.get("updated_at"))

    @property
    def age(self) -> float | None:
        """Seconds since the leader last wrote its stats; None when it never did (or they
        expired)."""
        return None if self.updated_at is None else max(0.0, self.now - self.updated_at)

    @property
    def stale(self) -> bool:
        """Stats exist but are older than :data:`STATS_STALE_SECONDS`."""
        return self.age is not None and self.age > STATS_STALE_SECONDS

    def lateness(self) -> dict[str, float | None]:
        """p50, p99 and max tick lateness (seconds) over the last minute; None when no tick
        went out in it."""
        return {label: parse_number(self.stats.get(field))
                for label, field in LATENESS_FIELDS.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "leader": self.holder or None,
            "fence": self.fence or None,
            "lateness": self.lateness(),
            **{field: _whole(self.stats.get(field))
               for field in ("ticks_sent", "window_ticks", "services")},
            "stats_updated_at": self.updated_at,
            "stats_age_seconds": self.age,
            "stats_stale": self.stale,
        }


def read_beat(store: StateStore) -> BeatView:
    """The leader's lease and stats, and Redis's clock, in one round trip."""
    keys = store.keys
    with naming(store, {keys.beat_leader(): "beat_leader", keys.beat_stats(): "beat_stats"}), \
            store.reaching(), store.client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.get(keys.beat_leader())
        pipe.hgetall(keys.beat_stats())
        (seconds, micros), leader, stats = pipe.execute()
    return BeatView(str(leader or ""), dict(stats), seconds + micros / 1_000_000)


# -- changing ------------------------------------------------------------------------------


def change_schedule(store: StateStore, name: str, changes: Mapping[str, Any] | None, *,
                    who: str, reason: str) -> tuple[Schedule, dict[str, Any]]:
    """Set (``changes``) or drop (None) the live override of ``name``, audited. Raises
    :class:`services.errors.ServiceConfigError` for a service no worker registered or a
    schedule that cannot run, and a wrong-type error naming the key when one of the keys it
    writes is not what the layout says; nothing is written then."""
    written = _checked_for_writing(store, name)
    schedules = ScheduleStore(store)
    with naming(store, written, changing=True):
        if changes is None:
            return schedules.reset(name, who=who, reason=reason)
        return schedules.set_override(name, changes, who=who, reason=reason)


def _checked_for_writing(store: StateStore, name: str) -> dict[str, str]:
    """The keys a schedule change of ``name`` writes (key -> kind), refused up front if one
    has the wrong type: a transaction runs every command even when one meets such a key, so
    the override would otherwise land without its audit entry."""
    keys = store.keys
    written = {keys.schedules(): "schedules", keys.audit(name): "audit", keys.index(): "index"}
    problems = wrong_types(store, written)
    if problems:
        raise WrongTypeError("; ".join(problems) + "; nothing was changed")
    return written


def forget_service(store: StateStore, name: str, *, who: str, reason: str) -> dict[str, Any]:
    """Drop ``name``'s registration and live override, audited (``ScheduleStore.forget``);
    keys of the wrong type are refused first, as for a change."""
    written = _checked_for_writing(store, name)
    with naming(store, written, changing=True):
        return ScheduleStore(store).forget(name, who=who, reason=reason)



def _whole(text: str | None) -> int | None:
    value = parse_number(text)
    return None if value is None else int(value)
