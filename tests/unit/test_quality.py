"""Tick quality: rejection reasons, hold-and-confirm, staleness and coverage.

Batches of up to SMALL_BATCH ticks take the engine's per-tick path, bigger ones the vectorized
path. Most tests run both ways: ``padded`` adds SMALL_BATCH + 1 in-band ticks of symbols of a
separate index (PAD), which pushes the batch onto the vectorized path without touching the
index under test; the padding's own accepted ticks are taken out of the outcome counts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import pytest

from streamer.config import ConstituentSpec, IndexDefinition, QualitySettings
from streamer.engine import Engine
from streamer.engine.core import SMALL_BATCH
from streamer.wire import Action, FxRate, Split, Tick
from tests.unit.builders import T0, ManualClock, at

PAD = SMALL_BATCH + 1
PATHS = pytest.mark.parametrize("padded", [False, True], ids=["per_tick", "vectorized"])

Outcomes = Counter[tuple[str, str]]


def x_index() -> IndexDefinition:
    """X = (A + B + C) / 1 with A = 100, B = 50, C = 30."""
    return IndexDefinition(
        id="X",
        method="price",
        divisor=1.0,
        constituents=(
            ConstituentSpec(symbol="A", price=100.0),
            ConstituentSpec(symbol="B", price=50.0),
            ConstituentSpec(symbol="C", price=30.0),
        ),
    )


def pad_index() -> IndexDefinition:
    return IndexDefinition(
        id="PAD",
        method="price",
        divisor=1.0,
        constituents=tuple(ConstituentSpec(symbol=f"PAD{k}", price=100.0) for k in range(PAD)),
    )


class Feed:
    """Applies batches to an engine, padded onto the vectorized path or not."""

    def __init__(
        self,
        padded: bool,
        *definitions: IndexDefinition,
        max_move_pct: float = 10.0,
        stale_after_s: float = 60.0,
        clock: ManualClock | None = None,
    ) -> None:
        self.padded = padded
        self.clock = clock or ManualClock()
        self.engine = Engine(
            [x_index(), *definitions, pad_index()],
            QualitySettings(max_move_pct=max_move_pct, stale_after_s=stale_after_s),
            start_ns=self.clock.now,
        )
        self.engine.apply(now=T0)  # construction marks every index changed; clear it
        self.batches = 0
        self.changed: list[str] = []

    def __call__(
        self, *ticks: Tick, seconds: float = 1.0, actions: Sequence[Action] = ()
    ) -> Outcomes:
        received = at(seconds)
        batch = list(ticks)
        if self.padded:
            price = 101.0 if self.batches % 2 == 0 else 100.0
            batch += [Tick(symbol=f"PAD{k}", price=price, ts=received) for k in range(PAD)]
        self.batches += 1
        result = self.engine.apply(ticks=batch, actions=actions, now=received)
        outcomes = Counter(result.outcomes)
        if self.padded:
            outcomes["accepted", "ok"] -= PAD
        self.changed = [s for s in result.changed if s != "PAD"]
        return +outcomes  # drops zero counts

    def price(self, symbol: str) -> float | None:
        return self.engine.price_of(symbol)

    def level(self) -> float | None:
        return self.engine.level_of("X")


def tick(symbol: str, price: float, seconds: float, seq: int | None = None) -> Tick:
    return Tick(symbol=symbol, price=price, ts=at(seconds), seq=seq)


# --------------------------------------------------------------------------- rejections


@PATHS
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -5.0, -0.0])
def test_a_non_finite_or_non_positive_price_is_rejected(padded: bool, bad: float) -> None:
    feed = Feed(padded)

    outcomes = feed(tick("A", bad, 1), tick("B", 51.0, 1))

    assert outcomes == {("rejected", "bad_price"): 1, ("accepted", "ok"): 1}
    assert feed.price("A") == 100.0
    assert feed.level() == 100 + 51 + 30


@PATHS
def test_an_unknown_symbol_is_rejected(padded: bool) -> None:
    feed = Feed(padded)

    outcomes = feed(tick("ZZZ", 10.0, 1), tick("A", 101.0, 1))

    assert outcomes == {("rejected", "unknown_symbol"): 1, ("accepted", "ok"): 1}
    assert feed.level() == 101 + 50 + 30


@PATHS
def test_a_sequence_number_must_increase(padded: bool) -> None:
    feed = Feed(padded)
    assert feed(tick("A", 101.0, 1, seq=5)) == {("accepted", "ok"): 1}

    assert feed(tick("A", 102.0, 2, seq=5), seconds=2) == {("rejected", "out_of_order"): 1}
    assert feed(tick("A", 103.0, 3, seq=4), seconds=3) == {("rejected", "out_of_order"): 1}
    assert feed.price("A") == 101.0

    # Within one batch: the later (by arrival) of two ticks with falling seq is dropped.
    outcomes = feed(tick("A", 104.0, 4, seq=7), tick("A", 105.0, 4, seq=6), seconds=4)
    assert outcomes == {("accepted", "ok"): 1, ("rejected", "out_of_order"): 1}
    assert feed.price("A") == 104.0
    assert feed.level() == 104 + 50 + 30

    # Sequence numbers are per symbol.
    assert feed(tick("B", 52.0, 5, seq=1), seconds=5) == {("accepted", "ok"): 1}


@PATHS
def test_a_timestamp_must_not_go_back(padded: bool) -> None:
    feed = Feed(padded)
    assert feed(tick("A", 101.0, 10), seconds=10) == {("accepted", "ok"): 1}

    assert feed(tick("A", 102.0, 9), seconds=11) == {("rejected", "out_of_order"): 1}
    assert feed.price("A") == 101.0
    # The same timestamp again is not out of order (two trades in one nanosecond tick).
    assert feed(tick("A", 103.0, 10), seconds=12) == {("accepted", "ok"): 1}
    assert feed.price("A") == 103.0


@PATHS
def test_a_tick_older_than_an_applied_split_is_rejected(padded: bool) -> None:
    feed = Feed(padded)
    feed(seconds=5, actions=[Split(id="split-a", symbol="A", ratio=2.0, effective=at(5))])
    assert feed.price("A") == 50.0

    # A late tick stamped before the split carries the unadjusted price: it must not count.
    assert feed(tick("A", 100.0, 4), seconds=6) == {("rejected", "pre_action"): 1}
    assert feed.price("A") == 50.0

    assert feed(tick("A", 51.0, 5), seconds=7) == {("accepted", "ok"): 1}
    assert feed.price("A") == 51.0


@PATHS
def test_repeated_symbols_in_a_batch_conflate_to_the_last_price(padded: bool) -> None:
    feed = Feed(padded)

    outcomes = feed(
        tick("A", 101.0, 1), tick("B", 49.0, 1), tick("A", 102.0, 2), tick("A", 103.0, 3)
    )

    assert outcomes == {("accepted", "ok"): 4}
    assert feed.level() == 103 + 49 + 30


# --------------------------------------------------------------------------- hold and confirm


@PATHS
def test_a_big_move_is_held_then_confirmed(padded: bool) -> None:
    feed = Feed(padded)  # band 10%

    assert feed(tick("A", 120.0, 1)) == {("held", "big_move"): 1}  # +20%
    assert feed.price("A") == 100.0
    assert feed.level() == 100 + 50 + 30

    # 121 is within 10% of the held 120: the move was real.
    outcomes = feed(tick("A", 121.0, 2), seconds=2)

    assert outcomes == {("accepted", "confirmed"): 1, ("accepted", "ok"): 1}
    assert feed.price("A") == 121.0
    assert feed.level() == 121 + 50 + 30


@PATHS
def test_a_held_move_not_confirmed_is_discarded(padded: bool) -> None:
    feed = Feed(padded)
    feed(tick("A", 120.0, 1))

    # 101 is 16% away from the held 120 but within 10% of the accepted 100.
    outcomes = feed(tick("A", 101.0, 2), seconds=2)

    assert outcomes == {("rejected", "unconfirmed"): 1, ("accepted", "ok"): 1}
    assert feed.level() == 101 + 50 + 30
    # 120 was discarded: 121 is a new big move from 101, not a confirmation.
    assert feed(tick("A", 121.0, 3), seconds=3) == {("held", "big_move"): 1}
    assert feed.price("A") == 101.0


@PATHS
def test_a_second_big_move_replaces_the_held_one(padded: bool) -> None:
    feed = Feed(padded)
    feed(tick("A", 120.0, 1))

    outcomes = feed(tick("A", 80.0, 2), seconds=2)  # -20% from 100, -33% from 120

    assert outcomes == {("rejected", "unconfirmed"): 1, ("held", "big_move"): 1}
    assert feed.price("A") == 100.0
    assert feed(tick("A", 81.0, 3), seconds=3) == {
        ("accepted", "confirmed"): 1,
        ("accepted", "ok"): 1,
    }
    assert feed.level() == 81 + 50 + 30


@PATHS
def test_hold_and_confirm_within_one_batch(padded: bool) -> None:
    feed = Feed(padded)

    outcomes = feed(tick("A", 120.0, 1), tick("A", 119.0, 2))

    assert outcomes == {
        ("held", "big_move"): 1,
        ("accepted", "confirmed"): 1,
        ("accepted", "ok"): 1,
    }
    assert feed.level() == 119 + 50 + 30


@PATHS
def test_a_split_adjusts_a_held_price_too(padded: bool) -> None:
    feed = Feed(padded)
    assert feed(tick("A", 150.0, 1)) == {("held", "big_move"): 1}

    feed(seconds=2, actions=[Split(id="split-a", symbol="A", ratio=2.0, effective=at(2))])

    # Price 100 -> 50 and the held 150 -> 75: a post-split 76 confirms the held move.
    assert feed.price("A") == 50.0
    outcomes = feed(tick("A", 76.0, 3), seconds=3)
    assert outcomes == {("accepted", "confirmed"): 1, ("accepted", "ok"): 1}
    assert feed.price("A") == 76.0


@PATHS
def test_the_first_price_of_a_symbol_is_never_held(padded: bool) -> None:
    unpriced = IndexDefinition(
        id="NEW",
        method="price",
        base_value=100.0,
        constituents=(ConstituentSpec(symbol="A", price=100.0), ConstituentSpec(symbol="N")),
    )
    feed = Feed(padded, unpriced)
    assert feed.engine.level_of("NEW") is None

    assert feed(tick("N", 1e6, 1)) == {("accepted", "ok"): 1}
    assert feed.engine.level_of("NEW") == pytest.approx(100.0, rel=1e-12)


# --------------------------------------------------------------------------- staleness


def test_stale_count_and_coverage_follow_the_market_time_passed_in() -> None:
    clock = ManualClock(T0)
    y_index = IndexDefinition(
        id="Y",
        method="price",
        divisor=1.0,
        constituents=(
            ConstituentSpec(symbol="B", price=50.0),
            ConstituentSpec(symbol="D", price=10.0),
        ),
    )
    feed = Feed(False, y_index, stale_after_s=60.0, clock=clock)

    def stale() -> dict[str, tuple[int, float]]:
        levels = feed.engine.levels(["X", "Y"], now=clock.now)
        return {s.series: (s.stale, s.coverage) for s in levels}

    # Every symbol is fresh from the engine's start (T0).
    clock.now = at(30)
    feed(tick("A", 101.0, 30), seconds=30)
    assert stale() == {"X": (0, 1.0), "Y": (0, 1.0)}

    clock.now = at(60)  # B, C and D are exactly 60 s old: not yet stale
    assert stale() == {"X": (0, 1.0), "Y": (0, 1.0)}

    clock.now = at(60) + 1
    assert stale() == {"X": (2, 1 / 3), "Y": (2, 0.0)}

    clock.now = at(90) + 1  # A's tick is now over 60 s old as well
    assert stale() == {"X": (3, 0.0), "Y": (2, 0.0)}

    clock.now = at(100)
    feed(tick("B", 51.0, 100), seconds=100)
    assert stale() == {"X": (2, 1 / 3), "Y": (1, 0.5)}


def test_rejected_and_held_ticks_do_not_refresh_a_symbol() -> None:
    clock = ManualClock(T0)
    feed = Feed(False, stale_after_s=60.0, clock=clock)
    clock.now = at(100)

    feed(tick("A", -1.0, 100), tick("B", 80.0, 100), seconds=100)  # bad price; +60%: held

    [x] = feed.engine.levels(["X"], now=clock.now)
    assert (x.stale, x.coverage) == (3, 0.0)
    feed(tick("C", 30.0, 101), seconds=101)  # an unchanged price still shows C is alive
    [x] = feed.engine.levels(["X"], now=at(101))
    assert (x.stale, x.coverage) == (2, 1 / 3)


# --------------------------------------------------------------------------- fx rates


def test_fx_rates_are_screened() -> None:
    mixed = IndexDefinition(
        id="M",
        method="cap",
        divisor=1.0,
        constituents=(ConstituentSpec(symbol="DE", price=10.0, currency="EUR"),),
    )
    engine = Engine([mixed], QualitySettings(), start_ns=T0)
    good = engine.apply(fx=[FxRate(pair="EURUSD", rate=1.1, ts=at(2))], now=at(2))
    assert good.outcomes == {("accepted", "ok"): 1}

    result = engine.apply(
        fx=[
            FxRate(pair="EURUSD", rate=math.nan, ts=at(3)),
            FxRate(pair="EURUSD", rate=0.0, ts=at(3)),
            FxRate(pair="EUR/USD", rate=1.2, ts=at(3)),
            FxRate(pair="EURUSD", rate=1.3, ts=at(1)),
        ],
        now=at(3),
    )

    assert result.outcomes == {
        ("rejected", "bad_price"): 2,
        ("rejected", "unknown_pair"): 1,
        ("rejected", "out_of_order"): 1,
    }
    assert engine.level_of("M") == pytest.approx(10 * 1.1, rel=1e-12)


# --------------------------------------------------------------------------- both paths agree


Batch = tuple[list[Tick], list[Action]]

MIXED_SCENARIO: list[Batch] = [
    # A 101, B 49, C 31: all within the 10% band.
    ([tick("A", 101.0, 1, seq=1), tick("B", 49.0, 1), tick("C", 31.0, 1)], []),
    # A +29%: held; B NaN: bad_price; ZZ: unknown_symbol.
    ([tick("A", 130.0, 2, seq=2), tick("B", math.nan, 2), tick("ZZ", 1.0, 2)], []),
    # A 129 confirms the held 130; B's ts goes back (0.5 s < 1 s): out_of_order; C 31.5.
    ([tick("A", 129.0, 3, seq=3), tick("B", 48.0, 0.5), tick("C", 31.5, 3)], []),
    # A's seq repeats: out_of_order; C 60 held, then 32 discards it and is accepted.
    ([tick("A", 128.0, 4, seq=3), tick("C", 60.0, 4), tick("C", 32.0, 5)], []),
    # Before the split at 7 s: B 47, A 127; split C 32 -> 16; then B 46.5.
    (
        [tick("B", 47.0, 6), tick("B", 46.5, 7), tick("A", 127.0, 6, seq=9)],
        [Split(id="split-c", symbol="C", ratio=2.0, effective=at(7))],
    ),
    # C at 6 s predates the split: pre_action; C 16.5; A 0: bad_price; A 126.
    (
        [
            tick("C", 32.0, 6),
            tick("C", 16.5, 8),
            tick("A", 0.0, 8, seq=10),
            tick("A", 126.0, 8, seq=11),
        ],
        [],
    ),
]


def run(scenario: list[Batch], padded: bool) -> tuple[Feed, list[Outcomes]]:
    feed = Feed(padded)
    outcomes = [
        feed(*ticks, seconds=10 * (n + 1), actions=actions)
        for n, (ticks, actions) in enumerate(scenario)
    ]
    return feed, outcomes


def test_per_tick_and_vectorized_paths_give_the_same_results() -> None:
    small, small_outcomes = run(MIXED_SCENARIO, padded=False)
    large, large_outcomes = run(MIXED_SCENARIO, padded=True)

    assert small_outcomes == large_outcomes
    assert small.engine.levels(["X"]) == large.engine.levels(["X"])
    assert {s: small.price(s) for s in "ABC"} == {s: large.price(s) for s in "ABC"}
    assert small_outcomes == [
        {("accepted", "ok"): 3},
        {("held", "big_move"): 1, ("rejected", "bad_price"): 1, ("rejected", "unknown_symbol"): 1},
        {("accepted", "confirmed"): 1, ("accepted", "ok"): 2, ("rejected", "out_of_order"): 1},
        {
            ("rejected", "out_of_order"): 1,
            ("held", "big_move"): 1,
            ("rejected", "unconfirmed"): 1,
            ("accepted", "ok"): 1,
        },
        {("accepted", "ok"): 3},
        {("rejected", "pre_action"): 1, ("accepted", "ok"): 2, ("rejected", "bad_price"): 1},
    ]
    # The split saw A 127, B 47, C 32 -> 16; the end state is A 126, B 46.5, C 16.5.
    split_divisor = 1.0 * (127 + 47 + 32 / 2) / (127 + 47 + 32)
    assert small.level() == pytest.approx((126 + 46.5 + 16.5) / split_divisor, rel=1e-12)


@pytest.mark.parametrize(
    "ticks",
    [
        pytest.param([tick("A", 101.0, 1), tick("B", 51.0, 1)], id="two_moves"),
        pytest.param(
            [tick("A", 101.0, 1), tick("A", 101.0, 2)],
            id="same_price_twice",
        ),
        pytest.param(
            [tick("A", 101.0, 1), tick("A", 100.0, 2)],
            id="there_and_back",
        ),
        pytest.param(
            [tick("A", 101.0, 1), tick("B", 49.0, 1)],
            id="moves_cancel",
        ),
    ],
)
def test_both_paths_agree_on_changed_and_source_ts(ticks: list[Tick]) -> None:
    small, large = Feed(False), Feed(True)

    small(*ticks, seconds=3)
    large(*ticks, seconds=3)

    assert small.level() == large.level()
    assert small.changed == large.changed
    [small_x], [large_x] = small.engine.levels(["X"]), large.engine.levels(["X"])
    assert small_x.source_ts == large_x.source_ts


# --------------------------------------------------------------------------- hostile clocks


@PATHS
def test_a_far_future_tick_is_refused_and_never_moves_the_symbols_clock(padded: bool) -> None:
    feed = Feed(padded)
    year_2261 = 9_200_000_000_000_000_000
    assert feed(tick("A", 101.0, 1), Tick("A", 102.0, year_2261)) == {
        ("accepted", "ok"): 1,
        ("rejected", "future_ts"): 1,
    }
    # The next honest tick is accepted: the refused one left no trace of its stamp.
    assert feed(tick("A", 103.0, 2), seconds=2) == {("accepted", "ok"): 1}
    assert feed.price("A") == 103.0


@PATHS
def test_a_tick_just_inside_the_tolerance_is_accepted(padded: bool) -> None:
    feed = Feed(padded)
    # max_future_s defaults to 5 s after the batch's receipt.
    assert feed(tick("A", 101.0, 5.9), seconds=1) == {("accepted", "ok"): 1}
    assert feed(tick("B", 51.0, 7.1), seconds=2) == {("rejected", "future_ts"): 1}


@PATHS
def test_a_restarted_feed_is_let_back_in_after_a_gap(padded: bool) -> None:
    feed = Feed(padded)
    assert feed(tick("A", 101.0, 1, seq=500)) == {("accepted", "ok"): 1}
    # Shortly after, a lower seq is a replay or a reordering: refused.
    assert feed(tick("A", 102.0, 2, seq=1), seconds=2) == {("rejected", "out_of_order"): 1}
    # 30 s later (seq_reset_after_s), the same is a restarted producer: accepted and reported.
    restarted = feed.engine.apply(
        ticks=[tick("A", 103.0, 40, seq=1), tick("A", 104.0, 41, seq=2)], now=at(41)
    )
    assert restarted.outcomes == {("accepted", "ok"): 2}
    assert restarted.seq_resets == ["A"]
    assert feed.price("A") == 104.0
    # From there its seq counts again.
    assert feed(tick("A", 105.0, 42, seq=2), seconds=42) == {("rejected", "out_of_order"): 1}


def test_unknown_fx_pairs_are_refused_so_input_cannot_grow_the_book() -> None:
    engine = Engine([x_index()], QualitySettings(), start_ns=T0)
    rates = [FxRate(pair=f"X{k:05d}", rate=1.0, ts=at(1)) for k in range(1000)]
    result = engine.apply(fx=rates, now=at(1))
    assert result.outcomes == {("rejected", "unknown_pair"): 1000}
    assert engine.universe.fx.rates == {}
