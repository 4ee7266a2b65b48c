"""services.schedule on a clock the test controls (epoch milliseconds passed in): stable
phases, jitter, cron in IANA zones across DST changes, catch-up plans, the layering of a live
override, and errors that name the bad value and what was expected."""

from __future__ import annotations

import bisect
import itertools
import math
import os
import subprocess
import sys
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.schedule import (
    CATCHUP_ALL_LIMIT,
    DEFAULT_CATCHUP,
    DEFAULT_CATCHUP_WINDOW_SECONDS,
    ON_TIME_SECONDS,
    Schedule,
    ScheduleError,
    effective,
    from_registration,
    is_catchup,
    parse_seconds,
    seconds_text,
    tick_gap,
)

REPO = Path(__file__).resolve().parents[2]
# 2026-09-21T12:26:40Z: an arbitrary instant, far from any DST change in either zone.
T0 = 1_790_000_000_000
HOUR_MS = 3_600_000


def fires(schedule: Schedule, name: str, start_ms: int, end_ms: int) -> list[int]:
    """Every due time in [start_ms, end_ms), each found from the one before it, as Beat does."""
    found: list[int] = []
    at = schedule.next_fire_ms(name, start_ms - 1)
    assert at >= start_ms
    while at < end_ms:
        found.append(at)
        following = schedule.next_fire_ms(name, at)
        assert following > at, f"next_fire_ms({at}) = {following} is not after it"
        at = following
    return found


def local_midnight_ms(day: date, zone: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


def local(ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, zone)


# -- intervals: a stable phase per name ---------------------------------------------------------


def test_interval_slots_are_one_period_apart_and_strictly_after() -> None:
    schedule = Schedule(every_seconds=10)
    first = schedule.next_fire_ms("reports", T0)
    assert T0 < first <= T0 + 10_000
    # Exactly on a slot: the next one, never the same one again.
    assert schedule.next_fire_ms("reports", first) == first + 10_000
    assert schedule.next_fire_ms("reports", first - 1) == first
    slots = fires(schedule, "reports", T0, T0 + 600_000)
    assert len(slots) == 60
    assert {b - a for a, b in itertools.pairwise(slots)} == {10_000}


def test_the_phase_is_the_same_on_every_call_and_from_any_starting_point() -> None:
    schedule = Schedule(every_seconds=60)
    phase = schedule.next_fire_ms("billing", T0) % 60_000
    for start in (T0 - 7 * 86_400_000, T0 + 1, T0 + 59_999, T0 + 12_345_678):
        assert schedule.next_fire_ms("billing", start) % 60_000 == phase
    # Another Schedule object with the same timing: the same slots.
    assert Schedule(every_seconds=60, catchup="all").next_fire_ms("billing", T0) == (
        schedule.next_fire_ms("billing", T0))


def test_the_phase_is_the_same_in_another_process() -> None:
    """Python's hash() is salted per process; every Beat must compute the same slots."""
    names = ["billing", "reports", "outbox_dispatcher", "a", "x.y-z_1"]
    code = ("import sys\nfrom services.schedule import Schedule\n"
            f"s = Schedule(every_seconds=60)\n"
            f"print(' '.join(str(s.next_fire_ms(n, {T0})) for n in sys.argv[1:]))\n")
    here = " ".join(str(Schedule(every_seconds=60).next_fire_ms(n, T0)) for n in names)
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, *names], cwd=REPO, capture_output=True, text=True,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}, check=True)
        assert out.stdout.strip() == here


def test_phases_spread_a_thousand_services_over_the_period() -> None:
    schedule = Schedule(every_seconds=60)
    buckets = Counter(schedule.next_fire_ms(f"service-{i}", T0) % 60_000 // 1000
                      for i in range(1000))
    assert len(buckets) == 60, "every second of the minute has some services"
    assert max(buckets.values()) <= 40, f"no second holds more than 4%: {buckets.most_common(3)}"


def test_different_names_get_different_phases_but_the_period_is_kept() -> None:
    schedule = Schedule(every_seconds=10)
    phases = {schedule.next_fire_ms(name, T0) % 10_000 for name in ("a", "b", "c", "d", "e")}
    assert len(phases) > 1


