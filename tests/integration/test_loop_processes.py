"""Several OS processes running ``run_service_loop()`` of one service on one Redis: flags,
failure counts and backoff are shared, runs never overlap, and a plain ``HSET`` reaches
them all. Every process is a ``python -m tests.fixtures.loop_proc`` subprocess."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from services.state import StateStore
from tests.fixtures.services import Recorder
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


@dataclass
class LoopProcess:
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


Spawn = Callable[..., LoopProcess]


@pytest.fixture
def spawn(prefix: str, tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(name, *args)`` starts a loop process on this test's prefix; every process is
    terminated (then killed) after the test, before the prefix's keys are removed."""
    started: list[LoopProcess] = []

    def start(name: str, *args: str) -> LoopProcess:
        log = tmp_path / f"{name}-{len(started)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "tests.fixtures.loop_proc", "loop", "--prefix", prefix,
                 "--name", name, *args],
                cwd=REPO, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
        proc = LoopProcess(popen, log)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.alive:
            proc.popen.terminate()
    for proc in started:
        try:
            proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(timeout=10)


def control(prefix: str, name: str, action: str = "none") -> dict:
    """Apply ``action`` from a separate OS process, through its own service instance, and
    return the state that process then sees."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.loop_proc", "control", "--prefix", prefix,
         "--name", name, "--action", action],
        cwd=REPO, env=dict(os.environ), capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def runs(store: StateStore, name: str) -> int:
    return store.read(name).runs


def oldest_first(store: StateStore, name: str) -> list[dict]:
    return list(reversed(store.history(name, limit=1000)))


def workers(store: StateStore, name: str) -> set[int]:
    return {int(e["worker"].rsplit(":", 1)[1]) for e in store.history(name, limit=1000)}


def exited(*procs: LoopProcess) -> bool:
    return all(not p.alive for p in procs)


def describe(*procs: LoopProcess) -> str:
    return "\n".join(f"--- pid {p.pid} (rc {p.popen.poll()}):\n{p.output()}" for p in procs)


def wait_redis_time_past(store: StateStore, moment: float, message: str) -> None:
    wait_for(lambda: store.now() > moment, timeout=20, message=message)


def test_pause_resume_stop_are_shared_between_processes(spawn: Spawn, store: StateStore,
                                                        prefix: str,
                                                        redis_client: redis.Redis) -> None:
    name = "shared"
    a = spawn(name, "--interval", "0.1", "--work", "0.05")
    b = spawn(name, "--interval", "0.1", "--work", "0.05")
    wait_for(lambda: {a.pid, b.pid} <= workers(store, name), timeout=30,
             message=f"runs from both processes\n{describe(a, b)}")

    seen = control(prefix, name, "pause")
    assert seen["paused"] is True and seen["pid"] not in (a.pid, b.pid)
    paused_at = store.now()
    before = runs(store, name)
    assert Recorder(state=store, name=name).paused is True, "this process sees it too"
    wait_redis_time_past(store, paused_at + 0.6, "six intervals of pause")
    assert runs(store, name) == before, "no run starts anywhere while paused"
    assert not [e for e in store.history(name, limit=1000) if e["started_at"] > paused_at]
    assert a.alive and b.alive, describe(a, b)

    seen = control(prefix, name, "resume")
    assert seen["paused"] is False
    wait_for(lambda: runs(store, name) >= before + 3, timeout=20,
             message=f"runs after resume\n{describe(a, b)}")

    seen = control(prefix, name, "stop")
    assert seen["running"] is False
    wait_for(lambda: exited(a, b), timeout=20,
             message=f"both loops to end after stop()\n{describe(a, b)}")
    assert (a.popen.returncode, b.popen.returncode) == (0, 0), describe(a, b)
    cleaned = {int(pid) for pid in redis_client.lrange(f"{prefix}:{name}:test-cleanup", 0, -1)}
    assert cleaned == {a.pid, b.pid}, "cleanup() ran in both processes"
    state = store.read(name)
    assert state.running is False
    assert state.stop_reason and "control process" in state.stop_reason


def test_failure_counts_and_backoff_are_shared_between_processes(
        spawn: Spawn, store: StateStore, prefix: str, redis_client: redis.Redis) -> None:
    name = "failing"
    retry = 0.3
    args = ("--interval", "0.1", "--retry", str(retry), "--max-failures", "4",
            "--fail", "always")
    a = spawn(name, *args)
    b = spawn(name, *args)
    wait_for(lambda: exited(a, b), timeout=40,
             message=f"both loops to stop at max_failures\n{describe(a, b)}")
    assert (a.popen.returncode, b.popen.returncode) == (0, 0), describe(a, b)

    state = redis_client.hgetall(f"{prefix}:{name}")
    count = int(state["failures"])
    # It stops at max_failures counted failures once they span max_failures x retry_delay.
    assert count >= 4
    assert state["running"] == "0"
    assert f"failed {count} times in a row (max_failures=4)" in state["stop_reason"]
    assert "RuntimeError: boom" in state["stop_reason"]
    history = oldest_first(store, name)
    # one count for the whole cluster, not one per process: every failure counted once
    assert [e["outcome"] for e in history] == ["error"] * count, history
    assert all(e["counted"] for e in history), history
    assert history[-1]["finished_at"] - history[0]["finished_at"] >= 4 * retry - 0.001
    for failed, retried in itertools.pairwise(history):
        # the backoff holds for every process (Redis-clock times, ms precision)
        assert retried["started_at"] >= failed["finished_at"] + retry - 0.001, (failed, retried)

    seen = control(prefix, name)
    assert (seen["failures"], seen["running"]) == (count, False)
    seen = control(prefix, name, "start")
    assert (seen["failures"], seen["running"]) == (0, True)
    assert Recorder(state=store, name=name).failures == 0


def test_plain_redis_hset_pauses_a_loop_in_another_process(spawn: Spawn, store: StateStore,
                                                           prefix: str,
                                                           redis_client: redis.Redis) -> None:
    name = "plainflag"
    interval = 0.2
    proc = spawn(name, "--interval", str(interval))
    wait_for(lambda: runs(store, name) >= 2, timeout=30,
             message=f"two runs\n{describe(proc)}")

    redis_client.hset(f"{prefix}:{name}", "paused", "1")  # what redis-cli HSET does
    paused_at = store.now()
    before = runs(store, name)
    wait_redis_time_past(store, paused_at + 5 * interval, "five intervals of pause")
    assert runs(store, name) == before
    assert not [e for e in store.history(name, limit=1000) if e["started_at"] > paused_at]
    assert proc.alive, describe(proc)

    redis_client.hset(f"{prefix}:{name}", "paused", "0")
    wait_for(lambda: runs(store, name) > before, timeout=20,
             message=f"runs after HSET paused 0\n{describe(proc)}")

    redis_client.hset(f"{prefix}:{name}", "running", "0")
    wait_for(lambda: exited(proc), timeout=20,
             message=f"the loop to end after HSET running 0\n{describe(proc)}")
    assert proc.popen.returncode == 0, describe(proc)


def test_two_loops_of_one_service_never_overlap(spawn: Spawn, store: StateStore, prefix: str,
                                                redis_client: redis.Redis) -> None:
    name = "exclusive"
    args = ("--interval", "0.1", "--work", "0.2")
    a = spawn(name, *args)
    b = spawn(name, *args)
    wait_for(lambda: len(store.history(name, limit=1000)) >= 12
             and {a.pid, b.pid} <= workers(store, name),
             timeout=40, message=f"a dozen runs from both processes\n{describe(a, b)}")
    control(prefix, name, "stop")
    wait_for(lambda: exited(a, b), timeout=20, message=f"both loops to end\n{describe(a, b)}")

    assert redis_client.get(f"{prefix}:{name}:test-overlap") is None, (
        "update() found another run in progress: "
        f"{redis_client.get(f'{prefix}:{name}:test-overlap')}")
    history = sorted(store.history(name, limit=1000), key=lambda e: e["started_at"])
    assert all(e["outcome"] == "ok" for e in history)
    for earlier, later in itertools.pairwise(history):
        assert later["started_at"] >= earlier["finished_at"], (earlier, later)


def test_a_killed_process_frees_the_service_within_one_lease(spawn: Spawn, store: StateStore,
                                                             prefix: str) -> None:
    name = "crashy"
    stuck = spawn(name, "--interval", "0.1", "--work", "600", "--lease", "1")
    wait_for(lambda: store.lease_holders(name), timeout=30,
             message=f"the first run to hold the lease\n{describe(stuck)}")
    [(token, _)] = store.lease_holders(name)
    assert token.endswith(f":{stuck.pid}")
    # the lease is renewed while the run lasts
    held_at = store.now()
    wait_redis_time_past(store, held_at + 2.5, "more than two lease lengths")
    assert [t for t, _ in store.lease_holders(name)] == [token]

    stuck.popen.send_signal(signal.SIGKILL)
    stuck.popen.wait(timeout=10)
    killed_at = store.now()
    successor = spawn(name, "--interval", "0.1", "--lease", "1")
    wait_for(lambda: store.history(name), timeout=30,
             message=f"another process to run once the lease expired\n{describe(successor)}")
    # The killed run is recorded as lost, with its process's name, by the next guard.
    entry, lost = wait_for(lambda: (h := store.history(name)) and len(h) >= 2 and h, 30,
                           f"the successor's run after the lost one\n{describe(successor)}")[:2]
    assert lost["outcome"] == "lost" and lost["worker"].endswith(f":{stuck.pid}")
    assert entry["worker"].endswith(f":{successor.pid}")
    assert entry["started_at"] >= killed_at
