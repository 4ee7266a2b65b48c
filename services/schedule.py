"""A service's schedule: when its ticks fall due, resolved one way for Beat, workers and ``svc``.

Layers, each overriding the one before: the class (``interval_seconds``, or ``cron`` with
``timezone``; ``jitter_seconds``, ``catchup``, ``catchup_window_seconds``), then the
``SVC_<NAME>_*`` environment (both resolved by :func:`services.config.resolve_config` into a
service's registration), then a live override an operator set in Redis (``svc schedule``).
:func:`effective` applies the last layer; nothing else merges them.

Times are epoch milliseconds on Redis's clock. An interval schedule's slots sit at
``phase + k * interval``, where the phase is a stable hash of the service's name: 1,000
services every 10 s fall due spread over the 10 s instead of all at once. A cron schedule's
slots come from ``cronsim`` in the schedule's IANA time zone (Debian cron's rules on a DST
change: a job at a time the spring change skips runs once, right after it; a job in the hour
the autumn change repeats runs once; a wildcard hour runs every real hour). Jitter delays a
slot by a stable per-slot amount below ``jitter_seconds``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

# Below this Beat spends its time sending ticks (0.001 s measured 68% CPU and 629 ticks/s for
# one service) and starves every other service; nothing periodic needs more than 10 runs/s.
MIN_INTERVAL_SECONDS = 0.1
# About 31 years: anything longer is a typo, and would overflow a timedelta or Celery's
# countdown far from where the value was set.
MAX_SECONDS = 1e9
CATCHUP_POLICIES = ("latest", "skip", "all")
DEFAULT_CATCHUP = "latest"
DEFAULT_CATCHUP_WINDOW_SECONDS = 3600.0
DEFAULT_TIMEZONE = "UTC"
# `all` replays at most this many missed slots at once: a Beat down for a week must not
# flood the queue with a week of ticks.
CATCHUP_ALL_LIMIT = 100
# A slot this late or less is on time, not missed (a Beat restart, a busy second).
ON_TIME_SECONDS = 2.0
# Ticks closer together than the period minus a slack are duplicates. The slack absorbs
# queueing jitter between Beat and a worker; a quarter of the period at most, so that ticks
# delivered twice or late, whatever their phase, never run a service more than 4/3 as often.
MAX_TICK_SLACK_SECONDS = 1.0
TICK_SLACK_FRACTION = 0.25
# Beat sends a slot once it is due: a slot further ahead of Redis's clock than this is a clock
# step or a hand edit, and the guard ignores it (with a warning) instead of refusing every
# tick until then.
SLOT_AHEAD_SECONDS = 60.0
# Fields a live override may set; anything else in one is ignored.
OVERRIDE_FIELDS = ("every_seconds", "cron", "timezone", "jitter_seconds", "catchup",
                   "catchup_window_seconds")


class ScheduleError(ValueError):
    """A schedule value that cannot be used; the message names it and what was expected."""


@dataclass(frozen=True)
class Schedule:
    """When ticks fall due. Exactly one of ``every_seconds`` and ``cron`` is set."""

    every_seconds: float | None = None
    cron: str | None = None
    timezone: str = DEFAULT_TIMEZONE
    jitter_seconds: float = 0.0
    catchup: str = DEFAULT_CATCHUP
    catchup_window_seconds: float = DEFAULT_CATCHUP_WINDOW_SECONDS
    source: str = "code"
    """Where the timing came from: ``code`` (class and environment) or ``live``."""

    def __post_init__(self) -> None:
        check(self)

    # -- what it says ----------------------------------------------------------------------

    def describe(self) -> str:
        """``every 10s`` or ``cron 0 3 * * * (Europe/Berlin)``, then jitter and catch-up."""
        if self.cron is not None:
            text = f"cron {self.cron} ({self.timezone})"
        else:
            text = f"every {seconds_text(self.every_seconds or 0)}"
        if self.jitter_seconds:
            text += f", jitter {seconds_text(self.jitter_seconds)}"
        if self.catchup != DEFAULT_CATCHUP:
            text += f", catchup {self.catchup}"
        return text

    def signature(self) -> str:
        """Changes exactly when the slots change (not with ``source`` or catch-up)."""
        return json.dumps([self.every_seconds, self.cron, self.timezone, self.jitter_seconds])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- when ------------------------------------------------------------------------------

    def next_fire_ms(self, name: str, after_ms: int) -> int:
        """The first due time strictly after ``after_ms`` (slot plus its jitter)."""
        jitter_ms = int(self.jitter_seconds * 1000)
        slot = self._next_slot_ms(name, after_ms - jitter_ms)
        while slot + _jitter_ms(name, slot, jitter_ms) <= after_ms:
            slot = self._next_slot_ms(name, slot)
        return slot + _jitter_ms(name, slot, jitter_ms)

    def _next_slot_ms(self, name: str, after_ms: int) -> int:
        if self.cron is None:
            period, phase = self._period_and_phase(name)
            return after_ms + period - (after_ms - phase) % period
        start = datetime.fromtimestamp(after_ms / 1000, _zone(self.timezone))
        return int(next(CronSim(self.cron, start)).timestamp() * 1000)

    def _slot_at_or_before_ms(self, name: str, at_ms: int) -> int:
        """The newest slot (without jitter) at or before ``at_ms``."""
        if self.cron is None:
            period, phase = self._period_and_phase(name)
            return at_ms - (at_ms - phase) % period
        start = datetime.fromtimestamp((at_ms + 1) / 1000, _zone(self.timezone))
        slot = int(next(CronSim(self.cron, start, reverse=True)).timestamp() * 1000)
        # Going back through the hour an autumn change repeats, cronsim can land a day early:
        # step forward to the newest slot that is really at or before at_ms.
        while (following := self._next_slot_ms(name, slot)) <= at_ms:
            slot = following
        return slot

    def _period_and_phase(self, name: str) -> tuple[int, int]:
        period = max(1, round((self.every_seconds or 0) * 1000))
        return period, _stable_hash(name) % period

    def _newest_fires(self, name: str, since_ms: int, now_ms: int, limit: int) -> list[int]:
        """Up to ``limit`` of the newest due times in [since_ms, now_ms], oldest first. Walks
        back from now, so a Beat down for a month costs ``limit`` steps, not a month of them.
        (Jitter stays below the shortest period, so due times keep their slots' order.)"""
        jitter_ms = int(self.jitter_seconds * 1000)
        fires: list[int] = []
        slot = self._slot_at_or_before_ms(name, now_ms)
        while len(fires) < limit and slot + jitter_ms >= since_ms:
            fire = slot + _jitter_ms(name, slot, jitter_ms)
            if since_ms <= fire <= now_ms:
                fires.append(fire)
            slot = self._slot_at_or_before_ms(name, slot - 1)
        return fires[::-1]

    def plan(self, name: str, due_ms: int, now_ms: int) -> tuple[list[int], int]:
        """The ticks to send now for a service due at ``due_ms``, and its next due time.

        On time (``due_ms`` at most ``ON_TIME_SECONDS`` ago, no later slot passed): that one
        tick. Otherwise slots were missed, and the catch-up policy decides: ``latest`` sends
        one tick (the newest missed slot) if it is within ``catchup_window_seconds``;
        ``skip`` sends none; ``all`` sends every missed slot, oldest first, at most
        ``CATCHUP_ALL_LIMIT`` (the newest ones). The next due time is always after ``now_ms``,
        so nothing missed ever comes back as a burst.
        """
        following = self.next_fire_ms(name, now_ms)
        if self.next_fire_ms(name, due_ms) > now_ms:  # no later slot passed
            missed = [due_ms]
            if now_ms - due_ms <= ON_TIME_SECONDS * 1000:
                return missed, following
        else:
            missed = self._newest_fires(name, due_ms, now_ms, CATCHUP_ALL_LIMIT)
        if self.catchup == "skip":
            return [], following
        if self.catchup == "all":
            return missed, following
        newest = missed[-1]
        in_window = now_ms - newest <= self.catchup_window_seconds * 1000
        return ([newest] if in_window else []), following


def tick_gap(period_seconds: float) -> float:
    """A regular tick sooner than this after the last accepted one is a duplicate."""
    return period_seconds - min(period_seconds * TICK_SLACK_FRACTION, MAX_TICK_SLACK_SECONDS)


@dataclass(frozen=True)
class TickSlot:
    """What a Beat tick says about its place in the schedule: its due time and, for a regular
    tick, the next slot's. The guard's duplicate check comes from these (and the last slot
    that ran), that is from the effective schedule Beat used, never from the worker's own
    settings (``services/lua/begin_run.lua``)."""

    at_ms: int
    next_ms: int | None = None


def is_catchup(ticks: list[int], due_ms: int, now_ms: int) -> bool:
    """Whether ``plan``'s ticks replay missed slots (sent as kind ``catchup``) rather than
    being the one on-time tick."""
    return ticks != [due_ms] or now_ms - due_ms > ON_TIME_SECONDS * 1000


def seconds_text(seconds: float) -> str:
    """``10s``, ``1.5s``, ``2m``, ``1h``, ``1d``: how ``svc`` prints and reads durations."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:.15g}s"


def parse_seconds(text: str, what: str) -> float:
    """``30s``, ``1.5m``, ``2h``, ``1d`` or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    body, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(body) * units[unit]
    except ValueError:
        raise ScheduleError(f"{what} must be a duration like 30s, 5m, 2h or 1d, "
                            f"got {text!r}") from None
    if not math.isfinite(value):
        raise ScheduleError(f"{what} must be a finite duration, got {text!r}")
    return value


def check(schedule: Schedule) -> None:
    """Raise :class:`ScheduleError` for a schedule that cannot run."""
    if (schedule.every_seconds is None) == (schedule.cron is None):
        raise ScheduleError("a schedule needs exactly one of an interval and a cron expression")
    if schedule.every_seconds is not None and not (
            _is_number(schedule.every_seconds)
            and MIN_INTERVAL_SECONDS <= schedule.every_seconds <= MAX_SECONDS):
        raise ScheduleError(f"interval must be a number of seconds from {MIN_INTERVAL_SECONDS:g} "
                            f"to {MAX_SECONDS:g}, got {schedule.every_seconds!r}")
    for field in ("cron", "timezone", "catchup"):  # types first: a hand-edited override
        check_text_field(field, getattr(schedule, field))
    if not (_is_number(schedule.jitter_seconds) and 0 <= schedule.jitter_seconds <= 86400):
        raise ScheduleError(f"jitter must be from 0 to 1d, got {schedule.jitter_seconds!r}")
    shortest = _shortest_period_seconds(schedule)
    if schedule.jitter_seconds and schedule.jitter_seconds >= shortest:
        # A tick could then fall due after the next slot's and be lost: slots keep their order.
        raise ScheduleError(
            f"jitter must be shorter than the schedule's shortest period "
            f"({seconds_text(shortest)}), got {seconds_text(schedule.jitter_seconds)}")
    if not (_is_number(schedule.catchup_window_seconds)
            and 0 <= schedule.catchup_window_seconds <= MAX_SECONDS):
        raise ScheduleError("catchup window must be a number of seconds >= 0, "
                            f"got {schedule.catchup_window_seconds!r}")


def check_text_field(field: str, value: Any) -> None:
    """One of the schedule's text fields (``cron``, ``timezone``, ``catchup``) on its own, so
    that a refusal can name where the value came from; None means unset."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ScheduleError(f"{field} must be text, got {value!r}")
    if field == "cron":
        _check_cron(value)
    elif field == "timezone":
        _zone(value)
    elif field == "catchup" and value not in CATCHUP_POLICIES:
        raise ScheduleError(f"catchup must be one of {', '.join(CATCHUP_POLICIES)}, "
                            f"got {value!r}")


def effective(base: Schedule, override: Mapping[str, Any] | None) -> Schedule:
    """``base`` (class and environment) with a live override applied. An override that sets
    an interval replaces a cron expression and the other way round."""
    if not override:
        return base
    changes = {field: override[field] for field in OVERRIDE_FIELDS
               if override.get(field) is not None}
    if "every_seconds" in changes:
        changes["cron"] = None
    elif "cron" in changes:
        changes["every_seconds"] = None
    return replace(base, **changes, source="live")


def from_registration(registration: Mapping[str, Any]) -> Schedule:
    """The code-and-environment schedule a worker registered (``ServiceConfig.as_dict``)."""
    cron = registration.get("cron")
    window = registration.get("catchup_window_seconds")
    return Schedule(
        every_seconds=None if cron else float(registration["interval_seconds"]),
        cron=cron or None,
        timezone=registration.get("timezone") or DEFAULT_TIMEZONE,
        jitter_seconds=float(registration.get("jitter_seconds") or 0.0),
        catchup=registration.get("catchup") or DEFAULT_CATCHUP,
        catchup_window_seconds=float(window if window is not None
                                     else DEFAULT_CATCHUP_WINDOW_SECONDS))


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(f"time zone must be an IANA name like Europe/Berlin or UTC, "
                            f"got {name!r}") from None


@lru_cache(maxsize=256)
def _check_cron(expression: str) -> None:
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except (CronSimError, TypeError, ValueError) as exc:
        raise ScheduleError(f"cron expression {expression!r} is invalid ({exc}): expected five "
                            "fields, minute hour day-of-month month day-of-week") from None


def _shortest_period_seconds(schedule: Schedule) -> float:
    if schedule.cron is None:
        return float(schedule.every_seconds or 0)
    return _shortest_cron_period(schedule.cron, schedule.timezone)


@lru_cache(maxsize=256)
def _shortest_cron_period(expression: str, timezone: str) -> float:
    # Over a year of slots from a fixed date (at most 2,000): enough to meet every field's
    # shortest step, a DST change included.
    it = CronSim(expression, datetime(2001, 1, 1, tzinfo=_zone(timezone)))
    previous, shortest = next(it), math.inf
    for _ in range(2000):
        current = next(it)
        shortest = min(shortest, (current - previous).total_seconds())
        if (current - datetime(2001, 1, 1, tzinfo=current.tzinfo)).days > 366:
            break
        previous = current
    return shortest


def _stable_hash(text: str) -> int:
    # Not hash(): Python salts it per process, and every Beat must compute the same phase.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _jitter_ms(name: str, slot_ms: int, jitter_ms: int) -> int:
    return _stable_hash(f"{name}@{slot_ms}") % jitter_ms if jitter_ms > 0 else 0
