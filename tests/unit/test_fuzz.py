"""Fuzzing the whole decode-and-apply step with hostile payloads.

Every payload, on every topic, must end as messages or as counted rejections: nothing raises
out of ``Pipeline.step``, and the engine stays exact (incremental sums equal a full
recompute, levels finite, divisors positive) whatever came before.  Payloads mix raw bytes,
JSON and MessagePack of arbitrary values (deep nesting, integers past int64, NaN, huge and
odd strings, invalid UTF-8), near-valid messages with one field broken, and large batches.

The suite runs a bounded number of examples; ``make fuzz`` runs many more
(``STREAMER_FUZZ_EXAMPLES``, default 20000 there) and prints how many payloads it tried.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import msgspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.config import QualitySettings
from streamer.engine import Engine, kernels
from streamer.engine.schedule import SessionRules, utc_days
from streamer.fund_config import Basket, FundDefinition, HoldingSpec
from streamer.pipeline import Pipeline
from streamer.publish import Outbox
from tests.unit.builders import T0, index, member

EXAMPLES = int(os.environ.get("STREAMER_FUZZ_EXAMPLES", "150"))
tried = {"payloads": 0}

SYMBOLS = ["AAA", "BBB", "CCC", "EEE", "FNDL"]  # FNDL: the fund FND's listing
INT_EDGES = [
    0,
    -1,
    1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    10**30,
    -(10**30),
]
FLOAT_EDGES = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324, -1.0, 189.25]
TEXTS = [
    "",
    "AAA",
    "A" * 10_000,
    "a\nb",
    "\x00",
    "\ud7ff",
    "\u202e",
    "é",
    "ticks/#",
    "EURUSD",
    "split",
    "DJIA",
    "x" * 65,
]

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(INT_EDGES),
    st.integers(),
    st.sampled_from(FLOAT_EDGES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(TEXTS),
    st.text(max_size=20),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    [
                        "symbol",
                        "price",
                        "ts",
                        "seq",
                        "pair",
                        "rate",
                        "index",
                        "level",
                        "action",
                        "id",
                        "effective",
                        "ratio",
                        "amount",
                        "shares",
                        "constituents",
                    ]
                ),
                st.text(max_size=8),
            ),
            children,
            max_size=6,
        ),
    ),
    max_leaves=12,
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A message of a real kind with its fields from the hostile pools."""
    kind = draw(st.sampled_from(["tick", "tick", "tick", "fx", "reference", "control"]))
    field_value = st.one_of(leaves, st.sampled_from(SYMBOLS), st.floats(1.0, 500.0))
    if kind == "tick":
        message = {
            "symbol": draw(st.one_of(st.sampled_from(SYMBOLS), field_value)),
            "price": draw(st.one_of(st.floats(1.0, 500.0), field_value)),
        }
        if draw(st.booleans()):
            message["ts"] = draw(
                st.one_of(st.sampled_from(INT_EDGES), st.integers(T0, T0 + 10**12))
            )
        if draw(st.booleans()):
            message["seq"] = draw(st.one_of(st.sampled_from(INT_EDGES), st.integers(0, 100)))
        if draw(st.booleans()):  # a quote (a fund listing's premium uses its mid)
            message["bid"] = draw(st.one_of(st.floats(1.0, 500.0), field_value))
            message["ask"] = draw(st.one_of(st.floats(1.0, 500.0), field_value))
        return message
    if kind == "fx":
        return {
            "pair": draw(st.one_of(st.just("EURUSD"), field_value)),
            "rate": draw(st.one_of(st.floats(0.5, 2.0), field_value)),
            "ts": draw(st.one_of(st.sampled_from(INT_EDGES), st.integers(T0, T0 + 10**12))),
        }
    if kind == "reference":
        return {
            "index": draw(st.one_of(st.just("PX"), field_value)),
            "level": draw(st.one_of(st.floats(1.0, 1e4), field_value)),
        }
    action = draw(
        st.sampled_from(
            [
                "split",
                "special_dividend",
                "dividend",
                "shares",
                "add",
                "delete",
                "rebalance",
                "close",
                "basket",
                "bogus",
            ]
        )
    )
    message = {"action": action, "id": draw(st.one_of(st.text(max_size=10), field_value))}
    for name in draw(
        st.lists(
            st.sampled_from(
                [
                    "symbol",
                    "ratio",
                    "amount",
                    "index",
                    "shares",
                    "effective",
                    "price",
                    "constituents",
                    "fund",
                    "holdings",
                    "cash",
                    "units",
                ]
            ),
            max_size=4,
            unique=True,
        )
    ):
        message[name] = draw(
            st.one_of(
                field_value,
                st.sampled_from(SYMBOLS),
                st.just("PX"),
                st.just("FND"),
                st.floats(0.1, 5.0),
                st.just([{"symbol": "AAA", "shares": 3.0}, {"symbol": "ZZZ", "shares": 1.0}]),
            )
        )
    return message


