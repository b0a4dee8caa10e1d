"""Hand-worked corporate actions and index changes, their timing, exactly-once and audit.

Every divisor change is ``d_new = d_old * S_after / S_before`` with both sums at the same
prices, so the level is the same just before and just after the event; the expected figures
below are worked out from that rule and the action's definition in DESIGN.md.
"""

from __future__ import annotations

import math

import pytest

from streamer.config import IndexDefinition, QualitySettings
from streamer.engine import AuditRecord, Engine
from streamer.wire import (
    Action,
    AddConstituent,
    DeleteConstituent,
    Dividend,
    FxRate,
    Rebalance,
    Rights,
    SharesChange,
    SpecialDividend,
    Spinoff,
    Split,
    Tick,
)
from tests.unit.builders import REL, SECOND, T0, at, engine_of, index, level, member


def px3() -> IndexDefinition:
    """Price-weighted: (A + B + C) / 0.5 = (100 + 50 + 30) / 0.5 = 360."""
    return index(
        "PX", "price", member("A", 100.0), member("B", 50.0), member("C", 30.0), divisor=0.5
    )


def cap2(index_id: str = "CAP") -> IndexDefinition:
    """Cap-weighted: (100 * 1000 + 50 * 2000) / 100 = 2000."""
    return index(
        index_id,
        "cap",
        member("A", 100.0, shares=1000.0),
        member("B", 50.0, shares=2000.0),
        divisor=100.0,
    )


def act(engine: Engine, *actions: Action, seconds: float = 1.0) -> list[AuditRecord]:
    """Apply actions effective now; every one must be accepted."""
    result = engine.apply(actions=list(actions), now=at(seconds))
    assert not result.rejected_actions
    return list(result.audit)


def tick(engine: Engine, symbol: str, price: float, seconds: float) -> None:
    result = engine.apply(ticks=[Tick(symbol=symbol, price=price, ts=at(seconds))], now=at(seconds))
    assert result.outcomes == {("accepted", "ok"): 1}


def divisor(engine: Engine, index_id: str) -> float:
    [row] = engine.levels([index_id])
    return row.divisor


# --------------------------------------------------------------------------- split


def test_price_weighted_split_changes_the_divisor() -> None:
    engine = engine_of(px3())

    [record] = act(engine, Split(id="split-a", symbol="A", ratio=2.0, effective=at(1)))

    # A 100 -> 50; q stays 1, so S falls from 180 to 130 at unchanged market value.
    new_divisor = 0.5 * (50 + 50 + 30) / (100 + 50 + 30)
    assert engine.price_of("A") == 50.0
    assert record.divisor_before == 0.5
    assert record.divisor_after == pytest.approx(new_divisor, rel=REL)
    assert level(engine, "PX") == pytest.approx(360.0, rel=REL)
    assert engine.constituents("PX")["A"] == 1.0

    tick(engine, "A", 54.0, 2)
    assert level(engine, "PX") == pytest.approx((54 + 50 + 30) / new_divisor, rel=REL)


def test_price_weighted_reverse_split() -> None:
    engine = engine_of(px3())

    act(engine, Split(id="rsplit-c", symbol="C", ratio=0.2, effective=at(1)))  # 1-for-5

    assert engine.price_of("C") == pytest.approx(150.0, rel=REL)  # 30 * 5
    assert divisor(engine, "PX") == pytest.approx(0.5 * (100 + 50 + 150) / 180, rel=REL)
    assert level(engine, "PX") == pytest.approx(360.0, rel=REL)


def test_cap_weighted_split_changes_price_and_shares_not_the_divisor() -> None:
    engine = engine_of(cap2())

    [record] = act(engine, Split(id="split-a", symbol="A", ratio=4.0, effective=at(1)))

    # 25 * 4000 == 100 * 1000: the index value of A is unchanged.
    assert engine.price_of("A") == 25.0
    assert engine.constituents("CAP") == {"A": 4000.0, "B": 2000.0}
    assert record.divisor_before == record.divisor_after == 100.0
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)

    tick(engine, "A", 26.0, 2)
    assert level(engine, "CAP") == pytest.approx((26 * 4000 + 50 * 2000) / 100.0, rel=REL)


