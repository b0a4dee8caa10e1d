"""Index funds in the pure engine: iNAV, premium, intraday and daily tracking, baskets.

The calendar is the five-session one of ``test_sessions`` (14:30-21:00 UTC, Mon 2025-11-24 to
Fri 2025-11-28).  The index IX is price-weighted with divisor 1: its level is ``A + B``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from streamer.config import QualitySettings, load_settings
from streamer.engine import Engine, kernels, snapshot
from streamer.engine.funds import FundTable, NavRecord
from streamer.engine.schedule import Session, SessionRules
from streamer.errors import ConfigError
from streamer.fund_config import Basket, FundDefinition, HoldingSpec
from streamer.fund_metrics import FUND_FAMILIES, TD_WINDOWS, TE_WINDOWS, render
from streamer.fund_outputs import InavSchedule, nav_row
from streamer.localservices import LocalRedis
from streamer.outputs import close_row
from streamer.tools.processes import child_environment
from streamer.wire import BasketChange, Close, Dividend, Split, Tick
from tests.unit.builders import index, member
from tests.unit.test_sessions import DAYS, HOUR, SECOND, close_of, five_days, open_of

FEE = 0.0365  # per year: 0.0001 per calendar day


def _utc(day: str, hour: float) -> int:
    midnight = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    return int(midnight.timestamp() * 10**9) + int(hour * HOUR)


def fund(
    fund_id: str = "F",
    *holdings: tuple[str, float],
    cash: float = 0.0,
    units: float = 1.0,
    expense_ratio: float = 0.0,
    tracks: str = "IX",
) -> FundDefinition:
    return FundDefinition(
        id=fund_id,
        tracks=tracks,
        listing=f"{fund_id}.L",
        basket=Basket(
            holdings=tuple(HoldingSpec(symbol=s, shares=q) for s, q in holdings),
            cash=cash,
            units=units,
        ),
        expense_ratio=expense_ratio,
    )


def engine(*funds: FundDefinition) -> Engine:
    rules = SessionRules(
        default_calendar="FAKE", source=five_days, close_delay_ns=5 * SECOND, reject_outside=True
    )
    definition = index("IX", "price", member("A", 100.0), member("B", 50.0), divisor=1.0)
    e = Engine(
        [definition],
        QualitySettings(max_move_pct=50.0),
        sessions=rules,
        start_ns=open_of(0),
        funds=funds,
    )
    e.advance(open_of(0))
    return e


def one(e: Engine, fund_id: str = "F") -> dict[str, float]:
    [level] = e.fund_levels([fund_id])
    return {
        "inav": level.inav,
        "listing": level.listing,
        "premium_bps": level.premium_bps,
        "td_bps": level.td_bps,
        "stale": level.stale,
        "coverage": level.coverage,
    }


def test_inav_is_the_basket_plus_cash_per_unit() -> None:
    e = engine(fund("F", ("A", 2.0), ("B", 4.0), cash=100.0, units=10.0))
    # (2 * 100 + 4 * 50 + 100) / 10 = 50
    assert one(e)["inav"] == pytest.approx(50.0, rel=1e-12)
    result = e.apply(ticks=[Tick("A", 101.0, open_of(0) + 1)], now=open_of(0) + 1)
    assert result.funds_changed == ["F"]
    # (2 * 101 + 200 + 100) / 10 = 50.2
    assert one(e)["inav"] == pytest.approx(50.2, rel=1e-12)


def test_a_listing_tick_updates_the_premium_last_price_then_mid() -> None:
    e = engine(fund("F", ("A", 2.0), ("B", 4.0), cash=100.0, units=10.0))
    result = e.apply(ticks=[Tick("F.L", 50.1, open_of(0) + 1)], now=open_of(0) + 1)
    assert result.outcomes["accepted", "ok"] == 1  # a known symbol, not unknown_symbol
    assert result.funds_changed == ["F"]
    # last price: (50.1 - 50) / 50 = 20 bps
    assert one(e)["premium_bps"] == pytest.approx(20.0, rel=1e-9)
    e.apply(ticks=[Tick("F.L", 50.1, open_of(0) + 2, bid=49.9, ask=50.0)], now=open_of(0) + 2)
    # mid (49.9 + 50.0) / 2 = 49.95: (49.95 - 50) / 50 = -10 bps (a discount)
    level = one(e)
    assert level["listing"] == pytest.approx(49.95)
    assert level["premium_bps"] == pytest.approx(-10.0, rel=1e-9)


def test_intraday_td_is_fund_return_since_its_nav_minus_index_return_since_its_close() -> None:
    # A sampled fund: only A (3 shares per unit), no cash.  Base: iNAV 300, IX 150.
    e = engine(fund("F", ("A", 3.0)))
    e.apply(ticks=[Tick("A", 110.0, open_of(0) + 1)], now=open_of(0) + 1)
    # fund 330 / 300 - 1 = +10%; IX (110 + 50) / 150 - 1 = +6.667%: TD = 333.33 bps
    assert one(e)["td_bps"] == pytest.approx((0.10 - 10.0 / 150.0) * 1e4, rel=1e-9)


def test_stale_holdings_count_towards_coverage() -> None:
    e = engine(fund("F", ("A", 2.0), ("B", 4.0)))
    later = open_of(0) + 90 * SECOND  # stale_after_s is 60: both seeds are stale now
    e.apply(ticks=[Tick("A", 100.5, later)], now=later)
    level = one(e)
    assert level["stale"] == 1
    assert level["coverage"] == 0.5


def test_fee_only_fund_td_is_the_fee_and_te_is_about_zero() -> None:
    """A full-replication fund (one share of A and of B per unit: its basket is the index
    level) with a 3.65% fee accrued per calendar day: 0.0001 per day between NAVs.

    Closes of IX over the five sessions (A + B):
        day 0: 100 + 50 = 150         NAV_0 = 150 (the first NAV: no earlier one to accrue from)
        day 1: 102 + 51 = 153         NAV_1 = 153 * 0.9999
        day 2: 101 + 50 = 151         NAV_2 = 151 * 0.9999^2
        day 3: 104 + 52 = 156         NAV_3 = 156 * 0.9999^3
        day 4: 103 + 53 = 156         NAV_4 = 156 * 0.9999^4
    r_fund,k = (1 + r_index,k) * 0.9999 - 1, so d_k = -0.0001 * (1 + r_index,k):
        TD day 4 = 0.9999 * 1 - 1 - 0 = -1 bp
        TD since inception = 156 * 0.9999^4 / 150 - 156 / 150 = -(1.04)(1 - 0.9999^4)
        TE = sqrt(252) * 0.0001 * stdev(r_index, ddof=1): the fee's level times the index's
             daily volatility, a fraction of a basis point (the fee itself is not volatility).
    """
    e = engine(fund("F", ("A", 1.0), ("B", 1.0), expense_ratio=FEE))
    prices = [(100.0, 50.0), (102.0, 51.0), (101.0, 50.0), (104.0, 52.0), (103.0, 53.0)]
    navs: list[NavRecord] = []
    for k, (a, b) in enumerate(prices):
        at = open_of(k) + HOUR
        e.apply(ticks=[Tick("A", a, at), Tick("B", b, at)], now=at)
        result = e.advance(close_of(k) + 6 * SECOND)
        navs.extend(result.navs)
    assert [n.session for n in navs] == DAYS
    levels = np.array([a + b for a, b in prices])
    expected = levels * 0.9999 ** np.arange(5)
    assert [n.nav for n in navs] == pytest.approx(expected.tolist(), rel=1e-12)
    assert [n.index_close for n in navs] == pytest.approx(levels.tolist(), rel=1e-12)
    last = navs[-1]
    assert last.td_day_bps == pytest.approx(-1.0, rel=1e-9)
    assert last.td_inception_bps == pytest.approx(-1.04 * (1 - 0.9999**4) * 1e4, rel=1e-9)
    assert last.td_mtd_bps == pytest.approx(last.td_inception_bps)  # one month: the same base
    r_index = levels[1:] / levels[:-1] - 1
    te = math.sqrt(252) * 0.0001 * np.std(r_index, ddof=1) * 1e4
    assert last.te_1y_bps == pytest.approx(te, rel=1e-6)
    # ~0: a third of a bp a year (the index moves ~2% a day here) against a 365 bp fee
    assert last.te_1y_bps < 0.01 * FEE * 1e4
    assert math.isnan(last.te_3y_bps)  # no three years yet
    assert last.observations == 4


def test_a_sampled_fund_has_a_tracking_error_by_hand() -> None:
    """Only A, one share per unit.  Fund returns are A's, index returns (A + B)'s:
        A:  100 -> 102 -> 101 -> 104     r_f = +2%, -0.98039%, +2.97030%
        IX: 150 -> 153 -> 151 -> 156     r_i = +2%, -1.30719%, +3.31126%
        d = 0, +0.32680%, -0.34096%
    TE = sqrt(252) * stdev(d, ddof=1).
    """
    e = engine(fund("F", ("A", 1.0)))
    prices = [(100.0, 50.0), (102.0, 51.0), (101.0, 50.0), (104.0, 52.0)]
    navs: list[NavRecord] = []
    for k, (a, b) in enumerate(prices):
        at = open_of(k) + HOUR
        e.apply(ticks=[Tick("A", a, at), Tick("B", b, at)], now=at)
        navs.extend(e.advance(close_of(k) + 6 * SECOND).navs)
    r_f = np.array([102 / 100, 101 / 102, 104 / 101]) - 1
    r_i = np.array([153 / 150, 151 / 153, 156 / 151]) - 1
    d = r_f - r_i
    assert d[0] == pytest.approx(0.0, abs=1e-15)
    assert navs[-1].te_1y_bps == pytest.approx(math.sqrt(252) * np.std(d, ddof=1) * 1e4)
    assert navs[-1].td_inception_bps == pytest.approx((104 / 100 - 156 / 150) * 1e4)


def test_a_basket_applies_once_at_the_next_open() -> None:
    e = engine(fund("F", ("A", 2.0), ("B", 4.0), cash=100.0, units=10.0))
    during = open_of(0) + HOUR
    new = BasketChange(
        id="basket-1",
        fund="F",
        holdings=(HoldingSpec(symbol="A", shares=5.0),),
        cash=0.0,
        units=10.0,
        effective=during,
    )
    result = e.apply(actions=[new], now=during)
    assert result.accepted_actions == ["basket-1"]
    assert one(e)["inav"] == pytest.approx(50.0)  # still the old basket today
    again = e.apply(actions=[new], now=during + 1)
    assert again.rejected_actions == [("basket-1", "duplicate")]
    e.advance(close_of(0) + 6 * SECOND)
    result = e.advance(open_of(1))
    assert [r.action for r in result.audit] == ["basket"]
    assert one(e)["inav"] == pytest.approx(5 * 100.0 / 10)  # the new one from the open
    later = e.advance(open_of(2))
    assert later.audit == ()


def test_a_split_scales_the_holding_so_the_fund_keeps_its_value() -> None:
    e = engine(fund("F", ("A", 2.0), ("B", 4.0)))
    at = open_of(0) + HOUR
    e.apply(actions=[Split(id="s1", symbol="A", ratio=2.0, effective=at)], now=at)
    assert one(e)["inav"] == pytest.approx(400.0)  # 4 * 50 + 4 * 50


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(["A", "B", "C", "F.L"]), st.floats(50.0, 150.0)),
            min_size=1,
            max_size=40,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_incremental_inav_equals_a_full_recompute(batches: list[list[tuple[str, float]]]) -> None:
    funds = (
        fund("F", ("A", 2.0), ("B", 4.0), ("C", 1.5), cash=10.0, units=3.0),
        fund("G", ("B", 7.0), ("C", 0.25), cash=-5.0, units=2.0),
    )
    e = engine(*funds)
    at = open_of(0)
    for batch in batches:
        at += SECOND
        e.apply(ticks=[Tick(s, p, at) for s, p in batch], now=at)
        book = e.funds
        assert book is not None
        exact, missing = kernels.full_sums(book.holdings, e.book.price, book.n_funds)
        priced = missing == 0
        assert book.sums[priced] == pytest.approx(exact[priced], rel=1e-12)
        assert (book.missing == missing).all()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("fund_toml", "message"),
    [
        ('tracks = "NOPE"\nlisting = "FL"', "field `tracks`: unknown series 'NOPE'"),
        ('tracks = "IX"\nlisting = "A"', "field `listing`: 'A' is a constituent"),
        ('tracks = "IX"\nlisting = "FL"\nunits = 0', "field `units`: must be a positive"),
        ('tracks = "IX"\nlisting = "FL"\nexpense_ratio = -1', "field `expense_ratio`"),
        ('tracks = "IX"\nlisting = "FL"\ninav_interval_ms = -1', "field `inav_interval_ms`"),
    ],
)
def test_fund_validation_names_file_and_field(tmp_path: Path, fund_toml: str, message: str) -> None:
    (tmp_path / "indices").mkdir()
    (tmp_path / "funds").mkdir()
    write(
        tmp_path / "indices" / "ix.toml",
        'id = "IX"\nmethod = "price"\ndivisor = 1.0\nconstituents = "ix.csv"\n',
    )
    write(tmp_path / "indices" / "ix.csv", "symbol,price\nA,100\nB,50\n")
    source = write(tmp_path / "funds" / "f.toml", f'id = "F"\n{fund_toml}\nbasket = "f.csv"\n')
    write(tmp_path / "funds" / "f.csv", "symbol,shares\nB,4\n")
    config = write(
        tmp_path / "streamer.toml", 'indices = ["indices/*.toml"]\nfunds = ["funds/*.toml"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert str(caught.value).startswith(f"{source}: ")
    assert message in str(caught.value)


def restarted(e: Engine, *funds: FundDefinition, now: int) -> Engine:
    """The engine as a restarted service gets it: snapshot encoded, decoded, restored."""
    definitions = e.definitions
    taken = snapshot.take(e.state, definitions)
    saved = snapshot.decode_parts(
        snapshot.encode_part(taken.structure), snapshot.encode_part(taken.market)
    )
    rules = e.sessions
    state, _ = snapshot.restore(saved, definitions, sessions=rules, start_ns=now, funds=funds)
    return Engine(
        definitions,
        QualitySettings(max_move_pct=50.0),
        sessions=rules,
        start_ns=now,
        state=state,
        funds=funds,
    )


def test_a_basket_is_applied_once_across_a_restart_and_the_nav_history_survives() -> None:
    f = fund("F", ("A", 2.0), ("B", 4.0), cash=100.0, units=10.0, expense_ratio=FEE)
    e = engine(f)
    during = open_of(0) + HOUR
    new = BasketChange(
        id="basket-1", fund="F", holdings=(HoldingSpec(symbol="A", shares=5.0),), units=10.0,
        effective=during,
    )  # fmt: skip
    e.apply(actions=[new], now=during)
    [nav0] = e.advance(close_of(0) + 6 * SECOND).navs
    # Down between the close and the next open, with the basket pending: it comes back.
    e = restarted(e, f, now=close_of(0) + HOUR)
    assert e.apply(actions=[new], now=close_of(0) + HOUR).rejected_actions == [
        ("basket-1", "duplicate")
    ]
    assert [r.action for r in e.advance(open_of(1)).audit] == ["basket"]
    assert one(e)["inav"] == pytest.approx(50.0)  # 5 * 100 / 10, fee factor 1 again
    # Down again after it was applied: the new basket stays, nothing is applied twice.
    e = restarted(e, f, now=open_of(1) + 1)
    assert one(e)["inav"] == pytest.approx(50.0)
    assert e.advance(open_of(1) + 2).audit == ()
    [nav1] = e.advance(close_of(1) + 6 * SECOND).navs
    # The second NAV continues the first's history: one day of fee, a day's TD.
    assert nav0.nav == pytest.approx(50.0)
    assert nav1.nav == pytest.approx(50.0 * (1 - FEE / 365))
    assert nav1.observations == 1
    assert nav1.td_day_bps == pytest.approx(((1 - FEE / 365) - 1) * 1e4)


def test_a_dividend_goes_into_the_fund_cash_net_of_withholding() -> None:
    rules = SessionRules(
        default_calendar="FAKE", source=five_days, close_delay_ns=5 * SECOND, reject_outside=True
    )
    ix = index(
        "IX", "price", member("A", 100.0, withholding=0.15), member("B", 50.0), divisor=1.0,
        variants=("price", "net"),
    )  # fmt: skip
    f = fund("F", ("A", 1.0), ("B", 1.0), tracks="IX.NTR")
    e = Engine([ix], QualitySettings(max_move_pct=50.0), sessions=rules, start_ns=open_of(0),
               funds=[f])  # fmt: skip
    e.advance(open_of(0))
    at = open_of(0) + HOUR
    e.apply(actions=[Dividend(id="d1", symbol="A", amount=2.0, effective=at)], now=at)
    # 100 + 50 + 2 * (1 - 0.15) = 151.7; IX.NTR reinvests the same 1.7 points: TD 0.
    level = one(e)
    assert level["inav"] == pytest.approx(151.7)
    assert level["td_bps"] == pytest.approx(0.0, abs=1e-9)


def test_the_demo_sampled_fund_tracks_visibly_worse_than_the_full_replication() -> None:
    """Forty sessions of a one-factor market over the demo universe: the full-replication
    fund (whole shares, rounding in cash) trails US500.NTR by little more than its fee, while
    the 100-name sample misses 400 names' idiosyncratic moves: a TE many times larger."""
    settings = load_settings(Path(__file__).resolve().parents[2] / "config" / "streamer.toml")
    days = [f"2025-{m:02d}-{d:02d}" for m in (1, 2) for d in range(1, 29)][:40]

    def sessions(name: str, start_ns: int, end_ns: int) -> list[Session]:
        out = [Session(d, _utc(d, 14.5), _utc(d, 21)) for d in days]
        return [s for s in out if s.close_ns >= start_ns and s.open_ns <= end_ns]

    rules = SessionRules(
        default_calendar="FAKE", source=sessions, close_delay_ns=5 * SECOND, reject_outside=True
    )
    us500 = [d for d in settings.indices if d.id == "US500"]
    e = Engine(us500, QualitySettings(), sessions=rules, start_ns=_utc(days[0], 14.5),
               funds=settings.funds)  # fmt: skip
    symbols = [c.symbol for c in us500[0].constituents]
    price = np.array([c.price or 0.0 for c in us500[0].constituents])
    rng = np.random.default_rng(5)
    navs: dict[str, NavRecord] = {}
    for day in days:
        at = _utc(day, 15)
        e.advance(_utc(day, 14.5))
        # A market factor of 1% a day and 1.5% of each name's own.
        price = price * np.exp(0.01 * rng.standard_normal() + 0.015 * rng.standard_normal(500))
        e.apply(ticks=[Tick(s, float(p), at) for s, p in zip(symbols, price, strict=True)], now=at)
        for record in e.advance(_utc(day, 21) + 6 * SECOND).navs:
            navs[record.fund] = record
    full, sampled = navs["US5FULL"], navs["US5SAMP"]
    assert full.observations == sampled.observations == 39
    assert sampled.te_1y_bps > 10 * full.te_1y_bps
    assert full.te_1y_bps < 20.0
    assert sampled.te_1y_bps > 100.0