def _json(value: Any) -> bytes:
    """JSON as a hostile producer might write it: integers of any size, NaN, lone
    surrogates (the stdlib encoder writes them all; msgspec refuses some)."""
    return json.dumps(value).encode()


def _clamped(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return max(-(2**63), min(value, 2**64 - 1))
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_clamped(v) for v in value]
    if isinstance(value, dict):
        return {_clamped(k): _clamped(v) for k, v in value.items()}
    return value


def _msgpack(value: Any) -> bytes:
    """MessagePack of ``value`` (integers clamped to what the format can hold)."""
    return msgspec.msgpack.encode(_clamped(value))


def _deep(depth: int, msgpack: bool) -> bytes:
    if msgpack:
        return b"\x91" * depth + b"\xc0"
    return b"[" * depth + b"]" * depth


def _bad_utf8(value: Any) -> bytes:
    return _msgpack(value).replace(b"\xa3AAA", b"\xa3\xff\xfe\xfd")


payloads = st.one_of(
    st.binary(max_size=300),
    values.map(_json),
    values.map(_msgpack),
    near_valid().map(_json),
    near_valid().map(_msgpack),
    st.lists(near_valid(), max_size=60).map(_json),
    st.lists(near_valid(), max_size=60).map(_msgpack),
    st.lists(near_valid(), max_size=20).map(_bad_utf8),
    st.tuples(st.integers(1, 200_000), st.booleans()).map(lambda a: _deep(*a)),
    st.sampled_from([b"", b"{", b"[", b"\xc1", b"{}", b"[]", b"null", b" {}", b"\n[1]"]),
)
topics = st.sampled_from(
    ["ticks/AAA", "ticks/batch", "fx/EURUSD", "control/x", "reference/PX", "other/x", "", "ticks"]
)
bursts = st.lists(st.tuples(topics, payloads), min_size=1, max_size=8)


def _pipeline() -> Pipeline:
    definitions = [
        index(
            "PX",
            "price",
            member("AAA", 100.0),
            member("BBB", 50.0),
            divisor=1.0,
            variants=("price", "total"),
        ),
        index(
            "CAP",
            "cap",
            member("AAA", 100.0, shares=1e6),
            member("CCC", 20.0, shares=3e6),
            member("EEE", 40.0, shares=1e6, currency="EUR"),
            divisor=1e6,
        ),
    ]
    rules = SessionRules("24/7", utc_days, close_delay_ns=0)
    fund = FundDefinition(
        id="FND",
        tracks="PX.TR",
        listing="FNDL",
        basket=Basket(
            holdings=(
                HoldingSpec(symbol="AAA", shares=2.0),
                HoldingSpec(symbol="EEE", shares=1.0, currency="EUR"),
            ),
            cash=5.0,
            units=2.0,
        ),
        expense_ratio=0.01,
    )
    engine = Engine(definitions, QualitySettings(), sessions=rules, start_ns=T0, funds=[fund])
    return Pipeline(engine, Outbox(), batch_max=50)


def _assert_exact(engine: Engine) -> None:
    universe = engine.universe
    exact, missing = kernels.full_sums(universe.members, universe.book.price, engine.n_indices)
    np.testing.assert_array_equal(engine.missing, missing)
    np.testing.assert_allclose(engine.sums, exact, rtol=1e-9, atol=1e-6)
    divisors = engine.divisor[~np.isnan(engine.divisor)]
    assert (divisors > 0).all() and np.isfinite(divisors).all()
    for level in engine.series_levels().values():
        assert math.isfinite(level)
    funds = engine.funds
    assert funds is not None
    fund_exact, fund_missing = kernels.full_sums(funds.holdings, universe.book.price, 1)
    np.testing.assert_array_equal(funds.missing, fund_missing)
    np.testing.assert_allclose(funds.sums, fund_exact, rtol=1e-9, atol=1e-6)
    for fund in engine.fund_levels():
        assert fund.coverage >= 0.0 and (math.isnan(fund.inav) or fund.inav > -1e12)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(bursts, min_size=1, max_size=4))
def test_no_payload_escapes_the_step_or_corrupts_an_index(steps: list[Any]) -> None:
    pipeline = _pipeline()
    receipt = T0
    for burst in steps:
        receipt += 10**9
        raw = [(topic, payload, receipt, 0) for topic, payload in burst]
        tried["payloads"] += len(raw)
        step = pipeline.step(raw, receipt)
        while len(pipeline):
            pipeline.step([], receipt)
        assert all(n >= 0 for n in step.rejected.values())
        _assert_exact(pipeline.engine)
    pipeline.advance(receipt + 10**9)
    _assert_exact(pipeline.engine)


def teardown_module() -> None:
    if os.environ.get("STREAMER_FUZZ_EXAMPLES"):
        print(f"\nfuzz: {tried['payloads']} payloads tried, none escaped the step")