def test_one_split_adjusts_the_price_index_and_leaves_the_cap_index_alone() -> None:
    engine = engine_of(px3(), cap2())

    records = act(engine, Split(id="split-b", symbol="B", ratio=2.0, effective=at(1)))

    by_index = {r.index: r for r in records}
    assert set(by_index) == {"PX", "CAP"}
    assert by_index["PX"].divisor_after == pytest.approx(0.5 * (100 + 25 + 30) / 180, rel=REL)
    assert by_index["CAP"].divisor_after == 100.0
    assert engine.series_levels() == pytest.approx({"PX": 360.0, "CAP": 2000.0}, rel=REL)


def test_equal_weighted_split_keeps_the_divisor() -> None:
    engine = engine_of(index("EQ", "equal", member("A", 10.0), member("B", 40.0), base_value=100.0))
    q_before = engine.constituents("EQ")

    [record] = act(engine, Split(id="split-b", symbol="B", ratio=4.0, effective=at(1)))

    assert engine.constituents("EQ")["B"] == pytest.approx(4 * q_before["B"], rel=REL)
    assert record.divisor_after == pytest.approx(record.divisor_before, rel=REL)
    assert level(engine, "EQ") == pytest.approx(100.0, rel=REL)


# --------------------------------------------------------------------------- special dividend


def test_special_dividend_lowers_the_divisor_and_keeps_the_level() -> None:
    engine = engine_of(cap2())

    [record] = act(engine, SpecialDividend(id="sd-a", symbol="A", amount=10.0, effective=at(1)))

    # A 100 -> 90: S 200,000 -> 190,000, so d 100 -> 95 and the level stays 2000.
    assert engine.price_of("A") == 90.0
    assert record.divisor_after == pytest.approx(100.0 * 190_000 / 200_000, rel=REL)
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)

    # The market opening at the adjusted price leaves the level where it was.
    tick(engine, "A", 90.0, 2)
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)
    tick(engine, "A", 95.0, 3)
    assert level(engine, "CAP") == pytest.approx((95 * 1000 + 50 * 2000) / 95.0, rel=REL)


def test_special_dividend_in_a_price_weighted_index() -> None:
    engine = engine_of(px3())

    act(engine, SpecialDividend(id="sd-c", symbol="C", amount=6.0, effective=at(1)))

    assert engine.price_of("C") == 24.0
    assert divisor(engine, "PX") == pytest.approx(0.5 * (100 + 50 + 24) / 180, rel=REL)
    assert level(engine, "PX") == pytest.approx(360.0, rel=REL)


def test_special_dividend_amount_is_in_the_constituent_currency() -> None:
    engine = engine_of(
        index(
            "MIX",
            "cap",
            member("US", 100.0, shares=1000.0),
            member("DE", 50.0, shares=1000.0, currency="EUR"),
            divisor=100.0,
        )
    )
    engine.apply(fx=[FxRate(pair="EURUSD", rate=1.2, ts=T0)], now=T0)
    assert level(engine, "MIX") == pytest.approx((100_000 + 50 * 1.2 * 1000) / 100, rel=REL)

    act(engine, SpecialDividend(id="sd-de", symbol="DE", amount=5.0, effective=at(1)))

    # EUR 50 -> EUR 45: S 160,000 -> 100,000 + 45 * 1.2 * 1000 = 154,000.
    assert engine.price_of("DE") == 45.0
    assert divisor(engine, "MIX") == pytest.approx(100.0 * 154_000 / 160_000, rel=REL)
    assert level(engine, "MIX") == pytest.approx(1600.0, rel=REL)


# --------------------------------------------------------------------------- rights, spinoff


def test_rights_issue_in_a_cap_weighted_index() -> None:
    engine = engine_of(cap2())

    # One new share per four held (ratio 0.25) at 80.
    act(engine, Rights(id="rights-a", symbol="A", ratio=0.25, price=80.0, effective=at(1)))

    adjusted = (100 + 0.25 * 80) / (1 + 0.25)  # 96
    shares = 1000 * (1 + 0.25)  # 1250
    s_after = adjusted * shares + 50 * 2000  # 120,000 + 100,000: new money came in
    assert engine.price_of("A") == pytest.approx(96.0, rel=REL)
    assert engine.constituents("CAP")["A"] == pytest.approx(shares, rel=REL)
    assert divisor(engine, "CAP") == pytest.approx(100.0 * s_after / 200_000, rel=REL)  # 110
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)