def test_without_sessions_a_close_strikes_no_nav_and_nothing_breaks() -> None:
    ix = index("IX", "price", member("A", 100.0), member("B", 50.0), divisor=1.0)
    e = Engine([ix], QualitySettings(), start_ns=open_of(0), funds=[fund("F", ("A", 1.0))])
    result = e.apply(actions=[Close(id="c", effective=open_of(0) + 1)], now=open_of(0) + 1)
    assert result.navs == ()
    assert one(e)["inav"] == 100.0


def test_the_inav_goes_out_on_each_funds_own_timer_or_on_every_change() -> None:
    schedule = InavSchedule({"SLOW": 15_000, "FAST": 1_000, "LIVE": 0})
    ms = 1_000_000
    start = 1_000_000 * ms  # on a 15 s boundary
    assert schedule.due([], start) == ["FAST", "SLOW"]  # the timers start at once
    assert schedule.due(["SLOW", "LIVE"], start + 10 * ms) == ["LIVE"]  # not between
    assert schedule.due([], start + 1_000 * ms) == ["FAST"]
    assert schedule.next_due_ns() == start + 2_000 * ms
    assert schedule.due(["LIVE"], start + 15_000 * ms) == ["FAST", "LIVE", "SLOW"]
    assert schedule.due([], start + 15_001 * ms, everything=True) == ["FAST", "LIVE", "SLOW"]


