"""Per-series gauges rendered from arrays: what a scrape parses is what the table holds."""

from __future__ import annotations

import asyncio
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from streamer.engine.results import SeriesTable
from streamer.series_metrics import FAMILIES, SeriesMetrics


def parsed(text: bytes) -> dict[str, dict[str, float]]:
    """family -> index label -> value."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        assert family.type == "gauge"
        out[family.name] = {s.labels["index"]: s.value for s in family.samples}
    return out


def table(series: list[str], values: list[float]) -> SeriesTable:
    level = np.array(values)
    n = len(series)
    return SeriesTable(
        series,
        level,
        level * 0.99,
        np.arange(n, dtype=np.int64),
        np.full(n, 30, dtype=np.int64),
        np.where(np.isfinite(level), 1.5, np.nan),
    )


finite_or_nan = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64), st.just(math.nan)
)


@settings(max_examples=100, deadline=None)
@given(st.lists(finite_or_nan, min_size=1, max_size=40))
def test_every_known_value_is_one_sample_and_an_unknown_one_is_none(values: list[float]) -> None:
    series = [f"S{k}" for k in range(len(values))]
    metrics = SeriesMetrics(series)
    asyncio.run(metrics.refresh(table(series, values)))
    families = parsed(metrics.text())
    assert set(families) >= {name for name, _, _ in FAMILIES}
    known = {s: v for s, v in zip(series, values, strict=True) if not math.isnan(v)}
    assert families["streamer_index_level"] == known  # exact: repr round-trips
    assert families["streamer_stale_constituents"] == {s: float(k) for k, s in enumerate(series)}
    assert set(families["streamer_reference_deviation_bps"]) == set(known)


def test_the_selection_keeps_only_matching_series() -> None:
    series = ["US500", "US500.TR", "DEMO30", "EU50"]
    metrics = SeriesMetrics(series, ["US500*", "EU??"])
    asyncio.run(metrics.refresh(table(series, [1.0, 2.0, 3.0, 4.0])))
    assert set(parsed(metrics.text())["streamer_index_level"]) == {"US500", "US500.TR", "EU50"}
    assert metrics.count == 3
    nothing = SeriesMetrics(series, [])
    asyncio.run(nothing.refresh(table(series, [1.0, 2.0, 3.0, 4.0])))
    assert parsed(nothing.text())["streamer_index_level"] == {}


def test_closes_are_kept_per_series_until_the_next() -> None:
    metrics = SeriesMetrics(["A", "B"])
    metrics.closed("A", 100.0)
    metrics.closed("UNKNOWN", 5.0)  # a series it does not know: ignored
    asyncio.run(metrics.refresh(table(["A", "B"], [1.0, 2.0])))
    assert parsed(metrics.text())["streamer_last_close_timestamp_seconds"] == {"A": 100.0}
