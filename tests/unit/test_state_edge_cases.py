"""Corrupt values and interrupted round trips: each is refused or survived, never a crash
loop and never a connection left a reply behind."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import redis

from services.AbstractService import AbstractService
from services.config import resolve_config
from services.errors import ServiceConfigError, StateCorruptError
from services.fields import REQUESTED_KINDS
from services.lease import LeaseKeeper
from services.runner import run_once
from services.runs import Decision, RunTicket
from services.schedule import Schedule, TickSlot, tick_gap
from services.state import StateStore


class Quiet(AbstractService):
    name = "quiet"
    interval_seconds = 1.0

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


def begin(store: StateStore, name: str) -> object:
    return store.runs.begin(name, kind="tick", max_runs=1, tick_gap_seconds=0.5)


def test_bytes_that_are_not_text_are_a_clear_corrupt_state(store, redis_client):
    key = store.keys.state("raw")
    raw = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**redis_client.connection_pool.connection_kwargs, "decode_responses": False}))
    raw.hset(key, "paused", b"\xff\xfe")
    with pytest.raises(StateCorruptError, match="not UTF-8"):
        begin(store, "raw")
    with pytest.raises(StateCorruptError, match="not UTF-8"):
        store.read("raw")
    redis_client.hset(key, "paused", "0")
    assert begin(store, "raw").verdict == "go"  # the channel is usable again


def test_hex_retry_at_is_unreadable_not_a_backoff(store, redis_client):
    redis_client.hset(store.keys.state("hex"), "retry_at", "0x7fffffff")
    decision = begin(store, "hex")
    assert decision.verdict == "go"
    assert "retry_at=0x7fffffff" in decision.warnings


def test_a_tick_from_the_future_does_not_make_every_tick_a_duplicate(store, redis_client):
    redis_client.hset(store.keys.state("future"), "last_tick_at", "9e15")
    decision = begin(store, "future")
    assert decision.verdict == "go"
    assert "last_tick_at=9e15" in decision.warnings


def test_an_interrupted_round_trip_does_not_leave_a_reply_behind(store, redis_client):
    channel = store.runs._per_process()[2]
    original = channel._read

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as a signal handler or a soft time limit would, mid-call

    channel._read = interrupted
    with pytest.raises(KeyboardInterrupt):
        begin(store, "cut")
    channel._read = original
    # Without the fix the renew below reads the guard's unread reply (a list, so "renewed").
    stranger = RunTicket("cut", "nobody@nowhere:1", 1, 0, "tick")
    assert store.runs.renew(stranger) is False
    ticket = begin(store, "other").ticket
    assert ticket is not None and store.runs.renew(ticket) is True


@pytest.mark.parametrize("value", ["inf", "1e300", "-inf"])
def test_interval_must_be_finite_and_sane(value):
    with pytest.raises(ServiceConfigError, match="SVC_QUIET_INTERVAL_SECONDS"):
        resolve_config(Quiet, environ={"SVC_QUIET_INTERVAL_SECONDS": value})


def test_retry_delay_too_long_for_a_countdown_is_refused():
    with pytest.raises(ServiceConfigError, match="retry_delay_seconds"):
        resolve_config(Quiet, environ={"SVC_QUIET_RETRY_DELAY_SECONDS": "1e300"})


def test_names_that_share_their_environment_variables_are_refused():
    from services.registry import Registry

    registry = Registry.discover(packages=["tests.fixtures.svc_lookalike"], environ={}, only=[])
    assert registry.names() == ["alone"]
    (error,) = registry.errors
    assert "'report.daily' and 'report_daily'" in error
    assert "SVC_REPORT_DAILY_*" in error
    assert "SVC_Dotted.py" in error and "SVC_ReportDaily.py" in error



# -- Beat ticks stamped with their slot: each slot runs once, in order ---------------------------
# A gap of 0 unless the gap is what a test is about: then only the slot can make a duplicate.


def slot_tick(store: StateStore, name: str, slot_ms: int | None, *, kind: str = "tick",
              gap: float = 0.0) -> Decision:
    decision = store.runs.begin(name, kind=kind, max_runs=1, tick_gap_seconds=gap, slot_ms=slot_ms)
    if decision.ticket is not None:
        store.runs.finish(decision.ticket, error=None, max_failures=3, retry_delay_seconds=0)
    return decision


def redis_now_ms(store: StateStore) -> int:
    return int(store.now() * 1000)


def test_the_same_slot_twice_runs_once(store, redis_client):
    slot = redis_now_ms(store)
    assert slot_tick(store, "slotted", slot).go
    again = slot_tick(store, "slotted", slot)
    assert (again.verdict, again.detail) == ("duplicate", str(slot))
    assert redis_client.hget(store.keys.state("slotted"), "last_slot") == str(slot)


def test_an_older_slot_after_a_newer_one_is_a_duplicate(store, redis_client):
    now = redis_now_ms(store)
    assert slot_tick(store, "ordered", now).go
    late = slot_tick(store, "ordered", now - 1)
    assert (late.verdict, late.detail) == ("duplicate", str(now))
    assert redis_client.hget(store.keys.state("ordered"), "last_slot") == str(now)


@pytest.mark.skipif("catchup" not in REQUESTED_KINDS, reason="no catchup ticks in this tree")
def test_catchup_slots_closer_than_the_tick_gap_all_run(store, redis_client):
    """Replayed missed slots are set apart by the schedule alone: a gap of a minute does not
    hold back slots a millisecond apart, and they leave last_tick_at to regular ticks."""
    now = redis_now_ms(store)
    verdicts = [slot_tick(store, "replay", now - 3 + i, kind="catchup", gap=60).verdict
                for i in range(4)]
    assert verdicts == ["go"] * 4
    assert slot_tick(store, "replay", now - 1, kind="catchup", gap=60).verdict == "duplicate"
    assert redis_client.hget(store.keys.state("replay"), "last_slot") == str(now)
    assert redis_client.hget(store.keys.state("replay"), "last_tick_at") is None


def test_a_last_slot_absurdly_far_ahead_is_ignored_with_a_warning(store, redis_client):
    far = redis_now_ms(store) + 40 * 365 * 86_400_000
    redis_client.hset(store.keys.state("future-slot"), "last_slot", str(far))
    slot = redis_now_ms(store)
    decision = slot_tick(store, "future-slot", slot)
    assert decision.verdict == "go"
    assert f"last_slot={far}" in decision.warnings
    assert redis_client.hget(store.keys.state("future-slot"), "last_slot") == str(slot)


def test_a_last_slot_an_hour_ahead_does_not_stop_the_service(store, redis_client):
    ahead = redis_now_ms(store) + 3_600_000
    redis_client.hset(store.keys.state("clock-back"), "last_slot", str(ahead))
    decision = slot_tick(store, "clock-back", redis_now_ms(store))
    assert decision.verdict == "go"
    assert f"last_slot={ahead}" in decision.warnings


def test_a_tick_without_a_slot_still_uses_the_gap(store, redis_client):
    assert slot_tick(store, "legacy", None, gap=60).go
    second = slot_tick(store, "legacy", None, gap=60)
    assert second.verdict == "duplicate"
    assert second.detail == redis_client.hget(store.keys.state("legacy"), "last_tick_at")
    assert redis_client.hget(store.keys.state("legacy"), "last_slot") is None
    # A slotted tick sets last_tick_at too, so an unslotted one right after it is held back.
    assert slot_tick(store, "legacy2", redis_now_ms(store)).go
    assert slot_tick(store, "legacy2", None, gap=60).verdict == "duplicate"


def test_a_trigger_is_not_a_slot(store, redis_client):
    slot = redis_now_ms(store)
    assert slot_tick(store, "manual", slot).go
    trigger = store.runs.begin("manual", kind="trigger", max_runs=1, tick_gap_seconds=60)
    assert trigger.go
    store.runs.finish(trigger.ticket, error=None, max_failures=3, retry_delay_seconds=0)
    assert redis_client.hget(store.keys.state("manual"), "last_slot") == str(slot)
    assert slot_tick(store, "manual", slot + 1).go


def run_slot_tick(store: StateStore, name: str, slot: TickSlot) -> str:
    """One Beat tick through the worker's own path (runner.run_once), as a task runs it."""
    keeper = LeaseKeeper(store)
    try:
        return asyncio.run(run_once(Quiet(state=store, name=name), "tick", keeper,
                                    slot=slot)).verdict
    finally:
        keeper.close()


