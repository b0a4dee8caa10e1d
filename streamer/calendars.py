"""Trading-day sessions from ``exchange_calendars``, as plain data for the pure engine.

This is the one module that talks to exchange_calendars (and so to pandas).  What leaves it is
``str``, ``int``, ``frozenset`` and :class:`Session` Structs: no pandas types.

Holidays, early closes and daylight-saving changes all come from the library; nothing here
keeps a holiday table.  Lunch breaks (XHKG, XTKS, ...) are ignored: a session runs from its
open to its close.  pandas is held below 3 in pyproject.toml: under pandas 3.1,
exchange_calendars 4.13.2 cannot build ASEX, XBEL, XBSE, XCYS or XTAE and drops the ad-hoc
weekend sessions of XBOM and XMOS.

The module never reads the clock: callers pass the range.  (exchange_calendars itself reads the
clock at import to set its default bounds, twenty years back and one year ahead; those defaults
are never used here because every calendar is built with an explicit ``start`` and ``end``.)

Cost, measured on the 2-core project machine (pandas 2.3.3, exchange_calendars 4.13.2, five
runs each): ``import streamer.calendars`` 0.28-0.34 s (pandas and exchange_calendars); the first
``sessions("XNYS", <one year, 2025>)`` 0.14-0.15 s cold (building the calendar; another
exchange's first call after that 0.11-0.12 s); the same call warm (cached) 0.03 ms.  Calendars
are built for whole decades (with at least a year of margin either side of the range asked for)
and cached per (name, first year, last year), so a service that asks once a day builds one
calendar per exchange per decade.
"""

from __future__ import annotations

import bisect
import datetime as dt
import difflib
import functools
from typing import Any, NamedTuple

import exchange_calendars as xcals
import msgspec
import numpy as np

# Years a calendar can be built for: pandas' nanosecond Timestamps end in 1677 and 2262, and
# exchange_calendars pads the range it is asked for by about a year on each side.
_FIRST_YEAR = 1679
_LAST_YEAR = 2260
# Calendars are built for whole decades: building one costs about the same for one year as for
# fifty (~0.1 s, mostly fixed overhead), and a decade keeps the cache hit rate high.
_BLOCK_YEARS = 10
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Session(msgspec.Struct, frozen=True):
    """One trading session: its ISO date and its scheduled open and close, UTC nanoseconds.

    ``close_ns`` is the scheduled close instant (an early close where the exchange has one).
    Lunch breaks are not represented.
    """

    date: str
    open_ns: int
    close_ns: int


class _Table(NamedTuple):
    dates: tuple[str, ...]
    opens: list[int]
    closes: list[int]


@functools.cache
def calendar_names() -> frozenset[str]:
    """Every name exchange_calendars knows: MICs such as ``XNYS``, aliases such as ``NYSE``,
    and ``24/7`` / ``24/5``."""
    return frozenset(xcals.get_calendar_names(include_aliases=True))


def validate_calendar_name(name: str) -> str | None:
    """None if ``name`` is a calendar name, else a short error text with close names."""
    names = calendar_names()
    if name in names:
        return None
    by_upper = {n.upper(): n for n in names}
    close = difflib.get_close_matches(name.upper(), list(by_upper), n=3, cutoff=0.6)
    if close:
        suggestions = ", ".join(by_upper[c] for c in close)
        return f"unknown calendar {name!r}; did you mean {suggestions}?"
    return f"unknown calendar {name!r} (exchange_calendars names, e.g. XNYS, XLON, 24/7)"


