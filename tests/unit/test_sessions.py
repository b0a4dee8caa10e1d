"""The trading day in the pure engine: sessions, official closes, TR/NTR chained day after day.

Sessions come from a hand-written calendar (five sessions, 14:30-21:00 UTC) except in the
calendar tests, which use exchange_calendars' XNYS through ``streamer.sessions``.  Every
figure is worked out in the test with S&P's daily formula:

    TR_t = TR_{t-1} * (PR_t + dividend_points_t) / PR_{t-1}
    dividend_points_t = sum(div_i * q_i) / divisor_t        (NTR: div_i * (1 - withholding_i))
"""

from __future__ import annotations

import datetime as dt

import pytest

from streamer.config import QualitySettings
from streamer.engine import Engine
from streamer.engine.results import BatchResult, CloseRecord
from streamer.engine.schedule import Session, SessionRules
from streamer.sessions import sessions_of
from streamer.wire import Close, Dividend, SpecialDividend, Tick
from tests.unit.builders import index, member

HOUR = 3_600 * 10**9
SECOND = 10**9
DAYS = ["2025-11-24", "2025-11-25", "2025-11-26", "2025-11-27", "2025-11-28"]


def _utc(day: str, hour: float) -> int:
    midnight = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    return int(midnight.timestamp() * 10**9) + int(hour * HOUR)


def five_days(name: str, start_ns: int, end_ns: int) -> list[Session]:
    """A calendar of five sessions, each 14:30 to 21:00 UTC."""
    sessions = [Session(d, _utc(d, 14.5), _utc(d, 21)) for d in DAYS]
    return [s for s in sessions if s.close_ns >= start_ns and s.open_ns <= end_ns]


def open_of(k: int) -> int:
    return _utc(DAYS[k], 14.5)


def close_of(k: int) -> int:
    return _utc(DAYS[k], 21)


def engine(source: object = five_days, outside: bool = True, calendar: str = "FAKE") -> Engine:
    rules = SessionRules(
        default_calendar=calendar,
        source=source,  # type: ignore[arg-type]
        close_delay_ns=5 * SECOND,
        reject_outside=outside,
    )
    definition = index(
        "PW",
        "price",
        member("A", 100.0, withholding=0.15),
        member("B", 50.0, withholding=0.30),
        divisor=1.0,
        variants=("price", "total", "net"),
    )
    return Engine([definition], QualitySettings(max_move_pct=50.0), sessions=rules,
                  start_ns=open_of(0))  # fmt: skip


def ticks(e: Engine, at: int, **prices: float) -> BatchResult:
    return e.apply(ticks=[Tick(s, p, at) for s, p in prices.items()], now=at)


def closes_by_series(result: BatchResult) -> dict[str, CloseRecord]:
    return {c.series: c for c in result.closes}


