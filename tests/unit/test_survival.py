"""The guard and the outcome script under faults, one script call at a time on real Redis:
overlapping failures count once per backoff window, a short outage never stops a service, a
probe run after a cooldown, runs whose worker died are recorded as lost, absurd times are
ignored, and a store that lost its data holds what may have been paused or stopped."""

from __future__ import annotations

import redis

from services import durability
from services.runs import Decision, RunTicket
from services.state import StateStore
from tests.waiting import wait_for


def begin(store: StateStore, name: str, kind: str = "trigger", max_runs: int = 5,
          cooldown: float = 0.0) -> Decision:
    return store.runs.begin(name, kind=kind, max_runs=max_runs, tick_gap_seconds=0.0,
                       cooldown_seconds=cooldown)


def fail(store: StateStore, ticket: RunTicket, max_failures: int = 3,
         retry: float = 0.2) -> object:
    return store.runs.finish(ticket, error="ConnectionError: down", max_failures=max_failures,
                        retry_delay_seconds=retry)


def wipe(client: redis.Redis, prefix: str) -> None:
    """What FLUSHDB does to this test's keys (the shared Redis is never flushed)."""
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def fresh_process(store: StateStore) -> None:
    """Forget what this process saw of the services, as a newly forked pool process would,
    keeping the epoch it inherited from the worker's main process."""
    store.memory.seen.clear()


# -- failures per backoff window ------------------------------------------------------------


def test_concurrent_failures_in_one_window_count_once(store: StateStore) -> None:
    tickets = [begin(store, "db").ticket for _ in range(4)]
    assert all(tickets)
    results = [fail(store, t) for t in tickets]  # type: ignore[arg-type]
    assert [r.counted for r in results] == [True, False, False, False]
    assert store.read("db").failures == 1
    history = store.history("db")
    assert [row["counted"] for row in reversed(history)] == [True, False, False, False]


def test_an_outage_shorter_than_max_failures_windows_never_stops(store: StateStore) -> None:
    """Each window's failure counts, but max_failures of them must also span
    max_failures x retry_delay_seconds before the service stops."""
    retry = 0.3
    for attempt in range(3):
        decision = wait_for(lambda: (d := begin(store, "short")).go and d, 10, "backoff end")
        result = fail(store, decision.ticket, max_failures=3, retry=retry)
        assert result.counted and not result.stopped, (attempt, result)
    assert store.read("short").failures == 3 and store.read("short").running
    decision = wait_for(lambda: (d := begin(store, "short")).go and d, 10, "backoff end")
    assert fail(store, decision.ticket, max_failures=3, retry=retry).stopped


def test_a_success_ends_the_window(store: StateStore) -> None:
    fail(store, begin(store, "ok").ticket)  # type: ignore[arg-type]
    decision = wait_for(lambda: (d := begin(store, "ok")).go and d, 10, "backoff end")
    store.runs.finish(decision.ticket, error=None, max_failures=3, retry_delay_seconds=0.2)
    state = store.read("ok")
    assert state.failures == 0 and state.retry_at is None


# -- a probe run after the cooldown ---------------------------------------------------------


def test_a_probe_after_the_cooldown_starts_the_service_again(
        store: StateStore, redis_client: redis.Redis) -> None:
    key = store.keys.state("probe")
    redis_client.hset(key, mapping={"running": 0, "stopped_by": "max_failures",
                                    "stopped_at": f"{store.now():.3f}", "stop_reason": "x"})
    assert begin(store, "probe", cooldown=0.5).verdict == "stopped"
    probe = wait_for(lambda: (d := begin(store, "probe", cooldown=0.5)).go and d, 10,
                     "a probe run after the cooldown")
    assert probe.ticket.kind == "probe"
    # One probe per cooldown: a second tick right away is refused.
    assert begin(store, "probe", cooldown=0.5).verdict == "stopped"
    store.runs.finish(probe.ticket, error=None, max_failures=3, retry_delay_seconds=0.2)
    state = store.read("probe")
    assert state.running and state.stop_reason is None
    assert store.audit("probe")[0]["action"] == "start"
    assert store.history("probe")[0]["kind"] == "probe"


def test_no_probe_after_an_operators_stop(store: StateStore) -> None:
    store.control("manual", "stop", who="ana@ops", reason="maintenance")
    assert begin(store, "manual", cooldown=0.1).verdict == "stopped"
    redis_time = store.now()
    wait_for(lambda: store.now() > redis_time + 0.3, 5, "past the cooldown")
    assert begin(store, "manual", cooldown=0.1).verdict == "stopped"


def test_a_failed_probe_stays_stopped(store: StateStore, redis_client: redis.Redis) -> None:
    redis_client.hset(store.keys.state("still"), mapping={
        "running": 0, "stopped_by": "max_failures", "stopped_at": "1", "failures": 5})
    probe = begin(store, "still", cooldown=0.1)
    assert probe.go
    result = fail(store, probe.ticket)  # type: ignore[arg-type]
    assert not result.counted
    state = store.read("still")
    assert not state.running and state.failures == 5


# -- lost runs -----------------------------------------------------------------------------


def test_a_run_whose_lease_lapsed_is_recorded_as_lost_once(
        store: StateStore, redis_client: redis.Redis) -> None:
    dead = begin(store, "crash").ticket
    assert dead is not None
    redis_client.delete(store.keys.lease("crash"))  # as if the lease had lapsed
    assert begin(store, "crash").go
    assert begin(store, "crash").go
    lost = [row for row in store.history("crash") if row["outcome"] == "lost"]
    assert len(lost) == 1 and lost[0]["run_id"] == dead.run_id
    assert lost[0]["worker"] == dead.token.split("@", 1)[1]
    assert redis_client.hget(store.keys.state("crash"), "runs_lost") == "1"