def test_rights_issue_in_a_price_weighted_index() -> None:
    engine = engine_of(px3())

    act(engine, Rights(id="rights-a", symbol="A", ratio=0.25, price=80.0, effective=at(1)))

    assert engine.price_of("A") == pytest.approx(96.0, rel=REL)
    assert engine.constituents("PX")["A"] == 1.0
    assert divisor(engine, "PX") == pytest.approx(0.5 * (96 + 50 + 30) / 180, rel=REL)
    assert level(engine, "PX") == pytest.approx(360.0, rel=REL)


def test_spinoff_takes_the_spun_off_value_out_of_the_price() -> None:
    engine = engine_of(cap2(), px3())

    # Half a new share per A share, the new share worth 20: A loses 0.5 * 20 = 10.
    records = act(engine, Spinoff(id="spin-a", symbol="A", ratio=0.5, price=20.0, effective=at(1)))

    assert engine.price_of("A") == 90.0
    assert {r.index for r in records} == {"CAP", "PX"}
    assert engine.constituents("CAP")["A"] == 1000.0  # shares unchanged
    assert divisor(engine, "CAP") == pytest.approx(100.0 * (90_000 + 100_000) / 200_000, rel=REL)
    assert divisor(engine, "PX") == pytest.approx(0.5 * (90 + 50 + 30) / 180, rel=REL)
    assert engine.series_levels() == pytest.approx({"CAP": 2000.0, "PX": 360.0}, rel=REL)


# --------------------------------------------------------------------------- shares/IWF/AWF


def test_shares_change_in_one_index_then_iwf_in_all_then_awf() -> None:
    engine = engine_of(cap2("CAP1"), cap2("CAP2"))

    [only] = act(
        engine, SharesChange(id="sh-1", symbol="A", shares=1500.0, index="CAP1", effective=at(1))
    )
    # CAP1: q_A 1000 -> 1500, S 200,000 -> 250,000, d 100 -> 125.  CAP2 untouched.
    assert only.index == "CAP1"
    assert divisor(engine, "CAP1") == pytest.approx(125.0, rel=REL)
    assert divisor(engine, "CAP2") == 100.0

    records = act(engine, SharesChange(id="iwf-1", symbol="A", iwf=0.8, effective=at(2)), seconds=2)
    # Both: CAP1 q_A = 1500 * 0.8 = 1200, S -> 120,000 + 100,000, d = 125 * 220/250 = 110;
    #       CAP2 q_A = 1000 * 0.8 = 800,  S -> 80,000 + 100,000,  d = 100 * 180/200 = 90.
    assert {r.index for r in records} == {"CAP1", "CAP2"}
    assert engine.constituents("CAP1")["A"] == pytest.approx(1200.0, rel=REL)
    assert engine.constituents("CAP2")["A"] == pytest.approx(800.0, rel=REL)
    assert divisor(engine, "CAP1") == pytest.approx(110.0, rel=REL)
    assert divisor(engine, "CAP2") == pytest.approx(90.0, rel=REL)

    act(
        engine,
        SharesChange(id="awf-1", symbol="B", awf=0.5, index="CAP2", effective=at(3)),
        seconds=3,
    )
    # CAP2 q_B = 2000 * 1 * 0.5 = 1000: S 180,000 -> 80,000 + 50,000, d = 90 * 130/180 = 65.
    assert engine.constituents("CAP2")["B"] == pytest.approx(1000.0, rel=REL)
    assert divisor(engine, "CAP2") == pytest.approx(65.0, rel=REL)
    assert engine.series_levels() == pytest.approx({"CAP1": 2000.0, "CAP2": 2000.0}, rel=REL)

    tick(engine, "A", 110.0, 4)
    assert level(engine, "CAP1") == pytest.approx((110 * 1200 + 50 * 2000) / 110.0, rel=REL)
    assert level(engine, "CAP2") == pytest.approx((110 * 800 + 50 * 1000) / 65.0, rel=REL)


