"""The state hash's fields as Python reads them: flags, numbers and times, with the same
rules as the Lua scripts (``services/lua/*.lua``), which name the same fields in their headers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Year 3000: a stored time past it is a typo or a hand edit (1e12 is the year 33658, which
# Python's datetime cannot even represent). Read as unset and reported, never a crash.
LATEST_TIME = 32_503_680_000.0
TIME_FIELDS = ("retry_at", "last_started_at", "last_finished_at", "last_success_at",
               "last_error_at", "changed_at", "registered_at")
# How a run ends. Each is counted in the hash as runs_<outcome> (worker/metrics.py).
OK, ERROR, TIMEOUT, INTERRUPTED, LOST = "ok", "error", "timeout", "interrupted", "lost"
OUTCOMES = (OK, ERROR, TIMEOUT, INTERRUPTED, LOST)
FAILED_OUTCOMES = (ERROR, TIMEOUT)
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
        for flag, default in (("running", True), ("paused", False)):
            parsed = parse_flag(raw.get(flag), default)
            if parsed is None:
                corrupt.append(f"{flag}={raw[flag]}")
                # A value nobody can read must not run the service: the scripts refuse too.
                parsed = flag == "paused"
            values[flag] = parsed
        for key in ("failures", "runs"):
            values[key] = int(_number(raw, key, corrupt) or 0)
        for key in TIME_FIELDS:
            moment = _number(raw, key, corrupt)
            if moment is not None and abs(moment) > LATEST_TIME:
                corrupt.append(f"{key}={raw[key]}")
                moment = None
            values[key] = moment
        for key in ("last_error", "stop_reason", "changed_by", "change", "change_reason"):
            values[key] = raw.get(key) or None
        return cls(name=name, corrupt=tuple(corrupt), **values)


def _number(raw: Mapping[str, str], key: str, corrupt: list[str]) -> float | None:
    value = raw.get(key)
    if value in (None, ""):
        return None
    try:
        # float() also takes '1_0'; the scripts do not, and both must read a value alike.
        number = math.nan if "_" in value else float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):  # nan and inf are no count and no time either
        corrupt.append(f"{key}={value}")
        return None
    return number


