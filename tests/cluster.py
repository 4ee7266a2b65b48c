"""Real ``celery worker`` and ``celery beat`` processes for integration tests, isolated by a
key prefix (state keys and the broker's own keys), and always stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from services.keys import Keys
from services.state import StateStore, connect_redis
from tests import needs
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
# Beat's line for each tick the broker took, and a worker's for each tick it took: both name
# the tick's id, tick:<name>@<due ms>.
SENT_TICK = re.compile(r"Sending due task \S+ \(\S+\) as (tick:\S+)")
RECEIVED_TICK = re.compile(r"Task svc\.\S+?\[(tick:[^\]]+)\] received")
# A worker's line once it handled a tick: ran it, or refused it (``skipped: ...``), or failed.
HANDLED_TICK = re.compile(r"Task svc\.\S+?\[(tick:[^\]]+)\] (?:succeeded|failed|raised)")


def tick_ids(pattern: re.Pattern[str], *texts: str) -> Counter[str]:
    """How often each tick id appears in logs (matches of one of the patterns above)."""
    return Counter(match for text in texts for match in pattern.findall(text))


def tick_slot(identifier: str) -> int:
    """The due time (ms) in a tick id."""
    return int(identifier.rsplit("@", 1)[1])


def tick_slots(pattern: re.Pattern[str], name: str, *texts: str) -> list[int]:
    """The slots, in order, of the ticks of service ``name`` in logs (``SENT_TICK``,
    ``RECEIVED_TICK``, ``HANDLED_TICK``), each once."""
    return sorted(tick_slot(tick) for tick in tick_ids(pattern, *texts)
                  if tick.startswith(f"tick:{name}@"))


def logged_at(line: str) -> float:
    """Epoch seconds of a log line in the text format (``2026-01-02 03:04:05,678 INFO ...``):
    the emitting process's wall clock, this host's, like ``time.time()``."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Cluster:
    """Start workers and Beat on one test's prefix. Use as a context manager."""

    workdir: Path
    prefix: str
    redis_url: str
    services: list[str]
    packages: str = "tests.svc_celery"
    lease_seconds: float = 3.0
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "REDIS_URL": self.redis_url,
            "SVC_KEY_PREFIX": self.prefix,
            "SVC_BROKER_PREFIX": f"{self.prefix}-broker:",
            "SVC_PACKAGES": self.packages,
            "SVC_SERVICES": ",".join(self.services),
            "SVC_LEASE_SECONDS": str(self.lease_seconds),
            "DATABASE_URL": f"sqlite:///{self.workdir / 'services.db'}",
        })
        env.update(self.env)
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        needs.require("celery", f"starts a Celery process ({name})")
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", *args],
                cwd=self.workdir, env={**self.base_env(), **(env or {})},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def worker(self, name: str, pool: str = "prefork", concurrency: int = 1,
               wait: bool = True, extra: list[str] | None = None,
               env: dict[str, str] | None = None) -> Proc:
        proc = self.spawn(name, [
            "worker", "-P", pool, "-c", str(concurrency), "-n", f"{name}@%h", "-l", "INFO",
            "--without-gossip", "--without-mingle", *(extra or [])], env)
        if wait:
            wait_for(lambda: "ready." in proc.output() or proc.popen.poll() is not None,
                     30, f"worker {name} to be ready")
            assert proc.popen.poll() is None, f"worker {name} exited:\n{proc.output()[-3000:]}"
        return proc

    def beat(self, name: str = "beat", env: dict[str, str] | None = None) -> Proc:
        schedule = str(self.workdir / f"{name}-schedule")
        return self.spawn(name, ["beat", "-l", "INFO", "-s", schedule], env)

    def store(self) -> StateStore:
        return StateStore(connect_redis(self.redis_url), Keys(self.prefix),
                          lease_seconds=self.lease_seconds, redis_url=self.redis_url)

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Signal the process's whole group (a prefork worker and its children)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if sig == signal.SIGKILL:
            proc.popen.wait(timeout=10)

    def warm_stop(self, proc: Proc, timeout: float = 20) -> None:
        """SIGTERM to the main process only (what ``docker stop`` does): Celery's warm
        shutdown, which lets a running task finish. ``stop()`` signals the whole process group
        instead, so a pool process mid-run is interrupted."""
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
                proc.popen.wait(timeout=timeout)

    def stop(self, proc: Proc, timeout: float = 20) -> None:
        if proc.popen.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self.kill(proc)
        # Leftover pool children of a worker whose parent died.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.output()[-4000:]}" for p in self.procs)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        if exc[0] is not None:
            print(self.logs())
