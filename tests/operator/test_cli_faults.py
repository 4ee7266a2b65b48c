"""What ``svc`` does when Redis holds something it should not: keys of the wrong type, absurd
times, hostile text; and when the command itself is wrong. Every fault is written for real
(redis-py on the test's own prefix) and the command runs in-process (CliRunner, which raises
any traceback into the test): one line on stderr and exit 1 or 2, or a table that shows the
value as it is, never one the terminal obeys."""

from __future__ import annotations

import json
import math

import pytest

from services.errors import StateCorruptError
from services.keys import Keys
from services.state import ServiceState
from tests.operator.conftest import Svc
from worker import cli_render as render
from worker.ops import MAX_REASON_LENGTH
from worker.ops_status import Lease, ServiceStatus

TERMINAL_CONTROL = ("\x1b", "\r", "\x07", "\x9b", "\u202e")
HOSTILE = "[bold red]boom[/bold red] \x1b[2J\x1b]0;owned\x07 back\rover \u202eevil \x9b31m"


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def assert_inert(output: str, whole: bool = True) -> None:
    """Nothing in ``output`` drives the terminal, markup is shown as typed, and control
    characters as their escapes (all of them where the value is not cut to fit a column)."""
    for char in TERMINAL_CONTROL:
        assert char not in output, (char, output)
    assert "[bold red]boom[/bold red] \\x1b[2J" in output, output
    if whole:
        for shown in ("\\x1b]0;owned\\x07", "back\\rover", "\\u202eevil", "\\x9b31m"):
            assert shown in output, (shown, output)  # (a long cell may fold between them)


# -- keys of the wrong type ----------------------------------------------------------------

WRONG_TYPE_CASES = [
    # (key kind, command, what the message says was expected)
    ("index", ["list"], "expected a hash"),
    ("index", ["status"], "expected a hash"),
    ("index", ["pause", "ticker"], "expected a hash"),
    ("index", ["status", "ticker", "--json"], "expected a hash"),
    ("state", ["list"], "expected a hash"),
    ("state", ["status", "ticker"], "expected a hash"),
    ("state", ["pause", "ticker"], "expected a hash"),
    ("state", ["reset", "--all"], "expected a hash"),
    ("audit", ["status", "ticker"], "expected a list"),
    ("audit", ["audit", "ticker"], "expected a list"),
    ("audit", ["pause", "ticker"], "expected a list"),
    ("audit", ["stop", "ticker", "--reason", "x"], "expected a list"),
    ("history", ["list"], "expected a list"),
    ("history", ["history", "ticker"], "expected a list"),
    ("lease", ["status"], "expected a zset"),
    ("lease", ["status", "ticker", "--json"], "expected a zset"),
]


def wrong_key(prefix: str, kind: str) -> str:
    keys = Keys(prefix)
    return keys.index() if kind == "index" else getattr(keys, kind)("ticker")


@pytest.mark.parametrize(("kind", "command", "expected"), WRONG_TYPE_CASES,
                         ids=[f"{k}-{'-'.join(c)}" for k, c, _ in WRONG_TYPE_CASES])
def test_a_key_of_the_wrong_type_is_one_line_naming_it(
        svc: Svc, store, prefix: str, kind: str, command: list[str], expected: str) -> None:
    key = wrong_key(prefix, kind)
    store.client.set(key, "not what the layout says")
    result = svc(*command)
    assert result.exit_code == 1, result.output
    line = one_line(result.stderr)
    assert line.startswith(f"svc: Redis key '{key}' is a string, {expected}"), line
    # Only the key that is wrong is named.
    assert line.count("Redis key") == 1, line


def test_pause_with_an_audit_key_of_the_wrong_type_changes_nothing(svc: Svc, store,
                                                                   prefix: str) -> None:
    keys = Keys(prefix)
    store.client.hset(keys.state("ticker"), mapping={"paused": "0", "failures": "2"})
    store.client.set(keys.audit("ticker"), "junk")
    for action in ("pause", "stop", "reset", "start", "resume"):
        result = svc(action, "ticker", "--reason", "should not land")
        assert result.exit_code == 1, result.output
        assert "nothing was changed" in one_line(result.stderr)
        assert store.client.hgetall(keys.state("ticker")) == {"paused": "0", "failures": "2"}
    assert store.client.get(keys.audit("ticker")) == "junk"

    # And the script on its own: a state key of the wrong type leaves the audit alone too.
    store.client.delete(keys.audit("ticker"))
    store.client.delete(keys.state("ticker"))
    store.client.rpush(keys.state("ticker"), "not a hash")
    with pytest.raises(StateCorruptError, match=r"control: \S+ is a list, expected a hash"):
        store.control("ticker", "pause", who="t", reason="")
    assert store.client.exists(keys.audit("ticker")) == 0

    # Once the key is fixed the same command works and is audited.
    store.client.delete(keys.state("ticker"))
    assert svc("pause", "ticker").exit_code == 0
    assert store.read("ticker").paused and store.audit("ticker")[0]["action"] == "pause"


