"""A long-running reader keeps saying what is wrong with an index entry, read after read,
while it reuses the entries that did not change."""

from __future__ import annotations

import json

from services.state import StateStore
from worker.ops_keys import read_index


def test_an_unreadable_entry_is_reported_at_every_read(store: StateStore, redis_client) -> None:
    redis_client.hset(store.keys.index(), mapping={
        "ghost": "{not json", "fine": json.dumps({"interval_seconds": 5})})
    first = read_index(store)
    second = read_index(store, first)
    for index in (first, second):
        assert any("'ghost' is not a JSON object" in error for error in index.errors), index
        assert index.entries["ghost"] is None
    assert second.entries["fine"] is first.entries["fine"], "an unchanged entry is reused"
