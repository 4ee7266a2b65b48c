"""``svc list``: one row per service, as many columns as the terminal holds.

Columns come from one table (:data:`LIST_COLUMNS`): title, priority, the narrowest width worth
showing, and a renderer with a full and a short form. :func:`layout` keeps columns by
priority while their minimums fit (name and state always), then spends the room left on
short forms, then on full ones. Every value goes through :func:`worker.cli_render.cell`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.box import HEAVY_HEAD
from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions
from rich.segment import Segment
from rich.style import Style
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
    print_details,
    print_loss,
    print_registry_errors,
    when,
)
from worker.ops import Operator
from worker.ops_schedule import read_beat
from worker.ops_status import ServiceStatus, collector_paused


@dataclass(frozen=True)
class Column:
    """One column of ``svc list``, shown in the order of :data:`LIST_COLUMNS`. As the width
    shrinks, columns are given up from the highest ``priority`` number; the
    :data:`ALWAYS_SHOWN` lowest stay at any width. ``min_width``: the narrowest worth showing
    (its title, and its short form mostly whole). ``render(status, short)``: the cell, made
    by :func:`cell` (Redis's values are untrusted); ``short`` asks for the abbreviated form
    (``3s ago`` for a time), used when the full one does not fit, and never wider than it.
    ``max_width``: a long value is cut there even when there is room (``svc status NAME``
    shows it whole)."""

    title: str
    priority: int
    min_width: int
    render: Callable[[ServiceStatus, bool], Text]
    max_width: int | None = None
    one_form: bool = False
    """``render`` ignores ``short``: the column has one form, made once per row."""


def lease_workers(status: ServiceStatus) -> str:
    return ", ".join(lease.worker for lease in status.leases) or "-"


# How many of the most important columns are shown at any width.
ALWAYS_SHOWN = 2
# Priorities are tens apart, so that a new column slots in anywhere with one entry. A name
# is cut only past 40 characters, and then only when the width is short.
LIST_COLUMNS: tuple[Column, ...] = (
    Column("SERVICE", 0, 40, lambda s, short: cell(s.name), one_form=True),
    Column("STATE", 10, 25, condition_text, max_width=48),
    Column("HEALTH", 15, 10, lambda s, short: health_text(s, short=True), max_width=40,
           one_form=True),
    Column("FAILURES", 20, 8, lambda s, short: cell(failures_text(s)), one_form=True),
    Column("SCHEDULE", 50, 12, lambda s, short: cell(s.schedule.text() if s.schedule else "-"),
           max_width=48, one_form=True),
    Column("LAST RUN", 40, 13, lambda s, short: cell(last_run_text(s, short))),
    Column("LAST SUCCESS", 60, 12,
           lambda s, short: cell(when(s.state.last_success_at, s.now, short))),
    Column("NEXT TICK", 30, 11, lambda s, short: cell(next_tick_text(s, short))),
    Column("LEASE", 70, 12, lambda s, short: cell(lease_workers(s)), max_width=40,
           one_form=True),
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
        self.full_width = self.need(self.full)
        self.short_width = self.full_width if self.short is self.full else self.need(self.short)
        self.width = min(self.column.min_width, self.short_width)

    def need(self, cells: list[Text]) -> int:
        widest = max([len(self.column.title), *(width_of(text.plain) for text in cells)])
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
    priority, first to the short forms, then to the full ones. When every column fits in
    full, that is the answer, and no short form is made (a short form is never wider than
    its full one: a third of the cells at 10,000 services, saved)."""
    placed = [Placed(column, full, full) for column in columns
              for full in ([column.render(s, False) for s in statuses],)]
    if width is None or sum(col.full_width for col in placed) + table_chrome(
            len(placed)) <= width:
        for col in placed:
            col.width = col.full_width
        return placed
    placed = [col if col.column.one_form else
              Placed(col.column, col.full, [col.column.render(s, True) for s in statuses])
              for col in placed]
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
    """The listing as a rich Table: what :class:`ServiceRows` draws, character for character
    (tests compare the two), at rich's speed (seconds at 10,000 rows)."""
    table = Table(pad_edge=False)
    for col in placed:
        # One line per service: a value is cut at the column's width, never wrapped.
        table.add_column(col.column.title, width=col.width, no_wrap=True, overflow="ellipsis")
    for row in zip(*(col.cells for col in placed), strict=True):
        table.add_row(*row)
    return table


def width_of(text: str) -> int:
    """Terminal cells ``text`` takes (ASCII: one each, without rich's lookup)."""
    return len(text) if text.isascii() and text.isprintable() else cell_len(text)


def fitted(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with an ellipsis, or padded to it, as rich fits a
    no-wrap cell (Text.truncate with overflow "ellipsis" and pad)."""
    length = width_of(text)
    if length > width:
        return set_cell_size(text, width - 1) + "…"
    return text + " " * (width - length)


@dataclass
class ServiceRows:
    """The listing drawn directly as segments: the same box, widths, cuts and styles as
    :func:`service_table` (``Table(pad_edge=False)``), without rich laying out and wrapping
    each of 90,000 cells again: what made ``svc list`` take seconds at 10,000 services."""

    placed: Sequence[Placed]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        box = HEAVY_HEAD.substitute(options, safe=console.safe_box)
        widths = [col.width for col in self.placed]
        # Each column's padding: none outside the first and the last (pad_edge=False).
        padded = [width + (i > 0) + (i < len(widths) - 1) for i, width in enumerate(widths)]
        draw = _CellDrawer(console, widths)
        yield Segment(box.get_top(padded) + "\n")
        header = "table.header"  # rich's header style, on the padding too
        yield from draw.line([Text(col.column.title, style=header) for col in self.placed],
                             box.head_left, box.head_vertical, box.head_right,
                             draw.style(header))
        yield Segment(box.get_row(padded, "head", edge=True) + "\n")
        rows = zip(*(col.cells for col in self.placed), strict=True)
        if console.color_system is None and not any(
                text.spans for col in self.placed for text in col.cells):
            # Nothing to style (a pipe, a script): each row is one piece of text.
            inner = f" {box.mid_vertical} "
            for row in rows:
                cells = inner.join(fitted(text.plain, width)
                                   for text, width in zip(row, widths, strict=True))
                yield Segment(f"{box.mid_left}{cells}{box.mid_right}\n")
        for row in rows:  # (left empty by the loop above when it ran)
            yield from draw.line(row, box.mid_left, box.mid_vertical, box.mid_right)
        yield Segment(box.get_bottom(padded) + "\n")


@dataclass
class _CellDrawer:
    console: Console
    widths: list[int]
    styles: dict[str | Style, Style | None] = field(default_factory=dict)

    def style(self, name: str | Style) -> Style | None:
        if name not in self.styles:
            self.styles[name] = self.console.get_style(name, default="") or None
        return self.styles[name]

    def line(self, cells: Sequence[Text], left: str, inner: str, right: str,
             pad: Style | None = None) -> Iterator[Segment]:
        yield Segment(left)
        last = len(cells) - 1
        space = Segment(" ", pad)
        for i, text in enumerate(cells):
            if i:
                yield Segment(inner)
                yield space
            yield from self.cell(text, self.widths[i])
            if i < last:
                yield space
        yield Segment(right + "\n")

    def cell(self, text: Text, width: int) -> Iterator[Segment]:
        if text.spans:  # styled in parts (no column of svc's own is): rich cuts it
            cut = text.copy()
            cut.truncate(width, overflow="ellipsis", pad=True)
            yield from cut.render(self.console)
            return
        yield Segment(fitted(text.plain, width), self.style(text.style))


FROM_CODE_NOTE = ("note: no worker has registered a service yet, so this list comes from this "
                  "machine's code (services and SVC_PACKAGES)")


def show_services(op: Operator, as_json: bool, detailed: bool, wide: bool = False) -> None:
    """``svc list`` and ``svc status`` of every service, as a table, blocks or JSON."""
    with collector_paused():
        now, found = op.statuses(op.known())
        beat = read_beat(op.store) if detailed else None
        if as_json:
            loss = next((s.loss for s in found if s.loss is not None), None)
            emit_services_json({
                "now": now, "services": [s.as_json() for s in found],
                "state_lost": loss.as_json() if loss else None,
                "registry_errors": op.registry_errors, "index_errors": op.index_errors,
                "listed_from": op.listed_from,
                **({"beat": beat.as_json()} if beat is not None else {})})
            return
        if detailed:
            print_details(found, op.registry_errors, op.index_errors, beat)
        else:
            print_services(found, op.registry_errors, op.index_errors, wide=wide)
        if op.listed_from == "code":  # say where the names came from
            console().print(cell(FROM_CODE_NOTE, "yellow"))


def emit_services_json(value: dict[str, Any]) -> None:
    """Like :func:`worker.cli_render.emit_json`, but its ``services`` one compact object per
    line: Python's indenting encoder is pure Python, its compact one C, and at 10,000
    services the difference is seconds."""
    parts = []
    compact = json.JSONEncoder(sort_keys=True, default=str).encode  # one encoder, not 10,000
    for key in sorted(value):
        if key == "services" and value[key]:
            text = "[\n" + ",\n".join("    " + compact(item) for item in value[key]) + "\n  ]"
        else:  # indented one level deeper, as inside the whole
            text = json.dumps(value[key], indent=2, sort_keys=True,
                              default=str).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key)}: {text}")
    sys.stdout.write("{\n" + ",\n".join(parts) + "\n}\n")


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
        out.print(ServiceRows(placed))
    for status in statuses:
        for warning in status.warnings:
            if warning.startswith("unreadable"):
                out.print(cell(f"warning: {status.name}: {warning}", "yellow"))
    print_loss(out, statuses)
    print_registry_errors(out, errors, index_errors)
