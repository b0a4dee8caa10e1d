"""What ``streamer watch`` shows: a board of index levels, and its rendering as a rich table.

The board is plain state fed from Redis (a snapshot of the hashes and history streams, then
the ``P:levels`` messages); ``render_board`` is a pure function of the board and the time,
so tests render it into a captured console and read the rows back.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from streamer.config import VARIANT_SUFFIX

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
DEFAULT_HISTORY = 30
AGE_WARN_S = 5.0  # no publish for this long: the age turns yellow, then red after a minute
AGE_ALARM_S = 60.0


@dataclass
class SeriesRow:
    """The latest published state of one series (an index or its TR/NTR variant)."""

    series: str
    level: float | None = None
    divisor: float | None = None
    prev_close: float | None = None
    change: float | None = None
    change_pct: float | None = None
    stale: int | None = None
    coverage: float | None = None
    ts: int | None = None  # publish time, UTC ns
    source_ts: int | None = None
    seq: int = -1
    updates: int = 0
    history: deque[float] = field(default_factory=lambda: deque(maxlen=DEFAULT_HISTORY))

    def update(self, fields: Mapping[str, Any]) -> None:
        self.level = _number(fields.get("level"), self.level)
        self.divisor = _number(fields.get("divisor"), self.divisor)
        self.prev_close = _number(fields.get("prev_close"), self.prev_close)
        self.change = _number(fields.get("change"), self.change)
        self.change_pct = _number(fields.get("change_pct"), self.change_pct)
        stale = _number(fields.get("stale"), None)
        self.stale = int(stale) if stale is not None else self.stale
        self.coverage = _number(fields.get("coverage"), self.coverage)
        ts = _number(fields.get("ts"), None)
        self.ts = int(ts) if ts is not None else self.ts
        source_ts = _number(fields.get("source_ts"), None)
        self.source_ts = int(source_ts) if source_ts is not None else self.source_ts
        seq = _number(fields.get("seq"), None)
        if seq is not None:
            self.seq = int(seq)
        if self.level is not None:
            self.history.append(self.level)


def _number(value: Any, default: float | None) -> float | None:
    """Hash fields arrive as strings, channel fields as JSON numbers; junk keeps the old value."""
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def series_matches(series: str, wanted: Iterable[str]) -> bool:
    """``--index us500`` shows US500 and its variants US500.TR / US500.NTR, in any case.

    Only the variants: US500.TECH (a sector sub-index of its own) and US500C are other ids.
    """
    key = series.upper()
    return any(key in _variant_ids(w) for w in wanted)


def series_order(series: str) -> tuple[str, int]:
    """Sort key that keeps an id's variants right after it: US500, US500.TR, US500.NTR, US500C."""
    upper = series.upper()
    for rank, suffix in enumerate(VARIANT_SUFFIX.values()):
        if suffix and upper.endswith(suffix.upper()):
            return series[: -len(suffix)], rank
    return series, 0


def _variant_ids(wanted: str) -> set[str]:
    base = wanted.upper()
    return {base + suffix.upper() for suffix in VARIANT_SUFFIX.values()}


