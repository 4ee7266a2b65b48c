"""Health as one function (``services.health.assess``), the heartbeat scripts and the
compare-and-set that makes a transition notified once, against real Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from services.config import ServiceConfig
from services.fields import ServiceState
from services.health import (
    FAILING,
    NO_BEAT,
    NO_WORKER,
    OVERDUE,
    STATE_LOST,
    STOPPED,
    STUCK,
    Health,
    Problem,
    assess,
)
from services.heartbeat import BEAT, WORKER, Heartbeat, Liveness, ProcessInfo, read_liveness
from services.notify import Notifier
from services.schedule import Schedule
from services.settings import load_settings
from services.state import StateStore

NOW = 1_800_000_000.0
CONFIG = ServiceConfig("ticker", interval_seconds=10, max_failures=3, retry_delay_seconds=1,
                       timeout_seconds=20)
EVERY_10S = Schedule(every_seconds=10)


def worker(services: tuple[str, ...] = ("ticker",), queues: tuple[str, ...] = ("celery",),
           alive: bool = True, started: float = NOW - 3600) -> ProcessInfo:
    return ProcessInfo("worker:h:1", WORKER, alive, NOW - 1, "h", "1", started, services, queues)


LIVE = Liveness(NOW, (worker(),), "3 h:2:ab")


def health_of(state: ServiceState, liveness: Liveness = LIVE, **kw: object) -> Health:
    args: dict[str, object] = {"config": CONFIG, "schedule": EVERY_10S, "liveness": liveness,
                               "now": NOW, **kw}
    return assess(state, **args)  # type: ignore[arg-type]


def state(**fields: object) -> ServiceState:
    defaults: dict[str, object] = {"last_success_at": NOW - 5}
    return ServiceState("ticker", **{**defaults, **fields})  # type: ignore[arg-type]


def test_a_service_that_runs_is_ok() -> None:
    found = health_of(state())
    assert found.ok and found.status == "ok" and found.summary() == "ok"
    assert found.deadline == NOW - 5 + 30  # three intervals after the last success


def test_paused_is_healthy_and_says_so_even_with_nothing_alive() -> None:
    found = health_of(state(paused=True, last_success_at=NOW - 9999), Liveness(NOW))
    assert found.ok and found.status == "paused"


def test_stopped_says_who_and_why_and_hides_what_follows_from_it() -> None:
    found = health_of(state(running=False, stop_reason="stopped by ana@ops: disk full",
                            failures=3), Liveness(NOW))
    assert found.codes == (STOPPED,)
    assert found.summary() == "stopped: stopped by ana@ops: disk full"


def test_no_worker_and_no_beat() -> None:
    found = health_of(state(), Liveness(NOW, (worker(alive=False),), None))
    assert found.codes == (NO_BEAT, NO_WORKER)
    assert "0 workers alive" in found.problems[1].detail


@pytest.mark.parametrize("live", [worker(services=("other",)), worker(queues=("elsewhere",))])
def test_a_worker_that_lacks_the_task_or_the_queue_does_not_serve(live: ProcessInfo) -> None:
    found = health_of(state(), Liveness(NOW, (live,), "1 b"))
    assert found.codes == (NO_WORKER,)


def test_overdue_after_three_intervals_without_success() -> None:
    found = health_of(state(last_success_at=NOW - 45))
    assert found.codes == (OVERDUE,)
    assert found.overdue_seconds == pytest.approx(15)


def test_overdue_counts_from_a_resume_not_from_before_the_pause() -> None:
    found = health_of(state(last_success_at=NOW - 9999, changed_at=NOW - 10, change="resume"))
    assert found.ok, found


def test_a_service_that_never_ran_is_measured_from_its_first_registration() -> None:
    assert health_of(state(last_success_at=None, registered_at=NOW - 20)).ok
    late = health_of(state(last_success_at=None, registered_at=NOW - 40))
    assert late.codes == (OVERDUE,)
    assert late.problems[0].detail == "no successful run yet (10s past due)"


def test_a_worker_restart_does_not_move_the_overdue_clock() -> None:
    restarted = Liveness(NOW, (worker(started=NOW - 1),), "1 b")
    assert health_of(state(last_success_at=NOW - 45), restarted).codes == (OVERDUE,)


def test_a_long_run_in_progress_is_not_overdue_unless_the_last_run_ended_badly() -> None:
    running = {"abc@h:1": NOW - 40}  # inside its hard limit (timeout 20 s + grace 60 s)
    kw = {"inflight": running, "hard_limit_grace": 60.0}
    assert health_of(state(last_success_at=NOW - 45), last_outcome="ok", **kw).ok
    # A crash loop always has a run in progress: its last run was lost, so it is overdue.
    crash = health_of(state(last_success_at=NOW - 45), last_outcome="lost", **kw)
    assert crash.codes == (OVERDUE,)


def test_overdue_after_a_cron_slot_plus_grace() -> None:
    daily = Schedule(cron="0 3 * * *")
    config = ServiceConfig("ticker", 60, 3, 1, timeout_seconds=240)
    slot = daily.next_fire_ms("ticker", int((NOW - 2 * 86400) * 1000)) / 1000
    early = Liveness(NOW, (worker(started=slot - 86400),), "1 b")
    kw = {"config": config, "schedule": daily, "liveness": early}
    # The last success was just before a slot: fine until that slot's grace (4 min + 1 min).
    assert health_of(state(last_success_at=slot - 60), now=slot + 299, **kw).ok
    late = health_of(state(last_success_at=slot - 60), now=slot + 301, **kw)
    assert late.codes == (OVERDUE,) and late.overdue_seconds == pytest.approx(1)


def test_overdue_after_seconds_replaces_the_default() -> None:
    config = ServiceConfig("ticker", 10, 3, 1, timeout_seconds=20, overdue_after_seconds=100)
    assert health_of(state(last_success_at=NOW - 45), config=config).ok


def test_failing_until_it_stops() -> None:
    found = health_of(state(failures=2, last_error="RuntimeError: no"))
    assert found.codes == (FAILING,) and found.alert_class == "quiet"
    assert "2/3 consecutive failures; last error: RuntimeError: no" in found.summary()


def test_stuck_past_the_hard_limit() -> None:
    grace = 10.0
    inflight = {"abc@h:1": NOW - 29}
    assert health_of(state(), inflight=inflight, hard_limit_grace=grace).ok
    stuck = health_of(state(), inflight={"abc@h:1": NOW - 31}, hard_limit_grace=grace)
    assert stuck.codes == (STUCK,)
    assert stuck.problems[0].detail.startswith("run abc on h:1 in progress for 31s")


def test_state_lost_comes_first() -> None:
    found = health_of(state(running=False), held=True)
    assert found.codes == (STATE_LOST, STOPPED)


def test_problems_are_worst_first() -> None:
    found = health_of(state(failures=1, last_success_at=NOW - 99), Liveness(NOW))
    assert found.codes == (NO_BEAT, NO_WORKER, OVERDUE, FAILING)
    assert found.status == NO_BEAT


# -- heartbeats ----------------------------------------------------------------------------


def test_heartbeats_appear_list_what_they_serve_and_retire(store: StateStore) -> None:
    settings = load_settings(heartbeat_seconds=5)
    beat = Heartbeat(store, WORKER, settings)
    beat.beat(services=["b", "a"], queues=["celery"], node="w1@h")
    Heartbeat(store, BEAT, settings).beat(role="standby")
    found = read_liveness(store)
    (mine,) = found.alive(WORKER)
    assert mine.services == ("a", "b") and mine.queues == ("celery",)
    assert mine.fields["node"] == "w1@h" and mine.started_at == mine.seen_at
    assert found.alive(BEAT)[0].role == "standby"
    assert 14_000 < store.client.pttl(store.keys.process(mine.id)) <= 15_000
    beat.retire()
    (gone,) = [p for p in read_liveness(store).processes if p.kind == WORKER]
    assert not gone.alive and gone.seen_at >= mine.seen_at


def test_a_heartbeat_expires_on_its_own(store: StateStore) -> None:
    settings = load_settings(heartbeat_seconds=0.1)  # gone 0.3 s after its last beat
    Heartbeat(store, WORKER, settings).beat(services=["a"], queues=["celery"])
    from tests.waiting import wait_for

    wait_for(lambda: not read_liveness(store).alive(WORKER), 5, "the heartbeat to expire")
    assert len(read_liveness(store).processes) == 1  # still listed, as gone


# -- one notification per transition ------------------------------------------------------


def notifier(store: StateStore, seen: list[str], hold: float = 0.0) -> Notifier:
    settings = load_settings(alert_after_seconds=hold)
    return Notifier(store, settings, hook=lambda change: seen.append(change.status))


STOPPED_HEALTH = Health((Problem(STOPPED, "by hand"),))
OVERDUE_HEALTH = Health((Problem(OVERDUE, "late"),))
FAILING_HEALTH = Health((Problem(FAILING, "1/3"),))


def test_each_transition_is_won_once_among_racing_processes(store: StateStore) -> None:
    seen: list[str] = []
    notifiers = [notifier(store, seen) for _ in range(8)]
    won: list[object] = []

    def race(health: Health) -> None:
        barrier = threading.Barrier(len(notifiers))

        def observe(n: Notifier) -> None:
            barrier.wait()
            if n.observe("ticker", health) is not None:
                won.append(health.status)
        threads = [threading.Thread(target=observe, args=(n,)) for n in notifiers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    race(Health())  # ok at first: nothing to say
    race(STOPPED_HEALTH)
    race(STOPPED_HEALTH)  # the same status again: no new transition
    race(Health())
    assert won == ["stopped", "ok"]
    for n in notifiers:
        n.close()
    assert seen == ["stopped", "ok"]


def test_a_blip_shorter_than_the_hold_is_never_notified(store: StateStore) -> None:
    seen: list[str] = []
    n = notifier(store, seen, hold=3600)
    assert n.observe("ticker", OVERDUE_HEALTH) is None
    assert n.observe("ticker", Health()) is None  # recovered before it was ever notified
    # stopped is a fact: notified at once whatever the hold.
    assert n.observe("ticker", STOPPED_HEALTH) is not None


def test_failing_is_notified_only_after_an_alert(store: StateStore) -> None:
    seen: list[str] = []
    n = notifier(store, seen)
    observe: Callable[[Health], object] = lambda h: n.observe("ticker", h)  # noqa: E731
    assert observe(FAILING_HEALTH) is None  # on the way to stopped: not news yet
    assert observe(Health()) is None
    assert observe(STOPPED_HEALTH) is not None
    # Started again and failing again: said, so that the next stop is news again.
    failing = observe(FAILING_HEALTH)
    assert failing is not None and failing.previous == STOPPED
    assert observe(STOPPED_HEALTH) is not None
    assert observe(OVERDUE_HEALTH) is not None
    change = observe(Health())
    assert change is not None and change.previous == OVERDUE and change.recovered
    assert change.text() == "service ticker recovered (was overdue)"


# -- the watch turn ------------------------------------------------------------------------


def test_only_a_process_with_somewhere_to_send_takes_the_watch(store: StateStore,
                                                                prefix: str) -> None:
    from worker.watch import watcher_for

    settings = load_settings(key_prefix=prefix, packages="tests.svc_celery",
                             services="ticker")
    mute = watcher_for(settings, "mute")
    assert mute.maybe_watch() is None
    assert store.client.get(store.keys.health_watch()) is None  # it did not take the turn
    loud = watcher_for(settings, "loud", hook=lambda change: None)
    assert loud.maybe_watch() == 0
    assert store.client.get(store.keys.health_watch()) == "loud"
    for watcher in (mute, loud):
        watcher.op.close()


def test_a_turn_that_never_expires_is_taken_back(store: StateStore, prefix: str) -> None:
    from worker.watch import watcher_for

    settings = load_settings(key_prefix=prefix, packages="tests.svc_celery",
                             services="ticker")
    store.client.set(store.keys.health_watch(), "left by hand")  # no expiry
    watcher = watcher_for(settings, "w1", hook=lambda change: None)
    assert watcher.maybe_watch() is None  # this round: someone else's
    assert watcher.maybe_watch() == 0
    watcher.op.close()


def test_a_heartbeat_time_that_is_not_finite_is_unset(store: StateStore) -> None:
    Heartbeat(store, WORKER, load_settings()).beat(services=["a"], queues=["celery"])
    (mine,) = read_liveness(store).processes
    store.client.hset(store.keys.process(mine.id), "started_at", "nan")
    (found,) = read_liveness(store).processes
    assert found.started_at is None and found.alive
