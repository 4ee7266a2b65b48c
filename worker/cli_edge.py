"""Where ``svc`` meets what can go wrong: every error an operator can cause or meet becomes one
line on stderr and an exit code, never a traceback (a traceback means a bug in svc).

Exit codes: 0 done; 1 the world said no (Redis, the broker or the database unreachable or
refusing, a state key of the wrong type, ``--wait`` timed out); 2 the command was wrong
(usage, a bad option value, an unknown or malformed service name, a bad setting).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import redis
import typer
from kombu.exceptions import OperationalError
from typer.core import TyperGroup

from services.errors import (
    DatabaseConfigError,
    ServiceConfigError,
    StateCorruptError,
    StateUnavailableError,
    UnknownServiceError,
)
from services.settings import redact_url
from worker import cli_render as render
from worker.ops import InvalidArgumentError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int) -> typer.Exit:
    """Print ``svc: message`` on stderr, as one line however long (no wrapping: scripts and
    log collectors read it whole); the caller raises what this returns. The message may quote
    Redis (names from the index, a key's name), so it is made visible, not obeyed."""
    render.console(stderr=True).print(f"svc: {render.visible(message)}", markup=False,
                                      highlight=False, soft_wrap=True)
    return typer.Exit(code)


def edge(command: F) -> F:
    """Turn the errors an operator can cause or meet into one line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = kwargs.get("ctx") or next((a for a in args if isinstance(a, typer.Context)), None)
        settings = ctx.obj.settings if ctx is not None and ctx.obj is not None else None
        try:
            return command(*args, **kwargs)
        except (UnknownServiceError, InvalidArgumentError, ServiceConfigError) as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        except (StateUnavailableError, StateCorruptError, DatabaseConfigError) as exc:
            raise fail(str(exc), EXIT_FAILED) from None
        except redis.RedisError as exc:
            url = redact_url(settings.redis_url) if settings else "?"
            raise fail(f"Redis at {url} failed: {type(exc).__name__}: {exc}",
                       EXIT_FAILED) from None
        except OperationalError as exc:  # kombu: the broker (svc trigger)
            url = redact_url(settings.effective_broker_url) if settings else "?"
            raise fail(f"cannot reach the broker at {url}: {exc}", EXIT_FAILED) from None
        except OSError as exc:  # e.g. svc metrics' port already taken
            raise fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED) from None

    return wrapper  # type: ignore[return-value]


class OneLineGroup(TyperGroup):
    """svc's command group: a usage error (a bad option value, a missing argument, an unknown
    command) is one line on stderr with exit code 2, like every other error of svc, instead of
    click's boxed usage message."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        except typer.TyperException as exc:  # click's usage errors, as typer ships them
            usage_error(exc)
        except typer.Abort:  # EOF at a prompt
            fail("aborted", EXIT_FAILED)
            sys.exit(EXIT_FAILED)
        sys.exit(code if isinstance(code, int) else 0)


def usage_error(exc: typer.TyperException) -> NoReturn:
    # svc with no arguments: the help, already printed as the error was made, is the answer.
    if type(exc).__name__ != "NoArgsIsHelpError":
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        fail(f"{exc.format_message()}{hint}", exc.exit_code)
    sys.exit(exc.exit_code)
