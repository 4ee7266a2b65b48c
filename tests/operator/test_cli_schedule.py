"""``svc schedule`` (show, live change, reset, every kind of bad input), the schedule and the
true next tick in ``svc list`` / ``status``, the Beat line, ``svc trigger`` of a service no
worker registered, and the schedule's metrics, against real Redis.

Services are registered as a worker does (``StateStore.register_services``); the leader Beat's
keys (due set, lease, stats) are written where a test stands in for Beat, through
:class:`services.keys.Keys`, on the test's own prefix. One test runs a real worker and Beat."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from services.keys import Keys
from services.registry import Registry
from services.state import StateStore
from tests.operator.conftest import Svc
from tests.operator.test_metrics import parse
from tests.waiting import wait_for
from worker.ops import actor


def register(store: StateStore, *names: str) -> None:
    """What a worker running ``names`` writes at worker_ready."""
    store.register_services(Registry.discover(["tests.svc_celery"], only=list(names)).configs())


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def snapshot(redis_url: str, prefix: str) -> dict[str, bytes]:
    """Every key under the prefix with its whole value, to prove nothing was written."""
    raw = redis.Redis.from_url(redis_url)
    return {key.decode(): raw.dump(key) for key in sorted(raw.scan_iter(f"{prefix}*"))}


def now_ms(store: StateStore) -> int:
    return int(store.now() * 1000)


def stand_in_for_beat(store: StateStore, *, updated_at: float, leader: str = "7 host:1:abc",
                      **stats: str) -> None:
    """The leader's lease and stats hash, as RedisScheduler writes them."""
    keys = store.keys
    if leader:
        store.client.set(keys.beat_leader(), leader, px=60_000)
    store.client.hset(keys.beat_stats(), mapping={
        "leader": leader, "services": "2", "ticks_sent": "99", "window_ticks": "40",
        "lateness_p50": "0.0021", "lateness_p99": "0.0150", "lateness_max": "0.0400",
        **stats, "updated_at": f"{updated_at:.3f}"})


def row(listing: str, name: str) -> str:
    (line,) = [line for line in listing.splitlines() if line.strip("│┃ ").startswith(name + " ")]
    return line


# -- svc schedule ---------------------------------------------------------------------------


def test_show_set_and_reset_a_live_schedule(svc: Svc, store: StateStore, prefix: str) -> None:
    register(store, "ticker", "failing")
    keys = Keys(prefix)

    shown = svc.json("schedule", "ticker")
    assert shown["service"] == "ticker" and shown["change"] is None
    assert shown["schedule"]["text"] == "every 0.5s" and shown["schedule"]["source"] == "code"
    assert shown["schedule"]["override"] is None and shown["schedule"]["registered"] is True
    assert shown["schedule"]["next_tick_at"] is None  # no Beat scheduled it yet
    text = svc("schedule", "ticker")
    assert text.exit_code == 0, text.output
    assert "every 0.5s" in text.stdout and "not scheduled by a Beat yet" in text.stdout

    version = int(store.client.get(keys.schedule_version()) or 0)
    changed = svc.json("schedule", "ticker", "--every", "30s", "--jitter", "5s",
                       "--reason", "too chatty")
    effective = changed["schedule"]["effective"]
    assert (effective["every_seconds"], effective["jitter_seconds"]) == (30.0, 5.0)
    assert effective["cron"] is None and changed["schedule"]["source"] == "live"
    assert changed["schedule"]["code"]["text"] == "every 0.5s"
    assert changed["change"]["action"] == "schedule" and changed["change"]["by"] == actor()
    # Stored where Beat reads it, and Beat told to reload.
    assert json.loads(store.client.hget(keys.schedules(), "ticker")) == {
        "every_seconds": 30.0, "jitter_seconds": 5.0}
    assert int(store.client.get(keys.schedule_version())) > version
    (entry, *_) = svc.json("audit", "ticker")
    assert (entry["action"], entry["reason"], entry["by"]) == ("schedule", "too chatty", actor())
    assert entry["schedule"] == "every 30s, jitter 5s"
    assert "too chatty" in svc("audit", "ticker").stdout

    # cron with a time zone replaces the interval; the jitter set before stays.
    cron = svc("schedule", "ticker", "--cron", "*/5 * * * *", "--tz", "Europe/Berlin")
    assert cron.exit_code == 0, cron.output
    assert "schedule changed by" in cron.stdout
    assert "cron */5 * * * * (Europe/Berlin), jitter 5s" in cron.stdout
    assert "live override" in cron.stdout and "every 0.5s" in cron.stdout  # and the code's
    stored = json.loads(store.client.hget(keys.schedules(), "ticker"))
    assert stored == {"cron": "*/5 * * * *", "timezone": "Europe/Berlin", "jitter_seconds": 5.0}

    policy = svc.json("schedule", "ticker", "--catchup", "all", "--catchup-window", "2h")
    assert policy["schedule"]["effective"]["catchup"] == "all"
    assert policy["schedule"]["effective"]["catchup_window_seconds"] == 7200.0
    assert policy["schedule"]["effective"]["cron"] == "*/5 * * * *"

    # list and status show the effective schedule, and where it comes from.
    assert "cron */5 * * * * (Europe/Berlin)" in row(svc("list").stdout, "ticker")
    assert "every 1s" in row(svc("list").stdout, "failing")
    detail = svc("status", "ticker")
    assert "(live override; code: every 0.5s)" in detail.stdout, detail.stdout
    status = svc.json("status", "ticker")["service"]["schedule"]
    assert status["source"] == "live" and status["override"]["catchup"] == "all"

    reset = svc.json("schedule", "ticker", "--reset", "--reason", "back to normal")
    assert reset["change"]["action"] == "schedule-reset"
    assert reset["schedule"]["source"] == "code" and reset["schedule"]["override"] is None
    assert store.client.hget(keys.schedules(), "ticker") is None
    assert [e["action"] for e in svc.json("audit", "ticker")] == [
        "schedule-reset", "schedule", "schedule", "schedule"]
    assert svc.json("status", "ticker")["service"]["schedule"]["text"] == "every 0.5s"

    # The installed console script, in its own process.
    proc = svc.run("schedule", "failing", "--every", "1h")
    assert proc.returncode == 0, proc.stderr
    assert "every 1h" in proc.stdout and proc.stderr == ""


