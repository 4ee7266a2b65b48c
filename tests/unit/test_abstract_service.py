"""The seed's AbstractService, on real Redis: its members and their meaning, the loop
(interval, pause, failures, retry delay, max_failures, stop and cleanup), the db session,
and what happens with corrupt or unreachable state."""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

import services
from services import SYSTEM_ID
from services.AbstractService import AbstractService
from services.errors import DatabaseConfigError, StateUnavailableError
from services.keys import Keys
from services.registry import Registry
from services.settings import get_settings
from services.state import StateStore, connect_redis
from tests.fixtures.services import LoopThread, Recorder
from tests.waiting import wait_for

Loops = Callable[[AbstractService], LoopThread]

SEED_MEMBERS = (
    "__init__", "requester_id", "db", "interval_seconds", "max_failures", "retry_delay_seconds",
    "failures", "running", "paused", "_configure_service", "update", "run_service_loop",
    "start", "stop", "pause", "resume", "cleanup", "_handle_failure", "_reset_failures",
)


def oldest_first(store: StateStore, name: str) -> list[dict]:
    return list(reversed(store.history(name, limit=1000)))


def runs(store: StateStore, name: str) -> int:
    return store.read(name).runs


def wait_redis_time_past(store: StateStore, moment: float, message: str) -> None:
    """Wait (with a deadline) until the Redis clock, which stamps every run, passes
    ``moment``."""
    wait_for(lambda: store.now() > moment, timeout=20, message=message)


# -- the seed's API -----------------------------------------------------------------------------


def test_seed_import_path_and_members_exist(store: StateStore) -> None:
    from services.AbstractService import AbstractService as Imported

    assert Imported is AbstractService
    instance = Recorder(state=store, name="members")
    missing = [m for m in SEED_MEMBERS if not hasattr(instance, m)]
    assert not missing, f"seed members missing: {missing}"
    instance.cleanup()
    assert AbstractService.__abstractmethods__ == {"_configure_service", "update"}
    assert inspect.iscoroutinefunction(AbstractService.update)
    assert inspect.iscoroutinefunction(AbstractService.run_service_loop)
    for method in ("start", "stop", "pause", "resume", "cleanup", "_handle_failure",
                   "_reset_failures"):
        assert callable(getattr(AbstractService, method)), method
    params = inspect.signature(AbstractService.__init__).parameters
    for arg in ("interval_seconds", "max_failures", "retry_delay_seconds", "requester_id", "db"):
        assert arg in params, f"__init__ lacks {arg}"
    assert services.SYSTEM_ID == SYSTEM_ID


def test_abstract_methods_must_be_written() -> None:
    with pytest.raises(TypeError):
        AbstractService()  # type: ignore[abstract]

    class NoUpdate(AbstractService):
        def _configure_service(self) -> None:
            pass

    with pytest.raises(TypeError, match="update"):
        NoUpdate()  # type: ignore[abstract]


def test_constructor_arguments_and_defaults(store: StateStore) -> None:
    service = Recorder(2.5, 7, 1.25, state=store, name="ctor")
    assert (service.interval_seconds, service.max_failures, service.retry_delay_seconds) == (
        2.5, 7, 1.25)
    assert service.requester_id == SYSTEM_ID == "system"
    assert Recorder(state=store, name="ctor", requester_id="user-42").requester_id == "user-42"

    defaults = Recorder(state=store)
    assert defaults.name == "recorder"
    assert (defaults.interval_seconds, defaults.max_failures, defaults.retry_delay_seconds) == (
        Recorder.interval_seconds, Recorder.max_failures, Recorder.retry_delay_seconds)


def test_service_id_is_unique_per_instance(store: StateStore) -> None:
    ids = {Recorder(state=store, name="ids").service_id for _ in range(50)}
    assert len(ids) == 50
    assert all("ids" in sid for sid in ids)


