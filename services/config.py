"""A service's name and numbers, resolved once from class attributes, constructor arguments
and ``SVC_<NAME>_*`` environment overrides, and validated with errors that name the service,
the field and where the bad value came from."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from services.errors import ServiceConfigError
from services.keys import validate_name
from services.schedule import (
    DEFAULT_CATCHUP,
    DEFAULT_CATCHUP_WINDOW_SECONDS,
    DEFAULT_TIMEZONE,
    MAX_SECONDS,
    MIN_INTERVAL_SECONDS,
    Schedule,
    ScheduleError,
    check_text_field,
    tick_gap,
)
from services.settings import service_overrides

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# A run's default time limit: five minutes, or one interval when that is longer, so that no
# service that finishes within its own period is cut off.
DEFAULT_TIMEOUT_SECONDS = 300.0


def snake_case(text: str) -> str:
    """``OutboxDispatcher`` -> ``outbox_dispatcher``; ``HTTPPoller`` -> ``http_poller``."""
    return _CAMEL_BOUNDARY.sub("_", text).replace("-", "_").lower()


def service_name_for(cls: type) -> str:
    """The class's ``name`` if it sets one, else ``SVC_<Name>.py``'s ``<Name>`` in snake case,
    else the class name in snake case."""
    explicit = getattr(cls, "name", None)
    if explicit:
        candidate = explicit
    else:
        module = cls.__module__.rsplit(".", 1)[-1]
        base = module[4:] if module.startswith("SVC_") else cls.__name__
        candidate = snake_case(base)
    try:
        return validate_name(candidate)
    except ValueError as exc:
        raise ServiceConfigError(f"{cls.__module__}.{cls.__qualname__}: {exc}") from None


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    interval_seconds: float
    max_failures: int
    retry_delay_seconds: float
    max_concurrent_runs: int = 1
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    """The soft time limit: past it ``update()`` is cancelled and the run is a ``timeout``."""
    stop_cooldown_seconds: float = 0.0
    """After a stop by max_failures, one probe run every this many seconds; 0: off."""
    queue: str | None = None
    cron: str | None = None
    """A cron expression; when set, ticks follow it instead of ``interval_seconds``."""
    timezone: str = DEFAULT_TIMEZONE
    jitter_seconds: float = 0.0
    catchup: str = DEFAULT_CATCHUP
    catchup_window_seconds: float = DEFAULT_CATCHUP_WINDOW_SECONDS
    overdue_after_seconds: float | None = None
    """Health: how long without a successful run is ``overdue`` (None: the default of
    services.health.overdue_deadline)."""
    duration_histogram: bool = False
    """Metrics: export the run-duration histogram's buckets (17 series); without it, only the
    mean (``svc_run_seconds``: a ``_sum``/``_count`` pair)."""

    @property
    def schedule(self) -> Schedule:
        """The schedule from code and environment (a live override may still replace it:
        ``services.schedule.effective``)."""
        return Schedule(
            every_seconds=None if self.cron else self.interval_seconds, cron=self.cron,
            timezone=self.timezone, jitter_seconds=self.jitter_seconds, catchup=self.catchup,
            catchup_window_seconds=self.catchup_window_seconds)

    @property
    def tick_gap_seconds(self) -> float:
        """A tick sooner than this after the last accepted one is a duplicate."""
        return tick_gap(self.interval_seconds)

    def as_dict(self) -> dict[str, Any]:
        # Every field is a plain value: asdict's deep copy would only cost time.
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(ServiceConfig))
# field -> (type, lowest allowed, whether the lowest is allowed, what was expected)
_RULES: dict[str, tuple[type[float] | type[int], float, bool, str]] = {
    "interval_seconds": (float, MIN_INTERVAL_SECONDS, True,
                         f"a number >= {MIN_INTERVAL_SECONDS:g} and at most 1e9"),
    "max_failures": (int, 1, True, "a whole number >= 1"),
    "retry_delay_seconds": (float, 0, True, "a number >= 0 and at most 1e9"),
    "max_concurrent_runs": (int, 1, True, "a whole number >= 1"),
    "timeout_seconds": (float, 0, False, "a number > 0 and at most 1e9"),
    "stop_cooldown_seconds": (float, 0, True, "a number >= 0 (0: off) and at most 1e9"),
    "jitter_seconds": (float, 0, True, "a number >= 0 and at most 86400"),
    "catchup_window_seconds": (float, 0, True, "a number >= 0 and at most 1e9"),
    "overdue_after_seconds": (float, 0, False, "a number > 0 and at most 1e9 (or unset)"),
}
# Fields that may stay unset (None): their default is computed where they are used.
_OPTIONAL = frozenset({"overdue_after_seconds"})
_HIGHEST = {"jitter_seconds": 86400.0}
_RULE_DEFAULTS = {"jitter_seconds": 0.0,
                  "catchup_window_seconds": DEFAULT_CATCHUP_WINDOW_SECONDS}
# Text fields of the schedule, checked by services.schedule.check.
_SCHEDULE_TEXT = ("cron", "timezone", "catchup")


def resolve_config(
    cls: type,
    explicit: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    name: str | None = None,
) -> ServiceConfig:
    """Class attributes, overridden by ``explicit`` (constructor arguments), overridden by the
    environment. Raises :class:`ServiceConfigError` naming the service, field and source."""
    if name:
        try:
            name = validate_name(name)
        except ValueError as exc:
            raise ServiceConfigError(f"{cls.__qualname__} (argument name): {exc}") from None
    else:
        name = service_name_for(cls)
    values: dict[str, Any] = {}
    for field in _RULES:
        source = f"{cls.__qualname__}.{field}"
        raw: Any = getattr(cls, field, _RULE_DEFAULTS.get(field))
        if explicit and explicit.get(field) is not None:
            raw, source = explicit[field], f"argument {field}"
        values[field] = (raw, source)
    for field, (var, text) in service_overrides(name, environ).items():
        if field in _RULES:
            values[field] = (text, var)
    if values["timeout_seconds"][0] is None:
        interval = _check(name, "interval_seconds", *values["interval_seconds"])
        values["timeout_seconds"] = (max(DEFAULT_TIMEOUT_SECONDS, interval), "the default")
    # By field name, as ServiceConfig takes them: each a number of the field's kind, or None.
    checked: dict[str, Any] = {field: None if raw is None and field in _OPTIONAL
                               else _check(name, field, raw, source)
                               for field, (raw, source) in values.items()}
    queue = (explicit or {}).get("queue") or getattr(cls, "queue", None)
    config = ServiceConfig(name=name, queue=queue, **checked, **_schedule_text(cls, name, environ),
                           duration_histogram=_switch(cls, name, "duration_histogram", environ))
    try:
        config.schedule  # noqa: B018  # the fields together (a jitter longer than the period)
    except ScheduleError as exc:
        raise ServiceConfigError(f"service {name!r}: {exc} (from {cls.__qualname__} and "
                                 f"SVC_{name.upper()}_* in the environment)") from None
    return config


def _schedule_text(cls: type, name: str, environ: Mapping[str, str] | None) -> dict[str, Any]:
    """cron, timezone and catchup: class attributes, then the environment. An interval set in
    the environment replaces a cron expression set in the class."""
    found = {field: (getattr(cls, field, None), f"{cls.__qualname__}.{field}")
             for field in _SCHEDULE_TEXT}
    env = service_overrides(name, environ)
    for field in _SCHEDULE_TEXT:
        if field in env:
            var, text = env[field]
            found[field] = (text.strip() or None, var)
    if "interval_seconds" in env and "cron" not in env:
        found["cron"] = (None, env["interval_seconds"][0])
    for field, (value, source) in found.items():
        try:
            check_text_field(field, value)
        except ScheduleError as exc:
            raise ServiceConfigError(f"service {name!r}: {exc} (from {source})") from None
    return {"cron": found["cron"][0], "timezone": found["timezone"][0] or DEFAULT_TIMEZONE,
            "catchup": found["catchup"][0] or DEFAULT_CATCHUP}


_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off", ""})


def _switch(cls: type, name: str, field: str, environ: Mapping[str, str] | None) -> bool:
    """A yes/no setting: the class attribute, then ``SVC_<NAME>_<FIELD>`` (1/0, true/false,
    yes/no, on/off)."""
    value: Any = getattr(cls, field, False)
    source = f"{cls.__qualname__}.{field}"
    env = service_overrides(name, environ)
    if field in env:
        source, text = env[field]
        lowered = text.strip().lower()
        if lowered not in _ON | _OFF:
            raise ServiceConfigError(f"service {name!r}: {field} must be one of 1/0, "
                                     f"true/false, yes/no, on/off, got {text!r} (from {source})")
        value = lowered in _ON
    if not isinstance(value, bool):
        raise ServiceConfigError(f"service {name!r}: {field} must be True or False, got "
                                 f"{value!r} (from {source})")
    return value


def _check(name: str, field: str, raw: Any, source: str) -> float | int:
    kind, lowest, inclusive, expected = _RULES[field]
    problem = f"service {name!r}: {field} must be {expected}, got {raw!r} (from {source})"
    if isinstance(raw, bool):
        raise ServiceConfigError(problem)
    try:
        value = kind(raw) if isinstance(raw, str) else raw
        if kind is int and (not isinstance(value, int) and float(value) != int(value)):
            raise ValueError
        value = kind(value)
    except (TypeError, ValueError):
        raise ServiceConfigError(problem) from None
    if not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
        raise ServiceConfigError(problem)
    if kind is float and value > _HIGHEST.get(field, MAX_SECONDS):
        raise ServiceConfigError(problem)
    return value
