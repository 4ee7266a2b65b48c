"""Live schedule changes reach a running Beat without a restart: an interval override and its
reset, a pause and resume, and a service a new worker registers.

The ``slots`` services (``tests/svc_celery/SVC_Slots.py``) record the slot of every run; ticks
are counted by their ids in Beat's and the worker's logs (``tick:<name>@<due ms>``). Slots of
one interval schedule are exactly one interval apart, so the steps between the slots that ran
show the rate without any clock; the delays asserted (a change applied within a second) are
the ones Beat promises: it polls the schedule's version every 0.5 s.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from beat_schedule.store import ScheduleStore
from services.schedule import Schedule
from tests.cluster import (
    HANDLED_TICK,
    SENT_TICK,
    Cluster,
    Proc,
    lines_with,
    logged_at,
    tick_slots,
)
from tests.svc_celery.SVC_Slots import recorded_slots
from tests.waiting import wait_for

pytestmark = pytest.mark.celery

WHO = "test@pytest"
APPLIED_WITHIN_SECONDS = 1.0  # one poll of the leader (0.5 s), and slack for a busy machine


def steps(slots: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(slots)]


def wait_handled(worker: Proc, name: str, count: int, after_ms: float, cluster: Cluster,
                 timeout: float = 30) -> None:
    """Wait until the worker has handled (run or refused) ``count`` ticks of ``name`` due
    after ``after_ms``."""
    wait_for(lambda: len([s for s in tick_slots(HANDLED_TICK, name, worker.output())
                          if s > after_ms]) >= count,
             timeout, f"{count} ticks of {name} due after {after_ms:.0f}\n{cluster.logs()}")


def wait_logged(proc: Proc, needle: str, mark: int, cluster: Cluster, timeout: float = 10) -> float:
    """When ``proc`` logged its first line with ``needle`` after offset ``mark``."""
    wait_for(lambda: needle in proc.output()[mark:], timeout,
             f"{proc.name} to log {needle!r}\n{cluster.logs()}")
    return logged_at(lines_with(proc.output()[mark:], needle)[0])


def between(slots: list[int], start_s: float, end_s: float) -> list[int]:
    return [s for s in slots if start_s * 1000 < s <= end_s * 1000]


def handled_sent(beat: Proc, worker: Proc, name: str) -> list[int]:
    """Slots of the ticks of ``name`` Beat sent, up to the newest one the worker handled."""
    newest = max(tick_slots(HANDLED_TICK, name, worker.output()), default=0)
    return [s for s in tick_slots(SENT_TICK, name, beat.output()) if s <= newest]


def gaps(starts: list[float], start_s: float, end_s: float) -> list[float]:
    """Seconds between consecutive run starts in a window (for the report)."""
    inside = [t for t in starts if start_s < t <= end_s]
    return [round(b - a, 2) for a, b in itertools.pairwise(inside)]


def test_interval_override_reset_and_pause_apply_without_a_restart(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    env = {"SVC_BEAT_LEASE_SECONDS": "2", "SVC_SLOTS_INTERVAL_SECONDS": "1"}
    every_3s = Schedule(every_seconds=3.0)  # what the override makes of it
    with Cluster(tmp_path, prefix, redis_url, ["slots"], env=env) as c:
        store = c.store()
        schedules = ScheduleStore(store)
        worker = c.worker("w1")
        beat = c.beat()
        wait_handled(worker, "slots", 2, 0, c)
        start = store.now()  # past the start-up
        wait_handled(worker, "slots", 3, start * 1000, c)

        # Every 1 s -> every 3 s, changed just after the run of a slot whose next one is also
        # the first of the new schedule (3 s slots are 1 s slots too: the phase is the name's
        # hash modulo the period): Beat reads the change before that slot is due.
        last_1s = wait_for(lambda: next((s for s in recorded_slots(store, "slots")[-1:]
                                         if every_3s.next_fire_ms("slots", s) == s + 1000), 0),
                           10, "a run just before a slot of the 3 s schedule")
        mark = len(beat.output())
        _, entry = schedules.set_override("slots", {"every_seconds": 3.0}, who=WHO,
                                          reason="test: slower")
        slowed_at = entry["at"]
        slow_from = wait_logged(beat, "slots rescheduled: every 3s", mark, c)
        first_3s = last_1s + 1000
        last_3s = wait_for(lambda: next((s for s in recorded_slots(store, "slots")[-1:]
                                         if s >= first_3s + 6000), 0), 15,
                           f"runs every 3 s\n{c.logs()}")

        # Back to the code's 1 s, just after a run.
        mark = len(beat.output())
        _, entry = schedules.reset("slots", who=WHO, reason="test: back")
        reset_at = entry["at"]
        fast_from = wait_logged(beat, "slots rescheduled: every 1s", mark, c)
        wait_handled(worker, "slots", 3, fast_from * 1000, c)

        # Paused for three slots, then resumed.
        store.control("slots", "pause", who=WHO, reason="test: pause")
        paused_at = store.now()
        wait_for(lambda: store.now() >= paused_at + 3, 10, "three slots while paused")
        store.control("slots", "resume", who=WHO, reason="test: resume")
        resumed_at = store.now()
        wait_handled(worker, "slots", 3, resumed_at * 1000, c)

        sent = handled_sent(beat, worker, "slots")
        ran = recorded_slots(store, "slots")
        history = sorted(store.history("slots", 100), key=lambda row: row["started_at"])
        refused = lines_with(worker.output(), "not running:")

    applied = {"override": slow_from - slowed_at, "reset": fast_from - reset_at}
    starts = [row["started_at"] for row in history]
    windows = {"1s": (start, slowed_at), "3s": (slow_from, reset_at),
               "1s again": (fast_from, paused_at), "resumed": (resumed_at, 1e12)}
    print(f"applied after (s): { {k: round(v, 3) for k, v in applied.items()} }; run gaps (s): "
          f"{ {k: gaps(starts, *window) for k, window in windows.items()} }")
    assert applied["override"] <= APPLIED_WITHIN_SECONDS, applied
    assert applied["reset"] <= APPLIED_WITHIN_SECONDS, applied
    context = (sent, ran, refused)

    # Every 1 s up to the change, every 3 s from the first slot of the new schedule, every 1 s
    # from the first slot after the reset.
    before = between(ran, start, last_1s / 1000)
    slowed = [s for s in ran if first_3s <= s <= last_3s]
    fast = between(ran, last_3s / 1000, paused_at)
    assert len(before) >= 3 and steps(before) == [1000] * (len(before) - 1), context
    assert every_3s.next_fire_ms("slots", first_3s - 1) == first_3s, context
    assert len(slowed) >= 2 and steps(slowed) == [3000] * (len(slowed) - 1), context
    assert slowed[-1] == last_3s, context
    assert fast[0] == last_3s + 1000, context
    assert len(fast) >= 2 and steps(fast) == [1000] * (len(fast) - 1), context
    # The change applies from the first slot of the new schedule, 1 s after the last run (the
    # guard's duplicate window must not refuse it for coming less than 3 s after that run).
    assert first_3s in sent and slowed[0] == first_3s, context
    # Outside the pause, every tick Beat sent ran: no slot lost to the changes.
    unpaused = [s for s in sent if s > start * 1000
                and not paused_at * 1000 <= s < resumed_at * 1000]
    assert [s for s in unpaused if s not in ran] == [], context

    # Nothing ran while paused; after the resume, no burst: at most one tick due before it
    # (one already on its way), then on schedule.
    while_paused = between(ran, paused_at + 0.1, resumed_at)
    after = [s for s in ran if s > resumed_at * 1000 - 1000]
    assert while_paused == [] or while_paused == after[:1], context
    assert len([s for s in after if s < resumed_at * 1000]) <= 1, context
    assert steps(after) == [1000] * (len(after) - 1), context
    burst = [t for t in starts if resumed_at <= t < resumed_at + 1]
    assert len(burst) <= 1, (burst, context)


def test_a_service_a_new_worker_registers_is_scheduled_without_restarting_beat(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    # slots_q's ticks go to a queue of its own, which only the second worker consumes: the
    # first worker never sees a task it does not know, nor the second one a slots tick.
    env = {"SVC_BEAT_LEASE_SECONDS": "2", "SVC_SLOTS_INTERVAL_SECONDS": "1",
           "SVC_SLOTS_Q_INTERVAL_SECONDS": "0.5"}
    with Cluster(tmp_path, prefix, redis_url, ["slots"], env=env) as c:
        store = c.store()
        first = c.worker("w1")
        beat = c.beat()
        wait_handled(first, "slots", 2, 0, c)
        assert "slots_q" not in store.registered()

        mark = len(beat.output())
        second = c.worker("w2", env={"SVC_SERVICES": "slots_q"}, wait=False,
                          extra=["-Q", "svc-test-slots"])
        wait_for(lambda: "slots_q" in store.registered(), 30,
                 f"the second worker to register slots_q\n{c.logs()}")
        registered_at = time.time()
        scheduled_at = wait_logged(beat, "beat: slots_q scheduled", mark, c)
        wait_handled(second, "slots_q", 6, 0, c)
        wait_handled(first, "slots", 2, scheduled_at * 1000, c)

        beat_alive = beat.popen.poll() is None
        beat_log = beat.output()
        sent = handled_sent(beat, second, "slots_q")
        ran = recorded_slots(store, "slots_q")
        refused = lines_with(second.output(), "not running:")
        strangers = lines_with(first.output(), "slots_q") + lines_with(second.output(),
                                                                       "svc.slots[")

    print(f"slots_q scheduled {scheduled_at - registered_at:+.3f}s after its registration "
          f"was seen; first tick {sent[0] / 1000 - scheduled_at:.3f}s later")
    # The same Beat process, started once, picked the new service up at its next poll.
    assert beat_alive and beat_log.count("beat: Starting...") == 1, beat_log[-3000:]
    assert scheduled_at - registered_at <= APPLIED_WITHIN_SECONDS, (scheduled_at, registered_at)
    assert strangers == [], strangers
    # From its first tick on, every 0.5 s, each sent tick ran.
    assert steps(sent) == [500] * (len(sent) - 1), sent
    assert set(ran) <= set(sent) and ran == sorted(set(ran)), (sent, ran)
    assert ran == sent, (sorted(set(sent) - set(ran)), refused)