def test_configure_service_called_once_at_construction(store: StateStore) -> None:
    service = Recorder(state=store, name="configured")
    assert service.configure_calls == 1
    service.pause()
    service.resume()
    _ = service.running, service.paused, service.failures
    assert service.configure_calls == 1


# -- running, paused and failures live in Redis -------------------------------------------------


def test_fresh_state_defaults_to_running(store: StateStore, redis_client: redis.Redis,
                                         prefix: str) -> None:
    service = Recorder(state=store, name="fresh")
    assert not redis_client.exists(f"{prefix}:fresh")
    assert service.running is True
    assert service.paused is False
    assert service.failures == 0


def test_lifecycle_methods_write_the_documented_hash(store: StateStore, redis_client: redis.Redis,
                                                     prefix: str) -> None:
    one = Recorder(state=store, name="shared")
    other = Recorder(state=StateStore(connect_redis(store.redis_url), Keys(prefix)), name="shared")
    key = f"{prefix}:shared"

    one.pause()
    assert redis_client.hget(key, "paused") == "1"
    assert other.paused is True
    other.resume()
    assert redis_client.hget(key, "paused") == "0"
    assert one.paused is False

    one.stop(reason="maintenance")
    assert redis_client.hget(key, "running") == "0"
    assert other.running is False
    assert "maintenance" in redis_client.hget(key, "stop_reason")

    one.failures = 2
    assert redis_client.hget(key, "failures") == "2"
    assert other.failures == 2
    other.start()
    assert redis_client.hget(key, "running") == "1"
    assert one.running is True
    assert one.failures == 0, "start() clears the failure count"
    assert not redis_client.hexists(key, "stop_reason")

    # the seed's flags can be assigned too
    one.paused = True
    assert other.paused is True
    one.running = False
    assert other.running is False

    actions = [entry["action"] for entry in store.audit("shared", limit=20)]
    assert actions[:4] == ["stop", "pause", "start", "stop"]


def test_plain_redis_flags_are_seen_by_the_instance(store: StateStore,
                                                    redis_client: redis.Redis,
                                                    prefix: str) -> None:
    service = Recorder(state=store, name="plain")
    redis_client.hset(f"{prefix}:plain", mapping={"paused": "1", "failures": "4"})
    assert service.paused is True
    assert service.failures == 4
    redis_client.hset(f"{prefix}:plain", "running", "0")
    assert service.running is False


def test_handle_failure_and_reset_outside_a_run(store: StateStore, redis_client: redis.Redis,
                                                prefix: str) -> None:
    service = Recorder(state=store, name="manual", max_failures=2, retry_delay_seconds=5)
    result = service._handle_failure(RuntimeError("first"))
    assert result is not None and result.failures == 1 and not result.stopped
    assert service.failures == 1
    retry_at = float(redis_client.hget(f"{prefix}:manual", "retry_at"))
    assert retry_at >= store.now() + 4, "a failure backs off for retry_delay_seconds"

    service._reset_failures()
    assert service.failures == 0
    assert not redis_client.hexists(f"{prefix}:manual", "retry_at")

    service._handle_failure(RuntimeError("one"))
    result = service._handle_failure(ValueError("the last straw"))
    assert result is not None and result.stopped
    assert service.running is False
    reason = redis_client.hget(f"{prefix}:manual", "stop_reason")
    assert "max_failures=2" in reason and "ValueError: the last straw" in reason


# -- the database session --------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """DATABASE_URL pointing at a fresh SQLite file, with the cached settings rebuilt."""
    url = f"sqlite:///{tmp_path / 'services.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_db_is_lazy(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "nosuchdialect://user:dbpass@host/db")
    get_settings.cache_clear()
    try:
        service = Recorder(state=store, name="lazy")  # no session, so no error yet
        with pytest.raises(DatabaseConfigError) as info:
            _ = service.db
        assert "dbpass" not in str(info.value)
        service.cleanup()
    finally:
        get_settings.cache_clear()


