"""Waiting on conditions with a deadline: the only way tests wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout: float = 20.0, message: str = "condition",
    interval: float = 0.05,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail the test
    with ``message`` and the last value when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}; last: {last!r}")
        time.sleep(interval)