def test_weighting_factor_change_in_a_price_weighted_index() -> None:
    engine = engine_of(px3())

    act(engine, SharesChange(id="wf-b", symbol="B", awf=2.0, effective=at(1)))

    # q_B 1 -> 2: S 180 -> 100 + 2 * 50 + 30 = 230.
    assert divisor(engine, "PX") == pytest.approx(0.5 * 230 / 180, rel=REL)
    assert level(engine, "PX") == pytest.approx(360.0, rel=REL)


# --------------------------------------------------------------------------- add and delete


def test_add_with_a_seed_price() -> None:
    engine = engine_of(cap2())

    [record] = act(
        engine,
        AddConstituent(
            id="add-d", index="CAP", symbol="D", shares=500.0, iwf=0.8, price=40.0, effective=at(1)
        ),
    )

    # q_D = 500 * 0.8 = 400 at 40: S 200,000 -> 216,000, d 100 -> 108.
    assert (record.action, record.symbol) == ("add", "D")
    assert engine.constituents("CAP") == pytest.approx({"A": 1000.0, "B": 2000.0, "D": 400.0})
    assert divisor(engine, "CAP") == pytest.approx(108.0, rel=REL)
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)

    tick(engine, "D", 44.0, 2)
    assert level(engine, "CAP") == pytest.approx((200_000 + 44 * 400) / 108.0, rel=REL)


def test_a_tick_stamped_before_an_add_never_replaces_its_seed_price() -> None:
    """A late tick, or one delivered again after a restart, for a symbol added with a seed
    price: older than the seed, so out of order (the calculator over the log order saw it
    before the add, when the symbol was unknown)."""
    engine = engine_of(cap2())
    act(
        engine,
        AddConstituent(id="add-d", index="CAP", symbol="D", shares=400.0, price=40.0,
                       effective=at(2)),
        seconds=2,
    )  # fmt: skip
    before = level(engine, "CAP")
    late = engine.apply(ticks=[Tick(symbol="D", price=35.0, ts=at(1.5))], now=at(2.5))
    assert late.outcomes == {("rejected", "out_of_order"): 1}
    assert level(engine, "CAP") == pytest.approx(before, rel=REL)
    tick(engine, "D", 44.0, 3)  # after it: moves the index
    assert level(engine, "CAP") == pytest.approx((200_000 + 44 * 400) / 108.0, rel=REL)


def test_add_to_a_price_weighted_index() -> None:
    engine = engine_of(px3())

    act(engine, AddConstituent(id="add-d", index="PX", symbol="D", price=20.0, effective=at(1)))

    assert divisor(engine, "PX") == pytest.approx(0.5 * (180 + 20) / 180, rel=REL)
    assert level(engine, "PX") == pytest.approx(360.0, rel=REL)


def test_add_a_symbol_already_priced_in_another_index_needs_no_price() -> None:
    engine = engine_of(px3(), cap2())

    act(engine, AddConstituent(id="add-c", index="CAP", symbol="C", shares=1000.0, effective=at(1)))

    # C trades at 30 already: S 200,000 -> 230,000.
    assert divisor(engine, "CAP") == pytest.approx(115.0, rel=REL)
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)


def test_delete_a_constituent() -> None:
    engine = engine_of(cap2(), px3())

    [record] = act(engine, DeleteConstituent(id="del-b", index="CAP", symbol="B", effective=at(1)))

    # S 200,000 -> 100,000: d 100 -> 50.  B stays in PX.
    assert (record.index, record.action, record.symbol) == ("CAP", "delete", "B")
    assert engine.constituents("CAP") == {"A": 1000.0}
    assert divisor(engine, "CAP") == pytest.approx(50.0, rel=REL)
    assert engine.series_levels() == pytest.approx({"CAP": 2000.0, "PX": 360.0}, rel=REL)

    tick(engine, "B", 60.0, 2)
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)  # no longer a member
    assert level(engine, "PX") == pytest.approx((100 + 60 + 30) / 0.5, rel=REL)


def test_delete_from_a_price_weighted_index() -> None:
    engine = engine_of(px3())

    act(engine, DeleteConstituent(id="del-c", index="PX", symbol="C", effective=at(1)))

    assert divisor(engine, "PX") == pytest.approx(0.5 * 150 / 180, rel=REL)
    assert level(engine, "PX") == pytest.approx(360.0, rel=REL)


