"""Every log line of a run names the service and the run, in text and (SVC_LOG_JSON) JSON,
whichever logger wrote it: the service's own, or the framework's."""

from __future__ import annotations

import json
import re

import pytest

from tests.waiting import wait_for

pytestmark = pytest.mark.celery
PACKAGES = "tests.svc_celery,tests.operator.svc_operator"


def run_ids(store, name: str) -> set[str]:
    return {run["run_id"] for run in store.history(name, 50)}


def test_json_logs_carry_service_and_run_id(make_cluster) -> None:
    cluster = make_cluster(["chatty", "failing"], packages=PACKAGES,
                           env={"SVC_LOG_JSON": "1"})
    worker = cluster.worker("w1")
    cluster.beat()
    store = cluster.store()
    wait_for(lambda: store.read("chatty").runs >= 2 and store.read("failing").failures >= 1,
             30, "chatty to run and failing to fail")

    def records() -> list[dict]:
        found = []
        for line in worker.output().splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found

    hello = wait_for(lambda: [r for r in records() if r.get("message") == "chatty says hello"],
                     20, "chatty's own log lines in JSON")
    for record in hello:
        assert record["service"] == "chatty"
        assert record["name"] == "tests.operator.svc_operator.SVC_Chatty"
        assert {"time", "level"} <= set(record)
    assert {r["run_id"] for r in hello} <= run_ids(store, "chatty")

    failed = wait_for(lambda: [r for r in records()
                               if str(r.get("message", "")).startswith("update() failed")],
                      20, "the framework's failure line in JSON")
    assert all(r["service"] == "failing" and r["level"] == "ERROR" for r in failed)
    assert {r["run_id"] for r in failed} <= run_ids(store, "failing")


def test_text_logs_carry_service_and_run_id(make_cluster) -> None:
    cluster = make_cluster(["chatty"], packages=PACKAGES)
    worker = cluster.worker("w1")
    cluster.beat()
    store = cluster.store()
    wait_for(lambda: store.read("chatty").runs >= 2, 30, "chatty to run")
    line = re.compile(r"WARNING \[chatty ([0-9a-f]{12})\] tests\.operator\.svc_operator\."
                      r"SVC_Chatty: chatty says hello")
    found = wait_for(lambda: line.findall(worker.output()), 20, "chatty's text log lines")
    assert set(found) <= run_ids(store, "chatty")
    # Celery's own result line for the task names the service and run too.
    done = re.compile(r"INFO \[chatty ([0-9a-f]{12})\] celery\.app\.trace: Task svc\.chatty\[.*"
                      r"succeeded")
    finished = wait_for(lambda: done.findall(worker.output()), 20, "Celery's succeeded lines")
    assert set(finished) <= run_ids(store, "chatty")