# -- absurd values ---------------------------------------------------------------------------


def test_a_retry_at_absurdly_far_off_is_ignored_with_a_warning(
        store: StateStore, redis_client: redis.Redis) -> None:
    redis_client.hset(store.keys.state("far"), "retry_at", "1e12")
    decision = begin(store, "far")
    assert decision.go and "retry_at=1e12" in decision.warnings
    state = store.read("far")
    assert state.retry_at is None and "retry_at=1e12" in state.corrupt


# -- a store that lost its data ----------------------------------------------------------------


def test_a_wiped_store_keeps_paused_and_stopped_services_from_running(
        store: StateStore, redis_client: redis.Redis, prefix: str) -> None:
    store.remember_epoch()
    store.control("paused-one", "pause", who="ana@ops")
    store.control("stopped-one", "stop", who="ana@ops")
    for name in ("paused-one", "stopped-one", "running-one"):
        begin(store, name)  # this process sees each one's flags
    before = store.memory.epoch

    wipe(redis_client, prefix)
    assert begin(store, "paused-one").verdict == "paused"
    assert begin(store, "stopped-one").verdict == "stopped"
    assert begin(store, "running-one").go
    epoch = store.epoch_info()
    assert epoch["lost_epoch"] == before and epoch["lost_at"]
    assert store.audit("paused-one")[0]["action"] == "restore"

    # A service nobody remembers (a fresh process) stays held until an operator acts.
    fresh_process(store)
    assert begin(store, "unknown").verdict == "held"
    store.control("unknown", "resume", who="ana@ops")
    assert begin(store, "unknown").go


def test_the_safe_reading_wins_when_processes_disagree(
        store: StateStore, redis_client: redis.Redis, prefix: str) -> None:
    store.remember_epoch()
    begin(store, "svc1")  # this process saw svc1 running
    wipe(redis_client, prefix)
    held = begin(store, "nobody-knows")  # the loss is detected; this one is held
    assert held.verdict == "held"
    # Two processes found svc1 held at once. The other one saw it paused and restored first:
    other = durability.Seen(running=True, paused=True, stop_reason="", at=store.now())
    store.memory.seen["svc1"], mine = other, store.memory.seen["svc1"]
    assert store.restore("svc1", held.epoch) == "restored"
    # This process's memory of it running comes second and cannot unpause it.
    store.memory.seen["svc1"] = mine
    assert store.restore("svc1", held.epoch) == "merged"
    assert store.read("svc1").paused
    assert begin(store, "svc1").verdict == "paused"
    # An operator's action since the loss is never overwritten by a restore.
    store.control("svc1", "resume", who="ana@ops")
    assert store.restore("svc1", held.epoch) == "operator"
    assert begin(store, "svc1").go


def test_a_new_store_is_not_a_lost_one(store: StateStore, prefix: str) -> None:
    durability.memory_for(store.redis_url, store.keys.prefix).epoch = ""
    assert begin(store, "newcomer").go
    assert "lost_at" not in store.epoch_info()


def test_an_epoch_made_anew_by_a_fresh_process_is_still_a_loss(
        store: StateStore, redis_client: redis.Redis, prefix: str) -> None:
    store.remember_epoch()
    store.control("p1", "pause", who="ana@ops")
    begin(store, "p1")
    known = store.memory.epoch
    wipe(redis_client, prefix)
    # A new worker (which knew no epoch) touches the store first and makes a fresh epoch.
    redis_client.hset(store.keys.epoch(), mapping={"id": "fresh", "created_at": "1"})
    assert begin(store, "p1").verdict == "paused"
    assert store.epoch_info()["lost_epoch"] == known


def test_a_pause_seen_later_wins_over_an_earlier_restore(
        store: StateStore, redis_client: redis.Redis, prefix: str) -> None:
    store.remember_epoch()
    begin(store, "x")  # this process saw x paused (below), another saw it running earlier
    store.memory.seen["x"] = durability.Seen(True, True, "", store.now())
    wipe(redis_client, prefix)
    assert begin(store, "other").verdict == "held"  # the loss is recorded
    epoch = store.memory.epoch
    # The other worker restored x first, as running.
    redis_client.hset(store.keys.state("x"), mapping={"epoch": epoch, "running": 1,
                                                      "paused": 0})
    assert begin(store, "x").verdict == "paused"
    assert store.read("x").paused


def test_a_pause_that_survived_the_loss_of_only_the_epoch_stays(
        store: StateStore, redis_client: redis.Redis) -> None:
    store.remember_epoch()
    begin(store, "g")  # seen running
    redis_client.hset(store.keys.state("g"), "paused", 1)  # plain HSET: no audit, no change
    redis_client.delete(store.keys.epoch())
    assert begin(store, "g").verdict == "paused"


def test_an_operators_stop_during_a_probe_stands(store: StateStore,
                                                 redis_client: redis.Redis) -> None:
    redis_client.hset(store.keys.state("pr"), mapping={
        "running": 0, "stopped_by": "max_failures", "stopped_at": "1"})
    probe = begin(store, "pr", cooldown=0.1)
    assert probe.go
    store.control("pr", "stop", who="ana@ops", reason="investigating")
    store.runs.finish(probe.ticket, error=None, max_failures=3, retry_delay_seconds=0.2)
    assert not store.read("pr").running
    assert begin(store, "pr").verdict == "stopped"