# --------------------------------------------------------------------------- rebalance


def test_rebalance_a_cap_index_to_a_given_list() -> None:
    engine = engine_of(cap2())

    act(
        engine,
        Rebalance(
            id="rb-1",
            index="CAP",
            effective=at(1),
            constituents=(
                member("A", shares=500.0),
                member("D", 30.0, shares=2000.0, iwf=0.5),
            ),
        ),
    )

    # A: 100 * 500 = 50,000; D: 30 * 1000 = 30,000; B dropped.  S 200,000 -> 80,000.
    assert engine.constituents("CAP") == pytest.approx({"A": 500.0, "D": 1000.0})
    assert divisor(engine, "CAP") == pytest.approx(100.0 * 80_000 / 200_000, rel=REL)  # 40
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)

    tick(engine, "D", 33.0, 2)
    assert level(engine, "CAP") == pytest.approx((50_000 + 33 * 1000) / 40.0, rel=REL)
    tick(engine, "B", 60.0, 3)  # no longer a member
    assert level(engine, "CAP") == pytest.approx((50_000 + 33 * 1000) / 40.0, rel=REL)


def test_rebalance_an_equal_index_to_a_new_list_gives_equal_weights() -> None:
    engine = engine_of(index("EQ", "equal", member("A", 10.0), member("B", 20.0), base_value=100.0))
    tick(engine, "A", 12.0, 1)
    before = 100.0 * (12 / 10 + 20 / 20) / 2  # 110

    act(
        engine,
        Rebalance(
            id="rb-eq",
            index="EQ",
            effective=at(2),
            constituents=(member("A"), member("B"), member("D", 40.0)),
        ),
        seconds=2,
    )

    assert level(engine, "EQ") == pytest.approx(before, rel=REL)
    q = engine.constituents("EQ")
    values = [q["A"] * 12.0, q["B"] * 20.0, q["D"] * 40.0]
    assert values == pytest.approx([values[0]] * 3, rel=REL)
    # Every member now moves the index by a third of its own move.
    tick(engine, "D", 44.0, 3)
    assert level(engine, "EQ") == pytest.approx(before * (1 + 0.10 / 3), rel=REL)


# --------------------------------------------------------------------------- timing, once


def test_an_action_is_applied_once_per_id() -> None:
    engine = engine_of(px3())
    split = Split(id="split-a", symbol="A", ratio=2.0, effective=at(1))

    result = engine.apply(actions=[split, split], now=at(1))

    assert result.rejected_actions == [("split-a", "duplicate")]
    assert len(result.audit) == 1
    assert engine.price_of("A") == 50.0

    again = engine.apply(actions=[Split(id="split-a", symbol="A", ratio=2.0)], now=at(5))
    assert again.rejected_actions == [("split-a", "duplicate")]
    assert not again.audit
    assert engine.price_of("A") == 50.0
    assert engine.applied_actions == 1


def test_a_future_action_waits_for_its_effective_time() -> None:
    engine = engine_of(px3())

    queued = engine.apply(
        actions=[Split(id="split-a", symbol="A", ratio=2.0, effective=at(10))], now=at(1)
    )
    assert not queued.audit
    assert engine.pending_actions == 1
    assert not engine.advance(at(9)).audit
    assert engine.price_of("A") == 100.0

    [record] = engine.advance(at(10)).audit

    assert record.effective == at(10)
    assert engine.price_of("A") == 50.0
    assert engine.pending_actions == 0


def test_an_action_without_effective_time_applies_at_receipt() -> None:
    engine = engine_of(px3())

    [record] = engine.apply(actions=[Split(id="split-a", symbol="A", ratio=2.0)], now=at(3)).audit

    assert record.effective == at(3)


