"""How ``svc`` reads at scale: names and settings from the index workers wrote (this machine's
``SVC_*.py`` imported only when it visibly holds more, or when no worker ever registered), the
listing drawn without rich's table layout but exactly as it drew it, ``--json`` with one line
per service, and the duration histogram only for services that ask for it. Real Redis on the
test's own prefix."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from rich.console import Console

from services.config import ServiceConfig
from services.errors import ServiceConfigError
from services.registry import Registry
from services.settings import load_settings
from services.state import StateStore
from tests.cluster import REPO
from tests.operator.conftest import Svc
from tests.operator.test_cli_list_width import REASON
from tests.operator.test_metrics import parse, value
from worker import cli_list
from worker.ops import Operator

CODE = ["ticker", "failing", "slow"]  # the svc fixture's services (SVC_SERVICES)

# Runs the command in a fresh interpreter and says which service modules it imported.
PROBE = """
import json, sys
from worker.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    loaded = sorted(m for m in sys.modules if ".SVC_" in m)
    sys.stderr.write("\\nloaded=" + json.dumps(loaded) + "\\n")
"""


def register(store: StateStore, *names: str, **settings: object) -> None:
    store.register_services({name: {**ServiceConfig(name, 5.0, 3, 1.0).as_dict(), **settings}
                             for name in names})


def probe(svc: Svc, *args: str) -> tuple[str, list[str]]:
    """``svc <args>`` in a fresh process: its output, and the SVC_ modules it imported."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO,
                          env={**os.environ, **svc.env}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stderr.rsplit("loaded=", 1)[1])
    return done.stdout, loaded


def test_list_and_status_read_the_index_without_importing_services(svc: Svc, store) -> None:
    register(store, *CODE, "remote_only")
    for command in (["list", "--json"], ["status", "--json"]):
        out, loaded = probe(svc, *command)
        assert loaded == [], command
        data = json.loads(out)
        assert data["listed_from"] == "index"
        assert {s["name"] for s in data["services"]} == {*CODE, "remote_only"}
        # Whether this machine's code has a service was not looked at: unknown, not False.
        assert {s["in_registry"] for s in data["services"]} == {None}
        assert data["registry_errors"] == []
    text, loaded = probe(svc, "list")
    assert loaded == [] and "remote_only" in text and "this machine's code" not in text


def test_without_any_registration_the_code_is_listed_and_it_says_so(svc: Svc) -> None:
    out, loaded = probe(svc, "list")
    assert {m.rsplit(".", 1)[1] for m in loaded} >= {"SVC_Ticker", "SVC_Failing", "SVC_Slow"}
    assert "no worker has registered a service yet" in out and "this machine's code" in out
    data = svc.json("list")
    assert data["listed_from"] == "code"
    assert {s["name"] for s in data["services"]} == set(CODE)
    assert all(s["in_registry"] is True for s in data["services"])


def test_code_nobody_registered_is_still_listed(svc: Svc, store) -> None:
    """SVC_SERVICES names slow, which no worker registered: the code is imported, and slow
    is listed with what is wrong with it, as before."""
    register(store, "ticker", "failing")
    out, loaded = probe(svc, "list", "--json")
    assert loaded, "the code should have been imported"
    slow = {s["name"]: s for s in json.loads(out)["services"]}["slow"]
    assert "no worker has registered this service yet" in slow["warnings"]
    # A name the index lacks is looked for in the code: found, with its closest names.
    assert svc("status", "slow").exit_code == 0
    result = svc("status", "slwo")
    assert result.exit_code == 2 and "did you mean slow?" in result.stderr


def test_index_settings_are_parsed_once_per_change(store, prefix: str, redis_url: str) -> None:
    register(store, "ticker")
    op = Operator(load_settings(redis_url=redis_url, key_prefix=prefix))
    first = op.registered_config("ticker")
    op.refresh()
    assert op.registered_config("ticker") is first  # same text: the parsed settings kept
    register(store, "ticker", interval_seconds=7.0)
    op.refresh()
    changed = op.registered_config("ticker")
    assert changed is not None and changed.interval_seconds == 7.0
    op.close()


@pytest.mark.parametrize("width", [40, 80, 120, None])
@pytest.mark.parametrize("color", [False, True])
def test_the_listing_is_drawn_as_rich_draws_the_table(store, prefix: str, redis_url: str,
                                                      width: int | None, color: bool) -> None:
    register(store, *CODE, "wide-名前")  # a name of double-width characters
    store.control("failing", "stop", who="test", reason=REASON + " 止まった")
    store.control("ticker", "pause", who="test")
    op = Operator(load_settings(redis_url=redis_url, key_prefix=prefix))
    _, statuses = op.statuses(op.known())
    op.close()
    placed = cli_list.layout(statuses, width, cli_list.LIST_COLUMNS)
    drawn = []
    for renderable in (cli_list.service_table(placed), cli_list.ServiceRows(placed)):
        out = io.StringIO()
        Console(file=out, width=width or 400, force_terminal=color,
                color_system="truecolor" if color else None, soft_wrap=False).print(renderable)
        drawn.append(out.getvalue())
    assert drawn[0] == drawn[1]
    assert "…" in drawn[1] or width is None


