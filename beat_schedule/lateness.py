"""How late ticks go out: due time to send, over the last minute, as the leader Beat saw it.
Only regular ticks are timed: a catch-up replays slots missed while no Beat ran, late by
design; those are counted (``catchups_sent``) instead.

The leader writes :meth:`Lateness.summary` to ``<prefix>:_beat:stats`` every few seconds;
``svc status`` and ``svc_tick_lateness_seconds`` read it from there, so a Beat that falls
behind shows wherever an operator looks.
"""

from __future__ import annotations

import time
from collections import deque

WINDOW_SECONDS = 60.0
# 1,000 ticks/s for a minute; beyond that the oldest fall out early, which a summary can bear.
MAX_SAMPLES = 60_000


class Lateness:
    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)
        self.sent = 0
        self.catchups = 0
        """Catch-up messages sent (missed slots replayed; their lateness is not sampled)."""

    def add(self, seconds: float) -> None:
        self.samples.append((time.monotonic(), max(0.0, seconds)))
        self.sent += 1

    def summary(self) -> dict[str, str]:
        """``ticks_sent`` (since start), ``window_ticks`` and the lateness ``p50``, ``p99``
        and ``max`` in seconds over the window ('' when no tick went out in it)."""
        cutoff = time.monotonic() - WINDOW_SECONDS
        while self.samples and self.samples[0][0] < cutoff:
            self.samples.popleft()
        values = sorted(value for _, value in self.samples)
        summary = {"ticks_sent": str(self.sent), "catchups_sent": str(self.catchups),
                   "window_ticks": str(len(values)),
                   "lateness_p50": "", "lateness_p99": "", "lateness_max": ""}
        if values:
            summary.update(lateness_p50=f"{_quantile(values, 0.5):.4f}",
                           lateness_p99=f"{_quantile(values, 0.99):.4f}",
                           lateness_max=f"{values[-1]:.4f}")
        return summary


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
