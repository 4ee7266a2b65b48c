"""Flower, as the test starts it beside a real worker and Beat, shows each service as its own
task (``svc.<name>``): headless Chromium finds ``svc.ticker`` on the tasks page, behind basic
auth, and saves a screenshot. Needs Debian's chromium and chromedriver
(``tests/browser/ensure_chromium.sh`` installs them; ``make test`` runs it)."""

from __future__ import annotations

import base64
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.waiting import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
USER, PASSWORD = "ops", "flower-test-secret"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,900")

pytestmark = pytest.mark.celery


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return 0


def http_body(url: str, auth: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": auth})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return ""


def chrome(profile: Path, log: Path):  # -> selenium WebDriver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")  # a fresh profile every run
    return webdriver.Chrome(options=options,
                            service=Service(str(CHROMEDRIVER), log_output=str(log)))


def test_flower_shows_each_service_as_its_own_task(
        tmp_path: Path, prefix: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, (f"{', '.join(missing)} missing: run tests/browser/ensure_chromium.sh "
                         "(make test does)")
    # Selenium must use the system chromedriver and never try to download one.
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    with Cluster(tmp_path, prefix, redis_url, ["ticker", "failing"]) as cluster:
        flower = cluster.spawn("flower", ["flower", "--address=127.0.0.1", f"--port={port}"],
                               env={"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})
        wait_for(lambda: http_status(f"{base}/healthcheck", auth) == 200
                 or flower.popen.poll() is not None, 30, "Flower to answer")
        assert flower.popen.poll() is None, flower.output()[-3000:]
        assert http_status(f"{base}/tasks") == 401, "basic auth from the environment is off"
        assert http_status(f"{base}/tasks", auth) == 200

        cluster.worker("w1")
        cluster.beat()
        store = cluster.store()
        wait_for(lambda: store.read("ticker").runs >= 2, 30, "ticker to run")
        # Task events are opt-in: Flower turns them on in the workers it sees (every 5 s), so
        # its first tasks come a few seconds after the worker's first runs.
        wait_for(lambda: "svc.ticker" in http_body(f"{base}/api/tasks", auth), 30,
                 "Flower to receive svc.ticker's task events")

        driver = chrome(tmp_path / "chrome-profile", tmp_path / "chromedriver.log")
        try:
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                                   {"headers": {"Authorization": auth}})
            driver.get(f"{base}/tasks")

            def ticker_rows() -> list:
                from selenium.webdriver.common.by import By

                return driver.find_elements(
                    By.XPATH, "//table//td[contains(normalize-space(.), 'svc.ticker')]")

            rows = wait_for(ticker_rows, 30, "svc.ticker on Flower's tasks page")
            assert rows[0].is_displayed()
            assert "svc.failing" in driver.page_source  # each service is its own task
            shot = tmp_path / "flower-tasks.png"
            assert driver.save_screenshot(str(shot))
        finally:
            driver.quit()
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
