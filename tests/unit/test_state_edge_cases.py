"""Corrupt values and interrupted round trips: each is refused or survived, never a crash
loop and never a connection left a reply behind."""

from __future__ import annotations

import pytest
import redis

from services.AbstractService import AbstractService
from services.config import resolve_config
from services.errors import ServiceConfigError, StateCorruptError
from services.state import RunTicket, StateStore


class Quiet(AbstractService):
    name = "quiet"
    interval_seconds = 1.0

    def _configure_service(self) -> None:
        pass

    async def update(self) -> None:
        pass


def begin(store: StateStore, name: str) -> object:
    return store.begin(name, kind="tick", max_runs=1, tick_gap_seconds=0.5)


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
    channel = store._per_process()[2]
    original = channel._read

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as a signal handler or a soft time limit would, mid-call

    channel._read = interrupted
    with pytest.raises(KeyboardInterrupt):
        begin(store, "cut")
    channel._read = original
    # Without the fix the renew below reads the guard's unread reply (a list, so "renewed").
    stranger = RunTicket("cut", "nobody@nowhere:1", 1, 0, "tick")
    assert store.renew(stranger) is False
    ticket = begin(store, "other").ticket
    assert ticket is not None and store.renew(ticket) is True


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
