"""``streamer tracking``: how closely a fund follows its index, from daily NAVs and index levels.

Reads the fund's NAV per unit and the tracked index's levels, each from a CSV file or from the
Redis streams the service writes, and prints the tracking difference per period and the
ex-post tracking error per window (``streamer.derived.tracking`` has the formulas), as a table
or with ``--json`` as one JSON document, and draws a PNG chart of the daily differences and the
rolling tracking error.

CSV: a header row, then one row per session.  The date column is ``date`` or ``session``
(``YYYY-MM-DD``), the value column ``value``, ``nav`` or ``level`` (header names are matched
without case or surrounding spaces; other columns are ignored), so ``date,value``,
``date,nav`` and ``session,level`` (a ``P:closes`` export) all read.  Blank lines are skipped; a
date given twice is an error.

Redis: stream ``P:navs:<fund>`` (fields ``session``, or ``date``, and ``nav``) and stream
``P:closes:<series>`` (fields ``session`` and ``level``).  A session written more than once (a
close taken again on demand, a cycle retried) counts with its last entry.

Exit 0; 2 with one line naming the file (and line) or stream (and entry) on bad input; 1 with
one line when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.table import Table

from streamer.derived.tracking import (
    BPS,
    ONE_YEAR,
    AlignedSeries,
    PeriodDifference,
    TrackingInputError,
    TrackingReport,
    WindowTrackingError,
    align,
    check_level,
    parse_session_date,
    rolling_tracking_error,
    tracking_report,
)
from streamer.endpoints import redact_url

if TYPE_CHECKING:
    import redis

HELP = (
    "fund tracking report: tracking difference per period and tracking error per window of a "
    "fund's NAV against its index, from CSV files or the service's Redis streams, with a chart"
)

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_BAD_INPUT = 2

DATE_COLUMNS = ("date", "session")
VALUE_COLUMNS = ("value", "nav", "level")
DEFAULT_CHART = "tracking.png"
_REDIS_PAGE = 10_000  # stream entries per XRANGE call

Rows = list[tuple[date, float]]


class BadInputError(Exception):
    """Input that cannot be used; the message is the one line to print (file:line: problem)."""


class RedisUnreachableError(Exception):
    """Redis could not be asked; the message says which (password masked) and why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fund = parser.add_mutually_exclusive_group(required=True)
    fund.add_argument(
        "--fund-nav", metavar="CSV", help="the fund's NAV per unit: CSV date,value (or date,nav)"
    )
    fund.add_argument("--fund", metavar="ID", help="the fund's NAVs from Redis stream P:navs:ID")
    index = parser.add_mutually_exclusive_group(required=True)
    index.add_argument(
        "--index-levels",
        metavar="CSV",
        help="the tracked index's levels: CSV date,value (or session,level)",
    )
    index.add_argument(
        "--index", metavar="SERIES", help="the index's closes from Redis stream P:closes:SERIES"
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis for --fund/--index (default STREAMER_REDIS_URL, else redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--prefix", metavar="P", help="key prefix (default STREAMER_REDIS_PREFIX, else streamer)"
    )
    parser.add_argument(
        "--window",
        type=_window,
        default=ONE_YEAR,
        metavar="N",
        help=f"tracking error window in session observations, at least 2 (default {ONE_YEAR})",
    )
    parser.add_argument(
        "--period",
        nargs=2,
        action="append",
        default=[],
        type=_date_argument,
        metavar=("START", "END"),
        help="also the tracking difference from the close of START to that of END; repeatable",
    )
    chart = parser.add_mutually_exclusive_group()
    chart.add_argument(
        "--chart",
        metavar="PATH",
        help=f"write the PNG chart here (default {DEFAULT_CHART} beside the fund's CSV, or in "
        "the current directory when the fund comes from Redis)",
    )
    chart.add_argument("--no-chart", action="store_true", help="write no chart")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _window(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError("a standard deviation needs at least 2 observations")
    return value


def _date_argument(text: str) -> date:
    try:
        return parse_session_date(text)
    except TrackingInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- reading ----------------------------------------------------------------------------------


def read_csv_series(path: Path) -> Rows:
    """The (date, value) rows of a CSV file, every row checked; :class:`BadInputError` names
    the file, the line and the problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BadInputError(f"{path}:{line}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _csv_rows(path, reader)
    except csv.Error as exc:
        raise BadInputError(f"{path}:{reader.line_num}: {exc}") from None


def _csv_rows(path: Path, reader: Any) -> Rows:
    header = next(reader, None)
    if header is None:
        raise BadInputError(f"{path}:1: empty file (expected a header row: date,value)")
    names = [name.strip().lower() for name in header]
    date_column = _column(path, names, DATE_COLUMNS)
    value_column = _column(path, names, VALUE_COLUMNS)
    rows: Rows = []
    line_of: dict[date, int] = {}
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if len(record) <= max(date_column, value_column):
            raise BadInputError(
                f"{path}:{line}: {len(record)} columns, the header has {len(header)}"
            )
        try:
            day = parse_session_date(record[date_column].strip())
        except TrackingInputError as exc:
            raise BadInputError(f"{path}:{line}: {exc}") from None
        cell = record[value_column].strip()
        try:
            value = float(cell)
        except ValueError:
            raise BadInputError(f"{path}:{line}: bad value {cell!r} (expected a number)") from None
        try:
            check_level(value)
        except TrackingInputError:
            raise BadInputError(
                f"{path}:{line}: value {cell!r} is not a positive finite number"
            ) from None
        if day in line_of:
            raise BadInputError(
                f"{path}:{line}: date {day.isoformat()} already given on line {line_of[day]}"
            )
        line_of[day] = line
        rows.append((day, value))
    if not rows:
        raise BadInputError(f"{path}: no data rows after the header")
    return rows


def _column(path: Path, names: list[str], accepted: tuple[str, ...]) -> int:
    found = [i for i, name in enumerate(names) if name in accepted]
    wanted = " or ".join(accepted)
    if not found:
        raise BadInputError(f"{path}:1: no {wanted} column in the header {','.join(names)!r}")
    if len(found) > 1:
        raise BadInputError(f"{path}:1: more than one {wanted} column in the header")
    return found[0]


@dataclass(frozen=True)
class RedisSource:
    url: str
    password: str | None
    prefix: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RedisSource:
        return cls(
            url=args.redis_url or os.environ.get("STREAMER_REDIS_URL", "redis://127.0.0.1:6379/0"),
            password=os.environ.get("STREAMER_REDIS_PASSWORD"),
            prefix=args.prefix or os.environ.get("STREAMER_REDIS_PREFIX", "streamer"),
        )

    def connect(self) -> redis.Redis:
        import redis  # only when a series comes from Redis: the CSV path starts faster

        try:
            client: redis.Redis = redis.Redis.from_url(
                self.url,
                password=self.password,
                decode_responses=True,
                socket_connect_timeout=2.0,
                socket_timeout=10.0,
            )
        except ValueError as exc:
            raise BadInputError(f"--redis-url {redact_url(self.url)}: {exc}") from None
        return client


def read_redis_series(client: redis.Redis, source: RedisSource, key: str, value_field: str) -> Rows:
    """The (session, value) rows of stream ``key``; the last entry of a session wins."""
    import redis

    where = f"{redact_url(source.url)} {key}"
    by_session: dict[date, float] = {}
    start = "-"
    try:
        while True:
            # decode_responses: entry ids and fields are str, whatever redis-py's stubs say.
            page = cast(
                "list[tuple[str, dict[str, str]]]",
                client.xrange(key, min=start, count=_REDIS_PAGE),
            )
            for entry_id, fields in page:
                day, value = _stream_entry(where, entry_id, fields, value_field)
                by_session[day] = value
            if len(page) < _REDIS_PAGE:
                break
            start = f"({page[-1][0]}"  # exclusive: after the last entry read
    except redis.ResponseError as exc:  # e.g. the key holds a hash, not a stream
        raise BadInputError(f"{where}: {exc}") from None
    except redis.RedisError as exc:
        raise RedisUnreachableError(f"{redact_url(source.url)}: cannot read {key}: {exc}") from None
    if not by_session:
        raise BadInputError(f"{where}: no entries (no such stream, or it is empty)")
    return sorted(by_session.items())


def _stream_entry(
    where: str, entry_id: str, fields: dict[str, str], value_field: str
) -> tuple[date, float]:
    session = fields.get("session") or fields.get("date")
    if session is None:
        raise BadInputError(f"{where} entry {entry_id}: no session field")
    if value_field not in fields:
        raise BadInputError(f"{where} entry {entry_id}: no {value_field} field")
    try:
        day = parse_session_date(session)
        value = check_level(float(fields[value_field]))
    except TrackingInputError as exc:
        raise BadInputError(f"{where} entry {entry_id}: {exc}") from None
    except ValueError:
        raise BadInputError(
            f"{where} entry {entry_id}: bad {value_field} {fields[value_field]!r}"
        ) from None
    return day, value


@dataclass(frozen=True)
class Series:
    source: str  # the file, or the Redis key
    rows: Rows


def read_inputs(args: argparse.Namespace) -> tuple[Series, Series]:
    """The fund's and the index's rows, each from its CSV file or from Redis."""
    client = None
    source = RedisSource.from_args(args)
    if args.fund is not None or args.index is not None:
        client = source.connect()
    if args.fund_nav is not None:
        fund = Series(args.fund_nav, read_csv_series(Path(args.fund_nav)))
    else:
        assert client is not None
        key = f"{source.prefix}:navs:{args.fund}"
        fund = Series(key, read_redis_series(client, source, key, "nav"))
    if args.index_levels is not None:
        index = Series(args.index_levels, read_csv_series(Path(args.index_levels)))
    else:
        assert client is not None
        key = f"{source.prefix}:closes:{args.index}"
        index = Series(key, read_redis_series(client, source, key, "level"))
    return fund, index


# --- output -----------------------------------------------------------------------------------


def chart_path(args: argparse.Namespace) -> Path | None:
    if args.no_chart:
        return None
    if args.chart:
        return Path(args.chart)
    if args.fund_nav is not None:
        return Path(args.fund_nav).parent / DEFAULT_CHART
    return Path(DEFAULT_CHART)


def write_chart(report: TrackingReport, window: int, path: Path, title: str) -> None:
    """A PNG of the daily differences (bps) over the rolling tracking error (bps)."""
    # Imported here: matplotlib takes longer to import than the whole report takes to compute,
    # and only this function needs it.  Figure without pyplot: no backend selection, no
    # display, no global figure registry; savefig renders with Agg.
    from matplotlib.figure import Figure

    # Its INFO lines (a font cache built on first use) are not part of the report.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)

    aligned = report.aligned
    ends = list(aligned.dates[1:])  # the difference d_k is plotted on the date its interval ends
    differences = aligned.differences
    rolling = rolling_tracking_error(differences, window)
    figure = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.bar(ends, differences * BPS, width=0.8, color="tab:blue")
    top.axhline(0.0, color="black", linewidth=0.6)
    top.set_ylabel("fund - index, bps")
    top.set_title("daily return difference")
    bottom.plot(ends, rolling * BPS, color="tab:red")
    bottom.set_ylabel("bps, annualized")
    bottom.set_title(f"tracking error over {window} observations (fewer at the start)")
    figure.suptitle(title)
    figure.savefig(path, format="png", dpi=100)


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def report_document(
    report: TrackingReport, fund: Series, index: Series, chart: Path | None
) -> dict[str, Any]:
    aligned = report.aligned
    return {
        "fund": {"source": fund.source, "dates": len(fund.rows), "only": _iso(aligned.fund_only)},
        "index": {
            "source": index.source,
            "dates": len(index.rows),
            "only": _iso(aligned.index_only),
        },
        "common_dates": len(aligned.dates),
        "first": aligned.dates[0].isoformat(),
        "last": aligned.dates[-1].isoformat(),
        "observations": aligned.observations,
        "tracking_difference": [_period_entry(p) for p in report.periods],
        "tracking_error": [_window_entry(w) for w in report.windows],
        "chart": None if chart is None else str(chart),
    }


def _iso(dates: Sequence[date]) -> list[str]:
    return [d.isoformat() for d in dates]


def _period_entry(period: PeriodDifference) -> dict[str, Any]:
    return {
        "period": period.label,
        "start": period.start.isoformat(),
        "end": period.end.isoformat(),
        "sessions": period.sessions,
        "fund_return": period.fund_return,
        "index_return": period.index_return,
        "td_bps": period.bps,
    }


def _window_entry(window: WindowTrackingError) -> dict[str, Any]:
    return {
        "window": window.label,
        "requested": window.window,
        "observations": window.observations,
        "partial": window.partial,
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "te_bps": _number(window.bps),
    }


def print_tables(
    console: Console, report: TrackingReport, fund: Series, index: Series, chart: Path | None
) -> None:
    aligned = report.aligned
    console.print(
        f"fund {fund.source} ({len(fund.rows)} dates) vs index {index.source} "
        f"({len(index.rows)} dates): {len(aligned.dates)} common dates "
        f"{aligned.dates[0]}..{aligned.dates[-1]}, {aligned.observations} observations",
        highlight=False,
    )
    _print_dropped(console, "fund", aligned.fund_only)
    _print_dropped(console, "index", aligned.index_only)
    differences = Table(
        title="tracking difference: fund total return - index total return, close to close"
    )
    for name in ("period", "from", "to", "sessions", "fund %", "index %", "TD bps"):
        differences.add_column(name, justify="left" if name == "period" else "right")
    for p in report.periods:
        differences.add_row(
            p.label,
            p.start.isoformat(),
            p.end.isoformat(),
            str(p.sessions),
            f"{p.fund_return * 100:.4f}",
            f"{p.index_return * 100:.4f}",
            f"{p.bps:.2f}",
        )
    console.print(differences)
    errors = Table(title="tracking error (annualized stdev of daily differences)")
    for name in ("window", "observations", "from", "to", "TE bps"):
        errors.add_column(name, justify="left" if name == "window" else "right")
    for w in report.windows:
        used = f"{w.observations}" + (f" of {w.window} (partial)" if w.partial else "")
        bps = w.bps
        errors.add_row(
            w.label,
            used,
            w.start.isoformat(),
            w.end.isoformat(),
            "n/a (< 2 obs)" if bps is None else f"{bps:.2f}",
        )
    console.print(errors)
    if chart is not None:
        console.print(f"chart: {chart}", highlight=False)


def _print_dropped(console: Console, side: str, dates: tuple[date, ...]) -> None:
    if not dates:
        return
    shown = ", ".join(d.isoformat() for d in dates[:5]) + (" ..." if len(dates) > 5 else "")
    console.print(
        f"  {len(dates)} {side}-only date(s) dropped (no value on the other side): {shown}",
        highlight=False,
    )


def _aligned(fund: Series, index: Series) -> AlignedSeries:
    try:
        return align(fund.rows, index.rows)
    except TrackingInputError as exc:
        raise BadInputError(f"{fund.source} and {index.source}: {exc}") from None


def main(args: argparse.Namespace) -> int:
    try:
        fund, index = read_inputs(args)
        aligned = _aligned(fund, index)
        try:
            report = tracking_report(
                aligned, window=args.window, periods=[(start, end) for start, end in args.period]
            )
        except TrackingInputError as exc:
            raise BadInputError(f"{fund.source} and {index.source}: {exc}") from None
        chart = chart_path(args)
        if chart is not None:
            title = f"{fund.source} vs {index.source}"
            try:
                write_chart(report, args.window, chart, title)
            except OSError as exc:
                raise BadInputError(
                    f"{chart}: cannot write the chart: {exc.strerror or exc}"
                ) from None
    except BadInputError as exc:
        print(f"streamer: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RedisUnreachableError as exc:
        print(f"streamer: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        document = report_document(report, fund, index, chart)
        sys.stdout.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
    else:
        print_tables(Console(), report, fund, index, chart)
    return EXIT_OK