def after_previous_slot(store: StateStore, redis_client, name: str, schedule: Schedule,
                        previous: int) -> TickSlot:
    """The state a run of slot ``previous`` left, as long ago as the schedule says it was;
    returns the next tick as Beat stamps it (its slot and the one after)."""
    at = schedule.next_fire_ms(name, previous)
    following = schedule.next_fire_ms(name, at)
    redis_client.hset(store.keys.state(name), mapping={
        "last_slot": previous, "last_tick_at": redis_now_ms(store) - (at - previous)})
    return TickSlot(at, following)


def local_ms(zone: str, *fields: int) -> int:
    return int(datetime(*fields, tzinfo=ZoneInfo(zone)).timestamp() * 1000)


# cron, zone, the previous slot: each tick below comes one period after the one before it
ON_TIME_TICKS = {
    # autumn: 25 h since Saturday's 03:00, 24 h to Monday's
    "daily-autumn": ("0 3 * * *", "Europe/Berlin", ("Europe/Berlin", 2026, 10, 24, 3, 0)),
    "every-minute": ("* * * * *", "UTC", ("UTC", 2026, 11, 19, 9, 0)),
}
LOST_TICKS = {
    # spring: 23 h since Saturday's 03:00, 24 h to Monday's
    "daily-spring": ("0 3 * * *", "Europe/Berlin", ("Europe/Berlin", 2026, 3, 28, 3, 0)),
    # Friday: 24 h since Thursday's, 72 h to Monday's
    "weekdays-friday": ("0 9 * * 1-5", "UTC", ("UTC", 2026, 11, 19, 9, 0)),
    # 10:00: 1 h since 09:00, 23 h to the next 09:00
    "twice-a-day": ("0 9,10 * * *", "UTC", ("UTC", 2026, 11, 19, 9, 0)),
}


