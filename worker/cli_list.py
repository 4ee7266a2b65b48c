"""``svc list``: one row per service, as many columns as the terminal holds.

Columns come from one table (:data:`LIST_COLUMNS`): title, priority, the narrowest width worth
showing, and a renderer with a full and a short form. :func:`layout` keeps columns by
priority while their minimums fit (name and state always), then spends the room left on
short forms, then on full ones. Every value goes through :func:`worker.cli_render.cell`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text

from worker.cli_render import (
    cell,
    condition_text,
    console,
    failures_text,
    health_text,
    last_run_text,
    next_tick_text,
    print_loss,
    print_registry_errors,
    when,
)
from worker.ops_status import ServiceStatus


@dataclass(frozen=True)
class Column:
    """One column of ``svc list``, shown in the order of :data:`LIST_COLUMNS`. As the width
    shrinks, columns are given up from the highest ``priority`` number; the
    :data:`ALWAYS_SHOWN` lowest stay at any width. ``min_width``: the narrowest worth showing
    (its title, and its short form mostly whole). ``render(status, short)``: the cell, made
    by :func:`cell` (Redis's values are untrusted); ``short`` asks for the abbreviated form
    (``3s ago`` for a time), used when the full one does not fit. ``max_width``: a long value
    is cut there even when there is room (``svc status NAME`` shows it whole)."""

    title: str
    priority: int
    min_width: int
    render: Callable[[ServiceStatus, bool], Text]
    max_width: int | None = None


def lease_workers(status: ServiceStatus) -> str:
    return ", ".join(lease.worker for lease in status.leases) or "-"


# How many of the most important columns are shown at any width.
ALWAYS_SHOWN = 2
# Priorities are tens apart, so that a new column slots in anywhere with one entry. A name
# is cut only past 40 characters, and then only when the width is short.
LIST_COLUMNS: tuple[Column, ...] = (
    Column("SERVICE", 0, 40, lambda s, short: cell(s.name)),
    Column("STATE", 10, 25, condition_text, max_width=48),
    Column("HEALTH", 15, 10, lambda s, short: health_text(s, short=True), max_width=40),
    Column("FAILURES", 20, 8, lambda s, short: cell(failures_text(s))),
    Column("SCHEDULE", 50, 12, lambda s, short: cell(s.schedule.text() if s.schedule else "-"),
           max_width=48),
    Column("LAST RUN", 40, 13, lambda s, short: cell(last_run_text(s, short))),
    Column("LAST SUCCESS", 60, 12,
           lambda s, short: cell(when(s.state.last_success_at, s.now, short))),
    Column("NEXT TICK", 30, 11, lambda s, short: cell(next_tick_text(s, short))),
    Column("LEASE", 70, 12, lambda s, short: cell(lease_workers(s)), max_width=40),
)


@dataclass(eq=False)  # compared by identity: two columns may hold equal cells
class Placed:
    """A column being laid out: its cells in both forms, the width each needs, its width."""

    column: Column
    full: list[Text]
    short: list[Text]
    full_width: int = field(init=False)
    short_width: int = field(init=False)
    width: int = field(init=False)

    def __post_init__(self) -> None:
        self.full_width, self.short_width = self.need(self.full), self.need(self.short)
        self.width = min(self.column.min_width, self.short_width)

    def need(self, cells: list[Text]) -> int:
        widest = max([len(self.column.title), *(text.cell_len for text in cells)])
        return min(widest, self.column.max_width or widest)

    def shrink(self, excess: int) -> int:
        """Narrow by up to ``excess``, to one character at least; how much."""
        cut = max(0, min(excess, self.width - 1))
        self.width -= cut
        return cut

    def grow(self, room: int, to: int) -> int:
        """Widen towards ``to`` by at most ``room``; the room used."""
        used = max(0, min(room, to - self.width))
        self.width += used
        return used

    @property
    def cells(self) -> list[Text]:
        """The full form where it fits whole (or is cut at max_width anyway), else short."""
        return self.full if self.width >= self.full_width else self.short


def table_chrome(columns: int) -> int:
    """Characters a ``Table(pad_edge=False)`` adds to its columns' widths: two edges, a rule
    between columns, and a space of padding either side of every inner rule."""
    return 3 * columns - 1


def layout(statuses: Sequence[ServiceStatus], width: int | None,
           columns: Sequence[Column]) -> list[Placed]:
    """The columns that fit in ``width`` (None: every column, in full), in display order.
    Columns are kept by priority while their minimum widths fit; the room left goes, by
    priority, first to the short forms, then to the full ones."""
    placed = [Placed(column, [column.render(s, False) for s in statuses],
                     [column.render(s, True) for s in statuses]) for column in columns]
    if width is None:
        for col in placed:
            col.width = col.full_width
        return placed
    kept = keep_by_priority(placed, width)
    room = width - table_chrome(len(kept)) - sum(col.width for col in kept)
    by_priority = sorted(kept, key=lambda col: col.column.priority)
    for col in reversed(by_priority):  # too narrow even so: cut the state, not the name
        room += col.shrink(-room)
    for col in by_priority:
        room -= col.grow(room, col.short_width)
    for col in by_priority:
        room -= col.grow(room, col.full_width)
    return kept


def keep_by_priority(placed: list[Placed], width: int) -> list[Placed]:
    """The most important columns whose minimum widths fit together; the first two (the name
    and the state) however narrow it is."""
    kept: list[Placed] = []
    for col in sorted(placed, key=lambda col: col.column.priority):
        needed = sum(c.width for c in kept) + col.width + table_chrome(len(kept) + 1)
        if len(kept) >= ALWAYS_SHOWN and needed > width:
            break  # strictly by priority: no narrow minor column past a dropped major one
        kept.append(col)
    return [col for col in placed if col in kept]


def table_width(placed: Sequence[Placed]) -> int:
    return sum(col.width for col in placed) + table_chrome(len(placed))


def service_table(placed: Sequence[Placed]) -> Table:
    table = Table(pad_edge=False)
    for col in placed:
        # One line per service: a value is cut at the column's width, never wrapped.
        table.add_column(col.column.title, width=col.width, no_wrap=True, overflow="ellipsis")
    for row in zip(*(col.cells for col in placed), strict=True):
        table.add_row(*row)
    return table


def print_services(statuses: list[ServiceStatus], errors: list[str],
                   index_errors: Sequence[str] = (), wide: bool = False) -> None:
    """``svc list``: one row per service, as many columns as the width holds (``wide``:
    all of them, in full, however wide that is), then what needs attention."""
    out = console()
    if not statuses:
        out.print("no services: none discovered here and none registered by a worker")
    else:
        placed = layout(statuses, None if wide else out.width, LIST_COLUMNS)
        if wide:  # rich would squeeze the table back into the terminal's width
            out.width = max(out.width, table_width(placed))
        out.print(service_table(placed))
    for status in statuses:
        for warning in status.warnings:
            if warning.startswith("unreadable"):
                out.print(cell(f"warning: {status.name}: {warning}", "yellow"))
    print_loss(out, statuses)
    print_registry_errors(out, errors, index_errors)
