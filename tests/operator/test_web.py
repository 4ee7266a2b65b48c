"""``svc web`` over HTTP, without a browser: basic auth, the refusal to listen openly, CSRF,
escaping, reasons, the audit entry a button writes, and Redis being away. The page runs
in-process (on its own event loop thread) against the real Redis on this test's prefix;
the refusal is checked on the command itself, in its own process."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest

from services.errors import ServiceConfigError
from services.settings import Settings, load_settings
from services.state import StateStore
from tests.cluster import REPO
from tests.operator.conftest import SVC_BIN
from tests.waiting import wait_for
from worker.ops import MAX_REASON_LENGTH, Operator, actor
from worker.web import Site, serve

USER, PASSWORD = "ops", "web-test-secret"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
# Until worker/cli.py registers the command, `svc web` is svc's own app with it added.
def svc_web_argv() -> list[str]:
    """The ``svc web`` command line."""
    return [str(SVC_BIN), "web"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str


@dataclass
class Client:
    """A browser's part of the conversation: the login header and the cookies."""

    port: int
    auth: str | None = AUTH
    cookies: dict[str, str] = field(default_factory=dict)

    host: str | None = None
    """The Host header to send (default: the address connected to)."""

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
        if self.host:
            headers["Host"] = self.host
        if self.auth:
            headers["Authorization"] = self.auth
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            connection.request(method, path, body=urlencode(form or {}), headers=headers)
            reply = connection.getresponse()
            body = reply.read().decode()
        finally:
            connection.close()
        for cookie in reply.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return Response(reply.status, reply.headers, body)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post_form(self, path: str, page: str, **fields: str) -> Response:
        """POST ``fields`` with the CSRF token of the form on ``page``, as a browser would."""
        token = re.search(r'name="_xsrf" value="([^"]+)"', self.get(page).body)
        assert token, "no CSRF token on the page"
        return self.request("POST", path, {"_xsrf": token.group(1), **fields})


