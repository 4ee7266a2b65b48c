"""Exceptions mean what they say, for real: a ``BaseException`` raised by ``update()`` that is
not the worker's own shutdown (a cancelled inner task's CancelledError, a custom
BaseException, SystemExit, KeyboardInterrupt) is that run's failure. It backs off and counts
towards max_failures, and the pool process that ran it lives on. A ``SVC_*.py`` that raises
SystemExit at import is "service not loaded", and every other service still loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import REPO, Cluster
from tests.waiting import wait_for

KINDS = ["cancelled", "base", "systemexit", "keyboard"]


@pytest.mark.celery
@pytest.mark.parametrize("kind", KINDS)
def test_a_base_exception_from_update_is_a_failure_and_the_pool_lives_on(
        kind: str, tmp_path: Path, prefix: str, redis_url: str) -> None:
    with Cluster(tmp_path, prefix, redis_url, ["raiser"], packages="tests.svc_chaos",
                 env={"RAISE_KIND": kind}) as c:
        worker = c.worker("w1")
        c.beat()
        store = c.store()
        rows = wait_for(lambda: len(h := store.history("raiser")) >= 4 and h, 30,
                        f"four runs of raiser\n{c.logs()}")
        state = store.read("raiser")
        alive = worker.popen.poll() is None
        log = worker.output()

    assert alive, log[-3000:]
    assert all(row["outcome"] == "error" for row in rows), rows
    # One pool process ran them all: nothing killed it, nothing crash-loops.
    assert len({row["worker"] for row in rows}) == 1, rows
    assert "exited with" not in log and "WorkerLostError" not in log, log[-3000:]
    assert state.failures >= 1 and state.last_error is not None
    assert "not this process's shutdown" in log


def test_systemexit_at_import_is_reported_and_the_rest_loads(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    package = tmp_path / "svc_exits"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "SVC_Exits.py").write_text("import sys\nsys.exit(3)\n")
    (package / "SVC_Interrupts.py").write_text("raise KeyboardInterrupt\n")
    (package / "SVC_Fine.py").write_text(
        "from services.AbstractService import AbstractService\n\n\n"
        "class Fine(AbstractService):\n"
        "    def _configure_service(self) -> None:\n        pass\n\n"
        "    async def update(self) -> None:\n        pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
           "REDIS_URL": redis_url, "SVC_KEY_PREFIX": prefix, "SVC_PACKAGES": "svc_exits"}
    svc = Path(sys.executable).with_name("svc")
    done = subprocess.run([str(svc), "list", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert "fine" in [s["name"] for s in listing["services"]]
    errors = " ".join(listing["registry_errors"])
    assert "SVC_Exits.py: cannot be imported: SystemExit: 3" in errors, errors
    assert "SVC_Interrupts.py: cannot be imported: KeyboardInterrupt" in errors, errors
