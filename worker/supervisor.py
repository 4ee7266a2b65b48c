"""A small supervisor for ``svc up``: a few processes that live and die together.

Written by hand because honcho, the usual Procfile runner, starts every process through
``sh -c`` (its ``Popen`` forces ``shell=True`` and takes only a command string), so a setting
that reached a command line would be read by a shell. Here every process is an argument list
handed to ``exec`` as it is; no shell ever sees it.

Each process runs in its own session, so a Ctrl-C in the terminal reaches only the
supervisor, which then stops the processes in order: SIGTERM to each (Celery's warm shutdown
lets a run in progress finish), up to ``kill_wait`` seconds, then SIGKILL to whatever is left
of each process group. One process ending stops all of them. Each output line is prefixed
with the process's name.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

KILL_WAIT_SECONDS = 20.0


class Supervisor:
    """Runs ``programs`` (name → argv) until one ends or a stop is asked for."""

    def __init__(self, programs: Mapping[str, Sequence[str]], env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, kill_wait: float = KILL_WAIT_SECONDS,
                 output: IO[str] | None = None) -> None:
        self.programs = {name: list(argv) for name, argv in programs.items()}
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.kill_wait = kill_wait
        self.output = output or sys.stdout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.returncode = 0
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._ended: set[str] = set()
        self._failed = False
        self._signals = 0
        self._readers: list[threading.Thread] = []
        self._width = max((len(name) for name in self.programs), default=0)

    def run(self) -> int:
        """Start everything, wait, stop everything; the exit code of the first process that
        failed (a signal N counts as 128 + N), else 0."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start_all()
            while not self._signals and not self._ended:
                self._pump(0.1)
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.returncode

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only a flag: the main loop notices it within one pump. A signal while stopping
        # skips the rest of the grace period.
        self._signals += 1

    def _start_all(self) -> None:
        for name, argv in self.programs.items():
            if self._signals:
                return
            try:
                proc = subprocess.Popen(  # noqa: S603 - an argument list, never a shell
                    argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                self._say(name, f"cannot start {argv[0]}: {exc}")
                self._record(127)
                self._ended.add(name)
                return
            self.procs[name] = proc
            assert proc.stdout is not None
            reader = threading.Thread(target=self._read, args=(name, proc.stdout), daemon=True)
            reader.start()
            self._readers.append(reader)
            self._say(name, f"started (pid {proc.pid})")

    def _read(self, name: str, stream: IO[bytes]) -> None:
        # One thread per process: the main thread prints, so lines never interleave mid-line.
        for raw in stream:
            self._lines.put((name, raw.decode(errors="replace").rstrip("\r\n")))

    def _pump(self, timeout: float) -> None:
        """Print what arrived within ``timeout`` and note processes that ended."""
        try:
            self._say(*self._lines.get(timeout=timeout) if timeout else self._lines.get_nowait())
            for _ in range(10_000):  # bounded: a chatty process cannot keep us from polling
                self._say(*self._lines.get_nowait())
        except queue.Empty:
            pass
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None and name not in self._ended:
                self._ended.add(name)
                self._say(name, f"exited with code {code}")
                self._record(128 - code if code < 0 else code)

    def _record(self, code: int) -> None:
        if code and not self._failed:
            self._failed, self.returncode = True, code

    def _stop_all(self) -> None:
        for name, proc in self.procs.items():
            if name not in self._ended:
                # The main process only: Celery's warm shutdown, not a signal to its pool.
                self._signal(proc.pid, signal.SIGTERM, group=False)
        signals_seen = self._signals
        deadline = time.monotonic() + self.kill_wait
        while len(self._ended) < len(self.procs) and time.monotonic() < deadline:
            if self._signals > signals_seen:
                break  # Ctrl-C while waiting: no more waiting
            self._pump(0.1)
        for name, proc in self.procs.items():
            if name not in self._ended:
                self._say(name, f"still running after {self.kill_wait:g}s: SIGKILL")
                self._signal(proc.pid, signal.SIGKILL, group=False)  # even if it left its group
            # Whatever is left of the group (a pool child outliving its parent) goes too. The
            # group's id cannot be reused while it has members, and is gone when it has none.
            self._signal(proc.pid, signal.SIGKILL, group=True)
        for proc in self.procs.values():
            proc.wait()
        for reader in self._readers:
            reader.join(timeout=2)  # the last lines; a pipe kept open elsewhere cannot hang us
        self._pump(0)

    @staticmethod
    def _signal(pid: int, sig: int, group: bool) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            (os.killpg if group else os.kill)(pid, sig)

    def _say(self, name: str, line: str) -> None:
        # A closed terminal or pipe must not stop us from stopping the processes.
        with contextlib.suppress(OSError, ValueError):
            self.output.write(f"{time.strftime('%H:%M:%S')} {name:<{self._width}} | {line}\n")
            self.output.flush()
