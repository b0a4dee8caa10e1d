"""Property tests: incremental state always equals a from-scratch recomputation.

Random sequences of tick batches (good and bad), FX moves, corporate actions, index changes and
day closes run through the engine; after every step the incrementally maintained sums must
equal a full recompute (relative 1e-12), every divisor adjustment must leave the level
unchanged at the same prices, and the per-tick and vectorized paths must agree.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.config import ConstituentSpec, IndexDefinition, QualitySettings
from streamer.engine import Engine, kernels, snapshot
from streamer.wire import (
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

SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG"]
EUR_SYMBOLS = {"EEE", "FFF"}
NEW_SYMBOL = "NEW"
REL = 1e-12


def _universe() -> list[IndexDefinition]:
    def spec(
        symbol: str, shares: float, iwf: float = 1.0, awf: float = 1.0, price: float | None = None
    ) -> ConstituentSpec:
        return ConstituentSpec(
            symbol=symbol,
            shares=shares,
            iwf=iwf,
            awf=awf,
            price=price,
            currency="EUR" if symbol in EUR_SYMBOLS else "USD",
            withholding=0.15,
        )

    return [
        IndexDefinition(
            id="PW",
            method="price",
            divisor=0.5,
            variants=("price", "total"),
            constituents=(
                spec("AAA", 1, price=100.0),
                spec("BBB", 1, price=50.0),
                spec("CCC", 1, awf=2.0, price=20.0),
            ),
        ),
        IndexDefinition(
            id="CAP",
            method="cap",
            base_value=1000.0,
            variants=("price", "total", "net"),
            constituents=(
                spec("AAA", 5e9, 0.9, price=100.0),
                spec("BBB", 2e9, 0.5, price=50.0),
                spec("DDD", 1e9, price=None),
                spec("EEE", 3e9, 0.75, price=40.0),
            ),
        ),
        IndexDefinition(
            id="EW",
            method="equal",
            base_value=100.0,
            constituents=(spec("BBB", 1), spec("CCC", 1), spec("FFF", 1)),
        ),
        IndexDefinition(
            id="XC",
            method="cap",
            currency="EUR",
            divisor=1e7,
            constituents=(spec("AAA", 1e9), spec("EEE", 2e9), spec("GGG", 1e8)),
        ),
    ]


prices = st.floats(min_value=1.0, max_value=500.0, allow_nan=False)
bad_prices = st.sampled_from([math.nan, math.inf, -1.0, 0.0])
symbol = st.sampled_from([*SYMBOLS, "ZZZ"])


@st.composite
def tick_batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    size = draw(st.integers(1, 30))
    return [
        {
            "symbol": draw(symbol),
            "price": draw(st.one_of(prices, prices, prices, bad_prices)),
            "dt": draw(st.integers(-1, 3)),
            "seq": draw(st.one_of(st.none(), st.integers(0, 40))),
        }
        for _ in range(size)
    ]


def actions(n: int) -> st.SearchStrategy[Any]:
    sid = f"a{n}"
    sym = st.sampled_from(SYMBOLS)
    idx = st.sampled_from(["PW", "CAP", "EW", "XC"])
    return st.one_of(
        st.builds(Split, id=st.just(sid), symbol=sym, ratio=st.sampled_from([2.0, 3.0, 0.5, 4.0])),
        st.builds(SpecialDividend, id=st.just(sid), symbol=sym, amount=st.floats(0.01, 5.0)),
        st.builds(Dividend, id=st.just(sid), symbol=sym, amount=st.floats(0.01, 3.0)),
        st.builds(
            Rights,
            id=st.just(sid),
            symbol=sym,
            ratio=st.floats(0.1, 1.0),
            price=st.floats(1.0, 50.0),
        ),
        st.builds(
            Spinoff,
            id=st.just(sid),
            symbol=sym,
            ratio=st.floats(0.1, 1.0),
            price=st.floats(0.5, 10.0),
        ),
        st.builds(
            SharesChange,
            id=st.just(sid),
            symbol=sym,
            shares=st.one_of(st.none(), st.floats(1e6, 1e10)),
            iwf=st.one_of(st.none(), st.floats(0.05, 1.0)),
            index=st.one_of(st.none(), idx),
        ),
        st.builds(
            AddConstituent,
            id=st.just(sid),
            index=idx,
            symbol=st.sampled_from([*SYMBOLS, NEW_SYMBOL]),
            shares=st.floats(1e6, 1e10),
            price=st.one_of(st.none(), prices),
        ),
        st.builds(DeleteConstituent, id=st.just(sid), index=idx, symbol=sym),
        st.builds(Rebalance, id=st.just(sid), index=idx),
        st.builds(
            Rebalance,
            id=st.just(sid),
            index=idx,
            constituents=st.lists(
                st.builds(
                    ConstituentSpec,
                    symbol=sym,
                    shares=st.floats(1e6, 1e10),
                    iwf=st.floats(0.1, 1.0),
                ),
                min_size=1,
                max_size=3,
                unique_by=lambda c: c.symbol,
            ),
        ),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    for n in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["ticks", "ticks", "ticks", "fx", "action", "close"]))
        if kind == "ticks":
            steps.append(("ticks", draw(tick_batches())))
        elif kind == "fx":
            steps.append(("fx", draw(st.floats(0.5, 2.0))))
        elif kind == "action":
            steps.append(("action", draw(actions(n))))
        else:
            steps.append(("close", None))
    return steps


def _run(
    steps: list[tuple[str, Any]],
    small_batch: int | None = None,
    check: bool = True,
    arrays: bool = False,
    results: list[tuple[dict[tuple[str, str], int], list[str]]] | None = None,
) -> Engine:
    """Run ``steps``; ``arrays``: ticks through ``apply_tick_arrays`` instead of messages;
    ``results``: collects each tick batch's outcome counts and changed series."""
    now = [1_000]
    engine = Engine(_universe(), QualitySettings(max_move_pct=30.0), start_ns=now[0])
    if small_batch is not None:
        engine.small_batch = small_batch
    for kind, payload in steps:
        now[0] += 10
        if kind == "ticks":
            ticks = [Tick(t["symbol"], t["price"], now[0] + t["dt"], t["seq"]) for t in payload]
            if arrays:
                result = engine.apply_tick_arrays(
                    engine.symbol_ids([t.symbol for t in ticks]),
                    np.array([t.price for t in ticks]),
                    np.array([t.ts for t in ticks], dtype=np.int64),
                    np.array([-1 if t.seq is None else t.seq for t in ticks], dtype=np.int64),
                    now=now[0],
                )
            else:
                result = engine.apply(ticks=ticks, now=now[0])
            if results is not None:
                results.append((dict(result.outcomes), result.changed))
        elif kind == "fx":
            result = engine.apply(fx=[FxRate("EURUSD", payload, now[0])], now=now[0])
        elif kind == "action":
            result = engine.apply(actions=[payload], now=now[0])
            if check:
                for record in result.audit:
                    if not math.isnan(record.level_before):
                        assert record.level_after == pytest.approx(record.level_before, rel=REL)
        else:
            engine.close()
            continue
        if check:
            _assert_incremental_equals_full(engine)
    return engine