class Web(threading.Thread):
    """The services page on its own event loop, on a free port."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="svc-web-test", daemon=True)
        self.site = Site(Operator(settings), settings.web_logins)
        self.port = 0
        self.listening = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self.main())

    async def main(self) -> None:
        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        await serve(self.site, "127.0.0.1", 0, self.ready, self.stopping)

    def ready(self, _host: str, port: int) -> None:
        self.port = port
        self.listening.set()

    def close(self) -> None:
        if self.loop is not None and self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.join(10)
        self.site.op.close()


@pytest.fixture
def web(prefix: str, redis_url: str) -> Iterator[Callable[..., Client]]:
    """``web(**settings)``: the page on this test's prefix (the Celery test services, no
    workers), with a login unless ``web_basic_auth=None``; a client for it."""
    started: list[Web] = []

    def start(**overrides: object) -> Client:
        values: dict[str, object] = {
            "redis_url": redis_url, "key_prefix": prefix, "packages": "tests.svc_celery",
            "services": "ticker,failing,slow", "web_basic_auth": f"{USER}:{PASSWORD}"}
        values.update(overrides)
        server = Web(Settings(**values))  # type: ignore[arg-type]
        server.start()
        started.append(server)
        assert server.listening.wait(10), "the page did not start listening"
        return Client(server.port, auth=AUTH if values["web_basic_auth"] else None)

    yield start
    for server in started:
        server.close()


def test_every_page_needs_the_login_when_one_is_set(web) -> None:
    client = web()
    for path in ("/", "/fragment/services", "/service/ticker", "/nowhere"):
        answer = Client(client.port, auth=None).get(path)
        assert answer.status == 401, path
        assert answer.headers["WWW-Authenticate"].startswith("Basic realm=")
    wrong = "Basic " + base64.b64encode(f"{USER}:not-it".encode()).decode()
    assert Client(client.port, auth=wrong).get("/").status == 401
    assert Client(client.port, auth="Basic !!!").get("/").status == 401
    # An unauthenticated POST is asked for the login before anything else.
    assert Client(client.port, auth=None).request(
        "POST", "/service/ticker/control", {"action": "pause", "reason": "x"}).status == 401

    page = client.get("/")
    assert page.status == 200
    assert 'data-service="ticker"' in page.body
    assert page.headers["X-Frame-Options"] == "DENY"
    policy = page.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy).group(1)
    # Only the page's own inline script and style run: each carries this response's nonce.
    assert page.body.count(f'nonce="{nonce}"') == 2
    assert "frame-ancestors 'none'" in policy and "form-action 'self'" in policy


def test_refuses_a_non_loopback_address_without_a_login(svc, tmp_path) -> None:
    env = {**svc.env, "PYTHONPATH": str(REPO)}
    env.pop("SVC_WEB_BASIC_AUTH", None)
    for args, extra in ((["--address", "0.0.0.0"], {}), ([], {"SVC_WEB_ADDRESS": "0.0.0.0"})):
        port = free_port()
        result = subprocess.run(
            [*svc_web_argv(), "--port", str(port), *args], cwd=tmp_path,
            env={**_base_env(), **env, **extra}, capture_output=True, text=True, timeout=60,
            check=False)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "SVC_WEB_BASIC_AUTH" in lines[0] and "0.0.0.0" in lines[0]
        assert result.stdout == ""
        with socket.socket() as sock:  # nothing listened
            assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_svc_web_serves_watches_health_and_stops_on_sigterm(svc, store, tmp_path) -> None:
    log = tmp_path / "web.log"
    # A destination for notifications: a process without one never takes the watch.
    env = {**_base_env(), **svc.env, "PYTHONPATH": str(REPO), "SVC_HEARTBEAT_SECONDS": "0.2",
           "SVC_WEB_BASIC_AUTH": f"{USER}:{PASSWORD}",
           "SVC_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/unused"}
    with log.open("wb") as out:
        proc = subprocess.Popen([*svc_web_argv(), "--port", "0"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        line = wait_for(lambda: re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
                        or proc.poll() is not None, 30, "svc web to say where it serves")
        assert proc.poll() is None, log.read_text()
        assert Client(int(line.group(1))).get("/").status == 200
        # It takes its turn at watching health (no worker runs here to take it).
        watcher = wait_for(lambda: store.client.get(store.keys.health_watch()), 10,
                           "svc web to take the health watch")
        assert watcher.startswith("web:") and watcher.endswith(f":{proc.pid}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    output = log.read_text().strip().splitlines()
    assert len(output) == 1, output
    assert output[0].startswith("serving the services page on http://127.0.0.1:")
    assert output[0].endswith("; Ctrl-C stops") and "(Redis redis://" in output[0]


def test_post_without_the_csrf_token_is_refused_and_changes_nothing(web, store) -> None:
    client = web()
    client.get("/service/ticker")  # the cookie half of the token, but not the form half
    answer = client.request("POST", "/service/ticker/control",
                            {"action": "pause", "reason": "forged"})
    assert answer.status == 403
    assert "CSRF" in answer.body
    wrong = client.request("POST", "/service/ticker/control",
                           {"action": "pause", "reason": "forged", "_xsrf": "2|00|00|1"})
    assert wrong.status == 403
    assert not store.read("ticker").paused
    assert store.audit("ticker", 10) == []


def test_values_from_redis_are_shown_escaped(web, store) -> None:
    store.control("ticker", "stop", who="<b>mallory</b>", reason="<script>alert(1)</script>")
    client = web()
    for path in ("/", "/fragment/services", "/service/ticker", "/fragment/service/ticker"):
        body = client.get(path).body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, path
        assert "<script>alert(1)" not in body, path
        assert "<b>mallory" not in body, path
    row = client.get("/fragment/services").body
    assert 'data-service="ticker" data-condition="stopped"' in row


def test_a_bad_reason_is_refused_in_one_line_and_changes_nothing(web, store) -> None:
    client = web()
    long_reason = "x" * (MAX_REASON_LENGTH + 1)
    for reason, expected in ((long_reason, f"at most {MAX_REASON_LENGTH}"),
                             ("   ", "a reason is needed")):
        answer = client.post_form("/service/ticker/control", "/service/ticker",
                                  action="pause", reason=reason)
        assert answer.status == 400
        banner = re.findall(r'<p class="banner" role="alert">(.*)</p>', answer.body)
        assert len(banner) == 1 and expected in banner[0]
        assert "nothing was changed" in banner[0]
    bad_action = client.post_form("/service/ticker/control", "/service/ticker",
                                  action="explode", reason="why not")
    assert bad_action.status == 400
    assert not store.read("ticker").paused
    assert store.audit("ticker", 10) == []


def test_pause_is_audited_with_the_login_and_the_reason(web, store) -> None:
    client = web()
    answer = client.post_form("/service/ticker/control", "/service/ticker", action="pause",
                              reason="deploying the new schema")
    assert answer.status == 303
    assert answer.headers["Location"] == "/service/ticker?did=pause"
    assert store.read("ticker").paused
    (entry,) = store.audit("ticker", 10)
    assert entry["action"] == "pause"
    assert entry["by"] == f"web:{USER}@127.0.0.1"
    assert entry["reason"] == "deploying the new schema"
    page = client.get("/service/ticker?did=pause").body
    assert "deploying the new schema" in page and "pause: done" in page
    assert 'data-condition="paused"' in page


def test_without_a_login_changes_are_recorded_as_whoever_runs_it(web, store) -> None:
    client = web(web_basic_auth=None)
    assert client.get("/").status == 200
    answer = client.post_form("/service/ticker/control", "/service/ticker", action="stop",
                              reason="maintenance")
    assert answer.status == 303
    (entry,) = store.audit("ticker", 10)
    assert entry["by"] == actor()
    assert not store.read("ticker").running


def test_without_a_login_only_loopback_names_are_served(web, store) -> None:
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 is same-origin with
    itself, so it could read the CSRF token; the Host it sends gives it away."""
    client = web(web_basic_auth=None)
    for host in ("127.0.0.1", "localhost:5556", "[::1]:5556"):
        assert dataclasses.replace(client, host=host).get("/").status == 200, host
    rebound = dataclasses.replace(client, host="evil.example:5556", cookies={})
    answer = rebound.get("/")
    assert answer.status == 403 and "is not this machine" in answer.body
    assert rebound.request("POST", "/service/ticker/control",
                           {"action": "stop", "reason": "pwned"}).status == 403
    assert store.read("ticker").running and store.audit("ticker", 10) == []


