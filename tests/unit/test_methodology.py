"""Hand-worked index methodology: every method, base values, currencies, TR/NTR.

Every expected figure is derived in the test from the methodology in DESIGN.md,

    level = sum_i(price_i * fx_i * q_i) / divisor,

never read back from the engine: cap q = shares * iwf * awf, price-weighted q = awf (the
weighting factor), equal-weighted q = const / (price * fx) at the first complete prices.
"""

from __future__ import annotations

import pytest

from streamer.config import IndexDefinition
from streamer.engine import Engine
from streamer.wire import Dividend, FxRate, Rebalance, Tick
from tests.unit.builders import REL, SECOND, T0, engine_of, index, level, member


def tick(symbol: str, price: float, seconds: float) -> Tick:
    return Tick(symbol=symbol, price=price, ts=T0 + int(seconds * SECOND))


# --------------------------------------------------------------------------- price-weighted


def test_price_weighted_level_is_the_sum_of_prices_over_the_divisor() -> None:
    engine = engine_of(
        index("PX", "price", member("A", 100.0), member("B", 50.0), member("C", 30.0), divisor=0.5)
    )
    assert level(engine, "PX") == pytest.approx((100 + 50 + 30) / 0.5, rel=REL)  # 360

    engine.apply(ticks=[tick("A", 110.0, 1)], now=T0 + SECOND)

    assert level(engine, "PX") == pytest.approx((110 + 50 + 30) / 0.5, rel=REL)  # 380
    assert engine.levels()[0].divisor == 0.5


def test_price_weighted_weighting_factor_multiplies_the_price() -> None:
    # A weighting factor (awf) of 2 counts A twice: q_A = 2, q_B = q_C = 1.
    engine = engine_of(
        index(
            "PX",
            "price",
            member("A", 100.0, awf=2.0),
            member("B", 50.0),
            member("C", 30.0),
            divisor=0.5,
        )
    )
    assert level(engine, "PX") == pytest.approx((2 * 100 + 50 + 30) / 0.5, rel=REL)  # 560

    engine.apply(ticks=[tick("B", 60.0, 1)], now=T0 + SECOND)

    assert level(engine, "PX") == pytest.approx((2 * 100 + 60 + 30) / 0.5, rel=REL)


def test_price_weighted_ignores_shares_and_iwf() -> None:
    engine = engine_of(
        index(
            "PX", "price", member("A", 100.0, shares=5e9, iwf=0.5), member("B", 50.0), divisor=1.0
        )
    )
    assert level(engine, "PX") == pytest.approx(150.0, rel=REL)


# --------------------------------------------------------------------------- cap-weighted


def test_cap_weighted_level_uses_shares_times_iwf_times_awf() -> None:
    # q_A = 1000 * 0.5 * 1 = 500, q_B = 2000 * 1 * 0.25 = 500, q_C = 400 * 0.8 * 1 = 320.
    engine = engine_of(
        index(
            "CAP",
            "cap",
            member("A", 100.0, shares=1000.0, iwf=0.5),
            member("B", 50.0, shares=2000.0, awf=0.25),
            member("C", 25.0, shares=400.0, iwf=0.8),
            divisor=10.0,
        )
    )
    s0 = 100 * 500 + 50 * 500 + 25 * 320  # 83,000
    assert level(engine, "CAP") == pytest.approx(s0 / 10.0, rel=REL)  # 8300
    assert engine.constituents("CAP") == pytest.approx({"A": 500.0, "B": 500.0, "C": 320.0})

    engine.apply(ticks=[tick("A", 102.0, 1), tick("C", 24.0, 1)], now=T0 + SECOND)

    s1 = 102 * 500 + 50 * 500 + 24 * 320  # 83,680
    assert level(engine, "CAP") == pytest.approx(s1 / 10.0, rel=REL)


