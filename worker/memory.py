"""The memory cap (``SVC_WORKER_MAX_MEMORY_MB``) as Celery's ``worker_max_memory_per_child``,
and one line when it strikes.

After each task a prefork pool process compares its peak resident size (``ru_maxrss``) with
the cap and, once past it, exits and is replaced by a fresh process: a leaking service costs
a fork, not the machine. Celery says nothing when that happens (billiard's own warning goes
to a logger nobody configures), so the pool process says it here, once. Other pools (solo,
threads) replace no process: there the cap does nothing, and the line says so.
"""

from __future__ import annotations

import logging
import os
import resource

from billiard.process import current_process

from services.settings import Settings

logger = logging.getLogger(__name__)

_said = False


def cap_kib(settings: Settings) -> int | None:
    """``worker_max_memory_per_child`` (KiB) for ``settings``; None when the cap is off."""
    return settings.worker_max_memory_mb * 1024 or None


def note_after_run(cap: int | None, task_name: str) -> None:
    """Log once per process that it passed the cap (by the same measure as Celery)."""
    global _said  # noqa: PLW0603  one flag per process, reset by the fork of a new one
    if not cap or _said:
        return
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if peak <= cap:
        return
    _said = True
    in_pool = current_process().name != "MainProcess"  # a prefork child, not solo or threads
    outcome = ("it is replaced after this run" if in_pool
               else "only the prefork pool replaces processes: restart the worker")
    logger.warning("worker process %d peaked at %d MiB after a run of %s, over "
                   "SVC_WORKER_MAX_MEMORY_MB=%d: %s", os.getpid(), peak // 1024, task_name,
                   cap // 1024, outcome)
