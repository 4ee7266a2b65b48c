"""``svc list`` fits the terminal: at 80 columns every service's name and state are on its
row, whole enough to read; less important columns go first as the width shrinks; ``--wide``
shows them all. Real Redis on the test's own prefix; the width comes from COLUMNS, which the
CLI honours in and out of a terminal."""

from __future__ import annotations

import re

import pytest

from services.state import StateStore
from tests.operator.conftest import Svc
from worker import cli_list
from worker import cli_render as render

# Most important first: the order columns are given up in, from the end.
PRIORITY = ["SERVICE", "STATE", "HEALTH", "FAILURES", "NEXT TICK", "LAST RUN", "SCHEDULE",
            "LAST SUCCESS", "LEASE"]
# The order they are shown in.
DISPLAY = ["SERVICE", "STATE", "HEALTH", "FAILURES", "SCHEDULE", "LAST RUN", "LAST SUCCESS",
           "NEXT TICK", "LEASE"]
# A stop reason longer than any column, with markup and an escape sequence that must be
# shown, not obeyed, however narrow the column that cuts it.
REASON = ("[bold red]\x1b]0;owned\x07 upstream API returned 503 for every request since the "
          "certificate rotation at 02:00, see INC-4711 before starting it again")
# The full form of a time: the clock, then how long ago (an abbreviated one has no clock).
CLOCK_FIRST = re.compile(r"\d\d:\d\d:\d\d \(.+ ago\) ok, ")
# How each row's STATE starts at any width: a narrow one says "stopped" once.
STATES = {"ticker": "paused", "failing": "stopped", "slow": "running"}
READABLE = "stopped by test: [bold red]\\x1b]0;owned\\x07 upstream"


@pytest.fixture
def listed(svc: Svc, store: StateStore) -> Svc:
    """ticker paused after a run, failing stopped with a long reason, slow mid-run."""
    ticket = store.runs.begin("ticker", kind="trigger", max_runs=1, tick_gap_seconds=0.5).ticket
    assert ticket is not None
    store.runs.finish(ticket, error=None, max_failures=3, retry_delay_seconds=1.0)
    store.control("ticker", "pause", who="test")
    store.control("failing", "stop", who="test", reason=REASON)
    assert store.runs.begin("slow", kind="trigger", max_runs=1, tick_gap_seconds=0.5).go
    return svc


def table(output: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header's titles, and each service's row as its cells by name."""
    headers: list[str] = []
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith("┃"):
            headers = [title.strip() for title in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            cells = [text.strip() for text in line.strip("│").split("│")]
            rows[cells[0]] = cells
    return headers, rows


def check_fits(output: str, columns: int) -> list[str]:
    """Every line fits; every service's name and state are on its row; the columns shown are
    the most important ones. The titles shown."""
    lines = output.splitlines()
    assert lines, output
    assert max(len(line) for line in lines) <= columns, output
    assert "\x1b" not in output, output
    headers, rows = table(output)
    assert headers == [title for title in DISPLAY if title in headers], output
    assert set(headers) == set(PRIORITY[:len(headers)]), output  # dropped from the end
    assert set(rows) == set(STATES), output
    for name, state in STATES.items():
        assert rows[name][headers.index("STATE")].startswith(state), output
    # The reason, markup and escape shown as typed, with room left to read some of it.
    assert READABLE[:27] in rows["failing"][headers.index("STATE")], output
    return headers


@pytest.mark.parametrize(("columns", "at_least"), [(80, 5), (100, 6), (140, 9)])
def test_list_fits_the_width_it_is_given(listed: Svc, columns: int, at_least: int) -> None:
    result = listed("list", COLUMNS=str(columns))
    assert result.exit_code == 0, result.output
    headers = check_fits(result.stdout, columns)
    assert len(headers) >= at_least, result.stdout
    # Abbreviated where the full form does not fit, never wrapped onto a second line.
    ticker = table(result.stdout)[1]["ticker"]
    if "LAST RUN" in headers:
        assert ticker[headers.index("LAST RUN")].endswith("ago ok"), result.stdout


def test_the_console_script_fits_80_columns_too(listed: Svc) -> None:
    proc = listed.run("list", COLUMNS="80")
    assert proc.returncode == 0, proc.stderr
    check_fits(proc.stdout, 80)


def test_wide_shows_every_column_in_full(listed: Svc) -> None:
    result = listed("list", "--wide", COLUMNS="80")
    assert result.exit_code == 0, result.output
    headers, rows = table(result.stdout)
    assert headers == DISPLAY, result.stdout
    assert rows["failing"][headers.index("STATE")].startswith(
        "stopped: stopped by test: [bold red]\\x1b"), result.stdout
    assert max(map(len, result.stdout.splitlines())) > 80
    assert CLOCK_FIRST.match(rows["ticker"][headers.index("LAST RUN")]), result.stdout
    assert rows["slow"][headers.index("NEXT TICK")] == "- (no worker registered it)"
    assert "\x1b" not in result.stdout


def test_scripts_without_columns_get_the_wide_plain_listing(listed: Svc) -> None:
    result = listed("list", COLUMNS=None)  # type: ignore[arg-type]  # None: unset it
    assert result.exit_code == 0, result.output
    headers = check_fits(result.stdout, render.PLAIN_WIDTH)
    assert len(headers) == len(PRIORITY)
    assert CLOCK_FIRST.match(table(result.stdout)[1]["ticker"][headers.index("LAST RUN")])


def test_health_comes_right_after_state_at_80_columns(listed: Svc) -> None:
    result = listed("list", COLUMNS="80")
    assert result.exit_code == 0, result.output
    headers, rows = table(result.stdout)
    assert headers[:3] == ["SERVICE", "STATE", "HEALTH"], result.stdout
    health = {name: row[2] for name, row in rows.items()}
    # Nothing is alive in this test: no Beat leads and no worker serves anything.
    assert health.pop("slow").startswith("no beat,"), result.stdout
    assert health == {"ticker": "paused", "failing": "stopped"}, result.stdout


def test_a_new_column_is_one_entry(listed: Svc, monkeypatch: pytest.MonkeyPatch) -> None:
    """A column is one entry of LIST_COLUMNS: placed by order, kept by priority."""
    extra = cli_list.Column("EXTRA", 16, 8, lambda s, short: render.cell(f"ok\x1b {s.name}"))
    columns = cli_list.LIST_COLUMNS
    monkeypatch.setattr(cli_list, "LIST_COLUMNS", (*columns[:3], extra, *columns[3:]))
    result = listed("list", COLUMNS="100")
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 100
    headers, rows = table(result.stdout)
    assert headers[:5] == ["SERVICE", "STATE", "HEALTH", "EXTRA", "FAILURES"], result.stdout
    assert rows["slow"][3].startswith("ok\\x1b"), result.stdout