def sessions(name: str, start_ns: int, end_ns: int) -> list[Session]:
    """Every session of calendar ``name`` whose close >= ``start_ns`` and open <= ``end_ns``.

    Times are UTC nanoseconds since the epoch; the sessions come in order, with holidays
    absent, early closes at their early close, and lunch breaks ignored (open to close).  A
    session that only touches the range (its close equals ``start_ns``) is included.

    Raises ``ValueError`` for an unknown name, for ``start_ns > end_ns``, and for a range that
    reaches past what the calendar records (e.g. XHKG before 1960, XBOM after its last
    published holiday year) or past 1679..2260: a session list that silently stopped there
    would read as "closed".  Errors exchange_calendars raises while building a calendar are
    ValueErrors too and pass through.

    Measured on the 2-core project machine for one year (2025) of XNYS, 250 sessions: cold
    (first call for the decade, builds the calendar) 0.14-0.15 s; warm (cached) 0.03 ms.
    """
    problem = validate_calendar_name(name)
    if problem is not None:
        raise ValueError(problem)
    if start_ns > end_ns:
        raise ValueError(f"sessions: start_ns {start_ns} is after end_ns {end_ns}")
    canonical: str = xcals.resolve_alias(name)
    first_day, last_day = _utc_date(start_ns), _utc_date(end_ns)
    low, high = _bounds(canonical)
    if first_day < low or last_day > high:
        raise ValueError(
            f"calendar {name!r} covers {low.isoformat()} to {high.isoformat()}; cannot give "
            f"sessions for {first_day.isoformat()} to {last_day.isoformat()}"
        )
    # A year of margin each side: a session dated D may open on D-1 (UTC) or close on D+1.
    first_year = max(low.year, _decade(first_day.year - 1))
    last_year = min(high.year, _decade(last_day.year + 1) + _BLOCK_YEARS - 1)
    table = _table(canonical, first_year, last_year)
    begin = bisect.bisect_left(table.closes, start_ns)
    stop = bisect.bisect_right(table.opens, end_ns)
    return [Session(table.dates[i], table.opens[i], table.closes[i]) for i in range(begin, stop)]


def _decade(year: int) -> int:
    return year // _BLOCK_YEARS * _BLOCK_YEARS


def _utc_date(ns: int) -> dt.date:
    return (_EPOCH + dt.timedelta(microseconds=ns // 1000)).date()


@functools.cache
def _bounds(canonical: str) -> tuple[dt.date, dt.date]:
    """First and last dates a calendar can be built for, without building it.

    The calendar classes are looked up in the dispatcher's factory table: exchange_calendars
    has no public way to reach a class without building a calendar over its clock-based
    default range.
    """
    dispatcher = xcals.calendar_utils.global_calendar_dispatcher
    factory: Any = dispatcher._calendar_factories[canonical]  # noqa: SLF001 - see above
    low = dt.date(_FIRST_YEAR, 1, 1)
    high = dt.date(_LAST_YEAR, 12, 31)
    bound_min: Any = factory.bound_min()
    bound_max: Any = factory.bound_max()
    if bound_min is not None:
        low = max(low, dt.date(bound_min.year, bound_min.month, bound_min.day))
    if bound_max is not None:
        high = min(high, dt.date(bound_max.year, bound_max.month, bound_max.day))
    return low, high


@functools.lru_cache(maxsize=32)
def _calendar(canonical: str, first_year: int, last_year: int) -> Any:
    """The exchange_calendars calendar for whole years ``first_year``..``last_year``, clamped
    to the calendar's own bounds."""
    low, high = _bounds(canonical)
    start = max(low, dt.date(first_year, 1, 1))
    end = min(high, dt.date(last_year, 12, 31))
    return xcals.get_calendar(canonical, start=start.isoformat(), end=end.isoformat())


@functools.lru_cache(maxsize=64)
def _table(canonical: str, first_year: int, last_year: int) -> _Table:
    calendar = _calendar(canonical, first_year, last_year)
    labels = np.asarray(calendar.sessions_nanos, dtype="int64").astype("datetime64[ns]")
    dates = tuple(str(d) for d in np.datetime_as_string(labels, unit="D"))
    opens = [int(x) for x in np.asarray(calendar.opens_nanos, dtype="int64").tolist()]
    closes = [int(x) for x in np.asarray(calendar.closes_nanos, dtype="int64").tolist()]
    return _Table(dates, opens, closes)
