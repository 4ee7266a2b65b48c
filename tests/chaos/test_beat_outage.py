"""Beat against a broker that goes away: a redis-server of the test's own as the broker
(``CELERY_BROKER_URL``; service state and due times stay on the shared Redis), SIGKILLed while
Beat sends ticks for three services, then started again on the same port. Beat logs the outage
once and its end once (no traceback per tick), keeps the refused ticks due meanwhile, and once
the broker is back sends them by the catch-up policy (``latest``: one per service, no burst)
and then on schedule."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from services.registry import Registry
from tests.cluster import SENT_TICK, Cluster, tick_slot
from tests.servers import OwnRedis
from tests.waiting import wait_for

pytestmark = pytest.mark.celery

OUTAGE_SECONDS = 3.0  # several slots of every service missed


def queued_ticks(client: redis.Redis, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """(task id, kwargs) of the messages waiting in a broker queue, oldest first."""
    found = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # kombu pushes on the left
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["id"], kwargs))
    return found


def test_beat_logs_a_broker_outage_once_and_sends_again_after_it(
        tmp_path: Path, prefix: str, redis_url: str, own_redis: OwnRedis) -> None:
    services = ["ticker", "lifecycle", "failing"]
    broker = own_redis  # no persistence, so it restarts empty
    with Cluster(tmp_path, prefix, redis_url, services,
                 env={"CELERY_BROKER_URL": broker.url}) as c:
        store = c.store()
        # No worker, so that every tick sent stays in the queue: register the services as a
        # worker does when it starts (Beat schedules what workers registered).
        store.register_services(
            Registry.discover(packages=[c.packages], environ={}, only=services).configs())
        client = redis.Redis.from_url(broker.url, decode_responses=True)
        queue = f"{prefix}-broker:celery"
        beat = c.beat()
        wait_for(lambda: client.llen(queue) >= 3, 20, f"Beat's first ticks\n{c.logs()}")

        broker.kill()
        killed_at = store.now()
        mark = len(beat.output())
        wait_for(lambda: "unavailable" in beat.output()[mark:], 20,
                 f"the outage logged\n{c.logs()}")
        wait_for(lambda: store.now() >= killed_at + OUTAGE_SECONDS, 20, "the outage to last")
        during = beat.output()[mark:]

        restarting_ms = store.now() * 1000  # every slot due before this one was missed
        broker.start()  # the same port
        wait_for(lambda: {tick.split("@")[0] for tick, _ in queued_ticks(client, queue)}
                 == {f"tick:{name}" for name in services}, 20,
                 f"ticks of every service after the restart\n{c.logs()}")
        wait_for(lambda: "is back after" in beat.output()[mark:], 10,
                 f"the end of the outage logged\n{c.logs()}")
        after = beat.output()[mark:]
        alive = beat.popen.poll() is None
        queued = queued_ticks(client, queue)

    assert alive, after[-3000:]
    # One line when it started, one when it ended (a reminder only after 30 s), no traceback.
    assert "Traceback" not in after, after[-5000:]
    outage_lines = [line for line in after.splitlines() if not SENT_TICK.search(line)]
    assert len(outage_lines) <= 3, outage_lines
    assert sum("unavailable" in line for line in outage_lines) == 1, outage_lines
    assert sum("is back after" in line for line in outage_lines) == 1, outage_lines
    assert SENT_TICK.findall(during) == [], during[-3000:]  # nothing claimed as sent meanwhile
    ids = [tick for tick, _ in queued]
    assert len(ids) == len(set(ids)), ids
    # The slots missed during the outage were kept due, not lost: once the broker is back,
    # each service's first tick catches up on them, with one tick (policy latest), not one
    # per missed slot. Two at most: the send in flight when the broker came back may have
    # taken long enough (kombu's reconnection) for the next pass to find a newer missed slot.
    for name in services:
        ticks = [(tick_slot(tick), kwargs["kind"]) for tick, kwargs in queued
                 if tick.startswith(f"tick:{name}@")]
        assert ticks[0][1] == "catchup", (name, ticks)
        missed = [slot for slot, _ in ticks if killed_at * 1000 < slot < restarting_ms]
        assert len(missed) <= 2, (name, ticks)