def _assert_incremental_equals_full(engine: Engine) -> None:
    universe = engine.universe
    exact, missing = kernels.full_sums(universe.members, universe.book.price, engine.n_indices)
    np.testing.assert_array_equal(engine.missing, missing)
    np.testing.assert_allclose(engine.sums, exact, rtol=REL, atol=1e-6)
    # Independently of the kernels: a plain Python sum over the current membership.
    m = engine.universe.members
    for j in range(engine.n_indices):
        total = math.fsum(
            float(engine.universe.book.price[m.sid[r]]) * float(m.qfx[r])
            for r in range(len(m))
            if m.index[r] == j and math.isfinite(engine.universe.book.price[m.sid[r]] * m.qfx[r])
        )
        assert engine.sums[j] == pytest.approx(total, rel=REL, abs=1e-6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_incremental_sums_equal_full_recompute(steps: list[tuple[str, Any]]) -> None:
    _run(steps)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_per_tick_path_and_vector_path_agree(steps: list[tuple[str, Any]]) -> None:
    per_tick = _run(steps, small_batch=10**9, check=False)
    vector = _run(steps, small_batch=0, check=False)
    np.testing.assert_array_equal(per_tick.book.price, vector.book.price)
    np.testing.assert_array_equal(per_tick.book.held, vector.book.held)
    np.testing.assert_array_equal(per_tick.divisor, vector.divisor)  # both exact recomputes
    np.testing.assert_allclose(per_tick.sums, vector.sums, rtol=REL, atol=1e-6)
    assert per_tick.series_levels().keys() == vector.series_levels().keys()
    # The publishing metadata too: newest tick used and staleness per series.
    assert [(lv.series, lv.source_ts, lv.stale) for lv in per_tick.levels()] == [
        (lv.series, lv.source_ts, lv.stale) for lv in vector.levels()
    ]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_array_entry_point_agrees_with_messages(steps: list[tuple[str, Any]]) -> None:
    """``apply_tick_arrays`` (the kernel's entry point) and ``apply`` (decoded messages) take
    the same decisions: outcomes, changed series and the resulting state."""
    by_message: list[tuple[dict[tuple[str, str], int], list[str]]] = []
    by_array: list[tuple[dict[tuple[str, str], int], list[str]]] = []
    messages = _run(steps, check=False, results=by_message)
    arrays = _run(steps, check=False, arrays=True, results=by_array)
    assert by_array == by_message
    np.testing.assert_array_equal(arrays.book.price, messages.book.price)
    np.testing.assert_array_equal(arrays.sums, messages.sums)
    assert arrays.levels() == messages.levels()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_gather_and_full_pass_scatter_agree(
    steps: list[tuple[str, Any]],
) -> None:
    original = kernels.FULL_PASS_SHARE
    try:
        kernels.FULL_PASS_SHARE = 0.0
        full_pass = _run(steps, small_batch=0, check=False)
        kernels.FULL_PASS_SHARE = math.inf
        gather = _run(steps, small_batch=0, check=False)
    finally:
        kernels.FULL_PASS_SHARE = original
    np.testing.assert_allclose(full_pass.sums, gather.sums, rtol=REL, atol=1e-6)


def test_drift_is_measured_and_reset() -> None:
    engine = Engine(_universe())
    engine.sums[0] *= 1 + 1e-9
    assert engine.recompute() == pytest.approx(1e-9, rel=1e-3)
    assert engine.recompute() == 0.0
    assert engine.max_drift == pytest.approx(1e-9, rel=1e-3)


@st.composite
def timelines(draw: st.DrawFn) -> list[Any]:
    """Ticks, FX rates and actions with strictly increasing timestamps."""
    messages: list[Any] = []
    ts = 1_000
    for n in range(draw(st.integers(1, 40))):
        ts += draw(st.integers(1, 5))
        kind = draw(st.sampled_from(["tick", "tick", "tick", "tick", "fx", "action"]))
        if kind == "tick":
            messages.append(Tick(draw(symbol), draw(st.one_of(prices, bad_prices)), ts))
        elif kind == "fx":
            messages.append(FxRate("EURUSD", draw(st.floats(0.5, 2.0)), ts))
        else:
            action = draw(actions(n))
            messages.append(
                type(action)(
                    **{**{f: getattr(action, f) for f in action.__struct_fields__}, "effective": ts}
                )
            )
    return messages


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines())
def test_one_batch_equals_message_by_message(messages: list[Any]) -> None:
    """Batching must not change results: actions split a batch at their effective time."""

    def stamp(m: Any) -> int:
        return int(m.effective if hasattr(m, "effective") else m.ts)

    one_by_one = Engine(_universe(), QualitySettings(max_move_pct=30.0))
    for m in messages:
        if isinstance(m, Tick):
            one_by_one.apply(ticks=[m], now=stamp(m))
        elif isinstance(m, FxRate):
            one_by_one.apply(fx=[m], now=stamp(m))
        else:
            one_by_one.apply(actions=[m], now=stamp(m))
    batched = Engine(_universe(), QualitySettings(max_move_pct=30.0))
    batched.apply(
        ticks=[m for m in messages if isinstance(m, Tick)],
        fx=[m for m in messages if isinstance(m, FxRate)],
        actions=[m for m in messages if hasattr(m, "effective")],
        now=stamp(messages[-1]),
    )
    one_by_one.recompute()
    batched.recompute()
    np.testing.assert_array_equal(one_by_one.book.price, batched.book.price)
    np.testing.assert_allclose(one_by_one.divisor, batched.divisor, rtol=REL)
    levels_a, levels_b = one_by_one.series_levels(), batched.series_levels()
    assert levels_a.keys() == levels_b.keys()
    for series, level in levels_a.items():
        assert levels_b[series] == pytest.approx(level, rel=REL)