def test_db_own_session_made_lazily_and_closed_by_cleanup(store: StateStore,
                                                          sqlite_url: str) -> None:
    service = Recorder(state=store, name="dbown")
    session = service.db
    assert isinstance(session, Session)
    assert service.db is session, "the same session until cleanup()"
    assert session.get_bind().url.render_as_string() == sqlite_url
    assert session.execute(text("select 41 + 1")).scalar_one() == 42
    engine = session.get_bind()
    assert engine.pool.checkedout() == 1
    service.cleanup()
    assert engine.pool.checkedout() == 0, "cleanup() closed the session (connection returned)"
    assert not session.in_transaction()
    assert service.db is not session, "after cleanup a new session is made on demand"
    service.cleanup()


def test_db_passed_in_is_used_and_not_closed(store: StateStore, sqlite_url: str) -> None:
    from services.database.sessions import new_session

    external = new_session()
    external.execute(text("select 1"))
    service = Recorder(state=store, name="dbext", db=external)
    assert service.db is external
    service.cleanup()
    assert external.in_transaction(), "the caller owns a session it passed in"
    external.close()


class DbUser(Recorder):
    name = "dbuser"

    def _configure_service(self) -> None:
        super()._configure_service()
        self.sessions: list[Session] = []

    async def update(self) -> None:
        session = self.db
        self.sessions.append(session)
        session.execute(text("select 1"))
        assert self.db is session
        await super().update()


def test_db_inside_a_run_is_a_fresh_session_closed_after_it(store: StateStore, sqlite_url: str,
                                                            loops: Loops) -> None:
    service = DbUser(state=store, interval_seconds=0.1)
    loops(service)
    wait_for(lambda: len(service.sessions) >= 2, timeout=20, message="two runs using self.db")
    service.stop()
    assert all(e["outcome"] == "ok" for e in store.history("dbuser")), store.history("dbuser")
    first, second = service.sessions[:2]
    assert first is not second, "every run gets its own session"
    wait_for(lambda: first.get_bind().pool.checkedout() == 0, timeout=10,
             message="the run's session to be closed")


# -- the loop -------------------------------------------------------------------------------