# -- jitter -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("every", "jitter"), [(10, 3), (60, 59.999), (0.5, 0.25)])
def test_jitter_stays_below_its_bound_and_keeps_every_slot_in_order(every: float,
                                                                    jitter: float) -> None:
    plain = Schedule(every_seconds=every)
    jittered = Schedule(every_seconds=every, jitter_seconds=jitter)
    period = int(every * 1000)
    slots = fires(plain, "svc", T0 - 2 * period, T0 + 202 * period)
    due = fires(jittered, "svc", T0, T0 + 200 * period)
    # Each due time belongs to the newest slot at or before it.
    owners = [bisect.bisect_right(slots, d) - 1 for d in due]
    delays = [d - slots[i] for d, i in zip(due, owners, strict=True)]
    assert all(0 <= delay < jitter * 1000 for delay in delays), (min(delays), max(delays))
    assert len(set(delays)) > 1, "each slot has its own delay"
    assert owners == list(range(owners[0], owners[0] + len(owners))), (
        "every slot once, in order: none skipped, none twice")
    assert all(a < b for a, b in itertools.pairwise(due))


def test_jitter_is_stable_per_slot() -> None:
    schedule = Schedule(every_seconds=60, jitter_seconds=30)
    due = fires(schedule, "svc", T0, T0 + 3_600_000)
    again = Schedule(every_seconds=60, jitter_seconds=30)
    for at in due:
        # Whatever moment a Beat asks from, before that slot's due time, it gets the same one.
        assert again.next_fire_ms("svc", at - 1) == at
    assert fires(again, "svc", T0, T0 + 3_600_000) == due


@pytest.mark.parametrize(("kwargs", "period_ms"), [
    ({"every_seconds": 10, "jitter_seconds": 60}, 10_000),
    ({"cron": "* * * * *", "jitter_seconds": 300}, 60_000),
])
def test_a_jitter_longer_than_the_period_is_refused_or_loses_no_slot(kwargs: dict[str, object],
                                                                      period_ms: int) -> None:
    try:
        schedule = Schedule(**kwargs)  # type: ignore[arg-type]
    except ScheduleError as exc:
        assert "jitter" in str(exc)
        return
    due = fires(schedule, "svc", T0, T0 + 3_600_000)
    assert len(due) >= 3_600_000 // period_ms - 1


# -- cron across DST changes ----------------------------------------------------------------------

# zone -> (spring-forward days, fall-back days) of 2026 and 2027
DST_DAYS = {
    "Europe/Berlin": ([date(2026, 3, 29), date(2027, 3, 28)],
                      [date(2026, 10, 25), date(2027, 10, 31)]),
    "America/New_York": ([date(2026, 3, 8), date(2027, 3, 14)],
                         [date(2026, 11, 1), date(2027, 11, 7)]),
}
SPRING = [(zone, day) for zone, (days, _) in DST_DAYS.items() for day in days]
AUTUMN = [(zone, day) for zone, (_, days) in DST_DAYS.items() for day in days]
# The hour each zone's autumn change repeats (Berlin 02:00-03:00, New York 01:00-02:00).
REPEATED_HOUR = {"Europe/Berlin": 2, "America/New_York": 1}


def day_bounds(zone_name: str, day: date) -> tuple[ZoneInfo, int, int]:
    zone = ZoneInfo(zone_name)
    return zone, local_midnight_ms(day, zone), local_midnight_ms(day + timedelta(days=1), zone)


@pytest.mark.parametrize(("zone_name", "day"), SPRING + AUTUMN)
def test_the_days_are_dst_change_days(zone_name: str, day: date) -> None:
    """The fixtures themselves: each day is 23 h (spring) or 25 h (autumn) long."""
    _, start, end = day_bounds(zone_name, day)
    assert end - start == (23 if (zone_name, day) in SPRING else 25) * HOUR_MS


@pytest.mark.parametrize(("zone_name", "day"), SPRING)
def test_a_time_the_spring_change_skips_runs_once_right_after_it(zone_name: str,
                                                                 day: date) -> None:
    zone, start, end = day_bounds(zone_name, day)
    due = fires(Schedule(cron="30 2 * * *", timezone=zone_name), "nightly", start, end)
    assert len(due) == 1, [local(d, zone).isoformat() for d in due]
    at = local(due[0], zone)
    # 02:00 became 03:00: the 02:30 job runs at 03:00, the first moment after the jump.
    assert (at.hour, at.minute) == (3, 0)
    assert at.utcoffset() != local(start, zone).utcoffset(), "after the change"
    assert due[0] == start + 2 * HOUR_MS, "02:00 standard time, the instant of the jump"


