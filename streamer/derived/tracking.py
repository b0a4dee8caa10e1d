"""Fund tracking: tracking difference and ex-post tracking error of a fund against its index.

Pure functions over two daily series, the fund's official NAV per unit and the level of the
index it tracks (for an ETF usually the net total return series), each given as
``(ISO date, value)`` rows.  No I/O and no clock: every period is relative to the data.

Alignment
---------
Only the session dates both series have are used (the *common dates* ``c_0 < c_1 < ... < c_n``).
A date present on one side only (a fund NAV struck on an index holiday, an index close on a day
the fund did not deal) is dropped and reported (:attr:`AlignedSeries.fund_only`,
:attr:`AlignedSeries.index_only`); it is never filled in.  Each side's return is taken from its
previous *common* date, so the k-th return of both sides covers the same interval
``c_{k-1} -> c_k``::

    r_fund,k  = NAV_k   / NAV_{k-1}   - 1        (NAV at c_k over NAV at c_{k-1})
    r_index,k = level_k / level_{k-1} - 1
    d_k       = r_fund,k - r_index,k              (simple returns, k = 1..n)

So no return ever runs across a gap on one side only: when one side lacks a date, the interval
of *both* sides spans it, and ``d_k`` still compares like with like.  Such an interval counts as
one observation, as any other.

Tracking difference (TD)
------------------------
Over a period from the close of ``a`` to the close of ``b`` (both common dates)::

    TD = (NAV_b / NAV_a - 1) - (level_b / level_a - 1)          in bps: TD * 10_000

the fund's total return minus the index's, each compounded from the levels (not the sum of
the daily ``d_k``, which drops the cross terms: two days of -1 bp on a fund that also moved
10% do not add to -2 bp of TD).  Not annualized.  The standard periods end at the last common
date: the last day (from the previous common date), month to date and year to date (from the
last common date before the month or year began, or from the first common date when the series
starts within it) and since inception (from the first common date).  TD composes exactly over
consecutive periods ``a -> b -> c``::

    TD_ac = TD_ab * (1 + R_fund,bc) + (1 + R_index,ab) * TD_bc

Ex-post tracking error (TE)
---------------------------
The annualized standard deviation of the daily differences over a window of the last ``N``
observations::

    TE = sqrt(252) * stdev(d_{n-N+1}, ..., d_n; ddof=1)

``N`` counts observations (common sessions), not calendar days: weekends, holidays and dropped
one-sided dates never enter a window, so 252 observations are a year of sessions.  A window
with fewer than 2 observations has no standard deviation: NaN (``None`` in a report).  Two
pitfalls this avoids:

- the uncentred root mean square ``sqrt(252 * mean(d^2))`` mixes a constant lag (the fee) into
  the volatility: a fund trailing its index by exactly its fee every day has an RMS of the fee
  but a tracking error of zero;
- a window of calendar days holds a varying number of observations and reaches across gaps.

A fund that is exactly its index minus a fee accrued on the previous NAV at a constant rate per
session, ``NAV_k = NAV_{k-1} * (1 + r_index,k - c)``, has ``d_k = -c`` for every k: its TE is 0
and its TD over the period is ``prod(1 + r_index,k - c) - prod(1 + r_index,k)`` (the tests
check both).  With a fee accrued per *calendar* day, as administrators do (``ER / 365`` times
the days since the previous NAV), the Monday interval carries three days of fee and the TE of a
fee-only fund is small but not zero: ``sqrt(252) * ER / 365 * stdev(days per interval)``.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

F64: TypeAlias = npt.NDArray[np.float64]
DateLike: TypeAlias = str | date
Row: TypeAlias = tuple[DateLike, float]

SESSIONS_PER_YEAR: Final = 252
ONE_YEAR: Final = 252  # observations
THREE_YEARS: Final = 756
BPS: Final = 10_000.0

# date.fromisoformat also takes "20240102" and week dates; a session date is written one way.
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class TrackingInputError(ValueError):
    """Series that cannot be compared: a bad date or value, a duplicate date, no overlap."""


def parse_session_date(text: str) -> date:
    """``YYYY-MM-DD`` as a date; anything else (other ISO forms included) is refused."""
    if not _ISO_DATE.match(text):
        raise TrackingInputError(f"bad date {text!r} (expected YYYY-MM-DD)")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise TrackingInputError(f"bad date {text!r}: {exc}") from None


def check_level(value: float) -> float:
    """A NAV or index level: finite and positive, since returns divide by it."""
    if not math.isfinite(value) or value <= 0.0:
        raise TrackingInputError(f"value {value!r} is not a positive finite number")
    return value


def series_by_date(rows: Iterable[Row], side: str) -> dict[date, float]:
    """Rows as ``{date: value}``, each date and value checked; a date given twice is refused
    (two values for one session are ambiguous).  ``side`` names the series in errors."""
    series: dict[date, float] = {}
    for when, value in rows:
        try:
            day = when if isinstance(when, date) else parse_session_date(when)
            level = check_level(float(value))
        except TrackingInputError as exc:
            raise TrackingInputError(f"{side}: {exc}") from None
        if day in series:
            raise TrackingInputError(f"{side}: date {day.isoformat()} given twice")
        series[day] = level
    return series


def simple_returns(levels: F64) -> F64:
    """``levels[k] / levels[k-1] - 1`` for k = 1..n-1 (one fewer than the levels)."""
    returns: F64 = levels[1:] / levels[:-1] - 1.0
    return returns


@dataclass(frozen=True, eq=False)
class AlignedSeries:
    """Both series on their common dates, ascending; what each side had alone, dropped."""

    dates: tuple[date, ...]
    fund: F64  # NAV per unit at each common date
    index: F64  # index level at each common date
    fund_only: tuple[date, ...] = ()
    index_only: tuple[date, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.dates) == len(self.fund) == len(self.index)):
            raise ValueError("dates, fund and index must have the same length")
        if any(b <= a for a, b in zip(self.dates, self.dates[1:], strict=False)):
            raise ValueError("dates must be strictly increasing")

    @property
    def observations(self) -> int:
        """Return intervals: one fewer than the common dates."""
        return max(len(self.dates) - 1, 0)

    @property
    def fund_returns(self) -> F64:
        """``r_fund,k``, k = 1..n: over ``dates[k-1] -> dates[k]``."""
        return simple_returns(self.fund)

    @property
    def index_returns(self) -> F64:
        """``r_index,k`` over the same intervals as :attr:`fund_returns`."""
        return simple_returns(self.index)

    @property
    def differences(self) -> F64:
        """``d_k = r_fund,k - r_index,k``; ``differences[k-1]`` ends on ``dates[k]``."""
        return daily_differences(self)

    def position(self, day: date) -> int:
        """Position of the latest common date on or before ``day`` (as-of lookup)."""
        after = bisect.bisect_right(self.dates, day)
        if after == 0:
            first = self.dates[0].isoformat() if self.dates else "none"
            raise TrackingInputError(
                f"no common date on or before {day.isoformat()} (the first is {first})"
            )
        return after - 1


def align(fund_rows: Iterable[Row], index_rows: Iterable[Row]) -> AlignedSeries:
    """The fund's NAVs and the index levels on the dates both have (see the module doc).

    Raises :class:`TrackingInputError` on a bad date or value, a date given twice on one side,
    or no date in common.
    """
    fund = series_by_date(fund_rows, "fund")
    index = series_by_date(index_rows, "index")
    common = sorted(fund.keys() & index.keys())
    if not common:
        raise TrackingInputError(
            f"no common date: the fund has {len(fund)} dates, the index {len(index)}"
        )
    return AlignedSeries(
        dates=tuple(common),
        fund=np.array([fund[d] for d in common], dtype=np.float64),
        index=np.array([index[d] for d in common], dtype=np.float64),
        fund_only=tuple(sorted(fund.keys() - index.keys())),
        index_only=tuple(sorted(index.keys() - fund.keys())),
    )


def daily_differences(aligned: AlignedSeries) -> F64:
    """``d_k = r_fund,k - r_index,k``, k = 1..n, each pair over the same interval."""
    differences: F64 = aligned.fund_returns - aligned.index_returns
    return differences


# --- tracking difference ----------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodDifference:
    """The tracking difference over one period, from the close of ``start`` to that of ``end``."""

    label: str
    start: date  # the base: the common date whose close the returns are measured from
    end: date
    sessions: int  # return intervals (observations) in the period
    fund_return: float  # NAV_end / NAV_start - 1
    index_return: float  # level_end / level_start - 1

    @property
    def difference(self) -> float:
        """TD as a fraction: fund total return minus index total return."""
        return self.fund_return - self.index_return

    @property
    def bps(self) -> float:
        return self.difference * BPS


def period_difference(
    aligned: AlignedSeries, start: date, end: date, label: str = ""
) -> PeriodDifference:
    """TD from the close of ``start`` to the close of ``end``.

    Each date is taken as of the latest common date on or before it (so a weekend or holiday
    names the session before it).  Raises :class:`TrackingInputError` when ``end`` is before
    ``start`` or no common date is on or before ``start``.
    """
    if end < start:
        raise TrackingInputError(f"period end {end} is before its start {start}")
    i, j = aligned.position(start), aligned.position(end)
    return _difference_between(aligned, i, j, label or f"{start.isoformat()}..{end.isoformat()}")


def _difference_between(aligned: AlignedSeries, i: int, j: int, label: str) -> PeriodDifference:
    return PeriodDifference(
        label=label,
        start=aligned.dates[i],
        end=aligned.dates[j],
        sessions=j - i,
        fund_return=float(aligned.fund[j] / aligned.fund[i] - 1.0),
        index_return=float(aligned.index[j] / aligned.index[i] - 1.0),
    )


def _base_before(aligned: AlignedSeries, boundary: date) -> int:
    """The last common date before ``boundary`` (the close a to-date period starts from), or
    the first common date when the series starts on or after it."""
    try:
        return aligned.position(boundary - timedelta(days=1))
    except TrackingInputError:
        return 0


def standard_periods(aligned: AlignedSeries) -> tuple[PeriodDifference, ...]:
    """TD over the last day, month to date, year to date and since inception, each ending at
    the last common date.  Needs at least two common dates."""
    _require_a_return(aligned)
    last = len(aligned.dates) - 1
    end = aligned.dates[last]
    month_base = _base_before(aligned, end.replace(day=1))
    year_base = _base_before(aligned, date(end.year, 1, 1))
    return (
        _difference_between(aligned, last - 1, last, "last_day"),
        _difference_between(aligned, month_base, last, "mtd"),
        _difference_between(aligned, year_base, last, "ytd"),
        _difference_between(aligned, 0, last, "inception"),
    )


def _require_a_return(aligned: AlignedSeries) -> None:
    if aligned.observations < 1:
        raise TrackingInputError(
            f"only one common date ({aligned.dates[0].isoformat()}): no return to compare"
        )


# --- tracking error ---------------------------------------------------------------------------


def tracking_error(differences: F64) -> float:
    """``sqrt(252) * stdev(d, ddof=1)``, the annualized *centred* standard deviation of the
    daily differences; NaN with fewer than 2 of them."""
    if len(differences) < 2:
        return math.nan
    return float(math.sqrt(SESSIONS_PER_YEAR) * np.std(differences, ddof=1))


def root_mean_square(differences: F64) -> float:
    """``sqrt(252 * mean(d^2))``: the uncentred figure that is *not* the tracking error (it
    counts a constant lag as volatility); here so that tests and reports can show the two
    apart.  NaN for no differences."""
    if len(differences) == 0:
        return math.nan
    return float(math.sqrt(SESSIONS_PER_YEAR * np.mean(np.square(differences))))


def rolling_tracking_error(differences: F64, window: int, *, min_observations: int = 2) -> F64:
    """TE at each observation k over the last ``window`` observations ``d[k-window+1..k]``
    (fewer at the start of the series: all there are), NaN where the window holds fewer than
    ``min_observations`` (at least 2, at most ``window``).  Same length as ``differences``."""
    if window < 2:
        raise ValueError(f"window must be at least 2 observations, not {window}")
    if not 2 <= min_observations <= window:
        raise ValueError(f"min_observations must be in 2..{window}, not {min_observations}")
    result: F64 = np.full(len(differences), np.nan)
    # One two-pass standard deviation per window: a running sum of squares would lose the
    # tiny TE of a fund that trails by a near-constant fee to cancellation.
    for k in range(min_observations - 1, len(differences)):
        result[k] = tracking_error(differences[max(0, k - window + 1) : k + 1])
    return result


@dataclass(frozen=True)
class WindowTrackingError:
    """TE over the last ``observations`` differences, which end at ``end``."""

    label: str
    window: int | None  # observations asked for; None: since inception (all of them)
    observations: int  # observations used (fewer than ``window`` when the history is shorter)
    start: date  # the base of the first return in the window
    end: date
    annualized: float | None  # None: fewer than 2 observations

    @property
    def bps(self) -> float | None:
        return None if self.annualized is None else self.annualized * BPS

    @property
    def partial(self) -> bool:
        """The history is shorter than the window asked for."""
        return self.window is not None and self.observations < self.window


def window_tracking_error(
    aligned: AlignedSeries, window: int | None, label: str = ""
) -> WindowTrackingError:
    """TE over the last ``window`` observations (all there are when fewer; None: all)."""
    if window is not None and window < 2:
        raise ValueError(f"window must be at least 2 observations, not {window}")
    _require_a_return(aligned)
    differences = aligned.differences
    used = len(differences) if window is None else min(window, len(differences))
    value = tracking_error(differences[len(differences) - used :])
    return WindowTrackingError(
        label=label or ("inception" if window is None else f"{window}"),
        window=window,
        observations=used,
        start=aligned.dates[len(aligned.dates) - 1 - used],
        end=aligned.dates[-1],
        annualized=None if math.isnan(value) else value,
    )


def standard_windows(
    aligned: AlignedSeries, window: int = ONE_YEAR
) -> tuple[WindowTrackingError, ...]:
    """TE over ``window`` observations (partial when the history is shorter), over three
    years (756) when the history is that long, and since inception."""
    windows = [window_tracking_error(aligned, window, _window_label(window))]
    if window != THREE_YEARS and aligned.observations >= THREE_YEARS:
        windows.append(window_tracking_error(aligned, THREE_YEARS, _window_label(THREE_YEARS)))
    windows.append(window_tracking_error(aligned, None, "inception"))
    return tuple(windows)


def _window_label(window: int) -> str:
    years = {ONE_YEAR: "1y", THREE_YEARS: "3y"}.get(window)
    return years or f"{window} obs"


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingReport:
    """Everything ``streamer tracking`` shows: TD per period, TE per window."""

    aligned: AlignedSeries
    periods: tuple[PeriodDifference, ...]
    windows: tuple[WindowTrackingError, ...]


def tracking_report(
    aligned: AlignedSeries,
    window: int = ONE_YEAR,
    periods: Sequence[tuple[date, date]] = (),
) -> TrackingReport:
    """The standard periods and windows, plus TD over each explicit ``(start, end)``."""
    return TrackingReport(
        aligned=aligned,
        periods=standard_periods(aligned)
        + tuple(period_difference(aligned, start, end) for start, end in periods),
        windows=standard_windows(aligned, window),
    )
