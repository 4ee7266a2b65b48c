"""Is this process shutting down? The runner asks when ``update()`` ends with a
``BaseException`` that is not an ``Exception``: only the process's own shutdown makes a run
``interrupted``; a ``SystemExit``, ``KeyboardInterrupt`` or custom ``BaseException`` raised by
user code is that run's failure, and must not take the process down.

The host says how to tell: the Celery worker registers billiard's and Celery's own flags; the
standalone loop observes SIGINT and SIGTERM itself (``observe_signals``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

_checks: list[Callable[[], bool]] = []
_signalled = threading.Event()
_observed: set[int] = set()


def register(check: Callable[[], bool]) -> None:
    """Add a way to tell that this process is shutting down (idempotent)."""
    if check not in _checks:
        _checks.append(check)


def requested() -> bool:
    return _signalled.is_set() or any(check() for check in _checks)


def observe_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """Note SIGINT/SIGTERM before the handler already installed runs (main thread only; a
    no-op elsewhere). What the process did on those signals, it still does."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signums:
        if signum in _observed:
            continue
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None):
            continue
        signal.signal(signum, _noting(signum, previous))
        _observed.add(signum)


def _noting(signum: int, previous: Any) -> Callable[[int, FrameType | None], None]:
    def handler(received: int, frame: FrameType | None) -> None:
        _signalled.set()
        if callable(previous):
            previous(received, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:  # SIG_DFL: do what it would have done
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    return handler