@pytest.mark.parametrize(("zone_name", "day"), AUTUMN)
def test_a_time_in_the_repeated_autumn_hour_runs_once(zone_name: str, day: date) -> None:
    zone, start, end = day_bounds(zone_name, day)
    for expression in ("30 2 * * *", f"30 {REPEATED_HOUR[zone_name]} * * *"):
        due = fires(Schedule(cron=expression, timezone=zone_name), "nightly", start, end)
        assert len(due) == 1, (expression, [local(d, zone).isoformat() for d in due])
        at = local(due[0], zone)
        assert (at.hour, at.minute) == (int(expression.split()[1]), 30)
    # In the repeated hour it is the first pass (summer time), as Debian's cron does.
    hour = REPEATED_HOUR[zone_name]
    due = fires(Schedule(cron=f"30 {hour} * * *", timezone=zone_name), "nightly", start, end)
    assert local(due[0], zone).utcoffset() == local(start, zone).utcoffset()


@pytest.mark.parametrize(("zone_name", "day"), SPRING + AUTUMN)
def test_a_wildcard_hour_runs_every_real_hour(zone_name: str, day: date) -> None:
    _, start, end = day_bounds(zone_name, day)
    due = fires(Schedule(cron="0 * * * *", timezone=zone_name), "hourly", start, end)
    assert len(due) == (23 if (zone_name, day) in SPRING else 25)
    assert due[0] == start
    assert {b - a for a, b in itertools.pairwise(due)} == {HOUR_MS}


@pytest.mark.parametrize(("zone_name", "day"), SPRING + AUTUMN)
def test_three_oclock_is_three_oclock_local_on_each_side_of_the_change(zone_name: str,
                                                                       day: date) -> None:
    zone = ZoneInfo(zone_name)
    start = local_midnight_ms(day - timedelta(days=1), zone)
    end = local_midnight_ms(day + timedelta(days=2), zone)
    due = fires(Schedule(cron="0 3 * * *", timezone=zone_name), "daily", start, end)
    assert [local(d, zone).date() for d in due] == [day - timedelta(days=1), day,
                                                     day + timedelta(days=1)]
    assert all((local(d, zone).hour, local(d, zone).minute) == (3, 0) for d in due)
    offsets = {local(d, zone).utcoffset() for d in due}
    assert len(offsets) == 2, "the offset changed in between, the local time did not"
    assert due[2] - due[0] == (47 if (zone_name, day) in SPRING else 49) * HOUR_MS


@pytest.mark.parametrize(("zone_name", "day"), SPRING + AUTUMN)
@pytest.mark.parametrize("expression", ["30 2 * * *", "0 * * * *", "*/20 * * * *",
                                        "30 1 * * *", "15 3 * * *"])
def test_asking_from_any_moment_of_the_day_gives_the_same_next_tick(
        zone_name: str, day: date, expression: str) -> None:
    """A Beat that starts (or reloads) at any moment, the repeated hour included, computes the
    same next tick as one that ran all day: nothing in the repeated hour runs twice."""
    schedule = Schedule(cron=expression, timezone=zone_name)
    _, start, end = day_bounds(zone_name, day)
    due = fires(schedule, "svc", start - HOUR_MS, end + 2 * 86_400_000)
    for probe in range(start - HOUR_MS, end, 7 * 60_000 + 13_000):
        expected = next(d for d in due if d > probe)
        assert schedule.next_fire_ms("svc", probe) == expected, local(probe, ZoneInfo(zone_name))


def test_cron_in_utc_by_default_and_with_jitter_per_slot() -> None:
    schedule = Schedule(cron="0 3 * * *")
    assert schedule.timezone == "UTC"
    due = schedule.next_fire_ms("daily", T0)
    assert datetime.fromtimestamp(due / 1000, ZoneInfo("UTC")).hour == 3
    jittered = Schedule(cron="0 3 * * *", jitter_seconds=600)
    day = fires(schedule, "daily", T0, T0 + 10 * 86_400_000)
    later = fires(jittered, "daily", T0, T0 + 11 * 86_400_000)[:10]
    assert all(0 <= b - a < 600_000 for a, b in zip(day, later, strict=True))


