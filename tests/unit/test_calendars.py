"""streamer.calendars: exchange_calendars sessions as plain data.

The exact values were read off the exchanges' published schedules: XNYS closes at 13:00 New
York time (18:00 UTC) on the day after Thanksgiving and is shut on Christmas Day; it opens at
09:30 New York time, 14:30 UTC in winter (EST) and 13:30 UTC in summer (EDT).
"""

from __future__ import annotations

import datetime as dt
import itertools

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.calendars import Session, calendar_names, sessions, validate_calendar_name

HOUR_NS = 3_600 * 10**9
DAY_NS = 24 * HOUR_NS


def ns(iso: str) -> int:
    """UTC nanoseconds of a naive ISO timestamp read as UTC."""
    moment = dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC)
    return int(moment.timestamp()) * 10**9


def test_ns_helper_matches_hand_computed_epochs() -> None:
    assert ns("1970-01-01T00:00") == 0
    assert ns("2025-11-28T18:00") == 1_764_352_800_000_000_000


def test_names_include_mics_aliases_and_24_7() -> None:
    names = calendar_names()
    assert isinstance(names, frozenset)
    assert {"XNYS", "XLON", "XHKG", "NYSE", "24/7", "24/5"} <= names


def test_validate_accepts_names_and_aliases() -> None:
    assert validate_calendar_name("XNYS") is None
    assert validate_calendar_name("NYSE") is None
    assert validate_calendar_name("24/7") is None


def test_unknown_name_error_text_suggests_close_names() -> None:
    assert validate_calendar_name("XNYZ") == "unknown calendar 'XNYZ'; did you mean XNZE, XNYS?"
    # Case is forgiven in the suggestion, not in the name itself.
    message = validate_calendar_name("xnys")
    assert message is not None
    assert message.startswith("unknown calendar 'xnys'; did you mean XNYS")
    assert validate_calendar_name("nothing-like-it") == (
        "unknown calendar 'nothing-like-it' (exchange_calendars names, e.g. XNYS, XLON, 24/7)"
    )


def test_sessions_rejects_an_unknown_name_with_the_same_text() -> None:
    with pytest.raises(ValueError, match=r"^unknown calendar 'XNYZ'; did you mean XNZE, XNYS\?$"):
        sessions("XNYZ", 0, DAY_NS)


def test_sessions_rejects_a_reversed_range() -> None:
    with pytest.raises(ValueError, match="after end_ns"):
        sessions("XNYS", ns("2025-01-02T00:00"), ns("2025-01-01T00:00"))


def test_early_close_after_thanksgiving() -> None:
    got = sessions("XNYS", ns("2025-11-27T00:00"), ns("2025-11-29T00:00"))
    # Thanksgiving (27th) is a holiday; the 28th opens 14:30 UTC and closes early, 18:00 UTC.
    assert got == [Session("2025-11-28", 1_764_340_200_000_000_000, 1_764_352_800_000_000_000)]
    assert got[0].open_ns == ns("2025-11-28T14:30")
    assert got[0].close_ns == ns("2025-11-28T18:00")


def test_christmas_has_no_session() -> None:
    got = sessions("XNYS", ns("2025-12-24T00:00"), ns("2025-12-26T23:00"))
    assert got == [
        # Christmas Eve closes early (13:00 New York).
        Session("2025-12-24", 1_766_586_600_000_000_000, 1_766_599_200_000_000_000),
        Session("2025-12-26", 1_766_759_400_000_000_000, 1_766_782_800_000_000_000),
    ]
    assert sessions("XNYS", ns("2025-12-25T00:00"), ns("2025-12-25T23:59")) == []


def test_dst_moves_the_utc_open_by_an_hour() -> None:
    (winter,) = sessions("XNYS", ns("2025-01-15T00:00"), ns("2025-01-15T23:00"))
    (summer,) = sessions("XNYS", ns("2025-07-15T00:00"), ns("2025-07-15T23:00"))
    assert winter == Session("2025-01-15", ns("2025-01-15T14:30"), ns("2025-01-15T21:00"))
    assert summer == Session("2025-07-15", ns("2025-07-15T13:30"), ns("2025-07-15T20:00"))
    assert winter.open_ns == 1_736_951_400_000_000_000
    assert summer.open_ns == 1_752_586_200_000_000_000


def test_24_7_sessions_are_whole_utc_days() -> None:
    got = sessions("24/7", ns("2025-03-08T12:00"), ns("2025-03-10T00:00"))
    assert [s.date for s in got] == ["2025-03-08", "2025-03-09", "2025-03-10"]
    for s in got:
        assert s.open_ns == ns(f"{s.date}T00:00")
        assert s.close_ns == s.open_ns + DAY_NS
    # The 9th is a US DST change: irrelevant to a UTC calendar.
    assert got[1] == Session("2025-03-09", 1_741_478_400_000_000_000, 1_741_564_800_000_000_000)


def test_a_session_that_only_touches_the_range_is_included() -> None:
    midnight = ns("2025-03-09T00:00")
    got = sessions("24/7", midnight, midnight)
    assert [s.date for s in got] == ["2025-03-08", "2025-03-09"]


