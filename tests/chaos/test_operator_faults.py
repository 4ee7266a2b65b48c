"""Every ``svc`` command against a world that says no and against commands that are wrong, as
the installed console script in its own process: never a traceback, always one line on stderr
and exit code 1 (the world said no) or 2 (the command was wrong).

The faults are real: an address nothing listens on, a URL nobody can parse, keys of the wrong
type and an unreadable index entry written with redis-py under the test's own prefix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from services.keys import Keys
from tests.cluster import REPO

SVC_BIN = Path(sys.executable).parent / "svc"
FAILED, USAGE = 1, 2

# A fault is what is done to the world before the command runs: environment to set, or keys
# to write (redis-py, the test's prefix).
Fault = Callable[[redis.Redis, Keys], None] | dict[str, str]

FAULTS: dict[str, Fault] = {
    "none": {},
    "unreachable": {"REDIS_URL": "redis://127.0.0.1:1/0"},
    "malformed-url": {"REDIS_URL": "redis://:x@[bad"},
    "wrongtype-state": lambda r, k: r.set(k.state("ticker"), "x"),
    "wrongtype-index": lambda r, k: r.set(k.index(), "x"),
    "wrongtype-audit": lambda r, k: r.set(k.audit("ticker"), "x"),
    "wrongtype-history": lambda r, k: r.set(k.history("ticker"), "x"),
    "wrongtype-lease": lambda r, k: r.set(k.lease("ticker"), "x"),
    "non-json-index": lambda r, k: r.hset(k.index(), "remote", "{not json"),
    "bad-setting": {"SVC_LEASE_SECONDS": "soon"},
}

# Every command that reads or changes Redis (metrics --once reports Redis down as a scrape,
# svc_redis_up 0, by design; up would start an embedded Redis for a local address).
REDIS_COMMANDS = [
    ["list"], ["list", "--json"], ["status"], ["status", "ticker"],
    ["status", "ticker", "--json"], ["history", "ticker"], ["audit", "ticker", "--json"],
    ["pause", "ticker"], ["resume", "ticker"], ["stop", "ticker", "-r", "why"],
    ["start", "ticker"], ["reset", "--all"], ["pause", "ticker", "--wait", "--timeout", "1"],
    ["trigger", "ticker"],
]

MATRIX: list[tuple[str, list[str], int]] = [
    *(("unreachable", c, FAILED) for c in REDIS_COMMANDS),
    *(("malformed-url", c, FAILED) for c in [*REDIS_COMMANDS, ["up"]]),
    *(("wrongtype-state", c, FAILED) for c in [
        ["list"], ["status"], ["status", "ticker", "--json"], ["pause", "ticker"],
        ["resume", "ticker"], ["stop", "ticker"], ["start", "ticker"], ["reset", "--all"],
        ["trigger", "ticker"]]),
    *(("wrongtype-index", c, FAILED) for c in [
        ["list"], ["status", "--json"], ["status", "ticker"], ["history", "ticker"],
        ["audit", "ticker"], ["pause", "--all"], ["trigger", "ticker"]]),
    *(("wrongtype-audit", c, FAILED) for c in [
        ["status", "ticker"], ["audit", "ticker"], ["pause", "ticker"], ["reset", "ticker"]]),
    *(("wrongtype-history", c, FAILED) for c in [
        ["list"], ["status", "ticker"], ["history", "ticker", "--json"]]),
    # (stop --wait with such a lease key stops, then fails the wait: test_cli_faults.py)
    *(("wrongtype-lease", c, FAILED) for c in [
        ["list"], ["status"], ["status", "ticker", "--json"]]),
    ("non-json-index", ["trigger", "remote"], FAILED),
    ("bad-setting", ["list"], USAGE),
    ("bad-setting", ["pause", "ticker"], USAGE),
    *(("none", c, USAGE) for c in [
        ["metrics", "--port", "99999"], ["metrics", "--port", "-1"],
        ["migrate", "--revision", "nosuch"], ["migrate", "--revision", ""],
        ["pause", "ticker", "--reason", "r" * 501], ["pause", "ticker", "--wait",
                                                     "--timeout", "nan"],
        ["history", "ticker", "-n", "0"], ["audit", "ticker", "-n", "1e30"],
        ["status", "-n", str(10**30)], ["pause"], ["pause", "ticker", "--all"],
        ["pause", "Ticker"], ["status", "tikcer"], ["history", "a:b"], ["trigger"],
        ["no-such-command"], ["list", "--no-such-option"], ["migrate", "--json"]]),
]


def case_id(case: tuple[str, list[str], int]) -> str:
    fault, command, _ = case
    return f"{fault}:{' '.join(a if len(a) < 20 else a[:8] + '...' for a in command)}"


@pytest.mark.parametrize(("fault", "command", "code"), MATRIX, ids=map(case_id, MATRIX))
def test_every_command_fails_in_one_line(fault: str, command: list[str], code: int,
                                         redis_client: redis.Redis, redis_url: str,
                                         prefix: str, tmp_path: Path) -> None:
    setup = FAULTS[fault]
    env = {**os.environ, "REDIS_URL": redis_url, "SVC_KEY_PREFIX": prefix,
           "SVC_BROKER_PREFIX": f"{prefix}-broker:", "SVC_PACKAGES": "tests.svc_celery",
           "SVC_SERVICES": "ticker,failing,slow",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'services.db'}"}
    if isinstance(setup, dict):
        env.update(setup)
    else:
        setup(redis_client, Keys(prefix))
    before = {key: redis_client.dump(key) for key in redis_client.scan_iter(f"{prefix}:*")}

    proc = subprocess.run([str(SVC_BIN), *command], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, check=False)

    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode in (FAILED, USAGE), (proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svc: "), proc.stderr
    # A refused command changed nothing.
    after = {key: redis_client.dump(key) for key in redis_client.scan_iter(f"{prefix}:*")}
    assert after == before


def test_an_unreadable_index_entry_is_a_warning_not_a_failure(
        redis_client: redis.Redis, redis_url: str, prefix: str) -> None:
    """The one fault a listing survives: the other services are still shown."""
    redis_client.hset(Keys(prefix).index(), "remote", "{not json")
    env = {**os.environ, "REDIS_URL": redis_url, "SVC_KEY_PREFIX": prefix,
           "SVC_PACKAGES": "tests.svc_celery", "SVC_SERVICES": "ticker,failing,slow"}
    for command in (["list"], ["status"], ["status", "remote"]):
        proc = subprocess.run([str(SVC_BIN), *command], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "'remote' is not a JSON object" in proc.stdout, proc.stdout