# -- catch-up plans -------------------------------------------------------------------------------


def slots_of(schedule: Schedule, name: str, count: int) -> list[int]:
    due = [schedule.next_fire_ms(name, T0)]
    while len(due) < count:
        due.append(schedule.next_fire_ms(name, due[-1]))
    return due


@pytest.mark.parametrize("policy", ["latest", "skip", "all"])
@pytest.mark.parametrize("late_ms", [0, 1, 1500, int(ON_TIME_SECONDS * 1000)])
def test_on_time_is_one_tick_whatever_the_policy(policy: str, late_ms: int) -> None:
    schedule = Schedule(every_seconds=60, catchup=policy)
    due, following = slots_of(schedule, "svc", 2)
    assert schedule.plan("svc", due, due + late_ms) == ([due], following)


@pytest.mark.parametrize(("policy", "sent"), [("latest", [2]), ("skip", []),
                                              ("all", [0, 1, 2])])
def test_three_missed_slots_by_policy(policy: str, sent: list[int]) -> None:
    schedule = Schedule(every_seconds=60, catchup=policy)
    slots = slots_of(schedule, "svc", 4)
    now = slots[2] + 5_000
    ticks, following = schedule.plan("svc", slots[0], now)
    assert ticks == [slots[i] for i in sent]
    assert following == slots[3] > now


def test_latest_sends_nothing_when_the_newest_missed_slot_is_outside_the_window() -> None:
    schedule = Schedule(every_seconds=600, catchup_window_seconds=60)
    slots = slots_of(schedule, "svc", 4)
    assert schedule.plan("svc", slots[0], slots[2] + 59_000) == ([slots[2]], slots[3])
    assert schedule.plan("svc", slots[0], slots[2] + 61_000) == ([], slots[3])


def test_one_slot_later_than_on_time_is_a_missed_slot() -> None:
    for policy, expected in (("latest", True), ("skip", False), ("all", True)):
        schedule = Schedule(every_seconds=600, catchup=policy)
        due, following = slots_of(schedule, "svc", 2)
        late = due + int(ON_TIME_SECONDS * 1000) + 1
        assert schedule.plan("svc", due, late) == (([due] if expected else []), following)


def test_all_replays_at_most_the_limit_newest_slots_oldest_first() -> None:
    schedule = Schedule(every_seconds=1, catchup="all")
    slots = slots_of(schedule, "svc", CATCHUP_ALL_LIMIT * 3)
    now = slots[-2] + 10
    ticks, following = schedule.plan("svc", slots[0], now)
    assert len(ticks) == CATCHUP_ALL_LIMIT
    assert ticks == slots[-CATCHUP_ALL_LIMIT - 1:-1], "the newest missed ones, oldest first"
    assert following == slots[-1] > now


@pytest.mark.parametrize("policy", ["latest", "skip", "all"])
@pytest.mark.parametrize("behind_ms", [0, 999, 60_000, 3_600_000, 86_400_000 * 3])
@pytest.mark.parametrize("kwargs", [{"every_seconds": 7}, {"every_seconds": 0.1},
                                    {"cron": "*/5 * * * *", "jitter_seconds": 30}])
def test_the_next_due_time_is_always_after_now(policy: str, behind_ms: int,
                                               kwargs: dict[str, object]) -> None:
    """Nothing missed comes back as a burst: the due time after a plan is in the future."""
    schedule = Schedule(catchup=policy, **kwargs)  # type: ignore[arg-type]
    due = last_due_at_or_before(schedule, "svc", T0 - behind_ms)
    ticks, following = schedule.plan("svc", due, T0)
    assert following > T0
    assert ticks == sorted(set(ticks)) and all(due <= t <= T0 for t in ticks)
    assert len(ticks) <= CATCHUP_ALL_LIMIT


def last_due_at_or_before(schedule: Schedule, name: str, at_ms: int) -> int:
    due = schedule.next_fire_ms(name, at_ms - 400_000)
    while (following := schedule.next_fire_ms(name, due)) <= at_ms:
        due = following
    assert due <= at_ms
    return due


