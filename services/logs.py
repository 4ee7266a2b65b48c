"""Logging that names the service and run on every line.

The runner binds ``service`` and ``run_id`` in context variables; a filter copies them onto
every record, whichever logger wrote it (the user's ``logging.getLogger(__name__)`` included).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token

_service: ContextVar[str] = ContextVar("svc_service", default="-")
_run_id: ContextVar[str] = ContextVar("svc_run_id", default="-")
LogContext = tuple[Token[str], Token[str]]
"""What :func:`enter` returns and :func:`leave` takes back."""

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(service)s %(run_id)s] %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(service)s %(run_id)s %(message)s"


class _Bound:
    """``bound``'s block: a class rather than ``@contextmanager``, whose generator and
    wrapper cost about a microsecond more, twice per run."""

    __slots__ = ("run_id", "service", "tokens")

    def __init__(self, service: str, run_id: str) -> None:
        self.service = service
        self.run_id = run_id

    def __enter__(self) -> None:
        self.tokens = enter(self.service, self.run_id)

    def __exit__(self, *_: object) -> None:
        leave(self.tokens)


def bound(service: str, run_id: str = "-") -> _Bound:
    """Within this block every log line carries ``service`` and ``run_id``."""
    return _Bound(service, run_id)


def enter(service: str, run_id: str = "-") -> LogContext:
    """``bound`` for callers that cannot use a ``with`` block (Celery's prerun/postrun
    signals); hand the result to :func:`leave`."""
    return _service.set(service), _run_id.set(run_id)


def leave(tokens: LogContext) -> None:
    service_token, run_token = tokens
    _run_id.reset(run_token)
    _service.reset(service_token)


def note_run_id(run_id: str) -> None:
    """Name the run on the lines still to come in this context (Celery's result line)."""
    _run_id.set(run_id)


class ContextFilter(logging.Filter):
    """Adds ``service`` and ``run_id`` to records that do not set them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "service"):
            record.service = _service.get()
        if not hasattr(record, "run_id"):
            record.run_id = _run_id.get()
        return True


def make_formatter(json_logs: bool) -> logging.Formatter:
    if json_logs:
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "asctime": "time"})
    return logging.Formatter(TEXT_FORMAT)


def install(handler: logging.Handler, json_logs: bool = False) -> None:
    """Make one handler write service-aware lines."""
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())
    handler.setFormatter(make_formatter(json_logs))


def configure(level: str = "INFO", json_logs: bool = False) -> None:
    """Set up the root logger for a process the framework starts (standalone loop, CLI)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        install(handler, json_logs)
    root.setLevel(level.upper())