def test_range_across_a_year_boundary() -> None:
    got = sessions("XNYS", ns("2025-12-30T00:00"), ns("2026-01-03T00:00"))
    # New Year's Day 2026 is a holiday; the 3rd is a Saturday.
    assert got == [
        Session("2025-12-30", ns("2025-12-30T14:30"), ns("2025-12-30T21:00")),
        Session("2025-12-31", ns("2025-12-31T14:30"), ns("2025-12-31T21:00")),
        Session("2026-01-02", ns("2026-01-02T14:30"), ns("2026-01-02T21:00")),
    ]
    # London closes early (12:30) on New Year's Eve.
    got = sessions("XLON", ns("2025-12-31T00:00"), ns("2026-01-02T12:00"))
    assert got == [
        Session("2025-12-31", ns("2025-12-31T08:00"), ns("2025-12-31T12:30")),
        Session("2026-01-02", ns("2026-01-02T08:00"), ns("2026-01-02T16:30")),
    ]


def test_range_across_a_decade_boundary_matches_one_wide_call() -> None:
    narrow = sessions("XNYS", ns("2029-12-20T00:00"), ns("2030-01-10T00:00"))
    wide = sessions("XNYS", ns("2029-01-01T00:00"), ns("2030-12-31T00:00"))
    assert narrow == [s for s in wide if "2029-12-20" <= s.date <= "2030-01-09"]
    assert "2030-01-01" not in {s.date for s in narrow}


def test_ranges_outside_the_default_twenty_year_window() -> None:
    (old,) = sessions("XNYS", ns("1990-07-02T00:00"), ns("1990-07-02T23:00"))
    assert old == Session("1990-07-02", ns("1990-07-02T13:30"), ns("1990-07-02T20:00"))
    (late,) = sessions("XNYS", ns("2045-01-03T00:00"), ns("2045-01-03T23:00"))
    assert late == Session("2045-01-03", ns("2045-01-03T14:30"), ns("2045-01-03T21:00"))


def test_an_alias_gives_the_same_sessions() -> None:
    start, end = ns("2025-11-01T00:00"), ns("2025-12-01T00:00")
    assert sessions("NYSE", start, end) == sessions("XNYS", start, end)


def test_lunch_breaks_are_ignored() -> None:
    # XHKG breaks 12:00-13:00 Hong Kong time; the session still runs 09:30 to 16:00.
    (session,) = sessions("XHKG", ns("2025-01-02T00:00"), ns("2025-01-02T12:00"))
    assert session == Session("2025-01-02", ns("2025-01-02T01:30"), ns("2025-01-02T08:00"))


def test_sessions_dated_the_next_day_that_open_in_the_previous_utc_day() -> None:
    # CME Globex: the session dated 2025-01-03 opens 17:00 Chicago on the 2nd (23:00 UTC).
    got = sessions("CMES", ns("2025-01-02T23:30"), ns("2025-01-02T23:30"))
    assert got == [Session("2025-01-03", ns("2025-01-02T23:00"), ns("2025-01-03T23:00"))]


def test_a_range_past_what_the_calendar_records_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"covers 1960-01-01 to 2049-12-31"):
        sessions("XHKG", ns("1959-06-01T00:00"), ns("1960-06-01T00:00"))
    assert sessions("XHKG", ns("1960-01-01T00:00"), ns("1960-01-31T00:00"))


@pytest.mark.parametrize("name", ["ASEX", "XBEL", "XBSE", "XCYS", "XTAE"])
def test_calendars_that_pandas_3_breaks_build(name: str) -> None:
    got = sessions(name, ns("2025-03-01T00:00"), ns("2025-03-31T00:00"))
    assert len(got) >= 15


def test_ad_hoc_weekend_sessions_are_kept() -> None:
    # Moscow traded on Saturday 2000-05-06 (a working day moved from a holiday); pandas 3 loses it.
    got = sessions("XMOS", ns("2000-05-06T00:00"), ns("2000-05-06T23:00"))
    assert [s.date for s in got] == ["2000-05-06"]


def test_sessions_are_plain_data() -> None:
    got = sessions("XNYS", ns("2025-11-03T00:00"), ns("2025-11-08T00:00"))
    assert len(got) == 5
    for s in got:
        assert type(s.date) is str
        assert type(s.open_ns) is int
        assert type(s.close_ns) is int
    assert msgspec.json.decode(msgspec.json.encode(got), type=list[Session]) == got


RANGE_LOW = ns("2000-01-01T00:00")
RANGE_HIGH = ns("2035-12-31T23:59")
# Wide enough that the property's "every session" reference covers all its ranges.
_WIDE: dict[str, list[Session]] = {}


def _all_sessions(name: str) -> list[Session]:
    if name not in _WIDE:
        _WIDE[name] = sessions(name, RANGE_LOW, RANGE_HIGH)
    return _WIDE[name]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["XNYS", "XLON", "24/7"]),
    a=st.integers(RANGE_LOW, RANGE_HIGH),
    length=st.one_of(
        st.integers(0, 10 * DAY_NS),
        st.integers(0, 400 * DAY_NS),
        st.integers(0, RANGE_HIGH - RANGE_LOW),
    ),
)
def test_sessions_are_ordered_disjoint_and_intersect_the_range(
    name: str, a: int, length: int
) -> None:
    start, end = a, min(a + length, RANGE_HIGH)
    got = sessions(name, start, end)
    for s in got:
        assert s.open_ns < s.close_ns
        assert s.close_ns >= start and s.open_ns <= end
    for earlier, later in itertools.pairwise(got):
        assert earlier.close_ns <= later.open_ns
        assert earlier.date < later.date
    # Nothing is missing: the same as filtering one wide call (built over other decades).
    expected = [s for s in _all_sessions(name) if s.close_ns >= start and s.open_ns <= end]
    assert got == expected
