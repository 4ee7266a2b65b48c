"""The schedule's Redis side, shared by Beat and ``svc``: live overrides (audited), the
registrations they apply to, due times and the leader Beat's numbers.

The effective schedule of every service is :func:`resolve_all` of what workers registered
(code and environment) and the live overrides, through ``services.schedule.effective``; Beat
schedules from it and ``svc`` shows it, so neither can disagree with the other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.client import Pipeline
from redis.exceptions import WatchError

from services.errors import ServiceConfigError
from services.keys import validate_name
from services.redis_client import scored, text, text_map
from services.schedule import OVERRIDE_FIELDS, Schedule, ScheduleError, effective, from_registration
from services.state import StateStore

logger = logging.getLogger(__name__)
MERGE_ATTEMPTS = 5


@dataclass(frozen=True)
class Resolved:
    """One service's effective schedule and where its ticks go."""

    schedule: Schedule
    queue: str | None
    problem: str = ""
    """Why a live override in Redis was ignored ('' when none was)."""


def resolve_all(registrations: Mapping[str, Mapping[str, Any]],
                overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Resolved]:
    """The effective schedule of every registered service. A registration that cannot be read
    is left out; an override that cannot be applied is ignored, and says why."""
    found: dict[str, Resolved] = {}
    for name, registration in registrations.items():
        # Anything at all wrong with one service's entries (hand-edited JSON of any shape)
        # costs that service, never the others: hence the broad excepts.
        try:
            base = from_registration(registration)
            queue = registration.get("queue") or None
        except Exception as exc:
            logger.error("%s: its registration holds no usable schedule (%s); not scheduled",
                         name, exc)
            continue
        override = overrides.get(name)
        try:
            found[name] = Resolved(effective(base, override), queue)
        except Exception as exc:
            found[name] = Resolved(base, queue, f"live override {override!r} ignored: {exc}")
    return found