def test_example_service_is_discovered_and_runs(store: StateStore, loops: Loops,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    registry = Registry.discover(packages=["services"], environ={}, only=[])
    assert "example" in registry.names(), registry.errors
    spec = registry.get("example")
    assert spec.cls.__name__ == "ExampleService"
    assert spec.cls.__module__ == "services.SVC_Example"
    service = registry.build("example", state=store, interval_seconds=0.1)
    loop = loops(service)
    wait_for(lambda: store.history("example"), timeout=20, message="a run of ExampleService")
    service.stop()
    assert loop.join(10), "the loop ends after stop()"
    assert loop.error is None
    entries = store.history("example")
    assert entries and all(e["outcome"] == "ok" for e in entries)
    assert any("Configuring ExampleService" in r.getMessage() for r in caplog.records)
    assert any("Cleaning up ExampleService" in r.getMessage() for r in caplog.records)


def test_loop_runs_update_every_interval(store: StateStore, loops: Loops) -> None:
    service = Recorder(state=store, name="cadence", interval_seconds=0.2)
    loops(service)
    wait_for(lambda: len(store.history("cadence")) >= 3, timeout=20, message="three runs")
    service.stop()
    history = oldest_first(store, "cadence")
    assert all(e["outcome"] == "ok" for e in history)
    starts = [e["started_at"] for e in history]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # one run per interval: never two runs in the same tick (Redis clock, ms precision)
    assert min(gaps) >= 0.2 - 0.002, gaps


def test_plain_hset_paused_stops_new_runs_and_unpausing_resumes(
        store: StateStore, redis_client: redis.Redis, prefix: str, loops: Loops,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    interval = 0.2
    service = Recorder(state=store, name="pausable", interval_seconds=interval)
    loop = loops(service)
    wait_for(lambda: runs(store, "pausable") >= 2, timeout=20, message="two runs")

    redis_client.hset(f"{prefix}:pausable", "paused", "1")
    paused_at = store.now()
    runs_when_paused = runs(store, "pausable")
    # the guard reads the flag atomically with taking the lease: no run starts after it
    wait_redis_time_past(store, paused_at + 4 * interval, "four intervals of pause")
    wait_for(lambda: any("not running: paused" in r.getMessage() for r in caplog.records),
             timeout=10, message="the loop to notice the pause")
    assert runs(store, "pausable") == runs_when_paused
    late = [e for e in store.history("pausable") if e["started_at"] > paused_at]
    assert not late, f"runs started while paused: {late}"
    assert loop.alive, "paused is not stopped: the loop keeps waiting"

    redis_client.hset(f"{prefix}:pausable", "paused", "0")
    wait_for(lambda: runs(store, "pausable") > runs_when_paused, timeout=20,
             message="runs to resume after HSET paused 0")


def test_pause_from_another_instance_pauses_the_loop(store: StateStore, prefix: str,
                                                     loops: Loops) -> None:
    service = Recorder(state=store, name="remote", interval_seconds=0.1)
    loops(service)
    wait_for(lambda: runs(store, "remote") >= 1, timeout=20, message="a run")
    operator = Recorder(state=StateStore(connect_redis(store.redis_url), Keys(prefix)),
                        name="remote")
    operator.pause()
    paused_at = store.now()
    before = runs(store, "remote")
    wait_redis_time_past(store, paused_at + 0.5, "five intervals")
    assert runs(store, "remote") == before
    operator.resume()
    wait_for(lambda: runs(store, "remote") > before, timeout=20, message="resumed runs")


def test_stop_ends_the_loop_promptly_and_runs_cleanup(store: StateStore, loops: Loops,
                                                      sqlite_url: str) -> None:
    # A long interval: the loop is waiting when stop() comes; it must not sit out the wait.
    service = Recorder(state=store, name="stoppable", interval_seconds=300)
    loop = loops(service)
    wait_for(lambda: store.history("stoppable") and service.run_id is None, timeout=20,
             message="the first run to end")
    session = service.db  # an own session, which cleanup() must close
    session.execute(text("select 1"))
    assert service.cleanup_calls == 0
    service.stop(reason="test")
    assert loop.join(10), "the loop did not end within 10 s of stop() (interval is 300 s)"
    assert loop.error is None
    assert service.cleanup_calls == 1
    assert session.get_bind().pool.checkedout() == 0
    assert service.running is False


def test_stop_from_another_process_view_ends_the_loop(store: StateStore, prefix: str,
                                                      redis_client: redis.Redis,
                                                      loops: Loops) -> None:
    service = Recorder(state=store, name="remotestop", interval_seconds=0.1)
    loop = loops(service)
    wait_for(lambda: runs(store, "remotestop") >= 1, timeout=20, message="a run")
    redis_client.hset(f"{prefix}:remotestop", mapping={"running": "0", "stop_reason": "ops"})
    assert loop.join(10), "the loop ends once Redis says stopped"
    assert service.cleanup_calls == 1


def test_max_failures_stops_with_the_last_error(store: StateStore, redis_client: redis.Redis,
                                                prefix: str, loops: Loops,
                                                caplog: pytest.LogCaptureFixture) -> None:
    service = Recorder(state=store, name="doomed", fail="always", max_failures=3,
                       retry_delay_seconds=0.1, interval_seconds=0.1)
    loop = loops(service)
    assert loop.join(20), "the loop ends by itself at max_failures"
    assert loop.error is None
    state = redis_client.hgetall(f"{prefix}:doomed")
    assert state["running"] == "0"
    # It stops at its max_failures-th failure once the failures span max_failures x
    # retry_delay_seconds (an outage shorter than that never stops a service): here, with
    # the retries retry_delay apart, at the fourth.
    count = int(state["failures"])
    assert count >= 3
    assert "max_failures=3" in state["stop_reason"]
    assert f"RuntimeError: boom #{count}" in state["stop_reason"], state["stop_reason"]
    assert f"boom #{count}" in state["last_error"]
    history = oldest_first(store, "doomed")
    assert [e["outcome"] for e in history] == ["error"] * count
    assert [e["error"].split(" in pid")[0] for e in history] == [
        f"RuntimeError: boom #{n}" for n in range(1, count + 1)]
    assert history[-1]["finished_at"] - history[0]["finished_at"] >= 3 * 0.1 - 0.001
    assert service.cleanup_calls == 1
    assert service.running is False
    # the lifecycle still works once the loop is over
    service.start()
    assert (service.running, service.failures) == (True, 0)
    service.stop()
    assert service.running is False
    # the traceback was logged
    failures = [r for r in caplog.records if "update() failed" in r.getMessage()]
    assert len(failures) == count and all(r.exc_info for r in failures)


def test_a_success_resets_the_failure_count(store: StateStore, redis_client: redis.Redis,
                                            prefix: str, loops: Loops) -> None:
    service = Recorder(state=store, name="flaky", fail="first:2", max_failures=3,
                       retry_delay_seconds=0.1, interval_seconds=0.1)
    loop = loops(service)
    wait_for(lambda: any(e["outcome"] == "ok" for e in store.history("flaky")), timeout=20,
             message="a success after two failures")
    history = oldest_first(store, "flaky")
    assert [e["outcome"] for e in history[:3]] == ["error", "error", "ok"]
    state = redis_client.hgetall(f"{prefix}:flaky")
    assert state["failures"] == "0"
    assert "retry_at" not in state
    assert state.get("running", "1") == "1"
    assert "last_success_at" in state
    assert service.failures == 0
    # and it keeps running: the two failures before do not count toward max_failures
    count = runs(store, "flaky")
    wait_for(lambda: runs(store, "flaky") >= count + 3, timeout=20, message="more runs")
    assert loop.alive
    assert service.running is True


def test_retry_waits_retry_delay_not_interval(store: StateStore, loops: Loops) -> None:
    retry = 0.4
    # interval 300 s: if the retry waited for the interval this would never finish in time
    service = Recorder(state=store, name="retrying", fail="always", max_failures=3,
                       retry_delay_seconds=retry, interval_seconds=300)
    loop = loops(service)
    assert loop.join(20), "attempts retry_delay_seconds apart end the loop"
    history = oldest_first(store, "retrying")
    assert len(history) >= 3
    for failed, retried in itertools.pairwise(history):
        # Redis-clock times, in ms: the retry may not start before the backoff ends
        assert retried["started_at"] - failed["finished_at"] >= retry - 0.001, (failed, retried)


def test_retry_after_failure_honours_backoff_set_by_another_instance(
        store: StateStore, redis_client: redis.Redis, prefix: str, loops: Loops) -> None:
    """A failure recorded elsewhere (retry_at in the future) holds this loop back too."""
    failed = Recorder(state=store, name="backoff", retry_delay_seconds=1.0, max_failures=5)
    failed._handle_failure(RuntimeError("elsewhere"))
    retry_at = float(redis_client.hget(f"{prefix}:backoff", "retry_at"))
    service = Recorder(state=store, name="backoff", interval_seconds=0.1,
                       retry_delay_seconds=1.0, max_failures=5)
    loops(service)

    def loop_runs() -> list[dict]:  # seq 0 is the failure recorded outside any run
        return [e for e in oldest_first(store, "backoff") if e["seq"] > 0]

    wait_for(loop_runs, timeout=20, message="a run after the backoff")
    assert loop_runs()[0]["started_at"] >= retry_at - 0.001


# -- corrupt and missing values ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-inf", "1e999", ""])
def test_non_numeric_failures_is_logged_and_the_loop_keeps_going(
        value: str, store: StateStore, redis_client: redis.Redis, prefix: str, loops: Loops,
        caplog: pytest.LogCaptureFixture) -> None:
    key = f"{prefix}:badcount"
    redis_client.hset(key, "failures", value)
    service = Recorder(state=store, name="badcount", interval_seconds=0.1, fail="first:1",
                       max_failures=3, retry_delay_seconds=0.1)
    assert service.failures == 0
    if value:
        assert any("failures" in r.getMessage() and r.levelno >= logging.WARNING
                   for r in caplog.records), "the unreadable value is logged"
    state = store.read("badcount")
    assert state.failures == 0
    loop = loops(service)
    # a failure, counted from 0, then a success that writes a clean 0
    wait_for(lambda: any(e["outcome"] == "ok" for e in store.history("badcount")),
             timeout=20, message="a success after the corrupt count")
    assert redis_client.hget(key, "failures") == "0"
    assert [e["outcome"] for e in oldest_first(store, "badcount")[:2]] == ["error", "ok"]
    assert loop.alive


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_failures_still_stop_at_max_failures(
        value: str, store: StateStore, redis_client: redis.Redis, prefix: str,
        loops: Loops) -> None:
    """A failure count Redis cannot compare must not keep a failing service retrying
    forever."""
    redis_client.hset(f"{prefix}:nancount", "failures", value)
    service = Recorder(state=store, name="nancount", fail="always", max_failures=2,
                       retry_delay_seconds=0.1, interval_seconds=0.1)
    loop = loops(service)
    assert loop.join(20), "max_failures still stops the loop"
    assert int(redis_client.hget(f"{prefix}:nancount", "failures")) >= 2
    assert redis_client.hget(f"{prefix}:nancount", "running") == "0"


@pytest.mark.parametrize("value", ["xyz", "nan", ""])
def test_non_numeric_retry_at_is_treated_as_unset(value: str, store: StateStore,
                                                  redis_client: redis.Redis, prefix: str,
                                                  loops: Loops,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    redis_client.hset(f"{prefix}:badretry", mapping={"retry_at": value, "failures": "1"})
    decision = store.runs.begin("badretry", kind="loop", max_runs=1, tick_gap_seconds=0)
    assert decision.go, decision
    if value:
        assert decision.warnings == (f"retry_at={value}",)
    store.runs.finish(decision.ticket, error=None, max_failures=3, retry_delay_seconds=0)
    assert store.read("badretry").retry_at is None
    redis_client.hset(f"{prefix}:badretry", "retry_at", value)
    service = Recorder(state=store, name="badretry", interval_seconds=0.1)
    loop = loops(service)
    before = runs(store, "badretry")
    wait_for(lambda: runs(store, "badretry") >= before + 2, timeout=20,
             message="runs despite the unreadable retry_at")
    assert loop.alive
    if value:
        assert any("retry_at" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("field", ["paused", "running"])
def test_unreadable_flag_runs_nothing_logs_and_keeps_looping(
        field: str, store: StateStore, redis_client: redis.Redis, prefix: str, loops: Loops,
        caplog: pytest.LogCaptureFixture) -> None:
    key = f"{prefix}:badflag"
    redis_client.hset(key, field, "maybe")
    decision = store.runs.begin("badflag", kind="loop", max_runs=1, tick_gap_seconds=0)
    assert (decision.verdict, decision.detail) == ("corrupt", f"{field}=maybe")
    assert decision.ticket is None
    assert not redis_client.exists(f"{prefix}:badflag:lease")

    service = Recorder(state=store, name="badflag", interval_seconds=0.1)
    # the safe reading: paused, not running
    assert service.paused is (field == "paused")
    assert service.running is (field != "running")
    started = store.now()
    caplog.set_level(logging.DEBUG, logger="services.runner")
    loop = loops(service)
    # Refused at every pass; said at ERROR once, then at DEBUG (not an ERROR per tick).
    wait_for(lambda: sum("not running" in r.getMessage() and "maybe" in r.getMessage()
                         for r in caplog.records) >= 3,
             timeout=20, message="the loop to keep checking the corrupt flag")
    assert sum(r.levelno >= logging.ERROR and r.name == "services.runner"
               for r in caplog.records) == 1
    wait_redis_time_past(store, started + 0.5, "five intervals")
    assert runs(store, "badflag") == 0, "nothing runs on a flag nobody can read"
    assert loop.alive, "a corrupt flag is no reason to crash"
    assert service.attempts == 0

    redis_client.hset(key, field, "1" if field == "running" else "0")
    wait_for(lambda: runs(store, "badflag") >= 1, timeout=20,
             message="runs once the flag is fixed")


def test_missing_fields_mean_the_defaults(store: StateStore, redis_client: redis.Redis,
                                          prefix: str, loops: Loops) -> None:
    key = f"{prefix}:sparse"
    redis_client.hset(key, mapping={"paused": "1", "running": "0", "failures": "2"})
    redis_client.hdel(key, "paused", "running", "failures")
    service = Recorder(state=store, name="sparse", interval_seconds=0.1)
    assert (service.running, service.paused, service.failures) == (True, False, 0)
    state = store.read("sparse")
    assert (state.running, state.paused, state.failures, state.corrupt) == (True, False, 0, ())
    loops(service)
    wait_for(lambda: runs(store, "sparse") >= 1, timeout=20, message="a run")


def test_corrupt_values_in_read_fall_back_and_are_listed(store: StateStore,
                                                         redis_client: redis.Redis,
                                                         prefix: str,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    redis_client.hset(f"{prefix}:mixed", mapping={
        "failures": "abc", "runs": "inf", "retry_at": "xyz", "paused": "maybe",
        "last_started_at": "nan", "stop_reason": "x"})
    state = store.read("mixed")
    assert state.failures == 0 and state.runs == 0
    assert state.retry_at is None and state.last_started_at is None
    assert state.paused is True, "an unreadable paused flag reads as paused"
    assert set(state.corrupt) == {"failures=abc", "runs=inf", "retry_at=xyz", "paused=maybe",
                                  "last_started_at=nan"}
    assert any("unreadable" in r.getMessage() for r in caplog.records)


# -- Redis unreachable --------------------------------------------------------------------------


def test_unreachable_redis_gives_a_clear_error_without_the_password(
        unreachable_url: str) -> None:
    store = StateStore(connect_redis(unreachable_url), Keys("svc-test-unreachable"),
                       redis_url=unreachable_url)
    service = Recorder(state=store, name="offline")
    attempts = [
        store.ping, lambda: store.read("offline"), lambda: service.running,
        lambda: service.paused, lambda: service.failures, service.pause,
        lambda: store.runs.begin("offline", kind="loop", max_runs=1, tick_gap_seconds=0),
    ]
    for attempt in attempts:
        with pytest.raises(StateUnavailableError) as info:
            attempt()
        message = str(info.value)
        assert "s3cr3t-pw" not in message
        assert "redis://svcuser:***@127.0.0.1:1/0" in message


def test_loop_survives_unreachable_redis_and_stop_still_ends_it(
        unreachable_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(connect_redis(unreachable_url), Keys("svc-test-unreachable"),
                       redis_url=unreachable_url)
    service = Recorder(state=store, name="offline", interval_seconds=0.1,
                       retry_delay_seconds=0.1)
    loop = LoopThread(service).start()
    try:
        wait_for(lambda: sum("cannot reach Redis" in r.getMessage() for r in caplog.records)
                 >= 2, timeout=20, message="the loop to log the outage and try again")
        assert loop.alive, "an outage is no reason to crash"
        assert all("s3cr3t-pw" not in r.getMessage() for r in caplog.records)
        with pytest.raises(StateUnavailableError):
            service.stop()  # the shared stop cannot be recorded, and says so...
        assert loop.join(10), "...but the local loop still ends"
        assert service.cleanup_calls == 1
        assert service.attempts == 0
    finally:
        loop.join(10)
