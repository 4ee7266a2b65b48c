"""Fixtures for the operator tests: the ``svc`` command in-process (typer's CliRunner, with a
fresh environment per call) and as the installed console script, both pointed at the test's
own key prefix, plus real worker/Beat clusters that are always stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tests.cluster import REPO, Cluster
from worker.cli import app

SVC_BIN = Path(sys.executable).parent / "svc"


@dataclass
class Svc:
    """Runs ``svc`` with one test's environment."""

    env: dict[str, str]
    runner: CliRunner = field(default_factory=CliRunner)

    def __call__(self, *args: str, **env: str) -> Result:
        """In-process. CliRunner sets the environment for the call; the CLI builds its
        settings from it at its edge, so nothing cached from another test leaks in."""
        return self.runner.invoke(app, list(args), env={**self.env, **env},
                                  catch_exceptions=False)

    def json(self, *args: str, **env: str) -> Any:
        result = self(*args, "--json", **env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """The installed console script, in its own process."""
        return subprocess.run(
            [str(SVC_BIN), *args], cwd=REPO, env={**os.environ, **self.env, **env},
            capture_output=True, text=True, timeout=timeout, check=False)

    def popen(self, *args: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [str(SVC_BIN), *args], cwd=REPO, env={**os.environ, **self.env, **env},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def cli_env(cluster_env: dict[str, str]) -> dict[str, str]:
    keep = ("REDIS_URL", "SVC_KEY_PREFIX", "SVC_BROKER_PREFIX", "SVC_PACKAGES", "SVC_SERVICES",
            "SVC_LEASE_SECONDS", "DATABASE_URL")
    return {key: cluster_env[key] for key in keep}


@pytest.fixture
def make_cluster(tmp_path: Path, prefix: str, redis_url: str) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(services, **kwargs)``: a Cluster on this test's prefix, stopped (every
    process) when the test ends."""
    made: list[Cluster] = []

    def make(services: list[str], **kwargs: Any) -> Cluster:
        workdir = tmp_path / f"cluster{len(made)}"
        workdir.mkdir()
        cluster = Cluster(workdir, prefix, redis_url, services, **kwargs)
        made.append(cluster.__enter__())
        return cluster

    yield make
    for cluster in reversed(made):
        cluster.__exit__(None, None, None)


@pytest.fixture
def svc_for() -> Callable[[Cluster], Svc]:
    """The ``svc`` command pointed at a cluster's Redis, prefix and services."""
    return lambda cluster: Svc(cli_env(cluster.base_env()))


@pytest.fixture
def svc(tmp_path: Path, prefix: str, redis_url: str) -> Svc:
    """``svc`` on this test's prefix with the Celery test services, no workers."""
    cluster = Cluster(tmp_path, prefix, redis_url, ["ticker", "failing", "slow"])
    return Svc(cli_env(cluster.base_env()))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts itself (svc metrics); each is stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