@pytest.mark.parametrize("case", sorted(ON_TIME_TICKS))
def test_a_regular_tick_one_period_after_the_last_runs(store, redis_client, case):
    cron, zone, previous = ON_TIME_TICKS[case]
    slot = after_previous_slot(store, redis_client, case, Schedule(cron=cron, timezone=zone),
                               local_ms(*previous))
    assert run_slot_tick(store, case, slot) == "go"


@pytest.mark.parametrize("case", sorted(LOST_TICKS))
def test_a_regular_tick_is_not_a_duplicate_when_the_next_period_is_longer(store, redis_client,
                                                                         case):
    cron, zone, previous = LOST_TICKS[case]
    slot = after_previous_slot(store, redis_client, case, Schedule(cron=cron, timezone=zone),
                               local_ms(*previous))
    assert run_slot_tick(store, case, slot) == "go"


def test_a_jittered_tick_is_not_a_duplicate(store, redis_client):
    schedule = Schedule(every_seconds=60, jitter_seconds=30)
    # The first slot that follows its predecessor sooner than the next one follows it.
    previous = schedule.next_fire_ms("jittered", 1_790_000_000_000)
    while True:
        at = schedule.next_fire_ms("jittered", previous)
        following = schedule.next_fire_ms("jittered", at)
        if (at - previous) / 1000 < tick_gap((following - at) / 1000):
            break
        previous = at
    slot = after_previous_slot(store, redis_client, "jittered", schedule, previous)
    assert run_slot_tick(store, "jittered", slot) == "go"


# -- the duplicate window of a regular tick: on time always runs, a late one only after a gap ---


def regular_tick(store: StateStore, name: str, slot: int, next_slot: int) -> Decision:
    decision = store.runs.begin(name, kind="tick", max_runs=1, tick_gap_seconds=3600,
                           slot_ms=slot, next_slot_ms=next_slot)
    if decision.ticket is not None:
        store.runs.finish(decision.ticket, error=None, max_failures=3, retry_delay_seconds=0)
    return decision


def test_an_on_time_tick_runs_right_after_a_late_one(store):
    # Every 10 s: the tick of slot now-9.5 s ran late (just now); the tick of slot now is on
    # time and must run although the last run was a moment ago (a restarted Beat, a worker
    # that was busy). The service's own interval (3600 s, as tick_gap_seconds) plays no part.
    now = redis_now_ms(store)
    assert regular_tick(store, "late-then-on-time", now - 9_500, now + 500).go
    assert regular_tick(store, "late-then-on-time", now, now + 10_000).go