def test_ticks_of_one_batch_straddle_the_effective_time() -> None:
    engine = engine_of(px3())
    # Listed out of time order on purpose: the effective time, not the list, decides.
    result = engine.apply(
        ticks=[Tick(symbol="A", price=53.0, ts=at(3)), Tick(symbol="B", price=52.0, ts=at(1))],
        actions=[
            Split(id="split-a", symbol="A", ratio=2.0, effective=at(2)),
            Split(id="split-b", symbol="B", ratio=2.0, effective=at(2)),
        ],
        now=at(4),
    )

    # B moved to 52 before its split, so the split saw S = 100 + 52 + 30 = 182 and made B 26;
    # A was split at 100 (-> 50) and then traded at 53 after the effective time.
    assert result.outcomes == {("accepted", "ok"): 2}
    assert [r.action_id for r in result.audit] == ["split-a", "split-b"]
    first, second = result.audit
    assert first.level_before == pytest.approx(182 / 0.5, rel=REL)
    d1 = 0.5 * (50 + 52 + 30) / (100 + 52 + 30)
    d2 = d1 * (50 + 26 + 30) / (50 + 52 + 30)
    assert first.divisor_after == pytest.approx(d1, rel=REL)
    assert second.divisor_before == pytest.approx(d1, rel=REL)
    assert second.divisor_after == pytest.approx(d2, rel=REL)
    assert engine.price_of("B") == 26.0
    assert level(engine, "PX") == pytest.approx((53 + 26 + 30) / d2, rel=REL)


def test_actions_of_one_batch_apply_in_effective_order() -> None:
    engine = engine_of(cap2())

    result = engine.apply(
        actions=[
            SharesChange(id="shares-a", symbol="A", shares=3000.0, effective=at(2)),
            Split(id="split-a", symbol="A", ratio=2.0, effective=at(1)),
        ],
        now=at(3),
    )

    # Split first (A: 50 x 2000, no divisor change), then shares = 3000:
    # S 200,000 -> 50 * 3000 + 100,000 = 250,000, d 100 -> 125.  The other order would
    # leave 6000 shares.
    assert [r.action_id for r in result.audit] == ["split-a", "shares-a"]
    assert engine.constituents("CAP")["A"] == 3000.0
    assert divisor(engine, "CAP") == pytest.approx(125.0, rel=REL)
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)


def test_equal_effective_times_keep_arrival_order() -> None:
    engine = engine_of(cap2())

    result = engine.apply(
        actions=[
            Split(id="split-a", symbol="A", ratio=2.0, effective=at(1)),
            SharesChange(id="shares-a", symbol="A", shares=3000.0, effective=at(1)),
        ],
        now=at(1),
    )

    assert [r.action_id for r in result.audit] == ["split-a", "shares-a"]
    assert engine.constituents("CAP")["A"] == 3000.0


# --------------------------------------------------------------------------- audit


def test_audit_record_of_a_special_dividend() -> None:
    engine = engine_of(cap2())

    result = engine.apply(
        actions=[SpecialDividend(id="sd-2025-a", symbol="A", amount=10.0, effective=at(5))],
        now=at(6),
    )

    [record] = result.audit
    assert record.action_id == "sd-2025-a"
    assert record.action == "special_dividend"
    assert record.index == "CAP"
    assert record.symbol == "A"
    assert record.effective == at(5)
    assert record.divisor_before == 100.0
    assert record.divisor_after == pytest.approx(95.0, rel=REL)
    assert record.level_before == pytest.approx(2000.0, rel=REL)
    assert record.level_after == pytest.approx(2000.0, rel=REL)
    assert result.changed == ["CAP"]


def test_audit_has_one_record_per_index_touched() -> None:
    engine = engine_of(cap2("CAP1"), cap2("CAP2"), px3())

    records = act(engine, Split(id="split-a", symbol="A", ratio=2.0, effective=at(1)))

    assert sorted(r.index for r in records) == ["CAP1", "CAP2", "PX"]
    for r in records:
        assert (r.action_id, r.action, r.symbol, r.effective) == ("split-a", "split", "A", at(1))
        assert r.level_after == pytest.approx(r.level_before, rel=REL)


def test_audit_of_a_rebalance_and_a_dividend() -> None:
    engine = engine_of(cap2())

    rebalance = act(
        engine,
        Rebalance(
            id="rb", index="CAP", effective=at(1), constituents=(member("A", shares=1000.0),)
        ),
    )
    dividend = act(engine, Dividend(id="div", symbol="A", amount=1.0, effective=at(2)), seconds=2)

    assert [(r.action, r.index) for r in rebalance] == [("rebalance", "CAP")]
    assert rebalance[0].divisor_after == pytest.approx(50.0, rel=REL)
    [div] = dividend
    assert (div.action, div.divisor_before, div.divisor_after) == ("dividend", 50.0, 50.0)
    assert div.level_before == div.level_after == pytest.approx(2000.0, rel=REL)