def test_wait_with_a_lease_key_of_the_wrong_type_says_the_change_was_made(
        svc: Svc, store, prefix: str) -> None:
    store.client.set(Keys(prefix).lease("ticker"), "x")
    result = svc("stop", "ticker", "--wait", "--reason", "maintenance")
    assert result.exit_code == 1, result.output
    line = one_line(result.stderr)
    lease = Keys(prefix).lease("ticker")
    assert line.startswith("svc: stop done, but --wait cannot tell whether a run is in "
                           f"progress: Redis key '{lease}' is a string"), line
    # Stopping is what the operator needed most; it happened and is audited.
    assert not store.read("ticker").running
    assert store.audit("ticker")[0]["reason"] == "maintenance"


# -- bad arguments -------------------------------------------------------------------------


def test_a_reason_over_the_bound_is_refused_and_changes_nothing(svc: Svc, store,
                                                                 prefix: str) -> None:
    result = svc("pause", "ticker", "--reason", "x" * (MAX_REASON_LENGTH + 1))
    assert result.exit_code == 2, result.output
    assert f"expected at most {MAX_REASON_LENGTH}" in one_line(result.stderr)
    assert store.client.exists(Keys(prefix).state("ticker"), Keys(prefix).audit("ticker")) == 0

    result = svc("stop", "ticker", "--reason", "y" * MAX_REASON_LENGTH)
    assert result.exit_code == 0, result.output
    assert store.audit("ticker")[0]["reason"] == "y" * MAX_REASON_LENGTH


@pytest.mark.parametrize("command", [
    ["metrics", "--port", "99999"],
    ["metrics", "--port", "-1"],
    ["metrics", "--port", "http"],
    ["pause", "ticker", "--wait", "--timeout", "nan"],
    ["pause", "ticker", "--wait", "--timeout", "-1"],
    ["history", "ticker", "-n", "0"],
    ["history", "ticker", "-n", str(10**30)],
    ["status", "ticker", "-n", "-3"],
    ["audit"],
    ["list", "--no-such-option"],
    ["no-such-command"],
], ids="-".join)
def test_bad_option_values_are_one_line_and_exit_2(svc: Svc, store, prefix: str,
                                                   command: list[str]) -> None:
    result = svc(*command)
    assert result.exit_code == 2, result.output
    line = one_line(result.stderr)
    assert line.startswith("svc: ") and "--help" in line, line
    assert store.client.exists(Keys(prefix).state("ticker")) == 0


def test_migrate_to_an_unknown_revision_names_it(svc: Svc, tmp_path) -> None:
    from services.database import migrate

    url = f"sqlite:///{tmp_path / 'm.db'}"
    result = svc("migrate", "--revision", "nosuch", DATABASE_URL=url)
    assert result.exit_code == 2, result.output
    line = one_line(result.stderr)
    assert "revision 'nosuch'" in line and "expected 'head'" in line, line
    assert migrate.head() in line
    assert migrate.current(url) is None

    result = svc("migrate", "--revision", "+9", DATABASE_URL=url)
    assert result.exit_code == 2 and "revision '+9'" in one_line(result.stderr)


# -- absurd values -------------------------------------------------------------------------


def test_absurd_times_never_crash_and_json_keeps_them(svc: Svc, store, prefix: str) -> None:
    keys = Keys(prefix)
    store.client.hset(keys.state("ticker"), mapping={
        "retry_at": "1e12", "last_success_at": "-1e12", "last_tick_at": "1e300"})
    # Pushed last, so newest: what `status` shows as the last run.
    store.client.lpush(keys.history("ticker"), "1e400", json.dumps([1, 2]), json.dumps({
        "run_id": "r1", "worker": "w", "started_at": 1e12, "finished_at": "soon",
        "duration": "long", "outcome": "ok"}))
    store.client.lpush(keys.audit("ticker"), json.dumps(
        {"action": "pause", "by": "x", "reason": "", "at": -1e15}), json.dumps(5))
    store.client.zadd(keys.lease("ticker"), {"run@host:1": 1e18})

    for command in (["list"], ["status"], ["status", "ticker"], ["history", "ticker"],
                    ["audit", "ticker"]):
        result = svc(*command)
        assert result.exit_code == 0, (command, result.output)
        assert "Traceback" not in result.output
    assert "1e+12 (far future)" in svc("history", "ticker").stdout
    assert "'soon' (not a time)" in svc("status", "ticker").stdout
    assert "-1e+15 (far past)" in svc("audit", "ticker").stdout
    assert "unreadable" in svc("audit", "ticker").stdout

    # JSON shows what Redis holds, unchanged.
    runs = svc.json("history", "ticker")
    assert runs[0]["started_at"] == 1e12 and runs[0]["finished_at"] == "soon"
    assert svc.json("audit", "ticker")[0] == 5