def test_five_sessions_chain_tr_and_ntr_by_the_daily_formula() -> None:
    e = engine()
    e.advance(open_of(0))  # the calendar starts: day 0 is the current session
    levels: dict[int, dict[str, CloseRecord]] = {}

    # Day 0: A goes ex a 2.00 dividend at the open; A 101, B 51.  PR 152.
    #   points: gross 2 * 1 / 1 = 2; net 2 * 0.85 = 1.7
    #   TR0 = 150 * (152 + 2) / 150 = 154;  NTR0 = 150 * (152 + 1.7) / 150 = 153.7
    e.apply(actions=[Dividend(id="d0", symbol="A", amount=2.0, effective=open_of(0))],
            now=open_of(0))  # fmt: skip
    ticks(e, open_of(0) + HOUR, A=101.0, B=51.0)
    levels[0] = closes_by_series(e.advance(close_of(0) + 6 * SECOND))
    assert levels[0]["PW"].level == pytest.approx(152.0)
    assert levels[0]["PW"].gross_points == pytest.approx(2.0)
    assert levels[0]["PW"].net_points == pytest.approx(1.7)
    assert levels[0]["PW.TR"].level == pytest.approx(154.0)
    assert levels[0]["PW.NTR"].level == pytest.approx(153.7)
    assert levels[0]["PW"].session == DAYS[0]

    # Day 1: A 103, B 52.  PR 155; no dividend.
    #   TR1 = 154 * 155 / 152;  NTR1 = 153.7 * 155 / 152
    ticks(e, open_of(1) + HOUR, A=103.0, B=52.0)
    levels[1] = closes_by_series(e.advance(close_of(1) + 6 * SECOND))
    assert levels[1]["PW"].level == pytest.approx(155.0)
    assert levels[1]["PW.TR"].level == pytest.approx(154 * 155 / 152)
    assert levels[1]["PW.NTR"].level == pytest.approx(153.7 * 155 / 152)
    # Not a sum of dividends since the start (the single-day formula would give
    # 150 * (155 + 2) / 150 = 157): the base rolled at day 0's close.
    assert levels[1]["PW.TR"].level != pytest.approx(157.0)

    # Day 2: a 5.00 special dividend on B at the open: price 52 -> 47, the divisor adjusts
    #   (S 155 -> 150: divisor 150 / 155), the level stays 155; it is not reinvested.
    #   A 104, B 48: PR2 = 152 / (150 / 155).  TR2 = TR1 * PR2 / 155.
    e.apply(actions=[SpecialDividend(id="s2", symbol="B", amount=5.0, effective=open_of(2))],
            now=open_of(2))  # fmt: skip
    ticks(e, open_of(2) + HOUR, A=104.0, B=48.0)
    levels[2] = closes_by_series(e.advance(close_of(2) + 6 * SECOND))
    divisor = 150 / 155
    pr2 = 152 / divisor
    assert levels[2]["PW"].divisor == pytest.approx(divisor)
    assert levels[2]["PW"].level == pytest.approx(pr2)
    assert levels[2]["PW.TR"].level == pytest.approx(levels[1]["PW.TR"].level * pr2 / 155)

    # Day 3: B goes ex 1.00 (withholding 30%): points gross 1 / divisor, net 0.7 / divisor.
    #   A 105, B 47.5: PR3 = 152.5 / divisor.
    e.apply(actions=[Dividend(id="d3", symbol="B", amount=1.0, effective=open_of(3))],
            now=open_of(3))  # fmt: skip
    ticks(e, open_of(3) + HOUR, A=105.0, B=47.5)
    levels[3] = closes_by_series(e.advance(close_of(3) + 6 * SECOND))
    pr3, gross, net = 152.5 / divisor, 1.0 / divisor, 0.7 / divisor
    assert levels[3]["PW"].gross_points == pytest.approx(gross)
    assert levels[3]["PW.TR"].level == pytest.approx(levels[2]["PW.TR"].level * (pr3 + gross) / pr2)
    assert levels[3]["PW.NTR"].level == pytest.approx(levels[2]["PW.NTR"].level * (pr3 + net) / pr2)

    # Day 4: A 106.  TR4 = TR3 * PR4 / PR3.
    ticks(e, open_of(4) + HOUR, A=106.0)
    levels[4] = closes_by_series(e.advance(close_of(4) + 6 * SECOND))
    pr4 = 153.5 / divisor
    assert levels[4]["PW.TR"].level == pytest.approx(levels[3]["PW.TR"].level * pr4 / pr3)
    assert levels[4]["PW.NTR"].level == pytest.approx(levels[3]["PW.NTR"].level * pr4 / pr3)
    assert [levels[k]["PW"].session for k in range(5)] == DAYS
    # prev_close, change and change % follow the day.
    [pw, tr, _] = e.levels(now=close_of(4) + 6 * SECOND)
    assert pw.prev_close == pytest.approx(pr4) and pw.change == pytest.approx(0.0)
    assert tr.prev_close == pytest.approx(levels[4]["PW.TR"].level)


def test_a_tick_stamped_after_the_close_never_counts_towards_it() -> None:
    e = engine()
    e.advance(open_of(0))
    ticks(e, close_of(0) - SECOND, A=110.0)  # inside the session: counts
    late = ticks(e, close_of(0) + 2 * SECOND, A=120.0)  # after the close, before the roll
    assert late.outcomes == {("rejected", "outside_session"): 1}
    [close] = [c for c in e.advance(close_of(0) + 5 * SECOND).closes if c.series == "PW"]
    assert close.level == pytest.approx(110 + 50)
    # Stamped before the close but arriving after the roll: too late for it, and not part of
    # the next session either.
    assert ticks(e, close_of(0), A=111.0).outcomes == {("rejected", "outside_session"): 1}


