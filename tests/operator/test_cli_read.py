"""``svc list``, ``status``, ``history`` and the errors every command shares, against real
Redis and (where a state must be produced by a run) a real worker and Beat."""

from __future__ import annotations

import json
import socket

import pytest

from services.keys import Keys
from services.registry import Registry
from tests.operator.conftest import Svc
from tests.waiting import wait_for
from worker.ops import actor

pytestmark = pytest.mark.celery


def test_list_status_and_history_of_a_live_cluster(make_cluster, svc_for) -> None:
    cluster = make_cluster(["ticker", "failing"])
    cluster.worker("w1")
    cluster.beat()
    svc: Svc = svc_for(cluster)
    store = cluster.store()
    wait_for(lambda: store.read("ticker").runs >= 3, 30, "ticker to run three times")
    wait_for(lambda: not store.read("failing").running, 30, "failing to stop at max_failures")

    listing = svc("list")
    assert listing.exit_code == 0, listing.output
    rows = {line.split()[0].strip("│┃"): line for line in listing.stdout.splitlines()
            if line.strip("│┃ ").startswith(("ticker", "failing"))}
    assert set(rows) == {"ticker", "failing"}, listing.stdout
    assert "running" in rows["ticker"] and "0/3" in rows["ticker"] and "0.5s" in rows["ticker"]
    assert "stopped: failed 4 times in a row" in rows["failing"] and "4/4" in rows["failing"]

    data = svc.json("list")
    by_name = {s["name"]: s for s in data["services"]}
    ticker, failing = by_name["ticker"], by_name["failing"]
    assert ticker["condition"] == "running"
    assert ticker["interval_seconds"] == 0.5 and ticker["max_failures"] == 3
    assert ticker["last_success_at"] and ticker["runs"] >= 3 and ticker["seen_by_worker"]
    # The next tick is Beat's due time (read from the due set), within one interval.
    assert ticker["schedule"]["text"] == "every 0.5s" and ticker["schedule"]["source"] == "code"
    assert data["now"] - 1 < ticker["next_tick_at"] <= data["now"] + 0.5 + 0.1
    assert ticker["last_run"]["outcome"] == "ok"
    assert failing["condition"] == "stopped"
    assert failing["failures"] == 4 and failing["max_failures"] == 4
    assert "max_failures=4" in failing["stop_reason"]
    assert "upstream said no" in failing["last_error"]
    assert data["registry_errors"] == []

    detail = svc("status", "failing")
    assert detail.exit_code == 0, detail.output
    for text in ("stopped: failed 4 times", "4/4", "upstream said no", "recent runs", "error"):
        assert text in detail.stdout, detail.stdout
    one = svc.json("status", "failing")
    assert one["service"]["condition"] == "stopped"
    assert [run["outcome"] for run in one["history"]] == ["error"] * 4

    every = svc("status")
    assert every.exit_code == 0
    for text in ("ticker", "failing", "lease held by"):
        assert text in every.stdout

    runs = svc.json("history", "ticker", "-n", "2")
    assert len(runs) == 2 and all(r["outcome"] == "ok" for r in runs)
    assert all(r["finished_at"] >= r["started_at"] and r["duration"] >= 0 for r in runs)
    assert runs[0]["started_at"] >= runs[1]["started_at"]  # newest first
    table = svc("history", "failing", "-n", "3")
    assert table.exit_code == 0
    assert table.stdout.count("upstream said no") == 3, table.stdout

    # The same through the installed console script, in its own process.
    proc = svc.run("list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {s["name"] for s in json.loads(proc.stdout)["services"]} == {"ticker", "failing"}

    # reset undoes the stop that max_failures caused; the worker runs it again.
    reset = svc.json("reset", "failing", "--reason", "upstream fixed")
    assert reset["changes"][0]["action"] == "reset"
    assert store.read("failing").running
    wait_for(lambda: store.read("failing").runs > 4, 20, "failing to run again after reset")
    assert store.audit("failing", 1)[0] | {"at": 0} == {
        "action": "reset", "by": actor(), "reason": "upstream fixed", "at": 0}


def test_unknown_and_malformed_names_exit_2_with_suggestions(svc: Svc, store) -> None:
    result = svc("status", "tikcer")
    assert result.exit_code == 2
    assert "unknown service 'tikcer'; did you mean ticker?" in result.stderr
    assert "Traceback" not in result.output

    # Every name is checked before anything changes.
    result = svc("pause", "ticker", "flaing")
    assert result.exit_code == 2 and "did you mean failing?" in result.stderr
    assert not store.read("ticker").paused
    assert store.audit("ticker") == []

    result = svc("pause", "Ticker")
    assert result.exit_code == 2
    assert "service name 'Ticker' is invalid" in result.stderr and "ticker" in result.stderr

    result = svc("history", "a:b")
    assert result.exit_code == 2 and "is invalid" in result.stderr

    assert svc("pause").exit_code == 2  # neither names nor --all
    assert svc("pause", "ticker", "--all").exit_code == 2

    # Names a worker registered count as known, even without their code here.
    store.register_services({"remote_only": {
        "name": "remote_only", "interval_seconds": 5.0, "max_failures": 2,
        "retry_delay_seconds": 1.0, "max_concurrent_runs": 1, "queue": None}})
    result = svc("status", "remote_onyl")
    assert result.exit_code == 2 and "did you mean remote_only?" in result.stderr
    remote = svc.json("status", "remote_only")["service"]
    assert remote["interval_seconds"] == 5.0 and remote["in_registry"] is False

    proc = svc.run("pause", "tikcer")
    assert proc.returncode == 2 and "did you mean ticker?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_redis_is_one_line_without_the_password(svc: Svc, store) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    for command in (["list"], ["status", "ticker"], ["pause", "ticker"], ["history", "ticker"]):
        proc = svc.run(*command, REDIS_URL=url)
        assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("svc: cannot reach Redis at redis://:***@127.0.0.1:")
        assert "hunter2" not in proc.stderr + proc.stdout
    result = svc("list", REDIS_URL=url)
    assert result.exit_code == 1 and "cannot reach Redis" in result.stderr

    # Redis answers but the broker does not: svc trigger says which one, in one line. (A
    # worker registered ticker: an unregistered one is refused before the broker is tried.)
    store.register_services(Registry.discover(["tests.svc_celery"], only=["ticker"]).configs())
    proc = svc.run("trigger", "ticker", CELERY_BROKER_URL=url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip()] and "cannot reach the broker at redis://:***@" in proc.stderr
    assert "hunter2" not in proc.stderr


def test_corrupt_fields_and_registry_errors_are_shown(svc: Svc, store, prefix: str) -> None:
    keys = Keys(prefix)
    store.client.hset(keys.state("ticker"), mapping={"failures": "many"})
    store.client.hset(keys.state("failing"), mapping={"paused": "banana"})
    result = svc("list", SVC_PACKAGES="tests.svc_celery,tests.operator.svc_broken")
    assert result.exit_code == 0, result.output
    assert "warning: ticker: unreadable field failures=many" in result.stdout
    assert "corrupt flag: nothing runs (paused=banana)" in result.stdout
    assert "not loaded:" in result.stdout and "broken on purpose" in result.stdout

    data = svc.json("list", SVC_PACKAGES="tests.svc_celery,tests.operator.svc_broken")
    by_name = {s["name"]: s for s in data["services"]}
    assert by_name["ticker"]["corrupt"] == ["failures=many"]
    assert by_name["failing"]["condition"] == "corrupt"
    assert any("broken on purpose" in e for e in data["registry_errors"])

    detail = svc("status", "failing")
    assert "unreadable field paused=banana" in detail.stdout


def test_migrate_upgrades_the_database_and_fails_in_one_line(svc: Svc, tmp_path) -> None:
    from services.database import migrate

    url = f"sqlite:///{tmp_path / 'migrate.db'}"
    result = svc("migrate", DATABASE_URL=url)
    assert result.exit_code == 0, result.output
    assert migrate.current(url) == migrate.head()
    assert f"is at revision {migrate.head()}" in result.stdout

    proc = svc.run("migrate", DATABASE_URL="postgresql+psycopg://u:pw@127.0.0.1:1/none")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("svc: ") and "Traceback" not in proc.stderr
    assert ":pw@" not in proc.stderr