class LevelsBoard:
    """Rows by series id, in a stable display order: configured order first, then by name."""

    def __init__(
        self,
        wanted: Sequence[str] = (),
        known: Sequence[str] = (),
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self.wanted = tuple(wanted)
        self.history = history
        self._rows: dict[str, SeriesRow] = {}
        self._order = {series: i for i, series in enumerate(known)}
        self.messages = 0
        for series in known:
            self.row(series)

    def shows(self, series: str) -> bool:
        return not self.wanted or series_matches(series, self.wanted)

    def row(self, series: str) -> SeriesRow | None:
        if not self.shows(series):
            return None
        row = self._rows.get(series)
        if row is None:
            row = SeriesRow(series, history=deque(maxlen=self.history))
            self._rows[series] = row
        return row

    def seed(self, series: str, fields: Mapping[str, Any], history: Sequence[float]) -> None:
        """Start a row from the hash ``P:index:<id>`` and its history stream (oldest first)."""
        row = self.row(series)
        if row is None:
            return
        row.history.clear()
        row.history.extend(history[:-1] if history and fields else history)
        if fields:
            row.update(fields)

    def apply(self, message: Mapping[str, Any]) -> bool:
        """Apply one ``P:levels`` message; False if ignored (other index, or already seen)."""
        series = message.get("index")
        if not isinstance(series, str):
            return False
        row = self.row(series)
        if row is None:
            return False
        seq = _number(message.get("seq"), None)
        if seq is not None and int(seq) <= row.seq:
            return False  # already part of the snapshot we started from
        row.update(message)
        row.updates += 1
        self.messages += 1
        return True

    def rows(self) -> list[SeriesRow]:
        last = len(self._order)
        return sorted(
            self._rows.values(),
            key=lambda r: (self._order.get(r.series, last), series_order(r.series)),
        )

    def has_levels(self) -> bool:
        """Whether any shown series has a level yet (else there is nothing to look at)."""
        return any(row.level is not None for row in self._rows.values())


# -- rendering -----------------------------------------------------------------------------


def sparkline(values: Sequence[float], width: int = DEFAULT_HISTORY) -> str:
    """Unicode block sparkline of the last ``width`` values, scaled to their own range."""
    points = list(values)[-width:]
    if not points:
        return ""
    low, high = min(points), max(points)
    if high - low <= abs(high) * 1e-12:
        return SPARK_BLOCKS[len(SPARK_BLOCKS) // 2 - 1] * len(points)
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((p - low) / (high - low) * top)] for p in points)


def format_age(seconds: float) -> str:
    if seconds < 0:
        seconds = 0.0
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def format_divisor(value: float) -> str:
    return f"{value:.6e}" if abs(value) >= 1e7 else f"{value:.10g}"


def _signed(value: float | None, fmt: str, suffix: str = "") -> Text:
    if value is None:
        return Text("-", style="dim")
    style = "green" if value > 0 else "red" if value < 0 else ""
    return Text(f"{value:{fmt}}{suffix}", style=style)


def _coverage_style(coverage: float) -> str:
    if coverage >= 0.999:
        return "green"
    return "yellow" if coverage >= 0.9 else "red"


def _age_style(age_s: float) -> str:
    if age_s >= AGE_ALARM_S:
        return "red"
    return "yellow" if age_s >= AGE_WARN_S else ""


def _cells(row: SeriesRow, now_ns: int, spark_width: int) -> dict[str, Text]:
    dash = Text("-", style="dim")
    if row.level is None:
        return {"Index": Text(row.series), "Level": Text("waiting", style="dim italic")}
    stale = row.stale or 0
    age_s = (now_ns - row.ts) / 1e9 if row.ts else None
    return {
        "Index": Text(row.series, style="bold"),
        "Level": Text(f"{row.level:,.2f}"),
        "Change": _signed(row.change, "+,.2f"),
        "Chg %": _signed(row.change_pct, "+.2f", "%"),
        "Divisor": Text(format_divisor(row.divisor)) if row.divisor is not None else dash,
        "Stale": Text(str(stale), style="yellow" if stale else "dim"),
        "Coverage": (
            Text(f"{row.coverage:.1%}", style=_coverage_style(row.coverage))
            if row.coverage is not None
            else dash
        ),
        "Age": Text(format_age(age_s), style=_age_style(age_s)) if age_s is not None else dash,
        "Trend": Text(
            sparkline(row.history, spark_width),
            style="green" if (row.change or 0) >= 0 else "red",
        ),
    }