def test_ticks_queued_while_workers_were_down_do_not_burst(store):
    # Every 1 s, three ticks queued for slots now-3 s .. now-1 s, handled at once: the first
    # runs, the later ones are late and come too soon after it, so they are duplicates.
    now = redis_now_ms(store)
    verdicts = [regular_tick(store, "queued", now - 3_000 + k * 1_000,
                             now - 2_000 + k * 1_000).verdict for k in range(3)]
    assert verdicts == ["go", "duplicate", "duplicate"]
    # The next on-time tick runs.
    assert regular_tick(store, "queued", now + 50, now + 1_050).go


def test_late_ticks_of_a_slow_worker_still_run_at_the_schedule_rate(store, redis_client):
    # Every 1 s with every tick handled 1.5 s late (a worker busy for longer than the
    # period): each is late, but the last run was one period ago, so each runs.
    now = redis_now_ms(store)
    key = store.keys.state("slow-worker")
    for k in range(3):
        slot = now - 1_500 - (2 - k) * 1_000
        # last_tick_at one period before "now" for this tick, as if it ran 1.5 s late too
        if k:
            redis_client.hset(key, "last_tick_at", now - 1_000)
        assert regular_tick(store, "slow-worker", slot, slot + 1_000).go


@pytest.mark.parametrize("field", ["runs_ok", "duration_le_10", "duration_ms_sum"])
def test_a_counter_that_is_not_a_number_starts_again_and_the_run_is_recorded(
        store, redis_client, field):
    # The record reads each counter and writes it back once; a hand-edited counter must
    # neither fail the record (HINCRBY would: "hash value is not an integer") nor stay.
    key = store.keys.state("counted")
    redis_client.hset(key, field, "many")
    decision = begin(store, "counted")
    assert decision.ticket is not None
    store.runs.finish(decision.ticket, error=None, max_failures=3, retry_delay_seconds=1)
    state = redis_client.hgetall(key)
    assert state["runs_ok"] == "1"
    assert state[field] != "many"
    assert int(state["duration_ms_sum"]) >= 0
    assert state["last_success_at"]
    assert store.history("counted", 1)[0]["outcome"] == "ok"


@pytest.mark.parametrize("held", ["9007199254740993", "9223372036854775807", "1e20"])
def test_a_counter_beyond_exact_integers_starts_again_never_negative(
        store, redis_client, held):
    key = store.keys.state("huge")
    redis_client.hset(key, "runs_ok", held)
    decision = begin(store, "huge")
    assert decision.ticket is not None
    store.runs.finish(decision.ticket, error=None, max_failures=3, retry_delay_seconds=1)
    assert redis_client.hget(key, "runs_ok") == "1"


def test_a_history_key_of_the_wrong_type_still_counts_the_failure(store, redis_client):
    # The outcome is written before the history: a service whose history key was clobbered
    # still backs off and stops at max_failures, while every record reports the bad key.
    redis_client.set(store.keys.history("clobbered"), "not a list")
    decision = begin(store, "clobbered")
    assert decision.ticket is not None
    with pytest.raises(StateCorruptError):
        store.runs.finish(decision.ticket, error="boom", max_failures=3,
                          retry_delay_seconds=1)
    state = redis_client.hgetall(store.keys.state("clobbered"))
    assert state["failures"] == "1"
    assert state["last_error"] == "boom"
    assert state["retry_at"]


def test_a_hand_edited_lost_counter_does_not_stop_the_guard(store, redis_client):
    key = store.keys.state("lapsed")
    first = begin(store, "lapsed")
    assert first.ticket is not None
    redis_client.delete(store.keys.lease("lapsed"))  # its worker died: the lease is gone
    redis_client.hset(key, "runs_lost", "some")
    again = store.runs.begin("lapsed", kind="trigger", max_runs=1, tick_gap_seconds=0.5)
    assert again.ticket is not None
    assert redis_client.hget(key, "runs_lost") == "1"
    assert [row["outcome"] for row in store.history("lapsed", 5)] == ["lost"]
