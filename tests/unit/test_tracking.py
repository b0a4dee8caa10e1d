"""Fund tracking: tracking difference (TD) and ex-post tracking error (TE), worked by hand.

The library (``streamer.derived.tracking``) on small series whose arithmetic is written out
here: alignment of a fund and an index that miss each other's dates, TD compounded from the
levels (not summed from the daily differences), the month and year boundaries of MTD and YTD,
TE as the centred standard deviation over a window of observations (not the root mean square,
not a window of calendar days), and a fund that is its index minus a fee.  Then property tests,
and ``streamer tracking`` itself: the installed console script in a subprocess (table, JSON, the
PNG chart, one line and exit 2 for bad input), variations of bad input in-process through the
same entry point, and the Redis streams on a private redis-server.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from datetime import date, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer import cli
from streamer.derived.tracking import (
    THREE_YEARS,
    AlignedSeries,
    TrackingInputError,
    align,
    period_difference,
    rolling_tracking_error,
    root_mean_square,
    standard_periods,
    standard_windows,
    tracking_error,
    tracking_report,
    window_tracking_error,
)
from streamer.localservices import LocalRedis
from streamer.tools.processes import child_environment

STREAMER = Path(sys.executable).with_name("streamer")
ANNUALIZE = math.sqrt(252)
D = date.fromisoformat

# Six common sessions around Independence Day 2024, a holiday and a weekend among them.  The
# fund also struck a NAV on the index holiday 07-04 (a fund-only date) and the index has a
# close on 07-12 the fund has not published yet (an index-only date): both are dropped.
#
#   interval          index level  r_index    d_k    r_fund  fund NAV
#   07-03                 100.0                                 100.0
#   07-03 -> 07-05        110.0     +10%     0.00    +10%       110.0        (spans 07-04)
#   07-05 -> 07-08         99.0     -10%    +0.04     -6%       103.4        110 * 0.94
#   07-08 -> 07-09         99.0       0%    +0.02     +2%       105.468      103.4 * 1.02
#   07-09 -> 07-10        108.9     +10%    +0.03    +13%       119.17884    105.468 * 1.13
#   07-10 -> 07-11        108.9       0%    +0.01     +1%       120.3706284  119.17884 * 1.01
JULY = ("2024-07-03", "2024-07-05", "2024-07-08", "2024-07-09", "2024-07-10", "2024-07-11")
JULY_INDEX = (100.0, 110.0, 99.0, 99.0, 108.9, 108.9)
JULY_FUND = (100.0, 110.0, 103.4, 105.468, 119.17884, 120.3706284)
JULY_INDEX_RETURNS = (0.10, -0.10, 0.0, 0.10, 0.0)
JULY_DIFFERENCES = (0.0, 0.04, 0.02, 0.03, 0.01)
FUND_ONLY = ("2024-07-04", 107.0)
INDEX_ONLY = ("2024-07-12", 120.0)


def july_fund_rows() -> list[tuple[str, float]]:
    rows = list(zip(JULY, JULY_FUND, strict=True))
    rows.insert(1, FUND_ONLY)
    return rows


def july_index_rows() -> list[tuple[str, float]]:
    return [*zip(JULY, JULY_INDEX, strict=True), INDEX_ONLY]


def july() -> AlignedSeries:
    return align(july_fund_rows(), july_index_rows())


def business_days(start: date, count: int) -> list[date]:
    """``count`` weekdays from ``start`` on (weekends skipped: sessions, not calendar days)."""
    days: list[date] = []
    day = start
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def levels_from_returns(base: float, returns: Sequence[float]) -> list[float]:
    levels = [base]
    for r in returns:
        levels.append(levels[-1] * (1.0 + r))
    return levels


def fee_only_fund(index_levels: Sequence[float], fee_per_session: float) -> list[float]:
    """The fund that is its index minus a fee accrued on the previous NAV each session:
    ``NAV_k = NAV_{k-1} * (1 + r_index,k - c)``."""
    nav = [index_levels[0]]
    for previous, level in itertools.pairwise(index_levels):
        nav.append(nav[-1] * (1.0 + (level / previous - 1.0) - fee_per_session))
    return nav


def exact_fee_difference(index_returns: Sequence[float], fee_per_session: float) -> Fraction:
    """TD of the fee-only fund over these returns, in exact arithmetic:
    ``prod(1 + r_k - c) - prod(1 + r_k)``."""
    c = Fraction(fee_per_session)
    fund, index = Fraction(1), Fraction(1)
    for r in index_returns:
        fund *= 1 + Fraction(r) - c
        index *= 1 + Fraction(r)
    return fund - index


# --- alignment --------------------------------------------------------------------------------


def test_alignment_keeps_common_dates_and_spans_one_sided_ones() -> None:
    aligned = july()
    assert aligned.dates == tuple(D(d) for d in JULY)
    assert aligned.fund_only == (D("2024-07-04"),)
    assert aligned.index_only == (D("2024-07-12"),)
    assert aligned.observations == 5
    # 07-03 -> 07-05 on both sides: the fund's 07-04 NAV (107) is neither a base nor an end,
    # so the first fund return is 110/100 - 1 = 10%, not 107/100 - 1 or 110/107 - 1.
    assert aligned.index_returns == pytest.approx(JULY_INDEX_RETURNS, abs=1e-15)
    assert aligned.fund_returns == pytest.approx([0.10, -0.06, 0.02, 0.13, 0.01], abs=1e-15)
    assert aligned.differences == pytest.approx(JULY_DIFFERENCES, abs=1e-15)


def test_series_in_any_order_align_the_same() -> None:
    shuffled = align(
        list(reversed(july_fund_rows())), july_index_rows()[1::2] + july_index_rows()[::2]
    )
    assert shuffled.dates == july().dates


@pytest.mark.parametrize(
    ("fund", "index", "problem"),
    [
        ([("2024-07-03", 100.0)], [("2024-07-05", 100.0)], "no common date"),
        ([("2024-7-3", 100.0)], [("2024-07-03", 100.0)], "fund: bad date '2024-7-3'"),
        ([("20240703", 100.0)], [("2024-07-03", 100.0)], "fund: bad date"),
        ([("2024-07-03", 100.0)], [("2024-07-03", 0.0)], "index: value 0.0 is not a positive"),
        ([("2024-07-03", math.nan)], [("2024-07-03", 1.0)], "fund: value nan is not"),
        (
            [("2024-07-03", 1.0), ("2024-07-03", 2.0)],
            [("2024-07-03", 1.0)],
            "fund: date 2024-07-03 given twice",
        ),
    ],
)
def test_alignment_refuses_bad_series(
    fund: list[tuple[str, float]], index: list[tuple[str, float]], problem: str
) -> None:
    with pytest.raises(TrackingInputError, match=problem):
        align(fund, index)


# --- tracking difference ----------------------------------------------------------------------


def test_tracking_difference_compounds_from_the_levels() -> None:
    last_day, mtd, ytd, inception = standard_periods(july())
    # Since inception: fund 120.3706284/100 - 1 = 20.37063%, index 108.9/100 - 1 = 8.9%,
    # TD = 0.114706284 = 1147.06284 bps.  Not the sum of the daily differences
    # (0 + 4 + 2 + 3 + 1 = 10% = 1000 bps): compounding gives the cross terms.
    assert (inception.start, inception.end, inception.sessions) == (D(JULY[0]), D(JULY[-1]), 5)
    assert inception.fund_return == pytest.approx(0.203706284, abs=1e-14)
    assert inception.index_return == pytest.approx(0.089, abs=1e-14)
    assert inception.bps == pytest.approx(1147.06284, abs=1e-9)
    assert sum(JULY_DIFFERENCES) * 1e4 == pytest.approx(1000.0)
    # Last day 07-10 -> 07-11: fund +1%, index 0%: +100 bps.
    assert (last_day.start, last_day.end, last_day.sessions) == (D("2024-07-10"), D(JULY[-1]), 1)
    assert last_day.bps == pytest.approx(100.0, abs=1e-9)
    # The series starts within July 2024: month and year to date run from its first date.
    for period in (mtd, ytd):
        assert (period.start, period.end) == (inception.start, inception.end)
        assert period.bps == pytest.approx(inception.bps, abs=1e-9)
    assert [p.label for p in (last_day, mtd, ytd, inception)] == [
        "last_day",
        "mtd",
        "ytd",
        "inception",
    ]


def test_explicit_period_runs_from_close_to_close_as_of_each_date() -> None:
    aligned = july()
    # 07-05 -> 07-09: fund 105.468/110 - 1 = -4.12%, index 99/110 - 1 = -10%: TD = +588 bps.
    period = period_difference(aligned, D("2024-07-05"), D("2024-07-09"))
    assert (period.start, period.end, period.sessions) == (D("2024-07-05"), D("2024-07-09"), 2)
    assert period.fund_return == pytest.approx(-0.0412, abs=1e-15)
    assert period.index_return == pytest.approx(-0.10, abs=1e-15)
    assert period.bps == pytest.approx(588.0, abs=1e-9)
    assert period.label == "2024-07-05..2024-07-09"
    # A Saturday is taken as of the Friday before it; the fund-only 07-04 as of 07-03.
    weekend = period_difference(aligned, D("2024-07-06"), D("2024-07-09"))
    assert (weekend.start, weekend.bps) == (D("2024-07-05"), period.bps)
    holiday = period_difference(aligned, D("2024-07-04"), D("2024-07-05"))
    assert (holiday.start, holiday.end) == (D("2024-07-03"), D("2024-07-05"))
    assert holiday.bps == pytest.approx(0.0, abs=1e-9)  # 07-03 -> 07-05: d = 0
    with pytest.raises(TrackingInputError, match="no common date on or before 2024-07-02"):
        period_difference(aligned, D("2024-07-02"), D("2024-07-09"))
    with pytest.raises(TrackingInputError, match="before its start"):
        period_difference(aligned, D("2024-07-09"), D("2024-07-05"))


# Across a year end (the 2025-01-01 holiday) and a month end:
#
#   date        index  fund
#   2024-12-27   100   240     inception
#   2024-12-30   105   210
#   2024-12-31   120   200     last close of 2024: the YTD base
#   2025-01-02   110   220
#   2025-01-03   110   231
#   2025-01-31   120   250     last close of January: the MTD base in February
#   2025-02-03   125   240
#   2025-02-04   150   300
BOUNDARIES = {
    "2024-12-27": (100.0, 240.0),
    "2024-12-30": (105.0, 210.0),
    "2024-12-31": (120.0, 200.0),
    "2025-01-02": (110.0, 220.0),
    "2025-01-03": (110.0, 231.0),
    "2025-01-31": (120.0, 250.0),
    "2025-02-03": (125.0, 240.0),
    "2025-02-04": (150.0, 300.0),
}


def boundaries(until: str) -> AlignedSeries:
    days = [d for d in BOUNDARIES if d <= until]
    return align([(d, BOUNDARIES[d][1]) for d in days], [(d, BOUNDARIES[d][0]) for d in days])


def test_month_and_year_to_date_start_from_the_previous_month_and_year_end() -> None:
    last_day, mtd, ytd, inception = standard_periods(boundaries("2025-02-04"))
    # last day 02-03 -> 02-04: fund 300/240 = +25%, index 150/125 = +20%: +500 bps
    assert last_day.start == D("2025-02-03") and last_day.bps == pytest.approx(500.0)
    # MTD 01-31 -> 02-04: fund 300/250 = +20%, index 150/120 = +25%: -500 bps (from the first
    # February session 02-03 instead it would be +500).
    assert (mtd.start, mtd.sessions) == (D("2025-01-31"), 2)
    assert mtd.bps == pytest.approx(-500.0)
    # YTD 12-31 -> 02-04: fund 300/200 = +50%, index 150/120 = +25%: +2500 bps (from the first
    # 2025 session 01-02 instead it would be 300/220 - 150/110 = 0).
    assert (ytd.start, ytd.sessions) == (D("2024-12-31"), 5)
    assert ytd.bps == pytest.approx(2500.0)
    # inception 12-27 -> 02-04: fund 300/240 = +25%, index 150/100 = +50%: -2500 bps
    assert inception.start == D("2024-12-27") and inception.bps == pytest.approx(-2500.0)


def test_first_session_of_the_year_measures_month_and_year_from_the_year_end() -> None:
    last_day, mtd, ytd, inception = standard_periods(boundaries("2025-01-02"))
    # 12-31 -> 01-02 across the holiday: fund 220/200 = +10%, index 110/120 = -1/12:
    # TD = 0.1 + 1/12 = 1833.33 bps, for the last day, MTD and YTD alike.
    for period in (last_day, mtd, ytd):
        assert (period.start, period.end, period.sessions) == (D("2024-12-31"), D("2025-01-02"), 1)
        assert period.bps == pytest.approx((0.1 + 1 / 12) * 1e4)
    # inception: fund 220/240 = -1/12, index 110/100 = +10%.
    assert inception.bps == pytest.approx((-1 / 12 - 0.1) * 1e4)
    # At the end of January the month began after the year-end close, as the year did.
    _, mtd, ytd, _ = standard_periods(boundaries("2025-01-31"))
    assert mtd.start == ytd.start == D("2024-12-31")


def test_a_session_on_the_first_of_the_month_belongs_to_the_month() -> None:
    # Mon 2024-07-01 is a session: July to date starts from the Friday 06-28 close, so its
    # return (fund +1%, index 0%) is in the MTD of 07-02 (both flat that day): +100 bps.
    aligned = align(
        [("2024-06-28", 100.0), ("2024-07-01", 101.0), ("2024-07-02", 101.0)],
        [("2024-06-28", 100.0), ("2024-07-01", 100.0), ("2024-07-02", 100.0)],
    )
    _, mtd, ytd, _ = standard_periods(aligned)
    assert (mtd.start, mtd.sessions) == (D("2024-06-28"), 2)
    assert mtd.bps == pytest.approx(100.0)
    assert ytd.start == D("2024-06-28")  # the first date: the series starts within the year


def test_one_common_date_has_no_return_to_compare() -> None:
    aligned = align([("2024-07-03", 100.0)], [("2024-07-03", 1000.0)])
    with pytest.raises(TrackingInputError, match=r"only one common date \(2024-07-03\)"):
        standard_periods(aligned)
    with pytest.raises(TrackingInputError, match="only one common date"):
        tracking_report(aligned)


# --- tracking error ---------------------------------------------------------------------------


def test_tracking_error_is_the_centred_standard_deviation() -> None:
    d = np.array(JULY_DIFFERENCES)
    # mean 0.02; deviations -0.02, 0.02, 0, 0.01, -0.01; squares sum to 10e-4; / (5 - 1):
    # variance 2.5e-4; TE = sqrt(252 * 2.5e-4) = sqrt(0.063) = 25.10%.
    assert tracking_error(d) == pytest.approx(math.sqrt(0.063), rel=1e-12)
    assert july().differences == pytest.approx(d, abs=1e-15)
    assert window_tracking_error(july(), None).annualized == pytest.approx(math.sqrt(0.063))
    # The root mean square: mean(d^2) = (0 + 16 + 4 + 9 + 1)e-4 / 5 = 6e-4, sqrt(252 * 6e-4)
    # = sqrt(0.1512) = 38.88%: the 2% average lead counted as volatility.
    assert root_mean_square(d) == pytest.approx(math.sqrt(0.1512), rel=1e-12)


def test_noisy_fund_tracking_error_is_not_its_root_mean_square() -> None:
    # A fund trailing by a 2 bp average with +-1 bp of noise: d = -1, -3, -1, -3 bps.
    # Centred: mean -2e-4, deviations +-1e-4, variance 4 * 1e-8 / 3;
    #   TE = sqrt(252 * 4e-8 / 3) = sqrt(3.36e-6) = 18.33 bps.
    # Uncentred: mean(d^2) = (1 + 9 + 1 + 9)e-8 / 4 = 5e-8;
    #   RMS = sqrt(252 * 5e-8) = sqrt(1.26e-5) = 35.50 bps, almost twice as much.
    index_returns = [0.01, -0.02, 0.005, 0.0]
    differences = [-1e-4, -3e-4, -1e-4, -3e-4]
    days = [d.isoformat() for d in business_days(D("2024-03-04"), 5)]
    index = levels_from_returns(1000.0, index_returns)
    fund = levels_from_returns(
        10.0, [r + e for r, e in zip(index_returns, differences, strict=True)]
    )
    aligned = align(list(zip(days, fund, strict=True)), list(zip(days, index, strict=True)))
    assert aligned.differences == pytest.approx(differences, abs=1e-15)
    te = window_tracking_error(aligned, None)
    assert te.annualized == pytest.approx(math.sqrt(3.36e-6), rel=1e-9)
    assert te.bps == pytest.approx(18.330302779823363, rel=1e-9)
    assert root_mean_square(aligned.differences) == pytest.approx(math.sqrt(1.26e-5), rel=1e-9)


def test_windows_count_observations_not_calendar_days() -> None:
    d = np.array(JULY_DIFFERENCES)
    rolling = rolling_tracking_error(d, 3)
    # Window of 3 observations, each ending on the date of its last difference:
    #   07-05  [0]               one observation: NaN
    #   07-08  [0, .04]          mean .02, variance 2 * .02^2 / 1 = 8e-4
    #   07-09  [0, .04, .02]     mean .02, variance (4 + 4 + 0)e-4 / 2 = 4e-4
    #   07-10  [.04, .02, .03]   mean .03, variance (1 + 1 + 0)e-4 / 2 = 1e-4
    #   07-11  [.02, .03, .01]   mean .02, variance 1e-4
    # The 07-09 window reaches back over the weekend and the holiday to the 07-03 close, six
    # calendar days; three calendar days (07-07..07-09) would hold two observations.
    assert math.isnan(rolling[0])
    expected = [math.sqrt(252 * v) for v in (8e-4, 4e-4, 1e-4, 1e-4)]
    assert rolling[1:] == pytest.approx(expected, rel=1e-12)
    # (That calendar window would hold [.04, .02]: variance 2e-4, not the 4e-4 above.)
    assert tracking_error(d[1:3]) == pytest.approx(math.sqrt(252 * 2e-4), rel=1e-12)
    waited = rolling_tracking_error(d, 3, min_observations=3)
    assert np.isnan(waited[:2]).all() and waited[2:] == pytest.approx(expected[1:], rel=1e-12)
    # The last window of 3: the returns of 07-09, 07-10 and 07-11, based on the 07-08 close.
    last = window_tracking_error(july(), 3)
    assert (last.observations, last.start, last.end) == (3, D("2024-07-08"), D("2024-07-11"))
    assert not last.partial
    assert last.annualized == pytest.approx(math.sqrt(0.0252), rel=1e-12)
    # A year of 252 observations over five: all of them, flagged partial.
    year = window_tracking_error(july(), 252)
    assert (year.observations, year.start, year.partial) == (5, D(JULY[0]), True)
    assert year.annualized == pytest.approx(math.sqrt(0.063), rel=1e-12)


def test_a_window_with_fewer_than_two_observations_has_no_tracking_error() -> None:
    assert math.isnan(tracking_error(np.array([0.01])))
    assert math.isnan(tracking_error(np.array([])))
    assert np.isnan(rolling_tracking_error(np.array([0.01]), 252)).all()
    aligned = align(
        [("2024-07-03", 100.0), ("2024-07-05", 101.0)], list(zip(JULY, JULY_INDEX, strict=True))
    )
    (year, inception) = standard_windows(aligned)
    for window in (year, inception):
        assert window.observations == 1
        assert window.annualized is None and window.bps is None
    with pytest.raises(ValueError, match="at least 2"):
        rolling_tracking_error(np.array(JULY_DIFFERENCES), 1)
    with pytest.raises(ValueError, match="min_observations"):
        rolling_tracking_error(np.array(JULY_DIFFERENCES), 3, min_observations=4)


def test_three_year_window_only_when_the_history_has_three_years() -> None:
    rng = np.random.default_rng(7)
    returns = rng.normal(0.0, 0.01, THREE_YEARS)
    days = [d.isoformat() for d in business_days(D("2021-01-04"), THREE_YEARS + 1)]
    index = levels_from_returns(100.0, list(returns))
    fund = levels_from_returns(100.0, list(returns + rng.normal(0.0, 1e-4, THREE_YEARS)))
    full = align(list(zip(days, fund, strict=True)), list(zip(days, index, strict=True)))
    assert [w.label for w in standard_windows(full)] == ["1y", "3y", "inception"]
    year, three, inception = standard_windows(full)
    assert (year.observations, three.observations, inception.observations) == (252, 756, 756)
    assert year.start == full.dates[756 - 252]
    assert year.annualized == pytest.approx(tracking_error(full.differences[-252:]))
    short = align(list(zip(days, fund, strict=True))[:-1], list(zip(days, index, strict=True)))
    assert [w.label for w in standard_windows(short)] == ["1y", "inception"]
    assert [w.label for w in standard_windows(full, window=20)] == ["20 obs", "3y", "inception"]


# --- the fee-only fund ------------------------------------------------------------------------

# Per-session accrual: an expense ratio of 0.252% a year over 252 sessions is c = 1e-5 a session.
FEE_PER_SESSION = 0.00252 / 252


def test_fee_only_fund_has_no_tracking_error_and_trails_by_its_fee() -> None:
    nav = fee_only_fund(JULY_INDEX, FEE_PER_SESSION)
    aligned = align(list(zip(JULY, nav, strict=True)), list(zip(JULY, JULY_INDEX, strict=True)))
    # d_k = (r_k - c) - r_k = -c every session: no deviation from the mean at all.
    assert aligned.differences == pytest.approx([-FEE_PER_SESSION] * 5, abs=1e-16)
    te = window_tracking_error(aligned, None).annualized
    assert te is not None and te < 1e-9
    # ...while the root mean square reports the fee itself as tracking error: sqrt(252) * c.
    assert root_mean_square(aligned.differences) == pytest.approx(ANNUALIZE * 1e-5, rel=1e-9)
    # TD since inception = (1.1 - c)(0.9 - c)(1 - c)(1.1 - c)(1 - c) - 1.089, exactly; to first
    # order -c * (0.99 + 1.21 + 1.089 + 0.99 + 1.089) = -5.368c: not the sum of the daily
    # differences, -5c.
    exact = exact_fee_difference(JULY_INDEX_RETURNS, FEE_PER_SESSION)
    inception = standard_periods(aligned)[3]
    assert inception.difference == pytest.approx(float(exact), abs=1e-15)
    assert inception.difference == pytest.approx(-5.368e-5, rel=1e-4)
    assert abs(inception.difference - (-5e-5)) > 3e-6


def test_fee_only_fund_over_three_years() -> None:
    rng = np.random.default_rng(11)
    returns = [float(r) for r in rng.normal(0.0003, 0.012, THREE_YEARS + 40)]
    days = business_days(D("2021-11-01"), len(returns) + 1)
    index = levels_from_returns(4000.0, returns)
    nav = fee_only_fund(index, FEE_PER_SESSION)
    aligned = align(list(zip(days, nav, strict=True)), list(zip(days, index, strict=True)))
    report = tracking_report(aligned)
    assert [w.label for w in report.windows] == ["1y", "3y", "inception"]
    for window in report.windows:
        assert window.annualized is not None and window.annualized < 1e-9, window.label
    assert np.nanmax(rolling_tracking_error(aligned.differences, 252)) < 1e-9
    # Every period's TD is the fee compounded over that period's index returns, exactly.
    for period in report.periods:
        i, j = aligned.dates.index(period.start), aligned.dates.index(period.end)
        expected = exact_fee_difference(returns[i:j], FEE_PER_SESSION)
        assert period.difference == pytest.approx(float(expected), rel=1e-9, abs=1e-15)
    assert report.periods[3].sessions == len(returns)


def test_calendar_day_fee_accrual_is_a_small_tracking_error() -> None:
    # Accrued per calendar day at ER / 365 (ER = 0.365%: 1e-5 a day), the intervals of the July
    # series carry 2, 3, 1, 1, 1 days of fee: d_k = -1e-5 * n_k.  n has mean 1.6, deviations
    # 0.4, 1.4, -0.6, -0.6, -0.6, squares summing to 3.2, variance 3.2 / 4 = 0.8, so
    # TE = sqrt(252) * 1e-5 * sqrt(0.8) = 1.42 bps though the fee is all there is.
    days = [D(d) for d in JULY]
    gaps = [(b - a).days for a, b in itertools.pairwise(days)]
    assert gaps == [2, 3, 1, 1, 1]
    nav = [JULY_INDEX[0]]
    for k, gap in enumerate(gaps):
        nav.append(nav[-1] * (1.0 + JULY_INDEX_RETURNS[k] - 0.00365 / 365 * gap))
    aligned = align(list(zip(JULY, nav, strict=True)), list(zip(JULY, JULY_INDEX, strict=True)))
    te = window_tracking_error(aligned, None).annualized
    assert te == pytest.approx(ANNUALIZE * 1e-5 * math.sqrt(0.8), rel=1e-9)


# --- properties -------------------------------------------------------------------------------

_differences = st.lists(
    st.floats(min_value=-0.05, max_value=0.05, allow_nan=False), min_size=2, max_size=300
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_differences, st.floats(min_value=-0.01, max_value=0.01), st.integers(2, 30))
def test_tracking_error_ignores_a_constant_added_to_every_difference(
    differences: list[float], constant: float, window: int
) -> None:
    # stdev(d + k) = stdev(d): the mean moves by k as well, so every deviation
    # (d_t + k) - mean(d + k) = d_t - mean(d) is unchanged.  A constant lag such as a fee is
    # therefore no tracking error (the root mean square has no such invariance).
    d = np.array(differences)
    assert tracking_error(d + constant) == pytest.approx(tracking_error(d), rel=1e-9, abs=1e-13)
    shifted = rolling_tracking_error(d + constant, window)
    plain = rolling_tracking_error(d, window)
    assert np.isnan(shifted[0]) and np.isnan(plain[0])
    assert shifted[1:] == pytest.approx(plain[1:], rel=1e-9, abs=1e-13)


_levels = st.lists(st.floats(min_value=50.0, max_value=200.0), min_size=3, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_levels, _levels, st.data())
def test_tracking_difference_composes_over_consecutive_periods(
    fund: list[float], index: list[float], data: st.DataObject
) -> None:
    # Total returns chain: 1 + R_ac = (1 + R_ab)(1 + R_bc) on each side, so with
    # A = 1 + F_ab, B = 1 + F_bc, C = 1 + I_ab, E = 1 + I_bc:
    #   TD_ac = AB - CE = (A - C) B + C (B - E) = TD_ab (1 + F_bc) + (1 + I_ab) TD_bc.
    # (TD_ab + TD_bc alone misses the cross terms.)
    n = min(len(fund), len(index))
    days = business_days(D("2024-01-01"), n)
    aligned = align(list(zip(days, fund[:n], strict=True)), list(zip(days, index[:n], strict=True)))
    a, b, c = sorted(data.draw(st.lists(st.integers(0, n - 1), min_size=3, max_size=3)))
    ab = period_difference(aligned, days[a], days[b])
    bc = period_difference(aligned, days[b], days[c])
    ac = period_difference(aligned, days[a], days[c])
    composed = ab.difference * (1 + bc.fund_return) + (1 + ab.index_return) * bc.difference
    assert ac.difference == pytest.approx(composed, abs=1e-12)
    assert ac.sessions == ab.sessions + bc.sessions


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.floats(min_value=-0.05, max_value=0.05), min_size=2, max_size=60),
    st.floats(min_value=0.0, max_value=2e-4),
)
def test_fee_only_fund_property(returns: list[float], fee: float) -> None:
    days = business_days(D("2023-06-01"), len(returns) + 1)
    index = levels_from_returns(250.0, returns)
    nav = fee_only_fund(index, fee)
    aligned = align(list(zip(days, nav, strict=True)), list(zip(days, index, strict=True)))
    te = window_tracking_error(aligned, None).annualized
    assert te is not None and te < 1e-9
    # The level-to-level returns the module sees are those of the float levels, whose
    # rounding (a few 1e-16 a session) bounds the agreement with the exact fee.
    inception = standard_periods(aligned)[3]
    exact = exact_fee_difference(list(aligned.index_returns), fee)
    assert inception.difference == pytest.approx(float(exact), abs=1e-12)


# --- streamer tracking ------------------------------------------------------------------------


def write_csv(path: Path, header: str, rows: Sequence[tuple[str, float]]) -> Path:
    path.write_text(header + "\n" + "".join(f"{d},{v!r}\n" for d, v in rows), encoding="utf-8")
    return path


@pytest.fixture
def july_files(tmp_path: Path) -> tuple[Path, Path]:
    """The July series as the two CSV layouts a fund administrator and streamer produce."""
    fund = write_csv(tmp_path / "fund.csv", "date,nav", july_fund_rows())
    index = write_csv(tmp_path / "index.csv", "session,level", july_index_rows())
    return fund, index


def run_tracking(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STREAMER), "tracking", *args],
        env=child_environment({"COLUMNS": "160", **(env or {})}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_command_prints_the_table_and_writes_the_chart_beside_the_fund(
    july_files: tuple[Path, Path],
) -> None:
    fund, index = july_files
    done = run_tracking("--fund-nav", str(fund), "--index-levels", str(index), "--window", "3")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert "6 common dates 2024-07-03..2024-07-11, 5 observations" in out
    assert "fund-only date(s) dropped (no value on the other side): 2024-07-04" in out
    assert "index-only date(s) dropped (no value on the other side): 2024-07-12" in out
    differences, _, errors = out.partition("tracking error")
    td_rows = table_rows(differences)
    assert td_rows["inception"][1:] == [
        "2024-07-03", "2024-07-11", "5", "20.3706", "8.9000", "1147.06"
    ]  # fmt: skip
    assert td_rows["last_day"][1:] == [
        "2024-07-10",
        "2024-07-11",
        "1",
        "1.0000",
        "0.0000",
        "100.00",
    ]
    # TE over the last 3 observations sqrt(0.0252) = 1587.45 bps; since inception sqrt(0.063).
    te_rows = table_rows(errors)
    assert te_rows["3 obs"][1:] == ["3", "2024-07-08", "2024-07-11", "1587.45"]
    assert te_rows["inception"][1:] == ["5", "2024-07-03", "2024-07-11", "2509.98"]
    chart = fund.parent / "tracking.png"
    assert f"chart: {chart}" in out
    assert_png(chart)


def table_rows(text: str) -> dict[str, list[str]]:
    """The body rows of a rich table, by their first cell."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines()]
    return {row[0]: row for row in rows if row}


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels.std()) > 0.0  # something is drawn