def _continue(engine: Engine, steps: list[tuple[str, Any]], now: int) -> int:
    """Run ``steps`` on ``engine`` from market time ``now`` (as ``_run`` does)."""
    for kind, payload in steps:
        now += 10
        if kind == "ticks":
            ticks = [Tick(t["symbol"], t["price"], now + t["dt"], t["seq"]) for t in payload]
            engine.apply(ticks=ticks, now=now)
        elif kind == "fx":
            engine.apply(fx=[FxRate("EURUSD", payload, now)], now=now)
        elif kind == "action":
            engine.apply(actions=[payload], now=now)
        else:
            engine.close(now)
    return now


def _nan_safe(value: Any) -> Any:
    """``value`` with NaN as a string, so that equal states compare equal."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, list | tuple):
        return [_nan_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_safe(v) for k, v in value.items()}
    return value


def _state_of(engine: Engine) -> Any:
    universe = engine.universe
    n = len(universe.book)
    columns = universe.book.market_columns()
    members = universe.member_columns()
    state = (
        list(universe.book.names),
        {k: v.tolist() for k, v in columns.items()},
        {k: v.tolist() for k, v in members.items()},
        engine.divisor.tolist(),
        engine.returns.tr_close.tolist(),
        engine.returns.ntr_close.tolist(),
        engine.returns.gross_points.tolist(),
        dict(universe.fx.rates),
        sorted(engine.applied),
        [(e, a.id) for e, a in engine.agenda.pending_actions()],
        n,
    )
    return _nan_safe(state)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(0, 14))
def test_snapshot_and_restore_anywhere_change_nothing(
    steps: list[tuple[str, Any]], cut: int
) -> None:
    """A checkpoint taken at any point of a sequence, encoded, decoded and restored, then the
    rest of the sequence: the same state and levels as never stopping."""
    cut = min(cut, len(steps))
    quality = QualitySettings(max_move_pct=30.0)
    straight = Engine(_universe(), quality, start_ns=1_000)
    _continue(straight, steps, 1_000)

    first = Engine(_universe(), quality, start_ns=1_000)
    now = _continue(first, steps[:cut], 1_000)
    taken = snapshot.take(first.state, _universe())
    blobs = snapshot.encode_part(taken.structure), snapshot.encode_part(taken.market)
    state, report = snapshot.restore(snapshot.decode_parts(*blobs), _universe(), start_ns=now)
    assert report.kept == [d.id for d in _universe()] and not report.dropped
    resumed = Engine(_universe(), quality, start_ns=now, state=state)
    resumed.now = first.now
    _continue(resumed, steps[cut:], now)

    assert _state_of(resumed) == _state_of(straight)
    np.testing.assert_allclose(resumed.sums, straight.sums, rtol=REL, atol=1e-6)

    def published(e: Engine) -> list[tuple[Any, ...]]:
        return [
            (lv.series, lv.level, lv.divisor, lv.prev_close, lv.stale, lv.coverage)
            for lv in e.levels(now=straight.now)
        ]

    for a, b in zip(published(resumed), published(straight), strict=True):
        assert a[0] == b[0] and a[4:] == b[4:]
        np.testing.assert_allclose(a[1:4], b[1:4], rtol=1e-9)