BAD_INPUTS: list[tuple[list[str], list[str]]] = [
    (["ticker", "--every", "soon"], ["--every", "a duration like 30s"]),
    (["ticker", "--every", "10ms"], ["--every", "a duration like 30s"]),
    (["ticker", "--every", "0.01s"], ["--every", "interval must be"]),
    (["ticker", "--every", "nan"], ["--every", "finite"]),
    (["ticker", "--cron", "61 * * * *"], ["--cron", "is invalid", "five fields"]),
    (["ticker", "--cron", "every day"], ["--cron", "five fields"]),
    (["ticker", "--cron", "* * * * *", "--tz", "Mars/Base"], ["--tz", "IANA name", "Mars/Base"]),
    (["ticker", "--jitter", "-1s"], ["--jitter", "jitter must be from 0 to 1d"]),
    (["ticker", "--jitter", "2d"], ["--jitter", "jitter must be from 0 to 1d"]),
    (["ticker", "--catchup", "sometimes"], ["--catchup", "latest, skip, all"]),
    (["ticker", "--catchup-window", "forever"], ["--catchup-window", "a duration"]),
    (["ticker", "--every", "5s", "--cron", "* * * * *"], ["--every and --cron"]),
    (["ticker", "--every", "5s", "--tz", "UTC"], ["--tz applies to cron schedules"]),
    (["ticker", "--tz", "UTC"], ["--tz applies to cron schedules", "every 0.5s"]),
    (["ticker", "--reset", "--every", "5s"], ["--reset", "--every"]),
    (["ticker", "--reason", "why"], ["--reason goes with a change"]),
    (["ticker", "--every", "5s", "--reason", "r" * 501], ["--reason", "at most 500"]),
    (["slow", "--every", "5s"], ["'slow'", "no worker has registered"]),
    (["slow", "--reset"], ["'slow'", "no worker has registered"]),
    (["nosuch", "--every", "5s"], ["unknown service 'nosuch'"]),
    (["Ticker", "--every", "5s"], ["'Ticker' is invalid"]),
]