def test_command_json_document(july_files: tuple[Path, Path], tmp_path: Path) -> None:
    fund, index = july_files
    chart = tmp_path / "charts" / "july.png"
    chart.parent.mkdir()
    done = run_tracking(
        "--fund-nav", str(fund), "--index-levels", str(index), "--json", "--chart", str(chart),
        "--period", "2024-07-05", "2024-07-09",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["fund"] == {"source": str(fund), "dates": 7, "only": ["2024-07-04"]}
    assert document["index"] == {"source": str(index), "dates": 7, "only": ["2024-07-12"]}
    assert (document["common_dates"], document["observations"]) == (6, 5)
    assert (document["first"], document["last"]) == ("2024-07-03", "2024-07-11")
    periods = {p["period"]: p for p in document["tracking_difference"]}
    assert list(periods) == ["last_day", "mtd", "ytd", "inception", "2024-07-05..2024-07-09"]
    assert periods["inception"]["td_bps"] == pytest.approx(1147.06284, abs=1e-9)
    assert periods["inception"]["fund_return"] == pytest.approx(0.203706284, abs=1e-14)
    assert periods["2024-07-05..2024-07-09"]["td_bps"] == pytest.approx(588.0, abs=1e-9)
    assert periods["last_day"] == {
        "period": "last_day",
        "start": "2024-07-10",
        "end": "2024-07-11",
        "sessions": 1,
        "fund_return": pytest.approx(0.01, abs=1e-15),
        "index_return": 0.0,
        "td_bps": pytest.approx(100.0, abs=1e-9),
    }
    windows = {w["window"]: w for w in document["tracking_error"]}
    assert windows["1y"]["requested"] == 252 and windows["1y"]["observations"] == 5
    assert windows["1y"]["partial"] is True
    assert windows["1y"]["te_bps"] == pytest.approx(math.sqrt(0.063) * 1e4, rel=1e-12)
    assert windows["inception"]["requested"] is None
    assert document["chart"] == str(chart)
    assert_png(chart)
    assert not (fund.parent / "tracking.png").exists()


def test_command_without_a_tracking_error_prints_null(tmp_path: Path) -> None:
    fund = write_csv(tmp_path / "f.csv", "date,value", [("2024-07-03", 10.0), ("2024-07-05", 11.0)])
    index = write_csv(tmp_path / "i.csv", "date,value", [("2024-07-03", 5.0), ("2024-07-05", 5.0)])
    done = run_tracking("--fund-nav", str(fund), "--index-levels", str(index), "--json")
    assert done.returncode == 0, done.stderr
    windows = json.loads(done.stdout)["tracking_error"]
    assert [w["te_bps"] for w in windows] == [None, None]
    assert_png(tmp_path / "tracking.png")  # an empty TE panel still draws
    table = run_tracking("--fund-nav", str(fund), "--index-levels", str(index), "--no-chart")
    assert table.returncode == 0 and "n/a (< 2 obs)" in table.stdout


@pytest.mark.parametrize(
    ("fund_text", "problem"),
    [
        (None, "{fund}: no such file"),
        ("date,nav\n2024-07-03,100\n2024-07-32,101\n", "{fund}:3: bad date '2024-07-32'"),
        ("date,nav\n2024-07-03,100\n2024-07-05,-1\n", "{fund}:3: value '-1' is not a positive"),
        ("date,nav\n2023-07-03,100\n", "{fund} and {index}: no common date"),
    ],
)
def test_command_bad_input_is_one_line_and_exit_2(
    july_files: tuple[Path, Path], fund_text: str | None, problem: str
) -> None:
    fund, index = july_files
    if fund_text is None:
        fund.unlink()
    else:
        fund.write_text(fund_text, encoding="utf-8")
    done = run_tracking("--fund-nav", str(fund), "--index-levels", str(index))
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("streamer: error: " + problem.format(fund=fund, index=index))
    assert not (fund.parent / "tracking.png").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "{path}:1: empty file"),
        ("date,nav\n", "{path}: no data rows after the header"),
        ("when,nav\n2024-07-03,1\n", "{path}:1: no date or session column in the header"),
        ("date,price\n2024-07-03,1\n", "{path}:1: no value or nav or level column"),
        ("date,nav,level\n2024-07-03,1,2\n", "{path}:1: more than one value or nav or level"),
        ("date,nav\n2024-07-03\n", "{path}:2: 1 columns, the header has 2"),
        ("date,nav\n2024-07-03,abc\n", "{path}:2: bad value 'abc' (expected a number)"),
        ("date,nav\n2024-07-03,inf\n", "{path}:2: value 'inf' is not a positive finite number"),
        ("date,nav\n2024-07-03,nan\n", "{path}:2: value 'nan' is not a positive finite number"),
        ("date,nav\n03/07/2024,1\n", "{path}:2: bad date '03/07/2024' (expected YYYY-MM-DD)"),
        (
            "date,nav\n2024-07-03,1\n\n2024-07-03,2\n",
            "{path}:4: date 2024-07-03 already given on line 2",
        ),
        ("date,nav\n2024-07-03,1\n2024-07-05,\xe9\n", "{path}:3: bad value"),
        (b"date,nav\n2024-07-03,1\n2024-07-05,\xff\n", "{path}:3: not UTF-8 text"),
    ],
)
def test_bad_csv_variations(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    july_files: tuple[Path, Path],
    text: str | bytes,
    problem: str,
) -> None:
    _, index = july_files
    path = tmp_path / "bad.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    code = cli.main(["tracking", "--fund-nav", str(path), "--index-levels", str(index)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("streamer: error: " + problem.format(path=path))


