"""A cron schedule in a time zone, end to end: a live override to a cron expression reaches a
running Beat, whose tick falls due at the slot the expression gives in that zone (and not in
UTC), and the worker runs it.

DST transitions are covered on a controllable clock in ``tests/unit/test_schedule.py`` and
``tests/unit/test_state_edge_cases.py``: real processes cannot wait for a March night. Here
the zone is Asia/Kathmandu (UTC+5:45), whose hours never coincide with UTC's, and the
expression names the current Kathmandu hour: it fires every minute in that zone, never in
UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from beat_schedule.store import ScheduleStore
from tests.cluster import HANDLED_TICK, Cluster, tick_slots
from tests.svc_celery.SVC_Slots import recorded_slots
from tests.waiting import wait_for

pytestmark = pytest.mark.celery

ZONE = ZoneInfo("Asia/Kathmandu")


def test_a_live_cron_override_in_a_time_zone_ticks_at_its_slot(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    env = {"SVC_SLOTS_INTERVAL_SECONDS": "3600"}  # nothing runs until the cron takes over
    with Cluster(tmp_path, prefix, redis_url, ["slots"], env=env) as c:
        store = c.store()
        worker = c.worker("w1")
        c.beat()
        wait_for(lambda: ScheduleStore(store).due_time("slots") is not None, 15,
                 f"Beat to schedule slots\n{c.logs()}")
        hourly_due = ScheduleStore(store).due_time("slots")
        now = datetime.fromtimestamp(store.now(), ZONE)
        hour = (now + timedelta(seconds=61)).hour  # the next minute's Kathmandu hour
        expression = f"* {hour} * * *"
        _, entry = ScheduleStore(store).set_override(
            "slots", {"cron": expression, "timezone": "Asia/Kathmandu"}, who="test@pytest",
            reason="test: cron in a zone")
        # Beat reschedules at its next poll (0.5 s): the first slot after that moment.
        changed = datetime.fromtimestamp(entry["at"], ZONE)
        candidates = {int(next(CronSim(expression, changed + timedelta(seconds=lag)))
                          .timestamp() * 1000) for lag in (0, 1)}
        slot = wait_for(lambda: (due := ScheduleStore(store).due_time("slots")) != hourly_due
                        and due, 5, f"Beat to reschedule slots\n{c.logs()}")
        assert slot in candidates, (slot, candidates)
        assert datetime.fromtimestamp(slot / 1000, ZoneInfo("UTC")).hour != hour  # not UTC's
        wait_for(lambda: slot in recorded_slots(store, "slots"), 90,
                 f"the run of slot {slot}\n{c.logs()}")
        handled = tick_slots(HANDLED_TICK, "slots", worker.output())

    assert slot in handled, handled
    assert recorded_slots(store, "slots").count(slot) == 1
