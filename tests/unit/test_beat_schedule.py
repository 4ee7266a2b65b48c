"""What a tick is (``svc.<name>``, its id, its expiry and queue), and Beat's RedisScheduler run
in this process against real Redis: one leader among Beats, fenced sends, release on close,
and the schedule reloaded when registrations change.

Ticks are counted in two ways: the broker's own queue list in Redis (under the test's broker
prefix, ``SVC_BROKER_PREFIX``), which holds every message any Beat sent, and an observing
wrapper around each Beat's ``app.send_task`` (it calls the real one), which says which Beat
sent it."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import redis
from celery import Celery

from beat_schedule import (
    MIN_TICK_EXPIRES_SECONDS,
    build_routes,
    service_queues,
    task_name,
    tick_expires,
    tick_id,
    tick_message_options,
    tick_options,
)
from beat_schedule.scheduler import RedisScheduler
from beat_schedule.store import Resolved, ScheduleStore
from services.AbstractService import AbstractService
from services.config import resolve_config
from services.registry import Registry, ServiceSpec
from services.schedule import Schedule
from services.settings import Settings, get_settings
from services.state import StateStore
from tests.waiting import wait_for
from worker.sender import make_sender


class Hourly(AbstractService):
    name = "hourly"
    interval_seconds = 3600.0

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


class Quick(AbstractService):
    name = "quick"
    interval_seconds = 0.25

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


class Queued(AbstractService):
    name = "queued.reports"
    interval_seconds = 10.0
    queue: ClassVar[str | None] = "reports"

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


def registry_of(*classes: type[AbstractService], environ: dict[str, str] | None = None) -> Registry:
    return Registry(specs={
        cls.name: ServiceSpec(cls, resolve_config(cls, environ=environ or {}), "test")
        for cls in classes if cls.name})


# -- what a tick is -----------------------------------------------------------------------------


def test_task_names() -> None:
    assert task_name("ticker") == "svc.ticker"
    assert task_name("queued.reports") == "svc.queued.reports"


def test_a_tick_id_is_the_service_and_its_due_time() -> None:
    assert tick_id("reports", 1_790_000_000_123) == "tick:reports@1790000000123"
    assert tick_id("queued.reports", 5) != tick_id("queued.reports", 6)
    assert tick_id("a", 5) == tick_id("a", 5), "every Beat names one tick alike"


def test_ticks_expire_after_one_interval_with_a_floor_for_short_intervals() -> None:
    assert tick_expires(resolve_config(Hourly, environ={})) == 3600.0
    assert tick_expires(resolve_config(Queued, environ={})) == 10.0
    # A 0.25 s tick expiring after 0.25 s would be dropped by a small clock skew.
    assert tick_expires(resolve_config(Quick, environ={})) == MIN_TICK_EXPIRES_SECONDS


@pytest.mark.parametrize("interval", [0.3, 1.0, 2.0, 2.5, 60.0])
def test_expiry_is_never_shorter_than_the_interval(interval: float) -> None:
    config = resolve_config(Hourly, environ={"SVC_HOURLY_INTERVAL_SECONDS": str(interval)})
    assert tick_expires(config) >= interval
    assert tick_expires(config) == max(interval, MIN_TICK_EXPIRES_SECONDS)
    assert tick_options(config) == {"expires": max(interval, MIN_TICK_EXPIRES_SECONDS)}


def test_a_service_that_names_a_queue_is_routed_and_sent_there() -> None:
    registry = registry_of(Hourly, Quick, Queued)
    assert build_routes(registry) == {"svc.queued.reports": {"queue": "reports"}}
    assert service_queues(registry) == ["reports"]
    assert service_queues(registry_of(Hourly)) == []
    assert tick_options(resolve_config(Queued, environ={})) == {"expires": 10.0,
                                                                "queue": "reports"}
    assert tick_options(resolve_config(Hourly, environ={})) == {"expires": 3600.0}


def test_queues_are_named_once_and_sorted() -> None:
    other = type("Other", (Queued,), {"name": "other.reports"})
    mail = type("Mail", (Queued,), {"name": "mail", "queue": "mail"})
    registry = registry_of(Queued, other, mail, Hourly)
    assert service_queues(registry) == ["mail", "reports"]
    assert build_routes(registry) == {"svc.queued.reports": {"queue": "reports"},
                                      "svc.other.reports": {"queue": "reports"},
                                      "svc.mail": {"queue": "mail"}}


def test_no_services_no_routes() -> None:
    assert build_routes(Registry()) == {}
    assert service_queues(Registry()) == []


def test_a_beat_tick_expires_when_the_next_one_is_due_and_goes_to_its_queue() -> None:
    every = Resolved(Schedule(every_seconds=60), None)
    assert tick_message_options(every, 1_000_000, 1_060_000) == {"expires": 60.0}
    assert tick_message_options(every, 1_000_000, 1_000_500) == {
        "expires": MIN_TICK_EXPIRES_SECONDS}
    queued = Resolved(Schedule(cron="0 3 * * *"), "reports")
    assert tick_message_options(queued, 0, 86_400_000) == {"expires": 86_400.0,
                                                           "queue": "reports"}
    # Whatever Beat puts in a message must survive the JSON serializer.
    json.dumps(tick_message_options(queued, 0, 86_400_000))


# -- RedisScheduler in this process, against real Redis -----------------------------------------

INTERVAL = 0.2


class Fast(AbstractService):
    interval_seconds = INTERVAL

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


@dataclass
class Beat:
    scheduler: RedisScheduler
    app: Celery
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def tick(self) -> float:
        return self.scheduler.tick()

    @property
    def leading(self) -> bool:
        return self.scheduler.lease.leading

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.scheduler.close()
            self.app.close()


@pytest.fixture
def settings(prefix: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The process's settings on this test's prefix (state keys and the broker's own keys)."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.setenv("SVC_KEY_PREFIX", prefix)
    monkeypatch.setenv("SVC_BROKER_PREFIX", f"{prefix}-broker:")
    monkeypatch.setenv("SVC_BEAT_LEASE_SECONDS", "3")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def beats(settings: Settings) -> Iterator[Callable[[], Beat]]:
    made: list[Beat] = []

    def make() -> Beat:
        app = make_sender(settings)
        app.conf.result_expires = None  # no backend_cleanup entry of Celery's own
        beat = Beat(RedisScheduler(app=app), app)
        real = app.send_task

        def observed(name: str, *args: Any, **kwargs: Any) -> Any:
            result = real(name, *args, **kwargs)
            beat.sent.append({"task": name, "id": kwargs.get("task_id"),
                              **(kwargs.get("kwargs") or {})})
            return result

        app.send_task = observed  # type: ignore[method-assign]
        made.append(beat)
        return beat

    yield make
    for beat in made:
        beat.close()


def queued(redis_client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every message in the broker's default queue, oldest first: task, id, kind and slot."""
    found = []
    # kombu's Redis transport pushes on the left and pops on the right.
    for raw in reversed(redis_client.lrange(f"{prefix}-broker:celery", 0, -1)):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        found.append({"task": message["headers"]["task"], "id": message["headers"]["id"],
                      **kwargs})
    return found