def test_an_empty_password_is_no_login() -> None:
    with pytest.raises(ServiceConfigError, match=r"SVC_WEB_BASIC_AUTH='ops:'.*non-empty"):
        load_settings(web_basic_auth="ops:")


def test_unknown_service_is_404(web, store: StateStore) -> None:
    client = web()
    for path in ("/service/nope", "/fragment/service/nope", "/service/Not%20A%20Name"):
        assert client.get(path).status == 404, path
    answer = client.post_form("/service/nope/control", "/service/ticker", action="pause",
                              reason="who?")
    assert answer.status == 404
    assert "unknown service &#x27;nope&#x27;" in answer.body


def test_trigger_of_a_service_no_worker_registered_says_so(web) -> None:
    client = web()
    answer = client.post_form("/service/ticker/trigger", "/service/ticker")
    assert answer.status == 400
    assert "no worker has registered it" in answer.body and "nothing was sent" in answer.body


def test_redis_away_is_a_503_with_one_line(web) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = web(redis_url=url)
    for path in ("/", "/service/ticker"):
        page = client.get(path)
        assert page.status == 503, path
        banner = re.findall(r'<p class="banner" role="alert">(.*)</p>', page.body)
        assert len(banner) == 1 and "cannot reach Redis" in banner[0], page.body
        assert "Traceback" not in page.body
        # The page keeps asking, so it recovers by itself once Redis is back.
        assert 'id="live" data-src="/fragment/' in page.body
    fragment = client.get("/fragment/services")
    assert fragment.status == 503
    assert fragment.body.strip().count("\n") == 0
    assert "cannot reach Redis" in fragment.body


def _base_env() -> dict[str, str]:
    """The environment the command runs in: this one, minus any page or Redis settings."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("SVC_", "REDIS_URL"))}