def test_awf_caps_a_dominant_constituent() -> None:
    # Uncapped, A is 90% of the index: 900 * 100 vs 100 * 100.  An AWF of 1/9 brings A's
    # index value to 10,000, the same as B's: each then weighs 50%.
    a = member("A", 100.0, shares=900.0, awf=1 / 9)
    b = member("B", 100.0, shares=100.0)
    engine = engine_of(index("CAPPED", "cap", a, b, divisor=20.0))

    assert level(engine, "CAPPED") == pytest.approx((100 * 900 / 9 + 100 * 100) / 20.0, rel=REL)
    q = engine.constituents("CAPPED")
    weight_a = 100 * q["A"] / (100 * q["A"] + 100 * q["B"])
    assert weight_a == pytest.approx(0.5, rel=REL)

    # A +10% moves the capped index by 5% (its weight), not 9% (its uncapped weight).
    engine.apply(ticks=[tick("A", 110.0, 1)], now=T0 + SECOND)
    assert level(engine, "CAPPED") == pytest.approx(1000.0 * 1.05, rel=REL)


# --------------------------------------------------------------------------- equal-weighted


def equal_index() -> IndexDefinition:
    return index(
        "EQ", "equal", member("A", 10.0), member("B", 20.0), member("C", 50.0), base_value=1000.0
    )


def values_in_index(engine: Engine, index_id: str) -> dict[str, float]:
    """price * q of every member (all in the index currency here)."""
    prices = {s: engine.price_of(s) for s in engine.constituents(index_id)}
    return {s: q * (prices[s] or 0.0) for s, q in engine.constituents(index_id).items()}


def test_equal_weighted_starts_at_base_value_with_equal_weights() -> None:
    engine = engine_of(equal_index())

    assert level(engine, "EQ") == pytest.approx(1000.0, rel=REL)
    values = values_in_index(engine, "EQ")
    total = sum(values.values())
    for value in values.values():
        assert value / total == pytest.approx(1 / 3, rel=REL)


def test_equal_weighted_level_moves_by_the_mean_price_relative() -> None:
    # With equal weights at the start, level = base * mean(p_i / p_i,0).
    engine = engine_of(equal_index())
    engine.apply(ticks=[tick("A", 11.0, 1), tick("C", 45.0, 1)], now=T0 + SECOND)

    expected = 1000.0 * (11 / 10 + 20 / 20 + 45 / 50) / 3  # 1000.0
    assert level(engine, "EQ") == pytest.approx(expected, rel=REL)

    engine.apply(ticks=[tick("B", 23.0, 2)], now=T0 + 2 * SECOND)
    expected = 1000.0 * (11 / 10 + 23 / 20 + 45 / 50) / 3  # 1050.0
    assert level(engine, "EQ") == pytest.approx(expected, rel=REL)


def test_equal_weight_rebalance_restores_equal_weights_and_keeps_the_level() -> None:
    engine = engine_of(equal_index())
    engine.apply(ticks=[tick("A", 12.0, 1), tick("B", 21.0, 1)], now=T0 + SECOND)
    before = 1000.0 * (12 / 10 + 21 / 20 + 50 / 50) / 3  # 1083.33
    assert level(engine, "EQ") == pytest.approx(before, rel=REL)
    drifted = values_in_index(engine, "EQ")
    assert drifted["A"] != pytest.approx(drifted["C"])

    result = engine.apply(
        actions=[Rebalance(id="rb-1", index="EQ", effective=T0 + 2 * SECOND)],
        now=T0 + 2 * SECOND,
    )

    assert not result.rejected_actions
    assert level(engine, "EQ") == pytest.approx(before, rel=REL)  # continuity
    values = values_in_index(engine, "EQ")
    total = sum(values.values())
    for value in values.values():
        assert value / total == pytest.approx(1 / 3, rel=REL)
    # The rebalance only redistributes value: sum(p*q) is unchanged, so is the divisor.
    assert total == pytest.approx(sum(drifted.values()), rel=REL)
    [record] = result.audit
    assert record.divisor_after == pytest.approx(record.divisor_before, rel=REL)

    # After the rebalance a member's move counts one third again, from the new level.
    engine.apply(ticks=[tick("A", 13.2, 3)], now=T0 + 3 * SECOND)  # A +10%
    assert level(engine, "EQ") == pytest.approx(before * (1 + 0.10 / 3), rel=REL)


# --------------------------------------------------------------------------- base value