def test_ticks_outside_the_session_are_refused_with_their_own_reason() -> None:
    e = engine()
    e.advance(open_of(0))
    before_open = ticks(e, open_of(0) - SECOND, A=101.0)
    assert before_open.outcomes == {("rejected", "outside_session"): 1}
    assert e.level_of("PW") == 150.0


def test_outside_accept_lets_them_move_the_index_after_closing_it() -> None:
    e = engine(outside=False)
    e.advance(open_of(0))
    ticks(e, close_of(0) - SECOND, A=110.0)
    result = ticks(e, close_of(0) + SECOND, A=120.0)  # accepted: it takes the close first
    [close] = [c for c in result.closes if c.series == "PW"]
    assert close.level == pytest.approx(160.0)
    assert e.level_of("PW") == pytest.approx(170.0)


def test_a_close_action_rolls_on_demand_once_by_id() -> None:
    e = engine()
    e.advance(open_of(0))
    ticks(e, open_of(0) + HOUR, A=102.0)
    at = open_of(0) + 2 * HOUR
    result = e.apply(actions=[Close(id="c1", index="PW", effective=at)], now=at)
    assert [c.level for c in result.closes if c.series == "PW"] == [pytest.approx(152.0)]
    assert [r.action for r in result.audit] == ["close"]
    again = e.apply(actions=[Close(id="c1", index="PW", effective=at)], now=at + 1)
    assert again.rejected_actions == [("c1", "duplicate")]
    [pw, *_] = e.levels(now=at)
    assert pw.prev_close == pytest.approx(152.0)


def test_an_xnys_early_close_and_a_holiday() -> None:
    # Thanksgiving week 2025: the 26th closes at 16:00 New York (21:00 UTC), the 27th is a
    # holiday, the 28th closes early at 13:00 New York (18:00 UTC), the 1st of December is a
    # normal day.
    e = engine(source=sessions_of, calendar="XNYS")
    start = _utc("2025-11-26", 15)
    e.advance(start)
    taken = []
    for hour in range(0, 24 * 6):
        now = start + hour * HOUR
        taken += [(c.session, c.close_ns) for c in e.advance(now).closes if c.series == "PW"]
    assert taken == [
        ("2025-11-26", _utc("2025-11-26", 21)),
        ("2025-11-28", _utc("2025-11-28", 18)),
        ("2025-12-01", _utc("2025-12-01", 21)),
    ]
    # After the early close the market is shut: a tick at 18:30 UTC (13:30 New York) is
    # refused, though it would be inside a normal day's session.
    early = engine(source=sessions_of, calendar="XNYS")
    early.advance(_utc("2025-11-28", 15))
    assert ticks(early, _utc("2025-11-28", 17.9), A=101.0).outcomes == {("accepted", "ok"): 1}
    assert ticks(early, _utc("2025-11-28", 18.5), A=102.0).outcomes == {
        ("rejected", "outside_session"): 1
    }


@pytest.mark.parametrize("batch", [1, 30])
def test_a_far_future_stamp_fires_no_close(batch: int) -> None:
    # In a 24/7 calendar a tick stamped in 2261 would close every day until then, were it
    # allowed to trigger the schedule: it is refused before.
    from streamer.engine.schedule import utc_days

    e = engine(source=utc_days, calendar="24/7")
    now = open_of(0) + HOUR
    e.advance(now)
    hostile = [Tick("A", 101.0, 9_200_000_000_000_000_000)] * batch
    result = e.apply(ticks=[*hostile, Tick("B", 51.0, now)], now=now)
    assert result.outcomes == {("rejected", "future_ts"): batch, ("accepted", "ok"): 1}
    assert not result.closes
    assert e.level_of("PW") == pytest.approx(151.0)
