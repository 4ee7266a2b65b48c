"""The Beat scripts against real Redis, through ``Scripts.register``: the leader lease with its
fencing token (beat_lease.lua), the fenced compare-and-set of due times (beat_advance.lua) and
the one-round-trip poll (beat_poll.lua), each as its KEYS/ARGV header says."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from services.keys import Keys
from services.scripts import Scripts
from tests.waiting import wait_for


@pytest.fixture
def scripts(redis_client: redis.Redis) -> Scripts:
    return Scripts.register(redis_client)


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


def lease(scripts: Scripts, keys: Keys, op: str, holder: str,
          lease_ms: int = 60_000) -> tuple[int, str]:
    held, value = scripts.beat_lease(keys=[keys.beat_leader(), keys.beat_fence()],
                                     args=[op, holder, lease_ms])
    return int(held), str(value)


def advance(scripts: Scripts, keys: Keys, value: str, *changes: tuple[Any, Any, Any, Any]
            ) -> list[str]:
    flat = [part for change in changes for part in change]
    return [str(part) for part in scripts.beat_advance(
        keys=[keys.beat_leader(), keys.due(), keys.due_signature()],
        args=[value, len(changes), *flat])]


def poll(scripts: Scripts, keys: Keys, limit: int = 100) -> tuple[int, str, str,
                                                                  list[tuple[str, int]], str]:
    now_ms, leader, version, flat, next_ms = scripts.beat_poll(
        keys=[keys.beat_leader(), keys.schedule_version(), keys.due()], args=[limit])
    due = [(str(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
    return int(now_ms), str(leader), str(version), due, str(next_ms)


def redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


# -- beat_lease -----------------------------------------------------------------------------------


def test_a_claim_takes_a_new_fencing_token_each_time(scripts: Scripts, keys: Keys,
                                                     redis_client: redis.Redis) -> None:
    assert lease(scripts, keys, "claim", "host-a:1:aa") == (1, "1 host-a:1:aa")
    assert redis_client.get(keys.beat_leader()) == "1 host-a:1:aa"
    assert 0 < redis_client.pttl(keys.beat_leader()) <= 60_000
    assert lease(scripts, keys, "release", "1 host-a:1:aa") == (0, "")
    assert lease(scripts, keys, "claim", "host-b:2:bb") == (1, "2 host-b:2:bb")
    assert lease(scripts, keys, "release", "2 host-b:2:bb") == (0, "")
    # The same Beat claiming again still gets a token no claim had before.
    assert lease(scripts, keys, "claim", "host-a:1:aa") == (1, "3 host-a:1:aa")
    assert redis_client.get(keys.beat_fence()) == "3"


def test_a_claim_is_refused_while_the_lease_is_held(scripts: Scripts, keys: Keys,
                                                    redis_client: redis.Redis) -> None:
    held, value = lease(scripts, keys, "claim", "a")
    assert held == 1
    assert lease(scripts, keys, "claim", "b") == (0, value)
    assert lease(scripts, keys, "claim", "a") == (0, value), "not even its holder claims twice"
    assert redis_client.get(keys.beat_fence()) == "1", "a refused claim takes no token"


def test_only_the_holder_renews(scripts: Scripts, keys: Keys,
                                redis_client: redis.Redis) -> None:
    _, value = lease(scripts, keys, "claim", "a", lease_ms=60_000)
    for stranger in ("1 b", "2 a", "a", ""):
        assert lease(scripts, keys, "renew", stranger, lease_ms=600_000) == (0, value)
    assert redis_client.pttl(keys.beat_leader()) <= 60_000, "a stranger extended nothing"
    assert lease(scripts, keys, "renew", value, lease_ms=600_000) == (1, value)
    assert redis_client.pttl(keys.beat_leader()) > 60_000


def test_only_the_holder_releases(scripts: Scripts, keys: Keys,
                                  redis_client: redis.Redis) -> None:
    _, value = lease(scripts, keys, "claim", "a")
    assert lease(scripts, keys, "release", "1 b") == (0, value)
    assert lease(scripts, keys, "release", "a") == (0, value), "the holder's name is no value"
    assert redis_client.get(keys.beat_leader()) == value
    assert lease(scripts, keys, "release", value) == (0, "")
    assert redis_client.exists(keys.beat_leader()) == 0
    # Released twice, or renewed after the release: nothing held, nothing changed.
    assert lease(scripts, keys, "release", value) == (0, "")
    assert lease(scripts, keys, "renew", value) == (0, "")
    assert redis_client.exists(keys.beat_leader()) == 0


def test_a_lapsed_lease_is_claimed_by_another_and_its_old_holder_cannot_renew(
        scripts: Scripts, keys: Keys) -> None:
    _, old = lease(scripts, keys, "claim", "a", lease_ms=300)
    assert lease(scripts, keys, "claim", "b", lease_ms=60_000) == (0, old)
    held, new = wait_for(lambda: (r := lease(scripts, keys, "claim", "b", 60_000))[0] and r,
                         10, "the lease to lapse and b to claim it")
    assert (held, new) == (1, "2 b")
    assert lease(scripts, keys, "renew", old) == (0, new), "the deposed leader learns who leads"
    assert lease(scripts, keys, "release", old) == (0, new)


def test_an_unknown_op_is_an_error_naming_the_ops(scripts: Scripts, keys: Keys) -> None:
    with pytest.raises(redis.ResponseError, match="claim, renew or release"):
        lease(scripts, keys, "steal", "a")


# -- beat_advance ---------------------------------------------------------------------------------


@pytest.fixture
def leader(scripts: Scripts, keys: Keys) -> str:
    held, value = lease(scripts, keys, "claim", "leader:1:aa")
    assert held
    return value


def due_set(client: redis.Redis, keys: Keys) -> dict[str, int]:
    return {name: int(score) for name, score in
            client.zrange(keys.due(), 0, -1, withscores=True)}


def test_a_deposed_caller_changes_nothing_and_learns_the_leader(
        scripts: Scripts, keys: Keys, leader: str, redis_client: redis.Redis) -> None:
    redis_client.zadd(keys.due(), {"a": 1000})
    redis_client.hset(keys.due_signature(), "a", "sig-a")
    changes = [("a", 1000, 5000, "new"), ("b", "", 6000, "sig-b"), ("a", 1000, "", "")]
    for stale in ("0 old:1:aa", "leader:1:aa", "", "2 leader:1:aa"):
        assert advance(scripts, keys, stale, *changes) == ["deposed", leader]
    assert due_set(redis_client, keys) == {"a": 1000}
    assert redis_client.hgetall(keys.due_signature()) == {"a": "sig-a"}
    # Nobody leads at all: still deposed, and the leader is ''.
    lease(scripts, keys, "release", leader)
    assert advance(scripts, keys, leader, *changes) == ["deposed", ""]
    assert due_set(redis_client, keys) == {"a": 1000}


def test_each_change_is_a_compare_and_set_on_the_due_time_read(
        scripts: Scripts, keys: Keys, leader: str, redis_client: redis.Redis) -> None:
    redis_client.zadd(keys.due(), {"a": 1000, "b": 2000, "c": 3000})
    reply = advance(scripts, keys, leader, ("a", 1000, 5000, ""), ("b", 1999, 6000, ""),
                    ("c", "3000", "7000", ""), ("ghost", 4000, 8000, ""))
    assert reply == ["ok", "a", "c"], "b moved in between and ghost is not scheduled"
    assert due_set(redis_client, keys) == {"a": 5000, "b": 2000, "c": 7000}


def test_an_empty_expected_due_adds_only_when_absent(
        scripts: Scripts, keys: Keys, leader: str, redis_client: redis.Redis) -> None:
    redis_client.zadd(keys.due(), {"a": 1000})
    redis_client.hset(keys.due_signature(), "a", "sig-a")
    reply = advance(scripts, keys, leader, ("new", "", 9000, "sig-new"),
                    ("a", "", 9999, "sig-other"))
    assert reply == ["ok", "new"]
    assert due_set(redis_client, keys) == {"a": 1000, "new": 9000}
    assert redis_client.hgetall(keys.due_signature()) == {"a": "sig-a", "new": "sig-new"}
    # Added again with '' expected: it is present now, so nothing changes.
    assert advance(scripts, keys, leader, ("new", "", 1, "x")) == ["ok"]
    assert due_set(redis_client, keys)["new"] == 9000


def test_an_empty_new_due_unschedules_and_drops_the_signature(
        scripts: Scripts, keys: Keys, leader: str, redis_client: redis.Redis) -> None:
    redis_client.zadd(keys.due(), {"a": 1000, "b": 2000})
    redis_client.hset(keys.due_signature(), mapping={"a": "sig-a", "b": "sig-b"})
    assert advance(scripts, keys, leader, ("a", 1000, "", ""), ("b", 1, "", "")) == ["ok", "a"]
    assert due_set(redis_client, keys) == {"b": 2000}
    assert redis_client.hgetall(keys.due_signature()) == {"b": "sig-b"}


def test_an_empty_signature_leaves_the_signature_and_a_new_one_replaces_it(
        scripts: Scripts, keys: Keys, leader: str, redis_client: redis.Redis) -> None:
    redis_client.zadd(keys.due(), {"a": 1000})
    redis_client.hset(keys.due_signature(), "a", "sig-a")
    assert advance(scripts, keys, leader, ("a", 1000, 2000, "")) == ["ok", "a"]
    assert redis_client.hget(keys.due_signature(), "a") == "sig-a"
    assert advance(scripts, keys, leader, ("a", 2000, 3000, "sig-b")) == ["ok", "a"]
    assert redis_client.hget(keys.due_signature(), "a") == "sig-b"
    assert due_set(redis_client, keys) == {"a": 3000}


def test_no_changes_is_ok(scripts: Scripts, keys: Keys, leader: str) -> None:
    assert advance(scripts, keys, leader) == ["ok"]


def test_due_times_of_real_size_keep_every_millisecond(
        scripts: Scripts, keys: Keys, leader: str, redis_client: redis.Redis) -> None:
    due = 1_790_000_000_123
    assert advance(scripts, keys, leader, ("a", "", due, "s")) == ["ok", "a"]
    assert advance(scripts, keys, leader, ("a", due + 1, due + 10_001, "")) == ["ok"]
    assert advance(scripts, keys, leader, ("a", due, due + 10_001, "")) == ["ok", "a"]
    assert due_set(redis_client, keys) == {"a": due + 10_001}


# -- beat_poll ------------------------------------------------------------------------------------


def test_poll_returns_the_due_services_oldest_first_and_the_next_due_time(
        scripts: Scripts, keys: Keys, leader: str, redis_client: redis.Redis) -> None:
    now = redis_ms(redis_client)
    redis_client.zadd(keys.due(), {"old": now - 5_000, "older": now - 10_000,
                                   "soon": now + 60_000, "later": now + 120_000,
                                   "oldest": now - 86_400_000})
    before = redis_ms(redis_client)
    now_ms, polled_leader, version, due, next_ms = poll(scripts, keys)
    after = redis_ms(redis_client)
    assert before <= now_ms <= after, "Redis's clock"
    assert polled_leader == leader
    assert version == "0", "no version yet"
    assert due == [("oldest", now - 86_400_000), ("older", now - 10_000), ("old", now - 5_000)]
    assert int(float(next_ms)) == now + 60_000


def test_poll_limits_the_due_services_and_the_next_due_time_follows_them(
        scripts: Scripts, keys: Keys, redis_client: redis.Redis) -> None:
    now = redis_ms(redis_client)
    redis_client.zadd(keys.due(), {f"s{i}": now - 10_000 + i for i in range(5)})
    _, polled_leader, _, due, next_ms = poll(scripts, keys, limit=2)
    assert polled_leader == "", "nobody leads"
    assert due == [("s0", now - 10_000), ("s1", now - 9_999)]
    assert int(float(next_ms)) == now - 9_998, "the next one is due already: poll again now"


def test_poll_with_nothing_due(scripts: Scripts, keys: Keys,
                               redis_client: redis.Redis) -> None:
    assert poll(scripts, keys)[3:] == ([], "")
    redis_client.zadd(keys.due(), {"later": redis_ms(redis_client) + 60_000})
    redis_client.incr(keys.schedule_version())
    redis_client.incr(keys.schedule_version())
    _, _, version, due, next_ms = poll(scripts, keys)
    assert (version, due) == ("2", [])
    assert next_ms != ""