def test_base_value_sets_the_divisor_at_the_first_complete_prices() -> None:
    # A is seeded, B has no price: nothing is published until B's first tick.
    engine = engine_of(
        index(
            "BV",
            "cap",
            member("A", 100.0, shares=10.0),
            member("B", shares=20.0),
            base_value=1000.0,
            variants=("price", "total"),
        )
    )
    assert engine.level_of("BV") is None
    assert engine.level_of("BV.TR") is None
    assert engine.series_without_level() == ["BV", "BV.TR"]
    assert engine.levels() == []
    assert engine.series_levels() == {}

    quiet = engine.apply(ticks=[tick("A", 101.0, 1)], now=T0 + SECOND)
    assert quiet.changed == []
    assert engine.levels() == []

    result = engine.apply(ticks=[tick("B", 50.0, 2)], now=T0 + 2 * SECOND)

    s0 = 101 * 10 + 50 * 20  # 2010 at the first complete prices
    divisor = s0 / 1000.0
    assert sorted(result.changed) == ["BV", "BV.TR"]
    assert level(engine, "BV") == pytest.approx(1000.0, rel=REL)
    assert level(engine, "BV.TR") == pytest.approx(1000.0, rel=REL)
    assert engine.series_without_level() == []
    [pr] = engine.levels(["BV"])
    assert pr.divisor == pytest.approx(divisor, rel=REL)
    assert pr.prev_close == pytest.approx(1000.0, rel=REL)

    engine.apply(ticks=[tick("A", 110.0, 3)], now=T0 + 3 * SECOND)
    assert level(engine, "BV") == pytest.approx((110 * 10 + 50 * 20) / divisor, rel=REL)


def test_base_value_with_all_seed_prices_is_established_at_construction() -> None:
    engine = engine_of(
        index("PXB", "price", member("A", 100.0), member("B", 60.0), base_value=100.0)
    )
    assert level(engine, "PXB") == pytest.approx(100.0, rel=REL)
    assert engine.levels()[0].divisor == pytest.approx((100 + 60) / 100.0, rel=REL)


def test_a_given_divisor_still_waits_for_complete_prices() -> None:
    engine = engine_of(index("PX", "price", member("A", 100.0), member("B"), divisor=2.0))
    assert engine.level_of("PX") is None

    engine.apply(ticks=[tick("B", 40.0, 1)], now=T0 + SECOND)

    assert level(engine, "PX") == pytest.approx((100 + 40) / 2.0, rel=REL)


# --------------------------------------------------------------------------- currencies


def multi_currency_index() -> IndexDefinition:
    return index(
        "GLOBAL",
        "cap",
        member("US", 100.0, shares=1000.0),
        member("DE", 50.0, shares=1000.0, currency="EUR"),
        member("UK", 20.0, shares=2000.0, currency="GBP"),
        divisor=100.0,
    )


def test_multi_currency_index_converts_prices_with_live_fx() -> None:
    engine = engine_of(multi_currency_index())
    assert engine.level_of("GLOBAL") is None  # no FX yet: DE and UK cannot be valued

    engine.apply(fx=[FxRate(pair="EURUSD", rate=1.1, ts=T0)], now=T0)
    assert engine.level_of("GLOBAL") is None  # GBP still missing

    engine.apply(fx=[FxRate(pair="GBPUSD", rate=1.25, ts=T0)], now=T0)
    s0 = 100 * 1000 + 50 * 1.1 * 1000 + 20 * 1.25 * 2000  # 205,000
    assert level(engine, "GLOBAL") == pytest.approx(s0 / 100.0, rel=REL)  # 2050

    # A EUR price move is converted at the current rate.
    engine.apply(ticks=[tick("DE", 52.0, 1)], now=T0 + SECOND)
    s1 = 100 * 1000 + 52 * 1.1 * 1000 + 20 * 1.25 * 2000
    assert level(engine, "GLOBAL") == pytest.approx(s1 / 100.0, rel=REL)


def test_an_fx_move_changes_the_level_but_not_the_divisor() -> None:
    engine = engine_of(multi_currency_index())
    engine.apply(
        fx=[FxRate(pair="EURUSD", rate=1.1, ts=T0), FxRate(pair="GBPUSD", rate=1.25, ts=T0)],
        now=T0,
    )

    result = engine.apply(fx=[FxRate(pair="EURUSD", rate=1.2, ts=T0 + SECOND)], now=T0 + SECOND)

    s1 = 100 * 1000 + 50 * 1.2 * 1000 + 20 * 1.25 * 2000  # 210,000
    assert result.changed == ["GLOBAL"]
    assert not result.audit
    assert level(engine, "GLOBAL") == pytest.approx(s1 / 100.0, rel=REL)  # 2100
    assert engine.levels()[0].divisor == 100.0