# --------------------------------------------------------------------------- rejected actions


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (Split(id="x", symbol="NOPE", ratio=2.0), "unknown_symbol"),
        (Split(id="x", symbol="A", ratio=0.0), "bad_ratio"),
        (Split(id="x", symbol="A", ratio=math.nan), "bad_ratio"),
        (SpecialDividend(id="x", symbol="A", amount=100.0), "bad_amount"),
        (SpecialDividend(id="x", symbol="A", amount=-1.0), "bad_amount"),
        (Rights(id="x", symbol="A", ratio=-0.5, price=80.0), "bad_ratio"),
        (Spinoff(id="x", symbol="A", ratio=10.0, price=20.0), "bad_amount"),
        (Dividend(id="x", symbol="A", amount=0.0), "bad_amount"),
        (SharesChange(id="x", symbol="A", iwf=1.5), "bad_iwf"),
        (SharesChange(id="x", symbol="A", shares=-1.0), "bad_shares"),
        (SharesChange(id="x", symbol="A", shares=10.0, index="NOPE"), "unknown_index"),
        (SharesChange(id="x", symbol="C", shares=10.0, index="CAP"), "not_member"),
        (AddConstituent(id="x", index="CAP", symbol="A", shares=1.0), "already_member"),
        (AddConstituent(id="x", index="CAP", symbol="NEW"), "missing_shares"),
        (AddConstituent(id="x", index="CAP", symbol="NEW", shares=5.0), "no_price"),
        (AddConstituent(id="x", index="NOPE", symbol="A"), "unknown_index"),
        (DeleteConstituent(id="x", index="CAP", symbol="C"), "not_member"),
        (Rebalance(id="x", index="CAP", constituents=()), "empty_index"),
    ],
)
def test_an_invalid_action_is_rejected_and_changes_nothing(action: Action, reason: str) -> None:
    engine = engine_of(cap2(), px3())
    before = engine.levels()
    prices = {s: engine.price_of(s) for s in "ABC"}

    result = engine.apply(actions=[action], now=at(1))

    assert result.rejected_actions == [("x", reason)]
    assert not result.audit
    assert engine.levels() == before
    assert {s: engine.price_of(s) for s in "ABC"} == prices


def test_deleting_the_last_member_is_rejected() -> None:
    engine = engine_of(index("ONE", "price", member("A", 10.0), divisor=1.0))

    result = engine.apply(actions=[DeleteConstituent(id="x", index="ONE", symbol="A")], now=at(1))

    assert result.rejected_actions == [("x", "empty_index")]
    assert level(engine, "ONE") == 10.0


def test_add_and_delete_in_an_equal_weighted_index() -> None:
    engine = engine_of(index("EQ", "equal", member("A", 10.0), member("B", 20.0), base_value=100.0))
    tick(engine, "A", 12.0, 1)
    before = 100.0 * (12 / 10 + 20 / 20) / 2  # 110

    act(
        engine,
        AddConstituent(id="add-d", index="EQ", symbol="D", price=40.0, effective=at(2)),
        seconds=2,
    )

    # D comes in with the average member value, i.e. a weight of exactly 1/3.
    q = engine.constituents("EQ")
    values = {"A": q["A"] * 12.0, "B": q["B"] * 20.0, "D": q["D"] * 40.0}
    assert values["D"] / sum(values.values()) == pytest.approx(1 / 3, rel=REL)
    assert level(engine, "EQ") == pytest.approx(before, rel=REL)

    act(engine, DeleteConstituent(id="del-a", index="EQ", symbol="A", effective=at(3)), seconds=3)
    assert level(engine, "EQ") == pytest.approx(before, rel=REL)
    assert set(engine.constituents("EQ")) == {"B", "D"}


# --------------------------------------------------------------------------- known bugs


