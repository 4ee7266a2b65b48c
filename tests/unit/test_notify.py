"""The webhook: retried with backoff until the endpoint takes it, bounded by its timeout, and
never in the caller's way (a hanging endpoint does not hold up ``observe``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.health import STOPPED, Health, Problem
from services.notify import Notifier
from services.settings import load_settings
from services.state import StateStore
from tests.waiting import wait_for

STOPPED_HEALTH = Health((Problem(STOPPED, "stopped by ana@ops: disk full"),))


class Endpoint(ThreadingHTTPServer):
    """Answers each POST with the next status in ``answers`` (200 once they run out), or
    hangs until ``release`` is set when the answer is 0."""

    def __init__(self, answers: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.answers = answers
        self.bodies: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.hanging = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class Handler(BaseHTTPRequestHandler):
    server: Endpoint

    def do_POST(self) -> None:
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        status = self.server.answers.pop(0) if self.server.answers else 200
        if status == 0:
            self.server.hanging.set()
            self.server.release.wait(30)
            status = 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    server = Endpoint(list(request.param))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def notifier(store: StateStore, url: str, **settings: Any) -> Notifier:
    return Notifier(store, load_settings(alert_webhook_url=url, alert_after_seconds=0,
                                         **settings))


@pytest.mark.parametrize("endpoint", [[500, 503]], indirect=True)
def test_a_failing_endpoint_is_retried_until_it_takes_the_notification(
        store: StateStore, endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    sender = notifier(store, endpoint.url)
    assert sender.observe("ticker", STOPPED_HEALTH) is not None
    wait_for(lambda: len(endpoint.bodies) == 3, 20, "two failures, then the third try")
    sender.close()
    assert len(endpoint.bodies) == 3  # nothing after the one that was taken
    body = endpoint.bodies[-1]
    assert body["text"] == "service ticker is unhealthy: stopped: stopped by ana@ops: disk full"
    assert (body["service"], body["status"], body["previous"]) == ("ticker", "stopped", "ok")
    assert "gave up" not in caplog.text and "giving up" not in caplog.text


@pytest.mark.parametrize("endpoint", [[500, 500, 500]], indirect=True)
def test_the_webhook_gives_up_after_its_attempts_and_says_so(
        store: StateStore, endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    sender = notifier(store, endpoint.url, alert_webhook_attempts=2)
    sender.observe("ticker", STOPPED_HEALTH)
    wait_for(lambda: "giving up" in caplog.text, 20, "the give-up line")
    sender.close()
    assert len(endpoint.bodies) == 2
    assert "failed 2 times, giving up on: service ticker is unhealthy" in caplog.text


@pytest.mark.parametrize("endpoint", [[0]], indirect=True)
def test_a_hanging_endpoint_never_holds_up_the_caller(store: StateStore,
                                                      endpoint: Endpoint) -> None:
    sender = notifier(store, endpoint.url, alert_webhook_timeout_seconds=30)
    assert sender.observe("ticker", STOPPED_HEALTH) is not None
    # observe() returned while the endpoint still holds the request: the POST is another
    # thread's, and the next transition is recorded at once as well.
    assert endpoint.hanging.wait(10)
    assert sender.observe("ticker", Health()) is not None
    endpoint.release.set()
    wait_for(lambda: len(endpoint.bodies) == 2, 20, "the recovery to be sent after it")
    sender.close()
    assert [b["status"] for b in endpoint.bodies] == ["stopped", "ok"]


@pytest.mark.parametrize("endpoint", [[0]], indirect=True)
def test_each_attempt_is_bounded_by_its_timeout(store: StateStore, endpoint: Endpoint,
                                                caplog: pytest.LogCaptureFixture) -> None:
    sender = notifier(store, endpoint.url, alert_webhook_timeout_seconds=0.5,
                      alert_webhook_attempts=1)
    sender.observe("ticker", STOPPED_HEALTH)
    wait_for(lambda: "giving up" in caplog.text, 20, "the attempt to time out")
    assert "timed out" in caplog.text
    endpoint.release.set()
    sender.close()