def test_inverse_and_cross_rates() -> None:
    # JPY in a USD index from USDJPY (inverted); EUR in a GBP index crossed through USD.
    yen = index(
        "YEN",
        "cap",
        member("TOYOTA", 3000.0, shares=100.0, currency="JPY"),
        member("US", 10.0, shares=100.0),
        divisor=1.0,
    )
    sterling = index(
        "GBPX", "cap", member("DE", 50.0, shares=100.0, currency="EUR"), currency="GBP", divisor=1.0
    )
    engine = engine_of(yen, sterling)

    engine.apply(
        fx=[
            FxRate(pair="USDJPY", rate=150.0, ts=T0),
            FxRate(pair="EURUSD", rate=1.1, ts=T0),
            FxRate(pair="GBPUSD", rate=1.25, ts=T0),
        ],
        now=T0,
    )

    assert level(engine, "YEN") == pytest.approx(3000 / 150 * 100 + 10 * 100, rel=REL)  # 3000
    assert level(engine, "GBPX") == pytest.approx(50 * (1.1 / 1.25) * 100, rel=REL)  # 4400


def test_base_value_waits_for_the_fx_rate() -> None:
    engine = engine_of(
        index(
            "EUX",
            "cap",
            member("US", 100.0, shares=10.0),
            member("DE", 40.0, shares=10.0, currency="EUR"),
            base_value=100.0,
        )
    )
    assert engine.level_of("EUX") is None

    engine.apply(fx=[FxRate(pair="EURUSD", rate=1.5, ts=T0)], now=T0)

    divisor = (100 * 10 + 40 * 1.5 * 10) / 100.0  # 16
    assert level(engine, "EUX") == pytest.approx(100.0, rel=REL)
    assert engine.levels()[0].divisor == pytest.approx(divisor, rel=REL)


# --------------------------------------------------------------------------- total return


def returns_index() -> IndexDefinition:
    # Withholding: 30% on A's dividends, 15% on B's.
    return index(
        "RX",
        "cap",
        member("A", 100.0, shares=1000.0, withholding=0.30),
        member("B", 50.0, shares=2000.0, withholding=0.15),
        divisor=100.0,
        variants=("price", "total", "net"),
    )


def test_total_and_net_return_reinvest_a_dividend_on_its_ex_date() -> None:
    engine = engine_of(returns_index())
    pr0 = (100 * 1000 + 50 * 2000) / 100.0  # 2000
    assert engine.series_levels() == pytest.approx({"RX": pr0, "RX.TR": pr0, "RX.NTR": pr0})
    engine.close()  # day 0 closes at 2000 for all three

    # Day 1: A goes ex a 2.00 dividend and drops by it.
    ex_date = T0 + 86_400 * SECOND
    result = engine.apply(
        actions=[Dividend(id="div-a", symbol="A", amount=2.0, effective=ex_date)],
        ticks=[Tick(symbol="A", price=98.0, ts=ex_date + SECOND)],
        now=ex_date + SECOND,
    )
    [record] = result.audit
    assert (record.action, record.divisor_before, record.divisor_after) == (
        "dividend",
        100.0,
        100.0,
    )

    gross_points = 2.0 * 1000 / 100.0  # 20 index points
    net_points = 2.0 * (1 - 0.30) * 1000 / 100.0  # 14
    pr1 = (98 * 1000 + 50 * 2000) / 100.0  # 1980: the price index falls by the dividend
    assert level(engine, "RX") == pytest.approx(pr1, rel=REL)
    assert level(engine, "RX.TR") == pytest.approx(pr0 * (pr1 + gross_points) / pr0, rel=REL)
    assert level(engine, "RX.NTR") == pytest.approx(pr0 * (pr1 + net_points) / pr0, rel=REL)
    assert level(engine, "RX.TR") == pytest.approx(2000.0, rel=REL)  # reinvested: no drop
    assert level(engine, "RX.NTR") == pytest.approx(1994.0, rel=REL)  # loses the tax

    engine.apply(
        ticks=[Tick(symbol="B", price=51.0, ts=ex_date + 2 * SECOND)],
        now=ex_date + 2 * SECOND,
    )
    pr2 = (98 * 1000 + 51 * 2000) / 100.0  # 2000
    tr2 = pr0 * (pr2 + gross_points) / pr0  # 2020
    ntr2 = pr0 * (pr2 + net_points) / pr0  # 2014
    assert engine.series_levels() == pytest.approx(
        {"RX": pr2, "RX.TR": tr2, "RX.NTR": ntr2}, rel=REL
    )

    # close() makes today's levels the bases; the dividend points do not carry over.
    engine.close()
    day2 = ex_date + 86_400 * SECOND
    engine.apply(ticks=[Tick(symbol="A", price=99.0, ts=day2)], now=day2)
    pr3 = (99 * 1000 + 51 * 2000) / 100.0  # 2010
    assert engine.series_levels() == pytest.approx(
        {"RX": pr3, "RX.TR": tr2 * pr3 / pr2, "RX.NTR": ntr2 * pr3 / pr2}, rel=REL
    )
    by_series = {s.series: s for s in engine.levels()}
    assert by_series["RX.TR"].prev_close == pytest.approx(tr2, rel=REL)
    assert by_series["RX.TR"].change == pytest.approx(tr2 * pr3 / pr2 - tr2, rel=1e-9)
    assert by_series["RX.TR"].change_pct == pytest.approx((pr3 / pr2 - 1) * 100, rel=1e-9)
    assert by_series["RX.NTR"].prev_close == pytest.approx(ntr2, rel=REL)
    assert by_series["RX"].prev_close == pytest.approx(pr2, rel=REL)