def test_a_long_outage_costs_the_plan_a_bounded_amount_of_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = Schedule(every_seconds=0.1, catchup="all")
    calls = Counter[str]()
    real = Schedule._next_slot_ms

    def counted(self: Schedule, name: str, after_ms: int) -> int:
        calls["slot"] += 1
        return real(self, name, after_ms)

    monkeypatch.setattr(Schedule, "_next_slot_ms", counted)
    due = schedule.next_fire_ms("svc", T0 - 86_400_000)
    calls.clear()
    ticks, following = schedule.plan("svc", due, T0)
    assert len(ticks) == CATCHUP_ALL_LIMIT and following > T0
    assert calls["slot"] <= 10 * CATCHUP_ALL_LIMIT, calls


# -- layers: the live override --------------------------------------------------------------------


def test_no_override_is_the_base_itself() -> None:
    base = Schedule(cron="0 3 * * *", timezone="Europe/Berlin")
    assert effective(base, None) is base
    assert effective(base, {}) is base
    assert base.source == "code"


def test_an_override_interval_replaces_a_cron_and_the_rest_is_kept() -> None:
    base = Schedule(cron="0 3 * * *", timezone="Europe/Berlin", jitter_seconds=5,
                    catchup="skip")
    live = effective(base, {"every_seconds": 30})
    assert (live.every_seconds, live.cron, live.source) == (30, None, "live")
    assert (live.timezone, live.jitter_seconds, live.catchup) == ("Europe/Berlin", 5, "skip")


def test_an_override_cron_replaces_an_interval() -> None:
    base = Schedule(every_seconds=10)
    live = effective(base, {"cron": "*/5 * * * *", "timezone": "America/New_York"})
    assert (live.every_seconds, live.cron, live.timezone, live.source) == (
        None, "*/5 * * * *", "America/New_York", "live")
    assert live.next_fire_ms("svc", T0) % 300_000 == 0


def test_an_override_of_other_fields_keeps_the_timing() -> None:
    base = Schedule(every_seconds=10)
    live = effective(base, {"jitter_seconds": 2, "catchup": "all",
                            "catchup_window_seconds": 5, "every_seconds": None,
                            "unknown": "ignored"})
    assert (live.every_seconds, live.cron) == (10, None)
    assert (live.jitter_seconds, live.catchup, live.catchup_window_seconds) == (2, "all", 5)
    assert live.source == "live"
    assert live.signature() != base.signature(), "jitter moves the due times"
    assert effective(base, {"catchup": "skip"}).signature() == base.signature()


def test_a_bad_override_raises() -> None:
    with pytest.raises(ScheduleError, match="Mars/Olympus"):
        effective(Schedule(every_seconds=10), {"cron": "0 3 * * *", "timezone": "Mars/Olympus"})
    with pytest.raises(ScheduleError, match="'10'"):
        effective(Schedule(every_seconds=10), {"every_seconds": "10"})


def test_from_registration_reads_what_a_worker_registered() -> None:
    registration = {"interval_seconds": 15.0, "cron": None, "timezone": "UTC",
                    "jitter_seconds": 1.0, "catchup": "skip", "catchup_window_seconds": 0.0}
    schedule = from_registration(registration)
    assert (schedule.every_seconds, schedule.cron, schedule.catchup) == (15.0, None, "skip")
    assert schedule.catchup_window_seconds == 0.0, "a zero window is kept, not the default"
    cron = from_registration({**registration, "cron": "0 3 * * *", "timezone": "Asia/Tokyo"})
    assert (cron.every_seconds, cron.cron, cron.timezone) == (None, "0 3 * * *", "Asia/Tokyo")
    # A registration from a worker before cron existed: only the interval.
    old = from_registration({"interval_seconds": 60})
    assert (old.every_seconds, old.timezone, old.jitter_seconds, old.catchup,
            old.catchup_window_seconds) == (60.0, "UTC", 0.0, DEFAULT_CATCHUP,
                                            DEFAULT_CATCHUP_WINDOW_SECONDS)


def test_describe_and_signature() -> None:
    assert Schedule(every_seconds=10).describe() == "every 10s"
    assert Schedule(cron="0 3 * * *", timezone="Europe/Berlin", jitter_seconds=90,
                    catchup="all").describe() == (
        "cron 0 3 * * * (Europe/Berlin), jitter 90s, catchup all")
    assert Schedule(every_seconds=10).signature() == Schedule(
        every_seconds=10, catchup="skip", source="live").signature()
    assert Schedule(every_seconds=10).signature() != Schedule(every_seconds=11).signature()


