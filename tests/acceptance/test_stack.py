"""``make run``'s stack: embedded Redis, migrations, worker, Beat, Flower and the services
page, stopped cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
import redis

from services.keys import Keys
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.celery
def test_stack_starts_embedded_redis_runs_services_and_stops_on_ctrl_c(tmp_path, prefix):
    redis_port, flower_port, web_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'services.db'}",
        "SVC_KEY_PREFIX": prefix,
        "SVC_FLOWER_PORT": str(flower_port),
        "SVC_WEB_PORT": str(web_port),
        "SVC_EXAMPLE_INTERVAL_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("SVC_SERVICES", None)
    env.pop("FLOWER_BASIC_AUTH", None)
    env.pop("SVC_WEB_BASIC_AUTH", None)
    env.pop("SVC_WEB_ADDRESS", None)
    log = (tmp_path / "stack.log").open("wb")
    stack = subprocess.Popen([sys.executable, "-m", "worker.stack"], cwd=tmp_path, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    children: list[psutil.Process] = []
    try:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        history = Keys(prefix).history("example")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{flower_port}/healthcheck"), 60,
                 "Flower to answer")
        wait_for(lambda: _safe_llen(client, history) >= 2, 60, "two runs of the example service")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{web_port}/"), 60, "the services page")
        children = psutil.Process(stack.pid).children(recursive=True)
        assert len(children) >= 5  # redis-server, worker (and its pool), beat, flower, web
        assert (tmp_path / "var" / "redis").is_dir()
        stack.send_signal(signal.SIGINT)
        # Within the supervisor's 20 s grace period, and cleanly: every process stopped itself.
        assert stack.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {alive}"
        assert not _safe_ping(client)
    finally:
        if stack.poll() is None:
            stack.kill()
        for child in children:
            if child.is_running():
                child.kill()
        log.close()
    output = (tmp_path / "stack.log").read_text()
    assert "embedded redis-server" in output
    assert f"http://127.0.0.1:{flower_port}/tasks" in output
    assert f"Flower has no login: anyone who reaches 127.0.0.1:{flower_port}" in output
    assert f"Services   http://127.0.0.1:{web_port}/" in output
    assert f"the services page has no login: anyone who reaches 127.0.0.1:{web_port}" in output
    # Every child's lines come prefixed with its name.
    assert "worker | " in output and "beat   | " in output and "flower | " in output
    assert "web    | serving the services page" in output


def _safe_llen(client: redis.Redis, key: str) -> int:
    try:
        return client.llen(key)
    except redis.ConnectionError:
        return 0


def _safe_ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