def test_dividend_points_convert_a_foreign_dividend_at_the_current_rate() -> None:
    engine = engine_of(
        index(
            "FX.RX",
            "cap",
            member("US", 100.0, shares=1000.0),
            member("DE", 50.0, shares=1000.0, currency="EUR", withholding=0.25),
            divisor=100.0,
            variants=("price", "total", "net"),
        )
    )
    engine.apply(fx=[FxRate(pair="EURUSD", rate=1.2, ts=T0)], now=T0)
    engine.close()
    pr0 = (100 * 1000 + 50 * 1.2 * 1000) / 100.0  # 1600

    engine.apply(
        actions=[Dividend(id="div-de", symbol="DE", amount=1.0, effective=T0 + 1)],
        now=T0 + 1,
    )

    gross_points = 1.0 * 1.2 * 1000 / 100.0  # EUR 1.00 at 1.2 USD: 12 points
    assert level(engine, "FX.RX.TR") == pytest.approx(pr0 + gross_points, rel=REL)
    assert level(engine, "FX.RX.NTR") == pytest.approx(pr0 + gross_points * 0.75, rel=REL)


def test_two_dividends_on_one_day_add_their_points() -> None:
    engine = engine_of(returns_index())
    engine.close()
    engine.apply(
        actions=[
            Dividend(id="d1", symbol="A", amount=1.0, effective=T0 + 1),
            Dividend(id="d2", symbol="B", amount=0.5, effective=T0 + 1),
        ],
        now=T0 + 1,
    )
    gross = (1.0 * 1000 + 0.5 * 2000) / 100.0  # 20
    net = (1.0 * 0.70 * 1000 + 0.5 * 0.85 * 2000) / 100.0  # 7 + 8.5
    assert level(engine, "RX.TR") == pytest.approx(2000.0 + gross, rel=REL)
    assert level(engine, "RX.NTR") == pytest.approx(2000.0 + net, rel=REL)


def test_close_rolls_prev_close_and_change() -> None:
    engine = engine_of(index("PX", "price", member("A", 100.0), member("B", 100.0), divisor=2.0))
    engine.apply(ticks=[tick("A", 110.0, 1)], now=T0 + SECOND)
    [today] = engine.levels()
    assert today.prev_close == pytest.approx(100.0, rel=REL)
    assert today.change == pytest.approx(5.0, rel=REL)
    assert today.change_pct == pytest.approx(5.0, rel=REL)

    engine.close()

    [tomorrow] = engine.levels()
    assert tomorrow.level == pytest.approx(105.0, rel=REL)
    assert tomorrow.prev_close == pytest.approx(105.0, rel=REL)
    assert tomorrow.change == 0.0
    assert tomorrow.change_pct == 0.0
