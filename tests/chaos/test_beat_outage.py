"""Beat against a broker that goes away: a redis-server of the test's own, SIGKILLed while
Beat sends ticks for three services, then started again on the same port. Beat logs the
outage once and its end once (no traceback per tick), and sends ticks again afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.cluster import Cluster
from tests.servers import OwnRedis
from tests.waiting import wait_for

pytestmark = pytest.mark.celery

SENDING = "Sending due task"
TICKS_DURING_OUTAGE = 15  # about 10 s: a failed send takes Beat some 0.6 s (kombu's retries)


def test_beat_logs_a_broker_outage_once_and_sends_again_after_it(
        tmp_path: Path, prefix: str, own_redis: OwnRedis) -> None:
    services = ["ticker", "lifecycle", "failing"]
    server = own_redis  # the broker; no persistence, so it restarts empty
    with Cluster(tmp_path, prefix, server.url, services) as c:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        queue = f"{prefix}-broker:celery"  # no worker: every tick sent stays here
        beat = c.beat()
        wait_for(lambda: client.llen(queue) >= 3, 20, f"Beat's first ticks\n{c.logs()}")

        server.kill()
        mark = len(beat.output())
        wait_for(lambda: beat.output()[mark:].count(SENDING) >= TICKS_DURING_OUTAGE, 40,
                 f"{TICKS_DURING_OUTAGE} ticks attempted during the outage\n{c.logs()}")
        during = beat.output()[mark:]

        server.start()  # the same port
        wait_for(lambda: client.llen(queue) >= 3, 20, f"ticks after the restart\n{c.logs()}")
        wait_for(lambda: "is back after" in beat.output()[mark:], 10,
                 f"the end of the outage logged\n{c.logs()}")
        after = beat.output()[mark:]
        alive = beat.popen.poll() is None

    assert alive, after[-3000:]
    outage_lines = [line for line in after.splitlines() if SENDING not in line]
    # One line when it started, one when it ended (a reminder only after 30 s), no traceback.
    assert "Traceback" not in after, after[-5000:]
    assert len(outage_lines) <= 3, outage_lines
    assert sum("unavailable" in line for line in outage_lines) == 1, outage_lines
    assert sum("is back after" in line for line in outage_lines) == 1, outage_lines
    # Every service's ticks were attempted meanwhile: the outage line did not stop Beat.
    assert all(f"{SENDING} svc.{name}" in during for name in services), during[-3000:]
