"""The services page (``svc web``) in headless Chromium, beside two real workers and Beat: the
list shows the ticking service running and healthy and both workers alive; on the service's
page an operator types a reason and clicks pause; then, with no reload, the list shows it
paused, ``svc``'s own view says paused, the audit table shows the reason, and both workers
refuse its ticks as paused. Needs Debian's chromium and chromedriver
(``tests/browser/ensure_chromium.sh``; ``make test`` runs it)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from services.settings import Settings
from tests.browser.test_flower import CHROMEDRIVER, CHROMIUM, chrome, free_port, http_status
from tests.cluster import Cluster, Proc
from tests.operator.test_web import svc_web_argv
from tests.waiting import wait_for
from worker.ops import Operator

USER, PASSWORD = "ops", "page-test-secret"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
REASON = "deploying schema 42 <b>now</b>"
# Every service row as the page's data attributes say: name -> (condition, health).
ROWS_JS = """return Object.fromEntries([...document.querySelectorAll('tr[data-service]')]
    .map(r => [r.dataset.service, [r.dataset.condition, r.dataset.health]]));"""
WORKERS_JS = """return [...document.querySelectorAll('table.processes tbody tr')]
    .filter(r => r.cells[0].textContent.trim() === 'worker').length;"""

pytestmark = pytest.mark.celery


def start_web(cluster: Cluster, port: int) -> subprocess.Popen[bytes]:
    """``svc web`` with a login on ``port``, on the cluster's prefix and services."""
    log = cluster.workdir / "web.log"
    env = {**cluster.base_env(), "SVC_WEB_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    with log.open("ab") as out:
        proc = subprocess.Popen([*svc_web_argv(), "--port", str(port)], cwd=cluster.workdir,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    # Stopped with the cluster's processes, whatever happens.
    cluster.procs.append(Proc("web", proc, log))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_status(f"{base}/", AUTH) == 200 or proc.poll() is not None, 30,
             "svc web to answer")
    assert proc.poll() is None, log.read_text()
    return proc


def authorize(driver) -> None:
    """Send the login with every request of the current tab (as test_flower does)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": AUTH}})


def test_pause_from_the_page_reaches_every_worker_and_the_audit(
        tmp_path: Path, prefix: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, (f"{', '.join(missing)} missing: run tests/browser/ensure_chromium.sh "
                         "(make test does)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # the system chromedriver; never a download
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    with Cluster(tmp_path, prefix, redis_url, ["ticker"],
                 env={"SVC_HEARTBEAT_SECONDS": "0.5"}) as cluster:
        workers = [cluster.worker("w1"), cluster.worker("w2")]
        cluster.beat()
        store = cluster.store()
        wait_for(lambda: store.read("ticker").runs >= 2, 30, "ticker to run")
        start_web(cluster, port)
        assert http_status(f"{base}/") == 401, "the page answers without its login"

        driver = chrome(tmp_path / "chrome-profile", tmp_path / "chromedriver.log")
        try:
            authorize(driver)
            # The list, in a tab of its own that is never reloaded.
            driver.get(f"{base}/")
            listing = driver.current_window_handle
            wait_for(lambda: driver.execute_script(ROWS_JS).get("ticker") == ["running", "ok"],
                     30, "ticker running and ok on the list")
            wait_for(lambda: driver.execute_script(WORKERS_JS) == 2, 30,
                     "both workers on the list")
            driver.execute_script("window.notReloaded = true;")

            # The service's page, from its link, in another tab: a reason, then pause.
            driver.switch_to.new_window("tab")
            authorize(driver)  # the header is set per tab
            driver.get(f"{base}/")
            driver.find_element(By.LINK_TEXT, "ticker").click()
            wait_for(lambda: driver.current_url == f"{base}/service/ticker", 10,
                     "the service's page")
            driver.find_element(By.NAME, "reason").send_keys(REASON)
            driver.find_element(By.CSS_SELECTOR, "button[value=pause]").click()
            wait_for(lambda: driver.current_url.endswith("/service/ticker?did=pause"), 10,
                     "the page after pause")

            def audited() -> bool:
                cells = driver.find_elements(By.CSS_SELECTOR, "table.audit tbody td")
                return [c.text for c in cells[1:4]] == ["pause", f"web:{USER}@127.0.0.1",
                                                        REASON]

            wait_for(audited, 10, "the pause and its reason in the page's audit table")

            settings = Settings(redis_url=redis_url, key_prefix=prefix,
                                packages=cluster.packages, services="ticker")
            op = Operator(settings)
            try:
                _, (status,) = op.statuses(["ticker"])
                assert status.condition == "paused"  # what svc status says
            finally:
                op.close()

            driver.switch_to.window(listing)
            wait_for(lambda: driver.execute_script(ROWS_JS).get("ticker") == [
                "paused", "paused"], 15, "the list to show ticker paused, by itself")
            assert driver.execute_script("return window.notReloaded === true;")
            shot = tmp_path / "services-page.png"
            assert driver.save_screenshot(str(shot))
        finally:
            driver.quit()

        for worker in workers:
            wait_for(lambda w=worker: "not running: paused" in w.output(), 30,
                     f"{worker.name} to refuse ticker's ticks as paused")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
