"""Malformed messages on the broker, published straight onto a real worker's queue: each is
rejected once, logged once with its body truncated, and removed; the worker lives on and
keeps running its service."""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tests.cluster import Cluster
from tests.waiting import wait_for

pytestmark = pytest.mark.celery

OVERSIZED_BYTES = 200_000
RECORD_START = re.compile(r"^(?=\[?\d{4}-\d\d-\d\d \d\d:)", re.MULTILINE)


@dataclass
class Poison:
    """One malformed message; ``marker`` is in its body, so its log lines can be counted."""

    why: str
    body: Any
    marker: str = field(default_factory=lambda: f"poison-{uuid.uuid4().hex[:12]}")
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None  # None: serialized as JSON


def tick_headers(task: Any = "svc.ticker") -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None,
            "group": None, "retries": 0, "eta": None, "expires": None, "shadow": None,
            "timelimit": [None, None], "argsrepr": "()", "kwargsrepr": "{}",
            "origin": "poison@pytest", "ignore_result": True}


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def poisons() -> list[Poison]:
    found = [
        Poison("a string body", "{marker} is not a triple"),
        Poison("a two-item body", [["{marker}"], {}]),
        Poison("positional arguments", [["{marker}"], {"kind": "tick"}, EMBED]),
        Poison("kwargs not a mapping", [[], ["{marker}"], EMBED]),
        Poison("an unknown kwarg", [[], {"kind": "tick", "{marker}": 1}, EMBED]),
        Poison("an unknown kind", [[], {"kind": "{marker}"}, EMBED]),
        # Celery cuts a logged body at a space: the marker comes first, then the bulk.
        Poison("an oversized field", [[], {"kind": "{marker} " + "x" * OVERSIZED_BYTES}, EMBED]),
        Poison("a hybrid (protocol 1) body", {"args": ["{marker}"], "kwargs": {}}),
        Poison("a body that is not JSON", "{marker} [[], {", content_type="application/json"),
        Poison("raw bytes", "{marker} raw", content_type="application/data"),
        Poison("a disallowed content type", "{marker} pickled?",
               content_type="application/x-python-serialize"),
        Poison("no task id", [[], {"kind": "{marker}"}, EMBED], headers={"id": None}),
        Poison("an odd time limit", [[], {"kind": "{marker}"}, EMBED],
               headers={"timelimit": "soon"}),
        Poison("an odd embed", [[], {"kind": "tick"}, {"callbacks": "{marker}"}]),
        Poison("a task name that is a list", [[], {"kind": "{marker}"}, EMBED],
               headers={"task": ["svc.ticker"]}),
    ]
    for poison in found:
        poison.body = _mark(poison.body, poison.marker)
        poison.headers = {**tick_headers(), **poison.headers}
    return found


def _mark(value: Any, marker: str) -> Any:
    """``value`` with every ``{marker}`` replaced, in strings, keys and nested values."""
    if isinstance(value, str):
        return value.replace("{marker}", marker)
    if isinstance(value, list):
        return [_mark(item, marker) for item in value]
    if isinstance(value, dict):
        return {_mark(key, marker): _mark(item, marker) for key, item in value.items()}
    return value


def publish(redis_url: str, prefix: str, poison: Poison) -> None:
    exchange = Exchange("celery", type="direct")
    queue = Queue("celery", exchange, routing_key="celery")
    options = {"global_keyprefix": f"{prefix}-broker:"}
    extra: dict[str, Any] = {"serializer": "json"}
    if poison.content_type is not None:
        extra = {"content_type": poison.content_type, "content_encoding": "utf-8"}
    with Connection(redis_url, transport_options=options) as conn:
        conn.Producer().publish(poison.body, exchange=exchange, routing_key="celery",
                                declare=[queue], headers=poison.headers, **extra)


def left_on_broker(client: redis.Redis, prefix: str, markers: list[str]) -> list[str]:
    """Markers of poison messages still in the queue or taken and not acknowledged."""
    raw = client.lrange(f"{prefix}-broker:celery", 0, -1)
    raw += client.hvals(f"{prefix}-broker:unacked")
    return [marker for marker in markers for message in raw if marker in _body_text(message)]


def _body_text(message: str) -> str:
    body = json.loads(message)
    if isinstance(body, list):  # an unacked entry: [message, exchange, routing key]
        body = body[0]
    text = body.get("body", "")
    if body.get("properties", {}).get("body_encoding") == "base64":
        text = base64.b64decode(text).decode(errors="replace")
    return str(text)


def test_malformed_messages_are_rejected_once_and_the_worker_keeps_serving(
        tmp_path: Path, prefix: str, redis_url: str, redis_client: redis.Redis) -> None:
    batch = poisons()
    markers = [poison.marker for poison in batch]
    with Cluster(tmp_path, prefix, redis_url, ["ticker"],
                 env={"SVC_TICKER_INTERVAL_SECONDS": "0.3"}) as c:
        worker = c.worker("w1")
        c.beat()
        store = c.store()
        wait_for(lambda: len(store.history("ticker")) >= 2, 30, f"first runs\n{c.logs()}")
        for poison in batch:
            publish(redis_url, prefix, poison)
        wait_for(lambda: worker.popen.poll() is not None
                 or worker.output().count("Received invalid task message") >= len(batch),
                 30, f"every poison message rejected\n{c.logs()}")
        runs_after_poison = store.read("ticker").runs
        wait_for(lambda: store.read("ticker").runs >= runs_after_poison + 3, 20,
                 f"ticks after the poison messages\n{c.logs()}")
        wait_for(lambda: not left_on_broker(redis_client, prefix, markers), 10,
                 f"the broker to hold no poison message\n{c.logs()}")
        alive = worker.popen.poll() is None
        log = worker.output()

    assert alive, log[-5000:]
    assert "Unrecoverable error" not in log, log[-5000:]
    # Each rejected once, and logged once: its marker is in exactly one log record.
    records = log_records(log)
    rejections = [r for r in records if "Received invalid task message" in r]
    assert len(rejections) == len(batch), rejections
    for poison in batch:
        found = [r for r in records if poison.marker in r]
        assert len(found) == 1, (poison.why, found)
        assert found[0] in rejections, (poison.why, found)
    # The oversized body was logged truncated, not 200 KB of it.
    assert max(len(line) for line in log.splitlines()) < 4096
    assert len(log) < OVERSIZED_BYTES


def log_records(log: str) -> list[str]:
    """The worker's log split into records: each starts with a "<date> <time>" line, and the
    lines after it (a message over several lines, a traceback) belong to it."""
    return [record for record in RECORD_START.split(log) if record.strip()]