@pytest.mark.parametrize(("args", "says"), BAD_INPUTS,
                         ids=[" ".join(a)[:40] for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
        svc: Svc, store: StateStore, prefix: str, redis_url: str, args: list[str],
        says: list[str]) -> None:
    register(store, "ticker", "failing")  # slow stays known from code only
    store.client.hset(Keys(prefix).schedules(), "ticker", json.dumps({"jitter_seconds": 1.0}))
    before = snapshot(redis_url, prefix)
    proc = svc.run("schedule", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = one_line(proc.stderr)
    assert line.startswith("svc: ")
    for text in says:
        assert text in line, line
    assert proc.stdout == ""
    assert snapshot(redis_url, prefix) == before


# -- svc trigger ----------------------------------------------------------------------------


def test_trigger_of_a_service_no_worker_registered_is_refused(
        svc: Svc, store: StateStore, prefix: str, redis_client: redis.Redis) -> None:
    register(store, "ticker")

    def broker_keys() -> list[str]:
        return sorted(redis_client.scan_iter(f"{prefix}-broker:*"))

    for names in (["slow"], ["ticker", "slow"]):
        proc = svc.run("trigger", *names)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        line = one_line(proc.stderr)
        assert "cannot trigger 'slow'" in line and "no worker has registered it" in line
        assert "nothing was sent" in line and proc.stdout == ""
        assert broker_keys() == [], "a tick was sent"

    # A registered one still goes out (and lands on the broker: the check above can fail).
    sent = svc.json("trigger", "ticker")
    assert sent[0]["service"] == "ticker" and sent[0]["task_id"]
    wait_for(broker_keys, 5, "the tick on the broker")


# -- list, status and the Beat line ---------------------------------------------------------


def test_list_and_status_read_the_next_tick_from_the_due_set(
        svc: Svc, store: StateStore, prefix: str) -> None:
    register(store, "ticker", "failing")
    keys = Keys(prefix)
    now = now_ms(store)
    # A tick accepted just now: the old rule (last tick + interval) would say in 0.5 s.
    store.client.hset(keys.state("ticker"), "last_tick_at", now)
    due = now + 3_000_000  # 50 minutes: what Beat says, whatever the interval
    store.client.zadd(keys.due(), {"ticker": due})

    listed = {s["name"]: s for s in svc.json("list")["services"]}
    assert listed["ticker"]["next_tick_at"] == due / 1000
    assert listed["ticker"]["schedule"]["next_tick_at"] == due / 1000
    assert listed["ticker"]["schedule"]["text"] == "every 0.5s"
    assert listed["failing"]["next_tick_at"] is None
    assert listed["slow"]["next_tick_at"] is None
    assert listed["slow"]["schedule"]["registered"] is False
    table = svc("list").stdout
    assert "every 0.5s" in row(table, "ticker") and "(in 50m)" in row(table, "ticker"), table
    assert "not scheduled by a Beat yet" in row(table, "failing")
    assert "no worker registered it" in row(table, "slow")
    assert "(in 50m)" in svc("status", "ticker").stdout
    assert svc.json("status", "ticker")["service"]["next_tick_at"] == due / 1000

    # Beat's due time was computed from another schedule: svc says it is being rescheduled.
    store.client.hset(keys.due_signature(), "ticker", json.dumps([60.0, None, "UTC", 0.0]))
    assert "Beat reschedules at its next poll" in svc("status", "ticker").stdout
    assert svc.json("schedule", "ticker")["schedule"]["reschedule_pending"] is True


def test_status_shows_the_leader_beat_and_its_lateness(svc: Svc, store: StateStore,
                                                       prefix: str) -> None:
    register(store, "ticker")
    first = svc("status")
    assert first.exit_code == 0, first.output
    assert "beat: no leader Beat" in first.stdout
    assert svc.json("status")["beat"]["leader"] is None

    stand_in_for_beat(store, updated_at=store.now())
    text = svc("status").stdout
    assert "beat: leader host:1:abc (token 7)" in text, text
    assert "tick lateness over the last minute: p50 2ms, p99 15ms, max 40ms (40 ticks)" in text
    assert "STALE" not in text
    beat = svc.json("status")["beat"]
    assert beat["leader"] == "host:1:abc" and beat["fence"] == "7"
    assert beat["lateness"] == {"p50": 0.0021, "p99": 0.015, "max": 0.04}
    assert beat["stats_stale"] is False and beat["ticks_sent"] == 99

    # Stats nobody updated for a minute are flagged, in both forms.
    stand_in_for_beat(store, updated_at=store.now() - 60)
    assert "STALE: stats last written 60s ago" in svc("status").stdout
    assert svc.json("status")["beat"]["stats_stale"] is True

    # A leader that sent nothing in the last minute says so rather than showing zeros.
    stand_in_for_beat(store, updated_at=store.now(), lateness_p50="", lateness_p99="",
                      lateness_max="")
    assert "no tick sent in the last minute" in svc("status").stdout

    store.client.delete(Keys(prefix).beat_leader())
    assert "beat: no leader Beat" in svc("status").stdout


# -- metrics --------------------------------------------------------------------------------


def samples_of(svc: Svc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = svc("metrics", "--once")
    assert result.exit_code == 0, result.output
    return parse(result.stdout)


def lateness(samples: dict[Any, float]) -> dict[str, float]:
    return {dict(labels)["quantile"]: value for (name, labels), value in samples.items()
            if name == "svc_tick_lateness_seconds"}


def test_metrics_show_the_leader_lateness_and_next_ticks(svc: Svc, store: StateStore,
                                                        prefix: str) -> None:
    register(store, "ticker", "failing")
    quiet = samples_of(svc)
    assert quiet[("svc_beat_leader", ())] == 0
    assert lateness(quiet) == {}
    assert ("svc_next_tick_timestamp_seconds", (("service", "ticker"),)) not in quiet
    assert quiet[("svc_running", (("service", "ticker"),))] == 1  # the existing ones stay

    due = now_ms(store) + 42_000
    store.client.zadd(Keys(prefix).due(), {"ticker": due})
    stand_in_for_beat(store, updated_at=store.now())
    busy = samples_of(svc)
    assert busy[("svc_beat_leader", ())] == 1
    assert lateness(busy) == {"0.5": 0.0021, "0.99": 0.015, "1": 0.04}
    assert busy[("svc_next_tick_timestamp_seconds", (("service", "ticker"),))] == due / 1000
    assert ("svc_next_tick_timestamp_seconds", (("service", "failing"),)) not in busy

    # Stale stats are not exported as if a Beat were measuring now.
    stand_in_for_beat(store, updated_at=store.now() - 60)
    assert lateness(samples_of(svc)) == {}


# -- a live change reaches a real Beat ------------------------------------------------------


@pytest.mark.celery
def test_a_live_change_reaches_beat_and_shows_as_the_next_tick(make_cluster, svc_for) -> None:
    cluster = make_cluster(["ticker"])
    cluster.worker("w1")
    cluster.beat()
    svc: Svc = svc_for(cluster)
    store = cluster.store()
    wait_for(lambda: store.read("ticker").runs >= 2, 30, "ticker to run")
    beat = wait_for(lambda: (b := svc.json("status")["beat"])["leader"] and b, 20, "a leader")
    assert beat["stats_stale"] is False

    # Every hour, on a cron slot: Beat moves the due time, and svc shows Beat's, not a guess.
    svc.json("schedule", "ticker", "--cron", "0 * * * *", "--reason", "hourly is enough")

    def moved() -> dict[str, Any] | None:
        found = svc.json("schedule", "ticker")
        info = found["schedule"]
        due = info["next_tick_at"]
        return found if due and due > found["now"] + 1 and not info[
            "reschedule_pending"] else None

    found = wait_for(moved, 20, "Beat to reschedule ticker")
    due = found["schedule"]["next_tick_at"]
    assert round(due) % 3600 == 0 and due <= found["now"] + 3600, due  # the next full hour
    assert svc.json("list")["services"][0]["next_tick_at"] == due


# -- the schedule's keys holding the wrong type ---------------------------------------------

WRONG_TYPES = [
    ("due", ["list"], "expected a zset"),
    ("due", ["schedule", "ticker"], "expected a zset"),
    ("due_signature", ["status", "ticker"], "expected a hash"),
    ("schedules", ["status"], "expected a hash"),
    ("schedules", ["schedule", "ticker", "--every", "5s"], "expected a hash"),
    ("beat_stats", ["status"], "expected a hash"),
]


@pytest.mark.parametrize(("kind", "command", "says"), WRONG_TYPES,
                         ids=[f"{k}:{' '.join(c)}" for k, c, _ in WRONG_TYPES])
def test_a_schedule_key_of_the_wrong_type_is_one_line_naming_it(
        svc: Svc, store: StateStore, prefix: str, redis_url: str, kind: str,
        command: list[str], says: str) -> None:
    register(store, "ticker")
    key = getattr(Keys(prefix), kind)()
    store.client.set(key, "x")
    before = snapshot(redis_url, prefix)
    result = svc(*command)
    assert result.exit_code == 1, result.output
    line = one_line(result.stderr)
    assert f"Redis key '{key}' is a string, {says}" in line, line
    assert snapshot(redis_url, prefix) == before


# -- svc forget ------------------------------------------------------------------------------


def test_forget_drops_the_registration_and_override_audited(
        svc: Svc, store: StateStore, prefix: str) -> None:
    register(store, "ticker", "slow")
    assert svc("schedule", "ticker", "--every", "5s").exit_code == 0
    version = store.client.get(store.keys.schedule_version())

    result = svc("forget", "ticker", "--reason", "removed from the code")
    assert result.exit_code == 0, result.output
    assert "ticker: forgotten by" in result.stdout and "removed from the code" in result.stdout
    assert sorted(store.registered()) == ["slow"]
    assert store.client.hget(store.keys.schedules(), "ticker") is None
    # Beat reloads on the new version and unschedules it.
    assert store.client.get(store.keys.schedule_version()) != version
    (entry, *_) = store.audit("ticker")
    assert (entry["action"], entry["reason"]) == ("forget", "removed from the code")

    # Forgetting it again: nothing is registered, so one line, exit 2, nothing written.
    before = snapshot(svc.env["REDIS_URL"], prefix)
    proc = svc.run("forget", "ticker")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "no worker registered it" in one_line(proc.stderr)
    assert snapshot(svc.env["REDIS_URL"], prefix) == before
