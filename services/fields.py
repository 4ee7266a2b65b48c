"""The state schema: the service hash's fields, the guard's verdicts, the kinds of run and
how runs end, and the one parser of the flags and numbers Redis holds, with the same rules as
the Lua scripts (``services/lua/*.lua``), whose headers name the same fields. The store, the
runner, ``svc``, the metrics and the services page all read the hash through this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """The guard's answer (``begin_run.lua``), in the order it checks them."""

    HELD = "held"
    """Redis lost its data and nobody restored or confirmed this service's flags since."""
    CORRUPT = "corrupt"
    STOPPED = "stopped"
    PAUSED = "paused"
    BACKOFF = "backoff"
    DUPLICATE = "duplicate"
    NOTHING_TO_RETRY = "nothing_to_retry"
    LEASED = "leased"
    GO = "go"


class Kind(StrEnum):
    """What asked for a run. A host sends the first five; the guard turns a run after
    ``stop_cooldown_seconds`` into a ``probe``; ``manual`` records a failure reported outside
    any run (``AbstractService._handle_failure``)."""

    TICK = "tick"
    CATCHUP = "catchup"
    """A Beat tick for a slot missed while no Beat ran (docs/scheduling.md)."""
    LOOP = "loop"
    RETRY = "retry"
    TRIGGER = "trigger"
    PROBE = "probe"
    MANUAL = "manual"


# What a host may ask for: the guard decides on probes; manual runs never pass the guard.
REQUESTED_KINDS = (Kind.TICK, Kind.CATCHUP, Kind.LOOP, Kind.RETRY, Kind.TRIGGER)


class Outcome(StrEnum):
    """How a run ended. Each is counted in the hash as ``runs_<outcome>``."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    """The worker's own shutdown mid-run: neither a success nor a failure."""
    LOST = "lost"
    """Its worker died: the lease lapsed with no finish (recorded by the next guard)."""


FAILED_OUTCOMES = (Outcome.ERROR, Outcome.TIMEOUT)

# Fields of the service hash <prefix>:<name>.
RUNNING, PAUSED, FAILURES, RUNS, RETRY_AT = "running", "paused", "failures", "runs", "retry_at"
STOP_REASON, EPOCH, CHANGE = "stop_reason", "epoch", "change"
LAST_TICK_AT, LAST_SLOT, REGISTERED_AT = "last_tick_at", "last_slot", "registered_at"
DURATION_SUM_MS, HISTORY_BYTES = "duration_ms_sum", "history_bytes"
TEXT_FIELDS = ("last_error", "stop_reason", "changed_by", "change", "change_reason")
# Every field of the service hash, as the scripts write them (tests/unit/test_schema.py checks
# that the scripts use no other): what each holds.
STATE_FIELDS: dict[str, str] = {
    RUNNING: "flag: 0 once stopped (an operator's stop or max_failures)",
    PAUSED: "flag: 1 while paused",
    FAILURES: "counted consecutive failures",
    "first_failure_at": "ms: the first of the current failures",
    "failure_window_at": "ms: the start of the current backoff window",
    RETRY_AT: "Unix seconds: the backoff's end",
    RUNS: "runs the guard let start (the fencing sequence)",
    "last_run_id": "the latest run's id",
    "last_started_at": "Unix seconds", "last_finished_at": "Unix seconds",
    "last_success_at": "Unix seconds", "last_error_at": "Unix seconds",
    "last_error": "the latest failure's error text",
    LAST_TICK_AT: "ms: when the last regular Beat tick ran",
    LAST_SLOT: "ms: the last Beat slot that ran",
    STOP_REASON: "why the service is stopped",
    "stopped_by": "who stopped it", "stopped_at": "ms",
    CHANGE: "the last operator action", "changed_by": "who", "changed_at": "Unix seconds",
    "change_reason": "why",
    EPOCH: "the store epoch its flags were last confirmed in (services/durability.py)",
    "restored_at": "when a process restored its flags after a loss",
    "restored_by": "which process",
    REGISTERED_AT: "Unix seconds: when a worker first registered it",
    "runs_<outcome>": "finished runs by outcome",
    "duration_le_<ms>": "finished runs no longer than <ms> (duration_le_inf: the rest)",
    DURATION_SUM_MS: "the runs' total duration",
    HISTORY_BYTES: "the bytes the history list holds (lua/history.lua)",
    "history_count": "the entries it holds, to know when the bytes need measuring again",
}
TIME_FIELDS = ("retry_at", "last_started_at", "last_finished_at", "last_success_at",
               "last_error_at", "changed_at", "registered_at")


