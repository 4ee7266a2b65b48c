"""The state schema (services.fields) and the Lua guard agree: the same hash reads the same
in Python (``standing``, the numbers parser) as in ``begin_run.lua``."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from services.fields import (
    STATE_FIELDS,
    Kind,
    Outcome,
    ServiceState,
    Verdict,
    parse_count,
    parse_number,
    runs_field,
    standing,
)
from services.state import StateStore
from worker.metrics import duration_buckets

FLAG_VALUES = (None, "1", "0", "yes", "off", "maybe")
RETRY_VALUES = (None, "past", "future", "inf", "1_0", "nan")


def _retry_at(value: str | None, now: float) -> str | None:
    return {"past": f"{now - 60:.3f}", "future": f"{now + 600:.3f}"}.get(value or "", value)


@pytest.mark.parametrize(("running", "paused", "retry"),
                         list(itertools.product(FLAG_VALUES, FLAG_VALUES, RETRY_VALUES)))
def test_standing_is_the_guards_order(store: StateStore, redis_client, running, paused,
                                      retry) -> None:
    """Every combination of the flags (good, bad, unset) and a backoff (past, future,
    unreadable): Python's reading of the hash names the verdict the guard gives."""
    name = "schema"
    now = store.now()
    raw = {"running": running, "paused": paused, "retry_at": _retry_at(retry, now)}
    raw = {key: value for key, value in raw.items() if value is not None}
    if raw:
        redis_client.hset(store.keys.state(name), mapping=raw)
    expected = standing(ServiceState.from_hash(name, raw), held=False, now=store.now())
    decision = store.runs.begin(name, kind=Kind.TRIGGER, max_runs=1, tick_gap_seconds=0)
    assert decision.verdict is expected, raw
    if decision.ticket is not None:
        store.runs.finish(decision.ticket, error=None, max_failures=3, retry_delay_seconds=0)


@pytest.mark.parametrize(("text", "number"), [
    (None, None), ("", None), ("12", 12.0), ("-1.5", -1.5), ("1e3", 1000.0),
    ("inf", None), ("-inf", None), ("nan", None), ("1_0", None), ("0x10", None),
    ("twelve", None), (b"7", 7.0),
])
def test_one_reading_of_numbers(text, number) -> None:
    assert parse_number(text) == number
    if not isinstance(text, bytes):
        assert parse_count(text) == max(0, int(number or 0))


def test_an_infinite_counter_does_not_crash_a_scrape() -> None:
    """A hand-edited ``inf`` counter used to raise OverflowError in the metrics."""
    raw = {runs_field(Outcome.OK): "inf", "duration_le_100": "inf", "duration_ms_sum": "inf"}
    buckets, total_ms = duration_buckets(raw)
    assert total_ms == 0.0
    assert buckets[-1] == ("+Inf", 0)
    assert parse_count(raw[runs_field(Outcome.OK)]) == 0
    assert parse_count("-5") == 0, "a counter only grows"


def test_verdicts_and_kinds_are_the_scripts_words() -> None:
    assert [str(v) for v in Verdict] == [
        "held", "corrupt", "stopped", "paused", "backoff", "duplicate", "nothing_to_retry",
        "leased", "go"]
    assert Kind("catchup") is Kind.CATCHUP and f"{Kind.PROBE}" == "probe"
    assert runs_field(Outcome.TIMEOUT) == "runs_timeout"


# Words the scripts quote that are not fields of the service hash: verdicts, kinds, outcomes,
# operator actions and replies, Lua's own type names and flag words, the epoch hash's fields.
NOT_FIELDS = {*Verdict, *Kind, *Outcome, "pause", "resume", "stop", "start", "reset",
              "restore", "restored", "merged", "operator", "stale", "table", "hash", "list",
              "none", "true", "false", "yes", "no", "on", "off", "nan", "inf",
              "id", "created_at", "lost_at", "lost_epoch", "detected_by", "max_failures"}
STATE_SCRIPTS = ("begin_run", "finish_run", "control", "restore_state", "history")


def test_the_scripts_write_only_fields_the_schema_names() -> None:
    """A field a script spells that services.fields does not name is a second owner of the
    schema (or a typo): this fails until fields.STATE_FIELDS says what it holds."""
    lua = Path(__file__).resolve().parents[2] / "services" / "lua"
    quoted = set()
    for script in STATE_SCRIPTS:
        quoted |= set(re.findall(r"'([a-z_]+)'", (lua / f"{script}.lua").read_text()))
    families = tuple(name.split("<")[0] for name in STATE_FIELDS if "<" in name)
    unknown = {word for word in quoted - {str(w) for w in NOT_FIELDS} - set(STATE_FIELDS)
               if not word.startswith(families)}
    assert not unknown, f"fields the scripts use that services/fields.py does not name: {unknown}"