def test_streamer_tracking_reads_the_published_navs_and_agrees(redis_server: LocalRedis) -> None:
    """The NAV records as the service writes them (``P:navs:F``, ``P:closes:IX``) read by
    ``streamer tracking --fund F --index IX`` give the engine's own TD since inception."""
    e = engine(fund("F", ("A", 1.0), ("B", 1.0), expense_ratio=FEE))
    prices = [(100.0, 50.0), (102.0, 51.0), (101.0, 50.0), (104.0, 52.0), (103.0, 53.0)]
    client = redis.Redis.from_url(redis_server.url)
    navs: list[NavRecord] = []
    for k, (a, b) in enumerate(prices):
        at = open_of(k) + HOUR
        e.apply(ticks=[Tick("A", a, at), Tick("B", b, at)], now=at)
        result = e.advance(close_of(k) + 6 * SECOND)
        for nav in result.navs:
            client.xadd("p:navs:F", dict(pairs(nav_row(nav))))
        for close in result.closes:
            client.xadd(f"p:closes:{close.series}", dict(pairs(close_row(close))))
        navs.extend(result.navs)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("streamer")), "tracking", "--redis-url",
         redis_server.url, "--prefix", "p", "--fund", "F", "--index", "IX", "--json",
         "--no-chart"],
        env=child_environment({}), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    inception = next(p for p in report["tracking_difference"] if p["period"] == "inception")
    assert inception["td_bps"] == pytest.approx(navs[-1].td_inception_bps, rel=1e-9)


def pairs(row: list[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(row[::2], row[1::2], strict=True))


def test_fund_gauges_are_exactly_the_families_dashboards_may_name() -> None:
    figures = {key: 1.5 for _, key in (*TD_WINDOWS, *TE_WINDOWS)}
    table = FundTable(["F"], np.array([10.0]), np.array([2.0]), np.array([-0.5]), [figures])
    families = {f.name for f in text_string_to_metric_families(render(table).decode())}
    assert families == set(FUND_FAMILIES)
    unknown = {key: math.nan for key in figures}
    nothing = FundTable(
        ["F"], np.array([np.nan]), np.array([np.nan]), np.array([np.nan]), [unknown]
    )
    assert "streamer_fund_inav{" not in render(nothing).decode()  # unknown: no sample
