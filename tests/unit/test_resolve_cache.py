"""A long-running reader (svc metrics, the page) resolves each registration's schedule once
while it stays the same: one that holds no usable schedule is logged once, not at every
scrape."""

from __future__ import annotations

import logging

import pytest

from worker.ops_schedule import ResolvedCache, resolve_cached


def test_an_unusable_registration_is_logged_once_while_it_stays_the_same(
        caplog: pytest.LogCaptureFixture) -> None:
    good = {"interval_seconds": 10.0}
    bad = {"interval_seconds": "often"}
    cache: ResolvedCache = {}
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            found = resolve_cached({"good": good, "bad": bad}, {}, cache)
            assert set(found) == {"good"}
    assert caplog.text.count("bad: its registration holds no usable schedule") == 1
    changed = {"interval_seconds": "sometimes"}  # a new registration is looked at again
    with caplog.at_level(logging.ERROR):
        resolve_cached({"good": good, "bad": changed}, {}, cache)
    assert caplog.text.count("bad: its registration holds no usable schedule") == 2