def test_csv_layouts_and_blank_lines_read_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], july_files: tuple[Path, Path]
) -> None:
    _, index = july_files
    results: list[Any] = []
    for header in ("date,value", " Date , NAV ", "session,level", "level,comment,session"):
        path = tmp_path / f"{len(results)}.csv"
        if header.startswith("level"):
            body = "".join(f"{v!r},x,{d}\n" for d, v in july_fund_rows())
        else:
            body = "".join(f"{d},{v!r}\n\n" for d, v in july_fund_rows())
        path.write_bytes(b"\xef\xbb\xbf" + (header + "\n" + body).encode())  # with a BOM
        code = cli.main(
            ["tracking", "--fund-nav", str(path), "--index-levels", str(index), "--json",
             "--no-chart"]
        )  # fmt: skip
        assert code == 0
        document = json.loads(capsys.readouterr().out)
        results.append(document["tracking_difference"])
    assert all(r == results[0] for r in results)


def test_bad_arguments_exit_2(july_files: tuple[Path, Path]) -> None:
    fund, index = july_files
    for args in (
        ["--fund-nav", str(fund)],  # no index
        ["--fund-nav", str(fund), "--index-levels", str(index), "--window", "1"],
        ["--fund-nav", str(fund), "--index-levels", str(index), "--period", "2024-07-05", "x"],
        ["--fund-nav", str(fund), "--fund", "F", "--index-levels", str(index)],
        ["--fund-nav", str(fund), "--index-levels", str(index), "--chart", "x", "--no-chart"],
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main(["tracking", *args])
        assert exited.value.code == 2, args


def test_period_outside_the_data_is_one_line(
    capsys: pytest.CaptureFixture[str], july_files: tuple[Path, Path]
) -> None:
    fund, index = july_files
    code = cli.main(
        ["tracking", "--fund-nav", str(fund), "--index-levels", str(index), "--no-chart",
         "--period", "2024-06-28", "2024-07-09"]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        f"streamer: error: {fund} and {index}: no common date on or before 2024-06-28 "
        "(the first is 2024-07-03)\n"
    )


def test_unwritable_chart_is_one_line(
    capsys: pytest.CaptureFixture[str], july_files: tuple[Path, Path], tmp_path: Path
) -> None:
    fund, index = july_files
    chart = tmp_path / "missing-directory" / "c.png"
    code = cli.main(
        ["tracking", "--fund-nav", str(fund), "--index-levels", str(index), "--chart", str(chart)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"streamer: error: {chart}: cannot write the chart") and err.count("\n") == 1
    )


def test_matplotlib_is_imported_only_to_draw() -> None:
    probe = (
        "import sys, streamer.service, streamer.commands.tracking, streamer.derived.tracking;"
        "print(sorted(m for m in ('matplotlib', 'redis') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=child_environment({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # The service imports redis; neither it nor the tracking command imports matplotlib.
    assert done.stdout.strip() == "['redis']"
    probe = (
        "import sys, streamer.commands.tracking;"
        "print('matplotlib' in sys.modules, 'redis' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=child_environment({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "False False"


# --- from Redis -------------------------------------------------------------------------------


def fill_streams(server: LocalRedis, prefix: str, fund_id: str, series: str) -> redis.Redis:
    """The July series as the service and the fund engine write them."""
    client: redis.Redis = redis.Redis.from_url(server.url, decode_responses=True)
    for day, nav in july_fund_rows():
        client.xadd(f"{prefix}:navs:{fund_id}", {"session": day, "nav": repr(nav), "date": day})
    for close_ns, (day, level) in enumerate(july_index_rows()):
        fields: dict[Any, Any] = {
            "session": day, "close_ts": close_ns, "level": repr(level), "divisor": "1.5",
            "pr_close": repr(level), "tr_close": repr(level), "ntr_close": repr(level),
            "dividend_points": "0", "net_dividend_points": "0",
        }  # fmt: skip
        client.xadd(f"{prefix}:closes:{series}", fields)
    return client


def test_redis_streams_give_the_same_report_as_the_files(
    redis_server: LocalRedis, july_files: tuple[Path, Path]
) -> None:
    client = fill_streams(redis_server, "test", "ETF1", "US500.NTR")
    # A close taken twice for one session (a retried cycle, an on-demand close): the last wins.
    client.xadd("test:closes:US500.NTR", {"session": "2024-07-11", "level": "999.0"})
    client.xadd("test:closes:US500.NTR", {"session": "2024-07-11", "level": "108.9"})
    redis_args = ["--redis-url", redis_server.url, "--prefix", "test"]
    from_redis = run_tracking(
        *redis_args, "--fund", "ETF1", "--index", "US500.NTR", "--json", "--no-chart"
    )
    assert from_redis.returncode == 0, from_redis.stderr
    fund, index = july_files
    from_files = run_tracking("--fund-nav", str(fund), "--index-levels", str(index), "--json")
    mixed = run_tracking(
        *redis_args, "--fund-nav", str(fund), "--index", "US500.NTR", "--json", "--no-chart"
    )
    documents = [json.loads(done.stdout) for done in (from_redis, from_files, mixed)]
    assert documents[0]["fund"]["source"] == "test:navs:ETF1"
    assert documents[0]["index"]["source"] == "test:closes:US500.NTR"
    assert documents[0]["chart"] is None
    for document in documents:
        assert document["tracking_difference"] == documents[1]["tracking_difference"]
        assert document["tracking_error"] == documents[1]["tracking_error"]
        assert document["index"]["dates"] == 7
    # Without --chart the chart of a Redis fund goes to the current directory: not asked here.


def test_redis_chart_defaults_to_the_current_directory(
    redis_server: LocalRedis, tmp_path: Path
) -> None:
    fill_streams(redis_server, "p", "F", "S")
    done = subprocess.run(
        [str(STREAMER), "tracking", "--redis-url", redis_server.url, "--prefix", "p",
         "--fund", "F", "--index", "S"],
        env=child_environment({"COLUMNS": "160"}),
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "chart: tracking.png" in done.stdout
    assert_png(tmp_path / "tracking.png")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"nav": "101.0"}, "no session field"),
        ({"session": "2024-07-15"}, "no nav field"),
        ({"session": "2024-07-15", "nav": "x"}, "bad nav 'x'"),
        ({"session": "2024-07-15", "nav": "0"}, "value 0.0 is not a positive finite number"),
        ({"session": "15.07.2024", "nav": "1"}, "bad date '15.07.2024' (expected YYYY-MM-DD)"),
    ],
)
def test_bad_redis_entry_is_one_line(
    redis_server: LocalRedis,
    capsys: pytest.CaptureFixture[str],
    entry: dict[str, str],
    problem: str,
) -> None:
    client = fill_streams(redis_server, "test", "ETF1", "IDX")
    fields: dict[Any, Any] = dict(entry)
    entry_id = cast("str", client.xadd("test:navs:ETF1", fields))
    code = cli.main(
        ["tracking", "--redis-url", redis_server.url, "--prefix", "test", "--fund", "ETF1",
         "--index", "IDX", "--no-chart"]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        f"streamer: error: {redis_server.url} test:navs:ETF1 entry {entry_id}: {problem}\n"
    )


def test_missing_or_wrong_redis_keys_are_one_line(
    redis_server: LocalRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    client = fill_streams(redis_server, "test", "ETF1", "IDX")
    client.hset("test:closes:HASH", mapping={"level": "1"})
    base = ["tracking", "--redis-url", redis_server.url, "--prefix", "test", "--no-chart"]
    assert cli.main([*base, "--fund", "NOPE", "--index", "IDX"]) == 2
    assert capsys.readouterr().err == (
        f"streamer: error: {redis_server.url} test:navs:NOPE: no entries "
        "(no such stream, or it is empty)\n"
    )
    assert cli.main([*base, "--fund", "ETF1", "--index", "HASH"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"streamer: error: {redis_server.url} test:closes:HASH: WRONGTYPE")
    assert err.count("\n") == 1


def test_unreachable_redis_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], july_files: tuple[Path, Path]
) -> None:
    with LocalRedis() as server:
        url = server.url  # a port that was just free and now has nobody on it
    fund, _ = july_files
    code = cli.main(
        ["tracking", "--redis-url", url, "--fund-nav", str(fund), "--index", "IDX", "--no-chart"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"streamer: error: {url}: cannot read streamer:closes:IDX:")
    assert err.count("\n") == 1