def of(messages: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["task"] == f"svc.{name}"]


def register(store: StateStore, *names: str) -> None:
    store.register_services({
        name: resolve_config(Fast, environ={}, name=name).as_dict() for name in names})


def redis_ms(store: StateStore) -> int:
    return int(store.now() * 1000)


def tick_for(store: StateStore, beats: list[Beat], ms: int) -> None:
    """Let every Beat run passes until ``ms`` of Redis's time went by."""
    start = redis_ms(store)

    def passes() -> bool:
        for beat in beats:
            beat.tick()
        return redis_ms(store) - start >= ms

    wait_for(passes, 10 + ms / 1000, f"{ms} ms of passes")


def lead(store: StateStore, beat: Beat, redis_client: redis.Redis, prefix: str,
         others: tuple[Beat, ...] = ()) -> None:
    """Tick until ``beat`` leads and has sent a tick."""
    def led() -> bool:
        beat.tick()
        for other in others:
            other.tick()
        return beat.leading and bool(queued(redis_client, prefix))

    wait_for(led, 15, "the first Beat to lead and send")


def test_of_two_beats_one_leads_and_the_other_sends_nothing(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    first, second = beats(), beats()
    lead(store, first, redis_client, prefix, others=(second,))
    wait_for(lambda: (first.tick(), second.tick(), len(queued(redis_client, prefix)) >= 5)[2],
             15, "five ticks")
    assert first.leading and not second.leading
    assert second.sent == [], "the standby sent nothing"
    messages = queued(redis_client, prefix)
    assert [m["id"] for m in messages] == [m["id"] for m in first.sent]
    slots = [m["slot"] for m in messages]
    assert slots == sorted(set(slots)), "each slot once, in order"
    schedule = Schedule(every_seconds=INTERVAL)
    assert all(schedule.next_fire_ms("alpha", slot - 1) == slot for slot in slots), (
        "every tick is stamped with a slot of the service's schedule")
    assert all(m["id"] == tick_id("alpha", m["slot"]) for m in messages)
    assert ScheduleStore(store).leader() == first.scheduler.lease.value
    assert second.scheduler.lease.seen_leader == first.scheduler.lease.value


def test_a_deposed_leader_stands_by_without_raising_and_leads_again_later(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    leader_key = store.keys.beat_leader()
    redis_client.set(leader_key, "999 intruder:1:ffffff", px=60_000)
    before = len(queued(redis_client, prefix))
    beat.tick()
    assert not beat.leading
    tick_for(store, [beat], int(INTERVAL * 1000 * 5))
    assert len(queued(redis_client, prefix)) == before, "nothing sent while deposed"
    assert redis_client.get(leader_key) == "999 intruder:1:ffffff"
    redis_client.delete(leader_key)
    wait_for(lambda: (beat.tick(), len(queued(redis_client, prefix)) > before)[1], 15,
             "the Beat to lead and send again")
    assert beat.leading and beat.scheduler.lease.fence == "2"


def test_a_leader_deposed_between_poll_and_send_sends_nothing(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    """The send path's fence: the lease is checked again where due times advance."""
    register(store, "alpha")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    scripts = beat.scheduler.state.scripts
    seen: dict[str, Any] = {}

    def poll_then_lose_the_lease(**kwargs: Any) -> Any:
        reply = scripts.beat_poll(**kwargs)
        if reply[3] and not seen:  # something is due: another Beat takes over right now
            redis_client.set(store.keys.beat_leader(), "999 intruder:1:ffffff", px=60_000)
            seen.update(queued=len(queued(redis_client, prefix)),
                        due=ScheduleStore(store).due_times())
        return reply

    beat.scheduler.state.scripts = dataclasses.replace(scripts,
                                                       beat_poll=poll_then_lose_the_lease)
    wait_for(lambda: (beat.tick(), bool(seen))[1], 15, "a pass with something due")
    assert not beat.leading
    assert len(queued(redis_client, prefix)) == seen["queued"], "nothing sent"
    assert ScheduleStore(store).due_times() == seen["due"], "no due time moved"


def test_closing_the_leader_lets_the_standby_take_over_at_its_next_pass(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    first, second = beats(), beats()
    lead(store, first, redis_client, prefix, others=(second,))
    assert not second.leading
    first.close()
    assert redis_client.exists(store.keys.beat_leader()) == 0, "released, not left to expire"
    second.tick()
    assert second.leading
    wait_for(lambda: (second.tick(), bool(second.sent))[1], 15, "the new leader to send")
    slots = [m["slot"] for m in queued(redis_client, prefix)]
    assert slots == sorted(set(slots)), "the new leader picks up where the old one stopped"


def test_a_new_registration_is_scheduled_within_one_pass(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    schedules = ScheduleStore(store)
    version = int(schedules.version())
    assert schedules.due_time("beta") is None
    register(store, "beta")
    assert int(schedules.version()) > version, "a registration bumps the version"
    beat.tick()
    due = schedules.due_time("beta")
    assert due is not None
    assert Schedule(every_seconds=INTERVAL).next_fire_ms("beta", due - 1) == due
    assert redis_client.hget(store.keys.due_signature(), "beta") == Schedule(
        every_seconds=INTERVAL).signature()
    wait_for(lambda: (beat.tick(), of(queued(redis_client, prefix), "beta"))[1], 15,
             "a tick of the new service")


def test_a_removed_registration_is_unscheduled(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha", "beta")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    wait_for(lambda: (beat.tick(), of(queued(redis_client, prefix), "beta"))[1], 15,
             "a tick of beta")
    with redis_client.pipeline() as pipe:
        pipe.hdel(store.keys.index(), "beta")
        pipe.incr(store.keys.schedule_version())
        pipe.execute()
    beat.tick()
    schedules = ScheduleStore(store)
    assert schedules.due_time("beta") is None
    assert redis_client.hget(store.keys.due_signature(), "beta") is None
    assert schedules.due_time("alpha") is not None
    sent = len(of(queued(redis_client, prefix), "beta"))
    tick_for(store, [beat], int(INTERVAL * 1000 * 5))
    assert len(of(queued(redis_client, prefix), "beta")) == sent
    assert len(of(queued(redis_client, prefix), "alpha")) > 1


def test_a_live_override_moves_the_due_time_within_one_pass(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    schedules = ScheduleStore(store)
    live, _ = schedules.set_override("alpha", {"every_seconds": 3600}, who="test")
    assert live.source == "live"
    before = redis_ms(store)
    beat.tick()
    due = schedules.due_time("alpha")
    assert due is not None and due > before
    assert Schedule(every_seconds=3600).next_fire_ms("alpha", due - 1) == due
    sent = len(queued(redis_client, prefix))
    tick_for(store, [beat], int(INTERVAL * 1000 * 5))
    # At most the one hourly slot that might fall into this second; never the old rate.
    assert len(queued(redis_client, prefix)) - sent <= 1


def test_a_reload_cut_short_by_losing_the_lease_is_done_again_on_leading_again(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    scripts = beat.scheduler.state.scripts
    cut: list[bool] = []

    def poll_then_lose_the_lease(**kwargs: Any) -> Any:
        reply = scripts.beat_poll(**kwargs)
        if str(reply[2]) != beat.scheduler.version and not cut:
            redis_client.set(store.keys.beat_leader(), "999 intruder:1:ffffff", px=60_000)
            cut.append(True)
        return reply

    beat.scheduler.state.scripts = dataclasses.replace(scripts,
                                                       beat_poll=poll_then_lose_the_lease)
    register(store, "beta")
    beat.tick()
    assert cut and not beat.leading
    redis_client.delete(store.keys.beat_leader())
    wait_for(lambda: (beat.tick(), beat.leading)[1], 10, "leading again")
    wait_for(lambda: (beat.tick(), ScheduleStore(store).due_time("beta"))[1], 3,
             "beta to be scheduled")


def test_a_redis_outage_mid_leadership_is_an_outage_not_a_crash(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    client = beat.scheduler.state.client
    reachable = client.connection_pool
    # Nothing listens on port 1: from here on this Beat finds Redis unreachable.
    client.connection_pool = redis.ConnectionPool(
        **{**reachable.connection_kwargs, "port": 1, "socket_connect_timeout": 1})
    reachable.disconnect()
    try:
        assert beat.scheduler.lease.leading
        delay = beat.tick()
        assert 0 <= delay <= 1
    finally:
        client.connection_pool.disconnect()
        client.connection_pool = reachable


def test_a_schedule_key_of_the_wrong_type_is_logged_once_and_beat_goes_on(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis, prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    register(store, "alpha")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    due = store.keys.due()
    saved = redis_client.zrange(due, 0, -1, withscores=True)
    redis_client.delete(due)
    redis_client.set(due, "not a sorted set")  # a hand edit: SET where ZADD belonged
    try:
        with caplog.at_level("ERROR"):
            for _ in range(3):
                assert 0 <= beat.tick() <= 1  # no exception out of tick(): Beat lives
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1, errors  # logged once, not per pass
        assert "wrong Redis type" in errors[0].getMessage()
    finally:
        redis_client.delete(due)
        redis_client.zadd(due, dict(saved))
    sent_before = len(beat.sent)
    wait_for(lambda: beat.tick() is not None and len(beat.sent) > sent_before, 10,
             "ticks again once the key is fixed")


def test_forgetting_the_last_service_unschedules_it_for_good(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    ScheduleStore(store).forget("alpha", who="test", reason="removed from the code")
    beat.tick()
    assert ScheduleStore(store).due_time("alpha") is None
    tick_for(store, [beat], int(INTERVAL * 1000 * 3))
    assert store.registered() == {}  # not put back as if Redis had lost it
    assert ScheduleStore(store).due_time("alpha") is None


def test_registrations_lost_with_redis_data_are_put_back(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    # What a FLUSHDB does to this prefix: every key gone, the version counter too.
    for key in redis_client.scan_iter(f"{prefix}:*"):
        redis_client.delete(key)
    wait_for(lambda: (beat.tick(), ScheduleStore(store).due_time("alpha"))[1], 15,
             "Beat to schedule alpha again")
    assert sorted(store.registered()) == ["alpha"]


def test_a_hand_edited_override_of_any_shape_costs_only_its_own_service(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha", "beta")
    beat = beats()
    lead(store, beat, redis_client, prefix)
    for bad in ('{"cron": 5}', '{"timezone": {"a": 1}, "cron": "* * * * *"}', '[1, 2]', 'nope'):
        redis_client.hset(store.keys.schedules(), "beta", bad)
        redis_client.incr(store.keys.schedule_version())
        sent = len(of(queued(redis_client, prefix), "alpha"))
        tick_for(store, [beat], int(INTERVAL * 1000 * 3))
        assert len(of(queued(redis_client, prefix), "alpha")) > sent, bad  # alpha goes on
        assert ScheduleStore(store).due_time("beta") is not None, bad  # beta on its code


def test_a_standby_that_leads_after_redis_lost_its_data_puts_the_registrations_back(
        store: StateStore, beats: Callable[[], Beat], redis_client: redis.Redis,
        prefix: str) -> None:
    register(store, "alpha")
    leader, standby = beats(), beats()
    lead(store, leader, redis_client, prefix, others=(standby,))
    standby.tick()  # a standby's pass: it notes what workers registered
    assert not standby.leading
    leader.close()
    for key in redis_client.scan_iter(f"{prefix}:*"):  # FLUSHDB of this prefix
        redis_client.delete(key)
    wait_for(lambda: (standby.tick(), ScheduleStore(store).due_time("alpha"))[1], 15,
             "the standby to lead and schedule alpha again")
    assert sorted(store.registered()) == ["alpha"]


def test_two_overrides_at_once_both_land(store: StateStore, redis_client: redis.Redis,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    register(store, "alpha")
    schedules = ScheduleStore(store)
    read = ScheduleStore._base_and_override
    raced: list[bool] = []

    def read_then_another_change_lands(self: ScheduleStore, name: str) -> Any:
        found = read(self, name)
        if not raced:  # another operator's --catchup lands between this read and the write
            raced.append(True)
            ScheduleStore(store).set_override(name, {"catchup": "skip"}, who="other")
        return found

    monkeypatch.setattr(ScheduleStore, "_base_and_override", read_then_another_change_lands)
    schedule, _ = schedules.set_override("alpha", {"jitter_seconds": 0.1}, who="me")
    assert (schedule.jitter_seconds, schedule.catchup) == (0.1, "skip")
    stored = json.loads(redis_client.hget(store.keys.schedules(), "alpha"))
    assert stored == {"catchup": "skip", "jitter_seconds": 0.1}
    assert [e["by"] for e in store.audit("alpha")] == ["me", "other"]