# -- bad values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"every_seconds": 0.05}, ["interval", "0.05", "0.1"]),
    ({"every_seconds": 0}, ["interval", "0", "0.1"]),
    ({"every_seconds": -10}, ["interval", "-10"]),
    ({"every_seconds": math.nan}, ["interval", "nan"]),
    ({"every_seconds": math.inf}, ["interval", "inf"]),
    ({"every_seconds": 2e9}, ["interval", "2000000000", "1e+09"]),
    ({"every_seconds": True}, ["interval", "True"]),
    ({"cron": "61 * * * *"}, ["'61 * * * *'", "five fields"]),
    ({"cron": "* * *"}, ["'* * *'", "minute hour day-of-month month day-of-week"]),
    ({"cron": "every day"}, ["'every day'", "five fields"]),
    ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, ["'Mars/Olympus'", "IANA"]),
    ({"every_seconds": 10, "timezone": ""}, ["''", "IANA"]),
    ({"every_seconds": 10, "jitter_seconds": -1}, ["jitter", "-1"]),
    ({"every_seconds": 10, "jitter_seconds": math.nan}, ["jitter", "nan"]),
    ({"every_seconds": 10, "jitter_seconds": 86_401}, ["jitter", "86401", "1d"]),
    ({"every_seconds": 10, "catchup": "sometimes"}, ["catchup", "'sometimes'",
                                                     "latest, skip, all"]),
    ({"every_seconds": 10, "catchup_window_seconds": -5}, ["catchup window", "-5"]),
    ({"every_seconds": 10, "cron": "0 3 * * *"}, ["exactly one"]),
    ({}, ["exactly one"]),
])
def test_bad_values_name_the_value_and_what_was_expected(kwargs: dict[str, object],
                                                         named: list[str]) -> None:
    with pytest.raises(ScheduleError) as info:
        Schedule(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    for part in named:
        assert part in message, (part, message)


def test_schedule_error_is_a_value_error() -> None:
    assert issubclass(ScheduleError, ValueError)


# -- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (10, "10s"), (1.5, "1.5s"), (0.1, "0.1s"), (90, "90s"), (60, "1m"), (120, "2m"),
    (3600, "1h"), (5400, "90m"), (86400, "1d"), (172800, "2d"), (0, "0s"), (86401, "86401s"),
])
def test_seconds_text_and_back(seconds: float, text: str) -> None:
    assert seconds_text(seconds) == text
    assert parse_seconds(text, "interval") == seconds


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("45", 45), ("1.5m", 90), ("2h", 7200), ("1d", 86400), ("0.25", 0.25),
    ("1e3", 1000),
])
def test_parse_seconds(text: str, seconds: float) -> None:
    assert parse_seconds(text, "jitter") == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "m", "1h30m", "nan", "inf",
                                  "1e999s", "-infm"])
def test_parse_seconds_refuses_what_is_not_a_finite_duration(text: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_seconds(text, "catchup window")
    assert "catchup window" in str(info.value) and repr(text) in str(info.value)


@pytest.mark.parametrize("seconds", [1_234_567.0, 43_200.125, 100_000.5])
def test_seconds_text_round_trips_every_allowed_duration(seconds: float) -> None:
    assert parse_seconds(seconds_text(seconds), "interval") == seconds


# -- what a tick tells the worker -----------------------------------------------------------------


@pytest.mark.parametrize(("period", "gap"), [(10, 9), (60, 59), (2, 1.5), (0.2, 0.15),
                                             (86_400, 86_399)])
def test_the_duplicate_window_is_the_period_less_a_slack(period: float, gap: float) -> None:
    assert tick_gap(period) == pytest.approx(gap)


def test_on_time_and_catch_up_ticks_are_told_apart() -> None:
    schedule = Schedule(every_seconds=60, catchup="all")
    slots = slots_of(schedule, "svc", 4)
    on_time, _ = schedule.plan("svc", slots[0], slots[0] + 100)
    assert not is_catchup(on_time, slots[0], slots[0] + 100)
    late = slots[0] + int(ON_TIME_SECONDS * 1000) + 1
    assert is_catchup(schedule.plan("svc", slots[0], late)[0], slots[0], late)
    replayed, _ = schedule.plan("svc", slots[0], slots[2] + 10)
    assert replayed == slots[:3] and is_catchup(replayed, slots[0], slots[2] + 10)