def runs_field(outcome: Outcome) -> str:
    """The hash field counting runs that ended with ``outcome``."""
    return f"runs_{outcome}"


def duration_field(bound_ms: int | None) -> str:
    """The hash field counting runs no longer than ``bound_ms`` (None: the rest)."""
    return f"duration_le_{'inf' if bound_ms is None else bound_ms}"


# Year 3000: a stored time past it is a typo or a hand edit (1e12 is the year 33658, which
# Python's datetime cannot even represent). Read as unset and reported, never a crash.
LATEST_TIME = 32_503_680_000.0
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def parse_flag(value: str | None, default: bool) -> bool | None:
    """A flag as Redis holds it; None when the value is not a flag (the scripts agree)."""
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def parse_number(value: str | bytes | float | None) -> float | None:
    """A number as Redis holds it; None when unset, unreadable, nan or infinite. The one
    reading of numbers: '1_0' (which float() takes and the scripts do not) is unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and "_" in value:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_count(value: str | None) -> int:
    """A counter as Redis holds it: 0 when unset, unreadable or negative (a counter only
    grows; a hand-edited -5 would break every rate computed from it)."""
    number = parse_number(value)
    return max(0, int(number)) if number is not None else 0


@dataclass(frozen=True)
class ServiceState:
    """A service's hash, read with the documented defaults. Unreadable fields fall back to the
    default and are listed in ``corrupt`` as ``field=value``."""

    name: str
    running: bool = True
    paused: bool = False
    failures: int = 0
    runs: int = 0
    retry_at: float | None = None
    last_started_at: float | None = None
    last_finished_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    stop_reason: str | None = None
    changed_by: str | None = None
    changed_at: float | None = None
    change: str | None = None
    change_reason: str | None = None
    registered_at: float | None = None
    """When a worker first registered the service (health measures a service that never
    succeeded from here)."""
    corrupt: tuple[str, ...] = field(default=())

    @classmethod
    def from_hash(cls, name: str, raw: Mapping[str, str]) -> ServiceState:
        corrupt: list[str] = []
        values: dict[str, Any] = {}
        for flag, default in ((RUNNING, True), (PAUSED, False)):
            parsed = parse_flag(raw.get(flag), default)
            if parsed is None:
                corrupt.append(f"{flag}={raw[flag]}")
                # A value nobody can read must not run the service: the scripts refuse too.
                parsed = flag == PAUSED
            values[flag] = parsed
        for key in (FAILURES, RUNS):
            values[key] = int(_number(raw, key, corrupt) or 0)
        for key in TIME_FIELDS:
            moment = _number(raw, key, corrupt)
            if moment is not None and abs(moment) > LATEST_TIME:
                corrupt.append(f"{key}={raw[key]}")
                moment = None
            values[key] = moment
        for key in TEXT_FIELDS:
            values[key] = raw.get(key) or None
        return cls(name=name, corrupt=tuple(corrupt), **values)


def standing(state: ServiceState, *, held: bool, now: float) -> Verdict:
    """Where the guard stands on a service before a tick's own checks (a duplicate, the
    leases): ``begin_run.lua``'s order, for those who read the state instead of asking the
    guard (``svc``, the page, the metrics). ``go`` when nothing holds it back."""
    if held:
        return Verdict.HELD
    if any(c.startswith((f"{RUNNING}=", f"{PAUSED}=")) for c in state.corrupt):
        return Verdict.CORRUPT
    if not state.running:
        return Verdict.STOPPED
    if state.paused:
        return Verdict.PAUSED
    if state.retry_at is not None and state.retry_at > now:
        return Verdict.BACKOFF
    return Verdict.GO


def _number(raw: Mapping[str, str], key: str, corrupt: list[str]) -> float | None:
    value = raw.get(key)
    if value in (None, ""):
        return None
    number = parse_number(value)
    if number is None:  # nan and inf are no count and no time either
        corrupt.append(f"{key}={value}")
    return number
