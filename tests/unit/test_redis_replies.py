"""Replies become text where they enter the store (services.redis_client): a store on a client
made without decode_responses (ours always decode) reads the same state as one that decodes."""

from __future__ import annotations

import redis

from services.fields import Kind, Outcome
from services.keys import Keys
from services.redis_client import scored, text, text_list, text_map
from services.state import StateStore


def test_the_helpers_turn_bytes_into_text_and_leave_text_alone() -> None:
    assert text(b"caf\xc3\xa9") == "café"
    assert text("café") == "café"
    assert text(None) is None
    assert text_list([b"a", "b"]) == ["a", "b"]
    assert text_map({b"k": b"v", "x": "y"}) == {"k": "v", "x": "y"}
    assert scored([(b"m", 1.5), ["n", 2.0]]) == [("m", 1.5), ("n", 2.0)]


def test_a_store_on_a_client_that_does_not_decode_reads_the_same_state(
        store: StateStore, redis_url: str, prefix: str) -> None:
    name = "replies"
    store.register_services({name: {"interval_seconds": 60.0}})
    decision = store.runs.begin(name, kind=Kind.TRIGGER, max_runs=1, tick_gap_seconds=0)
    assert decision.ticket is not None
    store.control(name, "pause", who="tester", reason="why")
    raw = StateStore(redis.Redis.from_url(redis_url), Keys(prefix), redis_url=redis_url)
    try:
        assert raw.read(name) == store.read(name)
        assert raw.flag(name, "paused") is True
        assert raw.failures(name) == store.failures(name)
        assert raw.audit(name) == store.audit(name)
        assert raw.registered() == store.registered()
        assert raw.lease_holders(name) == store.lease_holders(name)
        assert [token for token, _ in raw.lease_holders(name)] == [decision.ticket.token]
        store.runs.finish(decision.ticket, outcome=Outcome.OK, error=None, max_failures=3,
                          retry_delay_seconds=1.0)
        assert raw.history(name) == store.history(name) != []
    finally:
        raw.client.close()