# (header, justify, minimum width); optional columns are dropped on narrow screens, in order.
COLUMNS: tuple[tuple[str, Literal["left", "right"], int], ...] = (
    ("Index", "left", 5),
    ("Level", "right", 10),
    ("Change", "right", 8),
    ("Chg %", "right", 7),
    ("Divisor", "right", 12),
    ("Stale", "right", 5),
    ("Coverage", "right", 8),
    ("Age", "right", 5),
    ("Trend", "left", 8),
)
_DROP_ORDER = ("Divisor", "Trend", "Coverage")
_MIN_SPARK = 8
_TABLE_FRAME_LINES = 4  # top rule, header, header rule, bottom rule


def fit_columns(
    columns: Sequence[tuple[str, Literal["left", "right"], int]], width: int, history: int
) -> tuple[list[tuple[str, Literal["left", "right"], int]], int]:
    """The columns that fit ``width`` and the sparkline's width.

    Each column costs its content plus 3 (padding and rule), the table one more for its left
    edge; the sparkline takes what is left, at least ``_MIN_SPARK``. Optional columns give way
    in ``_DROP_ORDER``: the divisor, then the sparkline, then coverage.
    """
    kept = list(columns)

    def needed() -> int:
        fixed = sum(w + 3 for h, _, w in kept if h != "Trend") + 1
        has_trend = any(h == "Trend" for h, _, _ in kept)
        return fixed + (3 + _MIN_SPARK if has_trend else 0)

    for optional in _DROP_ORDER:
        if needed() <= width:
            break
        kept = [c for c in kept if c[0] != optional]
    fixed = sum(w + 3 for h, _, w in kept if h != "Trend") + 1
    return kept, max(_MIN_SPARK, min(history, width - fixed - 3))


def render_board(
    board: LevelsBoard,
    now_ns: int,
    title: str = "",
    status: str = "",
    width: int | None = None,
    height: int | None = None,
    *,
    problem: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> RenderableType:
    """The board as a rich table (plus a status line): a pure function of its arguments.

    ``width`` (the console's) decides which columns fit: the divisor gives way first, then
    the sparkline, then coverage; the level and its change are always shown. ``height`` (a
    terminal's, or the region a layout gives the board) bounds the lines: rows that do not fit
    are cut, and a last line says how many. ``problem`` (why there is nothing to show, and
    what to do about it) replaces the table while no shown series has a level; ``notes`` go
    under it.
    """
    rows = board.rows()
    lines: list[RenderableType] = []
    if title:
        lines.append(Text(title, style="italic", no_wrap=True, overflow="ellipsis"))
    trailer = [Text(note, style="yellow", no_wrap=True, overflow="ellipsis") for note in notes]
    if status:
        trailer.append(Text(status, style="dim", no_wrap=True, overflow="ellipsis"))
    if problem and not board.has_levels():
        lines.extend(Text(line, style="yellow") for line in problem)
        return Group(*lines, *trailer)

    index_width = max([len("Index"), *(len(r.series) for r in rows)])
    columns = [(h, j, index_width if h == "Index" else w) for h, j, w in COLUMNS]
    spark_width = board.history
    if width is not None:
        columns, spark_width = fit_columns(columns, width, board.history)
    cut = 0
    if height is not None:
        room = height - len(lines) - len(trailer) - _TABLE_FRAME_LINES
        if len(rows) > room:
            shown = max(room - 1, 0)  # one line says what was cut
            cut = len(rows) - shown
            rows = rows[:shown]
    table = Table(header_style="bold")
    for header, justify, min_width in columns:
        table.add_column(
            header,
            justify=justify,
            no_wrap=True,
            min_width=min_width,
            overflow="crop" if header == "Trend" else "ellipsis",
        )
    for row in rows:
        cells = _cells(row, now_ns, spark_width)
        table.add_row(*(cells.get(h, Text("-", style="dim")) for h, _, _ in columns))
    lines.append(table)
    if cut:
        more = f"… {cut} more series (resize or use --index)"
        lines.append(Text(more, style="bold yellow", no_wrap=True, overflow="ellipsis"))
    return Group(*lines, *trailer)