def test_status_objects_and_when_take_any_time() -> None:
    now = 1_700_000_000.0
    state = ServiceState.from_hash("x", {"retry_at": "1e12", "last_started_at": "1e12"})
    status = ServiceStatus(name="x", config=None, state=state, now=now, last_tick_at=1e12,
                           leases=(Lease("r@h:1", 1e15),), last_run={"finished_at": 1e12},
                           in_registry=False, seen_by_worker=False)
    assert status.condition in ("running", "backoff") and status.as_json()["name"] == "x"
    assert render.condition_text(status).plain
    assert render.last_run_text(status).startswith("1e+12 (far future)")
    assert "expires" in render.lease_text(status.leases, now)
    assert render.when(1e12, now) == "1e+12 (far future)"
    assert render.when(-1e12, now) == "-1e+12 (far past)"
    assert render.when(math.nan, now) == "nan (not a time)"
    assert render.when(math.inf, now) == "inf (not a time)"
    assert render.when("x\x1b", now) == "'x\\x1b' (not a time)"
    assert render.when(True, now) == "True (not a time)"
    assert render.span(math.inf) == "inf"


# -- hostile text --------------------------------------------------------------------------


def test_hostile_text_from_redis_is_shown_not_obeyed(svc: Svc, store, prefix: str) -> None:
    keys = Keys(prefix)
    store.client.hset(keys.state("ticker"), mapping={
        "running": "0", "stop_reason": HOSTILE, "last_error": HOSTILE, "last_error_at": "1",
        "change": "stop", "changed_by": HOSTILE, "change_reason": HOSTILE, "changed_at": "1",
        "failures": "1"})
    store.client.hset(keys.state("failing"), mapping={"paused": HOSTILE})
    store.client.lpush(keys.history("ticker"), json.dumps({
        "run_id": HOSTILE, "worker": HOSTILE, "started_at": 1.0, "finished_at": 2.0,
        "duration": 1.0, "outcome": HOSTILE, "error": HOSTILE}))
    store.client.lpush(keys.audit("ticker"), json.dumps(
        {"action": HOSTILE, "by": HOSTILE, "reason": HOSTILE, "at": 1.0}))
    store.client.zadd(keys.lease("ticker"), {f"run@{HOSTILE}": 1e13})
    store.client.hset(keys.index(), mapping={
        HOSTILE: "{}",
        "remote": json.dumps({"name": "remote", "interval_seconds": 1.0, "max_failures": 1,
                              "retry_delay_seconds": 1.0, "queue": HOSTILE})})

    for command in (["list"], ["status"], ["status", "ticker"], ["status", "remote"],
                    ["history", "ticker"], ["audit", "ticker"]):
        result = svc(*command)
        assert result.exit_code == 0, (command, result.output)
        assert_inert(result.stdout, whole=command != ["list"])
        assert not set(TERMINAL_CONTROL) & set(result.stderr)
    # The index entry whose name is no service name is reported, not listed.
    listing = svc("list")
    assert "which is not a service name; ignored" in listing.stdout
    assert {s["name"] for s in svc.json("list")["services"]} == {
        "ticker", "failing", "slow", "remote"}

    # JSON keeps every character as Redis holds it.
    detail = svc.json("status", "ticker")
    assert detail["service"]["last_error"] == HOSTILE
    assert detail["history"][0]["error"] == HOSTILE and detail["audit"][0]["by"] == HOSTILE

    # An operator's own reason comes back the same way.
    result = svc("pause", "slow", "--reason", HOSTILE)
    assert result.exit_code == 0, result.output
    assert_inert(result.stdout)
    assert store.audit("slow")[0]["reason"] == HOSTILE
    assert_inert(svc("audit", "slow").stdout)


def test_unreadable_index_entries_hide_nothing_else(svc: Svc, store, prefix: str) -> None:
    keys = Keys(prefix)
    store.client.hset(keys.index(), mapping={
        "not_json": "{oops",
        "bad_numbers": json.dumps({"name": "bad_numbers", "interval_seconds": "soon",
                                   "max_failures": 1, "retry_delay_seconds": 1.0}),
        "not_an_object": "[1, 2]"})
    result = svc("list")
    assert result.exit_code == 0, result.output
    for name in ("ticker", "not_json", "bad_numbers", "not_an_object"):
        assert name in result.stdout
    assert "'not_json' is not a JSON object" in result.stdout
    assert "'bad_numbers' has interval_seconds='soon', expected a number" in result.stdout
    data = svc.json("status")
    assert len(data["index_errors"]) == 3
    assert {s["name"] for s in data["services"]} >= {"not_json", "bad_numbers"}

    result = svc("trigger", "not_json")
    assert result.exit_code == 1, result.output
    assert "cannot trigger 'not_json'" in one_line(result.stderr)
