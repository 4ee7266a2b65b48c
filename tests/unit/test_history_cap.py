"""The run history is capped in bytes as well as in entries (services/lua/history.lua): a
service failing with long errors holds a bounded amount of Redis, whatever its count."""

from __future__ import annotations

import json

import redis

from services.fields import HISTORY_BYTES, Kind
from services.keys import Keys
from services.state import StateStore
from tests.conftest import REDIS_URL

CAP = 4096


def capped_store(prefix: str, history_length: int = 100) -> StateStore:
    return StateStore(redis.Redis.from_url(REDIS_URL, decode_responses=True), Keys(prefix),
                      lease_seconds=3.0, history_length=history_length, history_bytes=CAP,
                      redis_url=REDIS_URL)


def run(store: StateStore, name: str, error: str | None) -> None:
    decision = store.runs.begin(name, kind=Kind.TRIGGER, max_runs=1, tick_gap_seconds=0)
    assert decision.ticket is not None, decision
    store.runs.finish(decision.ticket, error=error, max_failures=1000, retry_delay_seconds=0)
    store.set_failures(name, 0)  # no backoff: the next run starts at once


def stored_bytes(client: redis.Redis, key: str) -> int:
    return sum(len(entry) for entry in client.lrange(key, 0, -1))


def test_long_errors_are_dropped_oldest_first_to_stay_under_the_cap(prefix, redis_client):
    store = capped_store(prefix)
    for attempt in range(30):
        run(store, "noisy", f"RuntimeError: attempt {attempt} " + "x" * 1000)
    key = store.keys.history("noisy")
    entries = [json.loads(e) for e in redis_client.lrange(key, 0, -1)]
    assert 1 < len(entries) < 30, "the byte cap, not the count, trimmed the list"
    assert stored_bytes(redis_client, key) <= CAP
    assert entries[0]["error"].startswith("RuntimeError: attempt 29 "), "the newest stays"
    counted = int(redis_client.hget(store.keys.state("noisy"), HISTORY_BYTES))
    assert counted == stored_bytes(redis_client, key), "the running count is exact"


def test_the_count_still_caps_short_entries(prefix, redis_client):
    store = capped_store(prefix, history_length=5)
    for _ in range(12):
        run(store, "quiet", None)
    assert redis_client.llen(store.keys.history("quiet")) == 5


def test_a_history_without_a_count_is_measured_once(prefix, redis_client):
    """A list written before the byte cap (no history_bytes field) is measured, not taken as
    empty: it is trimmed to the cap at the next run."""
    store = capped_store(prefix)
    key = store.keys.history("old")
    redis_client.lpush(key, *[json.dumps({"outcome": "ok", "pad": "y" * 500})] * 20)
    run(store, "old", None)
    assert stored_bytes(redis_client, key) <= CAP
    assert int(redis_client.hget(store.keys.state("old"), HISTORY_BYTES)) == \
        stored_bytes(redis_client, key)


def test_a_deleted_history_starts_counting_again(prefix, redis_client):
    store = capped_store(prefix)
    for _ in range(3):
        run(store, "wiped", "ValueError: " + "z" * 800)
    redis_client.delete(store.keys.history("wiped"))
    run(store, "wiped", None)
    key = store.keys.history("wiped")
    assert redis_client.llen(key) == 1
    assert int(redis_client.hget(store.keys.state("wiped"), HISTORY_BYTES)) == \
        stored_bytes(redis_client, key)


def test_the_newest_entry_stays_even_when_it_alone_is_over_the_cap(prefix, redis_client):
    store = capped_store(prefix)
    run(store, "huge", None)
    run(store, "huge", "E: " + "w" * (CAP * 2))
    entries = redis_client.lrange(store.keys.history("huge"), 0, -1)
    assert len(entries) == 1 and "w" * 100 in entries[0]


def test_an_entry_removed_behind_the_count_is_measured_again(prefix, redis_client):
    """A finish replacing its run's `lost` entry (LREM), or an older version's LTRIM during a
    rolling upgrade, changes the list without the count: the count must not drift (a count
    too high would keep the history at one entry for good)."""
    store = capped_store(prefix)
    for _ in range(5):
        run(store, "drift", None)
    key = store.keys.history("drift")
    for _ in range(3):  # what an old worker's finish does: LPUSH + LTRIM, no count
        redis_client.lpush(key, json.dumps({"outcome": "ok", "pad": "q" * 900}))
        redis_client.ltrim(key, 0, 4)
        redis_client.lrem(key, 1, redis_client.lindex(key, 2))
    for _ in range(3):
        run(store, "drift", None)
    assert int(redis_client.hget(store.keys.state("drift"), HISTORY_BYTES)) == \
        stored_bytes(redis_client, key)
    assert redis_client.llen(key) > 1
