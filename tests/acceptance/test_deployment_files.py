"""The Procfile, docker-compose.yml and ``svc up`` describe the same processes."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

from services.settings import load_settings
from worker.stack import process_commands

REPO = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, str]:
    entries = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def test_compose_runs_the_procfile_processes_with_the_same_commands() -> None:
    services = compose()
    for name, command in procfile().items():
        assert name in services, f"docker-compose.yml has no {name!r} service"
        assert services[name]["command"] == command, name


def test_svc_up_runs_the_procfile_processes() -> None:
    ours = process_commands(load_settings())
    assert set(ours) == set(procfile())
    assert ours["web"] == [str(Path(sys.executable).with_name("svc")), "web"]
    for name, command in procfile().items():
        if name == "web":  # svc's own command, not a celery sub-command
            assert command == "svc web"
            continue
        # svc up runs the same celery sub-command (through this interpreter, as an argument
        # list), maybe followed by one-machine extras (concurrency, schedule file under var/,
        # Flower's address).
        words = shlex.split(command)
        assert words[0] == "celery", command
        assert ours[name][:3] == [sys.executable, "-m", "celery"], ours[name]
        assert ours[name][3:3 + len(words) - 1] == words[1:], (name, ours[name])


def test_compose_redis_never_evicts_and_persists() -> None:
    command = compose()["redis"]["command"]
    assert "--maxmemory-policy noeviction" in command
    assert "--appendonly yes" in command


def test_compose_workers_scale() -> None:
    worker = compose()["worker"]
    # --scale worker=N needs no fixed name and no published port.
    assert "container_name" not in worker
    assert "ports" not in worker


def test_compose_flower_basic_auth_comes_from_the_environment() -> None:
    flower = compose()["flower"]
    # ":?": compose refuses to start without it, since Flower listens on every interface.
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert flower["environment"]["FLOWER_ADDRESS"] == "0.0.0.0"


def test_compose_services_page_needs_a_login() -> None:
    web = compose()["web"]
    # ":?": compose refuses to start without it; svc web refuses 0.0.0.0 without it too.
    assert web["environment"]["SVC_WEB_BASIC_AUTH"].startswith("${SVC_WEB_BASIC_AUTH:?")
    assert web["environment"]["SVC_WEB_ADDRESS"] == "0.0.0.0"


def test_every_process_gets_the_shared_environment() -> None:
    shared = compose()["worker"]["environment"]
    for name in ("flower", "web", "beat", "migrate"):
        assert compose()[name]["environment"].items() >= shared.items(), name
