"""Importing the Celery app (what `celery -A worker ...`, Flower, and any tool that loads the app
do first) creates nothing in the directory it runs in: var/ is made only by the process that
opens the default SQLite database there, or by `svc up` for its embedded Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cluster import REPO


def test_importing_the_app_leaves_the_current_directory_empty(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key != "DATABASE_URL" and not key.startswith("SVC_")}
    # The default database URL (sqlite:///var/services.db) is relative to the directory.
    env.update({"PYTHONPATH": str(REPO), "REDIS_URL": redis_url, "SVC_KEY_PREFIX": prefix,
                "PYTHONDONTWRITEBYTECODE": "1"})
    done = subprocess.run(
        [sys.executable, "-c", "import worker.celery_app as m; print(len(m.registry.names()))"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout) >= 1, "the app loaded the shipped services"
    assert sorted(p.name for p in workdir.iterdir()) == []
