"""Beat under faults, with real ``celery beat`` and ``celery worker`` processes: a leader that
is SIGKILLed, frozen (SIGSTOP, then SIGCONT) or stopped while a standby waits; a Beat restarted
before and after a slot falls due; and every catch-up policy after missed slots.

What is counted: the tick ids Beat logs as sent and workers log as received
(``tick:<name>@<due ms>``, each at most once), and the slots that ran, which the ``slots``
services record (``tests/svc_celery/SVC_Slots.py``): consecutive slots of one schedule are
exactly one interval apart, so a gap is a skipped slot and a repeat a doubled one. Times come
from Redis's clock and from the log lines' own timestamps (this host's clock); the test's
clock only sets deadlines, and the bounds asserted are the ones the lease promises.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from beat_schedule.store import ScheduleStore
from services.state import StateStore
from tests.cluster import (
    HANDLED_TICK,
    RECEIVED_TICK,
    SENT_TICK,
    Cluster,
    Proc,
    lines_with,
    logged_at,
    tick_ids,
    tick_slot,
    tick_slots,
)
from tests.svc_celery.SVC_Slots import recorded_slots
from tests.waiting import wait_for

pytestmark = pytest.mark.celery

LEASE_SECONDS = 2.0
LEADER_NOW = "beat: leader now"
STANDING_BY = "beat: standing by"
LOST_LEASE = "beat: lost the leader lease"


# -- helpers -----------------------------------------------------------------------------------


def steps(slots: list[int]) -> list[int]:
    """Milliseconds between consecutive slots."""
    return [b - a for a, b in itertools.pairwise(slots)]


def wait_slots(store: StateStore, name: str, count: int, cluster: Cluster,
               timeout: float = 20) -> list[int]:
    """Wait until ``count`` runs of ``name`` recorded their slot; returns the slots."""
    return wait_for(lambda: (found := recorded_slots(store, name))[count - 1:] and found,
                    timeout, f"{count} runs of {name}\n{cluster.logs()}")


def wait_handled(worker: Proc, name: str, count: int, after_ms: float, cluster: Cluster,
                 timeout: float = 20) -> None:
    """Wait until the worker has handled ``count`` ticks of ``name`` due after ``after_ms``."""
    wait_for(lambda: len([s for s in tick_slots(HANDLED_TICK, name, worker.output())
                          if s > after_ms]) >= count,
             timeout, f"{count} ticks of {name} due after {after_ms:.0f}\n{cluster.logs()}")


def wait_leader(beat: Proc, cluster: Cluster, mark: int = 0, timeout: float = 20) -> float:
    """When (its log line's time) ``beat`` became the leader, after offset ``mark`` of its log."""
    wait_for(lambda: LEADER_NOW in beat.output()[mark:], timeout,
             f"{beat.name} to lead\n{cluster.logs()}")
    return logged_at(lines_with(beat.output()[mark:], LEADER_NOW)[0])


def wait_standing_by(beat: Proc, cluster: Cluster) -> None:
    wait_for(lambda: STANDING_BY in beat.output(), 20, f"{beat.name} to stand by\n{cluster.logs()}")


def sent_count(beat: Proc) -> int:
    return len(SENT_TICK.findall(beat.output()))


def wait_sent(beat: Proc, count: int, cluster: Cluster) -> None:
    wait_for(lambda: sent_count(beat) >= count, 20,
             f"{beat.name} to send {count} ticks\n{cluster.logs()}")


def assert_each_tick_once(workers: list[Proc], beats: list[Proc]) -> Counter[str]:
    """No tick id was sent twice (by any Beat) or received twice (by any worker); returns the
    received ones."""
    sent = tick_ids(SENT_TICK, *(beat.output() for beat in beats))
    received = tick_ids(RECEIVED_TICK, *(worker.output() for worker in workers))
    assert sent and received, "no tick ids in the logs: did the log lines change?"
    assert [tick for tick, n in sent.items() if n > 1] == [], sent
    assert [tick for tick, n in received.items() if n > 1] == [], received
    return received


def refusals(worker: Proc) -> list[str]:
    """The worker's lines for ticks its guard refused: what a missing slot usually means."""
    return lines_with(worker.output(), "not running:")


# -- the leader lease --------------------------------------------------------------------------


def test_standby_takes_over_a_killed_frozen_or_stopped_leader_and_no_tick_runs_twice(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    # Every 0.5 s, catch-up `all`: the slots missed while no Beat led are sent once one leads
    # again, so every slot from the steady state on must run, once, in order.
    interval_ms = 500
    env = {"SVC_BEAT_LEASE_SECONDS": str(LEASE_SECONDS),
           "SVC_SLOTS_INTERVAL_SECONDS": str(interval_ms / 1000), "SVC_SLOTS_CATCHUP": "all"}
    takeover: dict[str, float] = {}
    with Cluster(tmp_path, prefix, redis_url, ["slots"], env=env) as c:
        store = c.store()
        worker = c.worker("w1")
        first = c.beat("beat-a")
        wait_leader(first, c)
        second = c.beat("beat-b")
        wait_standing_by(second, c)
        steady = wait_slots(store, "slots", 3, c)[-1]  # past the start-up

        # 1. The leader dies (SIGKILL): its lease runs out, the standby claims it.
        killed_at = time.time()
        c.kill(first)
        takeover["sigkill"] = wait_leader(second, c) - killed_at
        third = c.beat("beat-c")
        wait_standing_by(third, c)
        wait_sent(second, 3, c)

        # 2. The leader freezes (SIGSTOP): the same, and once thawed it must not send.
        frozen_at = time.time()
        c.kill(second, signal.SIGSTOP)
        takeover["sigstop"] = wait_leader(third, c) - frozen_at
        wait_sent(third, 3, c)
        mark = len(second.output())
        c.kill(second, signal.SIGCONT)
        wait_for(lambda: LOST_LEASE in second.output()[mark:], 10,
                 f"the thawed leader to notice it was deposed\n{c.logs()}")
        wait_sent(third, sent_count(third) + 4, c)  # two more seconds of the new leader
        thawed = second.output()[mark:]
        thawed_alive = second.popen.poll() is None

        # 3. The leader stops gracefully (SIGTERM): it releases the lease, the standby (the
        # thawed one) claims it at its next poll.
        mark = len(second.output())
        stopped_at = time.time()
        c.stop(third)
        takeover["sigterm"] = wait_leader(second, c, mark) - stopped_at
        wait_sent(second, sent_count(second) + 3, c)
        newest = max(tick_slot(t) for t in tick_ids(SENT_TICK, second.output()))
        wait_handled(worker, "slots", 1, newest - 1, c)  # the worker has caught up
        received = assert_each_tick_once([worker], [first, second, third])
        slots = [s for s in recorded_slots(store, "slots") if steady <= s <= newest]
        refused = refusals(worker)

    print(f"takeover after the leader's SIGKILL, SIGSTOP, SIGTERM (s): "
          f"{ {k: round(v, 3) for k, v in takeover.items()} }")
    assert takeover["sigkill"] <= LEASE_SECONDS + 1, takeover
    assert takeover["sigstop"] <= LEASE_SECONDS + 1, takeover
    assert takeover["sigterm"] <= 1, takeover

    # The thawed leader learnt it had lost the lease, stood by, and sent nothing more.
    assert thawed_alive, thawed[-3000:]
    assert "standing by" in lines_with(thawed, LOST_LEASE)[0], thawed[-3000:]
    assert SENT_TICK.findall(thawed.split(LOST_LEASE, 1)[1]) == [], thawed[-3000:]
    assert "Traceback" not in thawed, thawed[-5000:]

    # Each slot ran once and in order, none skipped: across three leaders and three faults.
    # (Missed slots go out as one catch-up message, named after its first slot.)
    due = sorted(s for s in map(tick_slot, received) if steady <= s <= newest)
    assert set(due) <= set(slots), (slots, due, refused)
    assert steps(slots) == [interval_ms] * (len(slots) - 1), (slots, refused)


# -- restarts ----------------------------------------------------------------------------------


def test_restarted_beat_neither_skips_nor_doubles_the_due_tick(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    interval_ms = 2000
    env = {"SVC_BEAT_LEASE_SECONDS": str(LEASE_SECONDS),
           "SVC_SLOTS_INTERVAL_SECONDS": str(interval_ms / 1000)}
    with Cluster(tmp_path, prefix, redis_url, ["slots"], env=env) as c:
        store = c.store()
        schedule = ScheduleStore(store)
        worker = c.worker("w1")
        beats = [c.beat("beat-1")]
        steady = wait_slots(store, "slots", 2, c)[-1]

        # a. Stopped right after a tick and back before the next one is due.
        wait_sent(beats[-1], sent_count(beats[-1]) + 1, c)
        stopped_at = time.time()
        c.stop(beats[-1])
        due_a = schedule.due_time("slots")
        assert due_a is not None
        beats.append(c.beat("beat-2"))
        back_a = wait_leader(beats[-1], c)
        wait_handled(worker, "slots", 2, due_a - 1, c)

        # b. Stopped right after a tick and back only once the next one has fallen due.
        wait_sent(beats[-1], sent_count(beats[-1]) + 1, c)
        c.stop(beats[-1])
        due_b = schedule.due_time("slots")
        assert due_b is not None
        wait_for(lambda: store.now() * 1000 >= due_b + 200, 10, "the next slot to fall due")
        beats.append(c.beat("beat-3"))
        back_b = wait_leader(beats[-1], c)
        wait_handled(worker, "slots", 2, due_b - 1, c)
        newest = max(tick_slots(HANDLED_TICK, "slots", worker.output()))
        received = assert_each_tick_once([worker], beats)
        slots = [s for s in recorded_slots(store, "slots") if steady <= s <= newest]
        refused = refusals(worker)

    print(f"a: Beat back {back_a - stopped_at:.2f}s after the stop, {due_a / 1000 - back_a:.2f}s "
          f"before the next slot; b: back {back_b - due_b / 1000:.2f}s after it fell due")
    due = sorted(s for s in map(tick_slot, received) if steady <= s <= newest)
    assert steps(due) == [interval_ms] * (len(due) - 1), due  # Beat skipped none
    assert due_a in due and due_b in due, (due_a, due_b, due)
    assert set(slots) <= set(due) and slots == sorted(set(slots)), slots  # none twice, in order
    # And each one ran.
    assert slots == due, (sorted(set(due) - set(slots)), refused)


# -- catch-up after missed slots ---------------------------------------------------------------

POLICIES = {"slots": "latest", "slots_b": "skip", "slots_c": "all"}
# A slot due this little after the new leader's "leader now" line may have fallen due before
# its first poll (the next round trip) or after: either answer is accepted for that slot.
FIRST_POLL_SECONDS = 0.25


def test_catch_up_policies_after_three_missed_slots(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    interval_ms = 1000
    env = {"SVC_BEAT_LEASE_SECONDS": str(LEASE_SECONDS)}
    for name, policy in POLICIES.items():
        variable = f"SVC_{name.upper()}"
        env |= {f"{variable}_INTERVAL_SECONDS": str(interval_ms / 1000),
                f"{variable}_CATCHUP": policy}
    with Cluster(tmp_path, prefix, redis_url, list(POLICIES), env=env) as c:
        store = c.store()
        worker = c.worker("w1")
        beats = [c.beat("beat-1")]
        steady = {name: wait_slots(store, name, 2, c)[-1] for name in POLICIES}
        stopped_at = time.time()
        c.stop(beats[0])
        first_missed = ScheduleStore(store).due_times()  # each service's next slot
        # Down until every service has missed three slots (a fourth may pass while the new
        # Beat starts: what was missed is counted up to its "leader now" line).
        wait_for(lambda: store.now() * 1000 >= max(first_missed.values()) + 2 * interval_ms,
                 10, "three missed slots")
        beats.append(c.beat("beat-2"))
        back = wait_leader(beats[-1], c)
        for name in POLICIES:
            wait_handled(worker, name, 3, back * 1000, c)
        assert_each_tick_once([worker], beats)
        recorded = {name: recorded_slots(store, name) for name in POLICIES}
        refused = refusals(worker)

    print(f"Beat down {back - stopped_at:.2f}s")
    for name, policy in POLICIES.items():
        d0 = first_missed[name]
        slots = [s for s in recorded[name] if s >= steady[name]]
        before = [s for s in slots if s < d0]
        after = [s for s in slots if s >= d0]
        missed = [d0 + k * interval_ms for k in range(20) if d0 + k * interval_ms <= back * 1000]
        following = missed[-1] + interval_ms  # the first slot not yet due, unless...
        unsure = following <= (back + FIRST_POLL_SECONDS) * 1000  # ...due by the first poll
        context = (name, policy, d0, missed, unsure, slots, refused)
        assert len(missed) >= 3, context
        # Up to the outage: every slot, the last one just before the first missed.
        assert before[-1] == d0 - interval_ms, context
        assert steps(before) == [interval_ms] * (len(before) - 1), context
        # After it: on schedule, one interval apart, from where the policy says.
        assert steps(after) == [interval_ms] * (len(after) - 1), context
        assert len([s for s in after if s > back * 1000]) >= 3, context
        if policy == "latest":  # one catch-up tick: the newest missed slot
            allowed = {missed[-1], following} if unsure else {missed[-1]}
        elif policy == "skip":  # nothing until the next slot
            allowed = {following, following + interval_ms} if unsure else {following}
        else:  # every missed slot, oldest first
            allowed = {d0}
        assert after[0] in allowed, context


def test_catch_up_all_runs_every_missed_slot_once_in_order_on_a_concurrent_worker(
        tmp_path: Path, prefix: str, redis_url: str) -> None:
    # Two pool processes: missed slots sent as separate ticks would race for the lease (one
    # refused, then refused again as older than the slot that won). They go as one message.
    interval_ms = 1000
    env = {"SVC_BEAT_LEASE_SECONDS": str(LEASE_SECONDS), "SVC_SLOTS_INTERVAL_SECONDS": "1",
           "SVC_SLOTS_CATCHUP": "all"}
    with Cluster(tmp_path, prefix, redis_url, ["slots"], env=env) as c:
        store = c.store()
        c.worker("w1", concurrency=2)
        beat = c.beat("beat-1")
        wait_slots(store, "slots", 2, c)
        c.stop(beat)
        first_missed = ScheduleStore(store).due_time("slots")
        assert first_missed is not None
        wait_for(lambda: store.now() * 1000 >= first_missed + 3 * interval_ms, 10,
                 "four missed slots")
        c.beat("beat-2")
        wait_for(lambda: len([s for s in recorded_slots(store, "slots")
                              if s > first_missed + 4 * interval_ms]) >= 2, 20,
                 f"runs on schedule again\n{c.logs()}")
        slots = [s for s in recorded_slots(store, "slots") if s >= first_missed]
    assert slots[0] == first_missed, slots  # the oldest missed slot first...
    assert steps(slots) == [interval_ms] * (len(slots) - 1), slots  # ...then every one, once