class ScheduleStore:
    """Reads and writes of the schedule keys (``services.keys``) over a state store's client."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.client = state.client
        self.keys = state.keys

    # -- reading ---------------------------------------------------------------------------

    def overrides(self) -> dict[str, dict[str, Any]]:
        with self.state.reaching():
            raw = text_map(self.client.hgetall(self.keys.schedules()))
        return {name: parsed for name, text in raw.items()
                if (parsed := _json_object(self.keys.schedules(), name, text)) is not None}

    def resolved(self) -> dict[str, Resolved]:
        """Every registered service's effective schedule."""
        return resolve_all(self.state.registered(), self.overrides())

    def due_times(self) -> dict[str, int]:
        """name -> next due time (ms) as the leader Beat keeps it: the true next tick."""
        with self.state.reaching():
            rows = scored(self.client.zrange(self.keys.due(), 0, -1, withscores=True))
        return {name: int(score) for name, score in rows}

    def due_time(self, name: str) -> int | None:
        with self.state.reaching():
            score = self.client.zscore(self.keys.due(), name)
        return None if score is None else int(score)

    def version(self) -> str:
        with self.state.reaching():
            return text(self.client.get(self.keys.schedule_version())) or "0"

    def beat_stats(self) -> dict[str, str]:
        """The leader Beat's numbers: ``leader``, ``ticks_sent``, ``lateness_p50``,
        ``lateness_p99``, ``lateness_max`` (seconds, over the last minute), ``updated_at``."""
        with self.state.reaching():
            return text_map(self.client.hgetall(self.keys.beat_stats()))

    def leader(self) -> str:
        """The leader Beat's lease value (``<fence> <host:pid:nonce>``), '' when none."""
        with self.state.reaching():
            return text(self.client.get(self.keys.beat_leader())) or ""

    # -- live changes ----------------------------------------------------------------------

    def set_override(self, name: str, changes: Mapping[str, Any], *, who: str,
                     reason: str = "") -> tuple[Schedule, dict[str, Any]]:
        """Merge ``changes`` (fields of ``OVERRIDE_FIELDS``) into the service's live override.
        Raises :class:`ServiceConfigError` for a service no worker registered or a schedule
        that cannot run; nothing is written then. Returns the new effective schedule and the
        audit entry. Two changes at once (``--jitter`` here, ``--catchup`` there) both land:
        the override is read under WATCH and merged again if another change came first."""
        unknown = sorted(set(changes) - set(OVERRIDE_FIELDS))
        if unknown:
            raise ServiceConfigError(f"schedule fields {unknown} are not settable; expected "
                                     f"some of {', '.join(OVERRIDE_FIELDS)}")
        for _ in range(MERGE_ATTEMPTS):
            with self.state.reaching(), self.client.pipeline(transaction=True) as pipe:
                pipe.watch(self.keys.schedules())
                base, current = self._base_and_override(name)
                schedule, merged = _merged(name, base, current, changes)
                try:
                    entry = self._write(pipe, name, json.dumps(merged, sort_keys=True),
                                        "schedule", schedule, who=who, reason=reason)
                except WatchError:
                    continue
                return schedule, entry
        raise ServiceConfigError(f"the schedule of {name!r} changed {MERGE_ATTEMPTS} times "
                                 "while this change was merged into it: try again")

    def reset(self, name: str, *, who: str, reason: str = "") -> tuple[Schedule, dict[str, Any]]:
        """Drop the live override: back to code and environment."""
        base, _ = self._base_and_override(name)
        with self.state.reaching(), self.client.pipeline(transaction=True) as pipe:
            return base, self._write(pipe, name, None, "schedule-reset", base, who=who,
                                     reason=reason)

    def forget(self, name: str, *, who: str, reason: str = "") -> dict[str, Any]:
        """Drop a service from the cluster: its registration and live override, so that Beat
        unschedules it at its next poll (a service removed from the code would otherwise be
        ticked for ever, each tick an "unregistered task" on the workers). Its state, history
        and audit stay. A worker that still runs it registers it again when it starts."""
        self._base_and_override(name)  # refuses a name no worker registered
        with self.state.reaching():
            seconds, micros = self.client.time()
            entry = {"action": "forget", "by": who, "at": seconds + micros / 1e6,
                     "reason": reason}
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self.keys.index(), name)
                pipe.hdel(self.keys.schedules(), name)
                pipe.lpush(self.keys.audit(name), json.dumps(entry))
                pipe.ltrim(self.keys.audit(name), 0, self.state.audit_length - 1)
                pipe.incr(self.keys.schedule_version())
                pipe.execute()
        return entry

    def _base_and_override(self, name: str) -> tuple[Schedule, dict[str, Any]]:
        try:
            validate_name(name)
        except ValueError as exc:
            raise ServiceConfigError(str(exc)) from None
        # One service's entries, not the whole index and every override.
        with self.state.reaching():
            registered = text(self.client.hget(self.keys.index(), name))
            override = text(self.client.hget(self.keys.schedules(), name))
        registration = _json_object(self.keys.index(), name, registered) if registered else None
        if registration is None:
            raise ServiceConfigError(
                f"no worker has registered a service named {name!r}: start a worker that "
                "runs it first (svc list shows the registered ones)")
        current = _json_object(self.keys.schedules(), name, override) if override else None
        return from_registration(registration), current or {}

    def _write(self, pipe: Pipeline, name: str, override: str | None, action: str,
               schedule: Schedule, *, who: str, reason: str) -> dict[str, Any]:
        """The override (None: drop it), its audit entry and the version, in one MULTI on
        ``pipe`` (raises WatchError when ``pipe`` watched a key that changed)."""
        seconds, micros = self.client.time()
        entry = {"action": action, "by": who, "at": seconds + micros / 1e6,
                 "reason": reason, "schedule": schedule.describe()}
        pipe.multi()
        if override is None:
            pipe.hdel(self.keys.schedules(), name)
        else:
            pipe.hset(self.keys.schedules(), name, override)
        pipe.lpush(self.keys.audit(name), json.dumps(entry))
        pipe.ltrim(self.keys.audit(name), 0, self.state.audit_length - 1)
        pipe.incr(self.keys.schedule_version())
        pipe.execute()
        return entry


def _merged(name: str, base: Schedule, current: Mapping[str, Any],
            changes: Mapping[str, Any]) -> tuple[Schedule, dict[str, Any]]:
    """The override ``changes`` make of ``current``, and the schedule it gives."""
    merged = {**current, **{k: v for k, v in changes.items() if v is not None}}
    if changes.get("every_seconds") is not None:
        merged.pop("cron", None)
    elif changes.get("cron") is not None:
        merged.pop("every_seconds", None)
    try:
        return effective(base, merged), merged
    except ScheduleError as exc:
        raise ServiceConfigError(f"service {name!r}: {exc}") from None


def _json_object(key: str, name: str, text: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        logger.error("%s holds %r for %r, not a JSON object; ignoring it", key, text[:200], name)
        return None
    return parsed
