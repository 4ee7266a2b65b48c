"""Completion counters shared by the benchmark and the worker processes it starts.

A small file is mapped (``MAP_SHARED``) by the bench and by every worker process. Each
process that runs tasks claims its own slot once and afterwards only ever writes to that
slot, so counting a task costs one aligned 8-byte store in memory: no Redis round trip, no
syscall, no lock. That is what lets the raw Celery task be a true no-op (its only work is
this store) while the bench still knows exactly how many tasks have completed; the no-op
service's ``update()`` and the default app's no-op task (``bench.default_app``) make the very
same store, so every side pays the same.

Slot layout (128 bytes, so two processes' slots never share a cache line): pid, raw tasks
done, wrapped runs done, then nanoseconds spent in ``ProcessRuntime.run``,
``RunLedger.begin`` and ``RunLedger.finish``, and the CPU nanoseconds of the calling thread
in ``ProcessRuntime.run`` and in the two store calls (all five written only when the bench
asks for a breakdown, see ``bench.raw_tasks``), then the default app's tasks done; the rest
is unused.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path

ENV_VAR = "BENCH_COUNTERS"
SLOTS = 64
SLOT = struct.Struct("<16Q")
RAW, WRAPPED, RUN_NS, BEGIN_NS, FINISH_NS, RUN_CPU_NS, SCRIPTS_CPU_NS = 1, 2, 3, 4, 5, 6, 7
DEFAULT = 8
FIELDS = 9
"""Fields in use (index 0, the pid, included)."""
RAW_TASK = "bench.raw_noop"
"""The raw no-op task's name (defined in ``bench.raw_tasks``)."""
DEFAULT_TASK = "bench.default_app.noop"
"""The default app's no-op task: the name Celery derives for ``bench.default_app.noop``."""


def create(path: Path) -> None:
    path.write_bytes(bytes(SLOT.size * SLOTS))


class Counters:
    """One process's view of the counter file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, SLOT.size * SLOTS)
        self._pid = 0
        self._offset = -1
        self._counts = [0] * FIELDS

    def _claim(self) -> None:
        """Take a free slot (or this pid's), under a file lock; once per process."""
        pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for index in range(SLOTS):
                offset = index * SLOT.size
                owner = SLOT.unpack_from(self._map, offset)[0]
                if owner in (0, pid):
                    self._counts = list(SLOT.unpack_from(self._map, offset))
                    self._counts[0] = pid
                    SLOT.pack_into(self._map, offset, *self._counts)
                    self._pid, self._offset = pid, offset
                    return
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        raise RuntimeError("bench counter file is full")

    def bump(self, which: int, amount: int = 1) -> None:
        if self._pid != os.getpid():
            self._claim()
        counts = self._counts
        counts[which] += amount
        struct.pack_into("<Q", self._map, self._offset + 8 * which, counts[which])

    def sums(self) -> list[int]:
        """Every field summed over every process (index 0 is meaningless)."""
        total = [0] * FIELDS
        for index in range(SLOTS):  # slots are claimed in order: stop at the first free one
            row = SLOT.unpack_from(self._map, index * SLOT.size)
            if not row[0]:
                break
            for field in range(1, FIELDS):
                total[field] += row[field]
        return total

    def totals(self) -> tuple[int, int, int]:
        """Raw tasks, wrapped runs and default-app tasks completed, over every process."""
        raw = wrapped = default = 0
        for index in range(SLOTS):
            row = SLOT.unpack_from(self._map, index * SLOT.size)
            if not row[0]:
                break
            raw += row[RAW]
            wrapped += row[WRAPPED]
            default += row[DEFAULT]
        return raw, wrapped, default

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


_process: Counters | None = None


def bump(which: int, amount: int = 1) -> None:
    """Count in this process, if the bench set ``BENCH_COUNTERS``."""
    global _process  # noqa: PLW0603 - one mapping per process
    if _process is None:
        path = os.environ.get(ENV_VAR)
        if not path:
            return
        _process = Counters(path)
    _process.bump(which, amount)