def test_json_lists_one_service_per_line(svc: Svc, store) -> None:
    register(store, *CODE)
    result = svc("list", "--json")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith('    {"')]
    assert len(rows) == len(CODE)
    assert [json.loads(row.rstrip(","))["name"] for row in rows] == sorted(CODE)
    assert json.loads(result.stdout)["now"] > 0


def test_the_duration_histogram_is_opt_in(svc: Svc, store) -> None:
    register(store, "ticker", duration_histogram=True)
    register(store, "failing", "slow")
    store.client.hset(store.keys.state("slow"), mapping={
        "duration_ms_sum": 1500, "duration_le_1000": 2, "duration_le_inf": 1})
    result = svc("metrics", "--once")
    assert result.exit_code == 0, result.output
    samples = parse(result.stdout)
    assert value(samples, "svc_run_duration_seconds_bucket", "ticker", le="+Inf") == 0
    assert value(samples, "svc_run_duration_seconds_bucket", "slow", le="+Inf") is None
    assert value(samples, "svc_run_duration_seconds_count", "slow") is None
    # Every service has the mean's pair.
    assert value(samples, "svc_run_seconds_sum", "slow") == 1.5
    assert value(samples, "svc_run_seconds_count", "slow") == 3
    assert value(samples, "svc_run_seconds_count", "ticker") == 0
    per_service = {name for name, labels in samples if dict(labels).get("service") == "slow"}
    assert not any(name.endswith("_bucket") for name in per_service)


def test_duration_histogram_from_the_class_and_the_environment(monkeypatch) -> None:
    found = Registry.discover(["tests.svc_celery"], only=["ticker"]).specs["ticker"].config
    assert found.duration_histogram is False
    on = Registry.discover(["tests.svc_celery"], environ={"SVC_TICKER_DURATION_HISTOGRAM": "on"},
                           only=["ticker"])
    assert on.specs["ticker"].config.duration_histogram is True
    bad = Registry.discover(["tests.svc_celery"], environ={
        "SVC_TICKER_DURATION_HISTOGRAM": "maybe"}, only=["ticker"])
    assert "ticker" not in bad.specs
    assert any("SVC_TICKER_DURATION_HISTOGRAM" in e and "got 'maybe'" in e for e in bad.errors)
    from tests.svc_celery.SVC_Ticker import Ticker

    monkeypatch.setattr(Ticker, "duration_histogram", "yes", raising=False)
    with pytest.raises(ServiceConfigError, match="must be True or False"):
        from services.config import resolve_config

        resolve_config(Ticker, environ={})


def test_sample_values_are_written_as_prometheus_client_writes_them() -> None:
    from prometheus_client.utils import floatToGoString

    from worker.metrics_health import number

    values = [True, False, 0, 3, -7, 999_999, 1_000_000, 123_456_789, 10**16, 0.0, 1.0, -2.0,
              999_999.0, 1e6, 1.5, 1_795_788_830.097, 2.5e-7, 1e20, float("inf"),
              float("-inf"), float("nan")]
    assert [number(v) for v in values] == [floatToGoString(v) for v in values]


def test_a_long_lived_reader_resolves_only_the_schedules_that_changed(
        store, prefix: str, redis_url: str) -> None:
    register(store, "ticker", "slow")
    op = Operator(load_settings(redis_url=redis_url, key_prefix=prefix))

    def schedules() -> dict[str, Any]:
        op.refresh()  # as svc metrics does before each scrape
        return {status.name: status.schedule for status in op.statuses(op.known())[1]}

    first = schedules()
    again = schedules()
    assert again["ticker"].schedule is first["ticker"].schedule  # resolved once, kept
    store.client.hset(store.keys.schedules(), "ticker", json.dumps({"every_seconds": 30.0}))
    changed = schedules()
    assert changed["ticker"].text() == "every 30s" and changed["ticker"].source == "live"
    assert changed["slow"].schedule is first["slow"].schedule
    register(store, "slow", interval_seconds=7.0)  # a worker registers other settings
    assert schedules()["slow"].text() == "every 7s"
    op.close()


def test_the_metrics_server_gzips_for_a_scraper_that_asks(store, prefix: str,
                                                         redis_url: str) -> None:
    import gzip
    import urllib.error
    import urllib.request

    from worker.metrics import serve

    register(store, *CODE)
    op = Operator(load_settings(redis_url=redis_url, key_prefix=prefix))
    server = serve(op, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as plain:
            assert plain.headers.get("Content-Encoding") is None
            text = plain.read().decode()
        asked = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(asked, timeout=10) as zipped:
            assert zipped.headers["Content-Encoding"] == "gzip"
            assert zipped.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            unzipped = gzip.decompress(zipped.read()).decode()
        # The same scrape either way (but for the moments in it).
        assert value(parse(unzipped), "svc_running", "ticker") == 1
        assert {key for key in parse(unzipped)} == {key for key in parse(text)}
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url.replace("/metrics", "/nothing"), timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        op.close()