def test_a_tick_of_a_symbol_added_in_the_same_batch_counts() -> None:
    engine = engine_of(cap2())

    result = engine.apply(
        actions=[
            AddConstituent(
                id="add-d", index="CAP", symbol="D", shares=500.0, price=40.0, effective=at(1)
            )
        ],
        ticks=[Tick(symbol="D", price=42.0, ts=at(2))],
        now=at(3),
    )

    # Add at 40: S 200,000 -> 220,000, d 100 -> 110; then D trades at 42.
    assert result.outcomes == {("accepted", "ok"): 1}
    assert engine.price_of("D") == 42.0
    assert level(engine, "CAP") == pytest.approx((200_000 + 42 * 500) / 110.0, rel=REL)


@pytest.mark.parametrize("kind", ["add", "rebalance"])
def test_adding_a_constituent_without_an_fx_rate_keeps_the_level_continuous(kind: str) -> None:
    engine = engine_of(cap2())
    action: Action
    if kind == "add":
        action = AddConstituent(
            id="in-de",
            index="CAP",
            symbol="DE",
            shares=1000.0,
            currency="EUR",
            price=50.0,
            effective=at(1),
        )
    else:
        action = Rebalance(
            id="in-de",
            index="CAP",
            effective=at(1),
            constituents=(
                member("A", shares=1000.0),
                member("B", shares=2000.0),
                member("DE", 50.0, shares=1000.0, currency="EUR"),
            ),
        )

    engine.apply(actions=[action], now=at(1))
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)

    # Only the rate arrives: no price moved, so the level must not move either.
    engine.apply(fx=[FxRate(pair="EURUSD", rate=1.2, ts=at(2))], now=at(2))
    assert level(engine, "CAP") == pytest.approx(2000.0, rel=REL)


def test_audit_record_numbers_are_plain_floats() -> None:
    engine = engine_of(px3())

    [record] = act(engine, Split(id="split-a", symbol="A", ratio=2.0, effective=at(1)))

    for name in ("divisor_before", "divisor_after", "level_before", "level_after"):
        assert type(getattr(record, name)) is float, name
    assert type(record.effective) is int


# --------------------------------------------------------------------------- bounded input


def test_pending_actions_are_bounded_and_the_excess_refused() -> None:
    engine = Engine([px3()], QualitySettings(), start_ns=T0, max_pending=3)
    future = [Split(id=f"s{k}", symbol="A", ratio=2.0, effective=at(1000 + k)) for k in range(5)]
    result = engine.apply(actions=future, now=at(1))
    assert result.accepted_actions == ["s0", "s1", "s2"]
    assert result.rejected_actions == [("s3", "too_many_pending"), ("s4", "too_many_pending")]
    assert engine.pending_actions == 3


def test_a_refused_action_is_not_remembered_so_a_corrected_resend_applies() -> None:
    engine = Engine([px3()], QualitySettings(), start_ns=T0)
    bad = engine.apply(actions=[Split(id="s", symbol="A", ratio=-1.0)], now=at(1))
    assert bad.rejected_actions == [("s", "bad_ratio")]
    good = engine.apply(actions=[Split(id="s", symbol="A", ratio=2.0)], now=at(2))
    assert [r.action_id for r in good.audit] == ["s"]


def test_an_action_older_than_the_ids_remembered_is_refused_as_expired() -> None:
    day = 86_400 * SECOND
    engine = Engine([px3()], QualitySettings(), start_ns=T0, id_retention_ns=30 * day)
    old = Split(id="old", symbol="A", ratio=2.0, effective=T0 - 31 * day)
    assert engine.apply(actions=[old], now=T0).rejected_actions == [("old", "expired")]


def test_a_held_move_adjusted_to_nothing_is_dropped_not_divided_by() -> None:
    # B at 1.0 against 50 is a big move (max 50%), held; a special dividend of 1.0 (valid:
    # below the accepted 50) adjusts the held price to 0, which a confirming tick would
    # divide by.  The hold is dropped instead, and the next tick is screened against 49.
    engine = engine_of(px3())
    held = engine.apply(ticks=[Tick(symbol="B", price=1.0, ts=at(1))], now=at(1))
    assert held.outcomes == {("held", "big_move"): 1}
    act(engine, SpecialDividend(id="sd-b", symbol="B", amount=1.0, effective=at(2)), seconds=2)
    assert engine.price_of("B") == 49.0
    tick(engine, "B", 48.0, 3)
    assert engine.price_of("B") == 48.0
