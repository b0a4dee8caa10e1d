"""The publisher's pure policies: the per-series rate cap and the history memory budget."""

from __future__ import annotations

import heapq
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.publish import BAR_ENTRY_BYTES, HISTORY_ENTRY_BYTES, HistoryPolicy, RateCap

MS = 1_000_000


def simulate(interval_ns: int, changes: list[tuple[int, str]]) -> dict[str, list[int]]:
    """Drive a RateCap as the publish loop does: a cycle at each change, and one whenever
    the cap says a waiting series is due.  Returns each series' publish times."""
    cap = RateCap(interval_ns)
    published: dict[str, list[int]] = {}
    events = [(t, 0, s) for t, s in changes]
    heapq.heapify(events)
    while events:
        now, _, series = heapq.heappop(events)
        changed = {series} if series else set()
        while events and events[0][0] == now:  # everything at this instant, one cycle
            _, _, other = heapq.heappop(events)
            if other:
                changed.add(other)
        for s in cap.due(changed, now):
            published.setdefault(s, []).append(now)
        due = cap.next_due_ns()
        if due is not None:
            heapq.heappush(events, (due, 1, ""))
    return published


@settings(max_examples=300, deadline=None)
@given(
    interval_ms=st.integers(1, 500),
    changes=st.lists(
        st.tuples(st.integers(0, 5_000), st.sampled_from(["A", "B", "C"])), max_size=60
    ),
)
def test_a_capped_series_is_published_at_most_once_per_interval_and_never_loses_its_newest(
    interval_ms: int, changes: list[tuple[int, str]]
) -> None:
    interval = interval_ms * MS
    timed = [(t * MS, s) for t, s in changes]
    published = simulate(interval, timed)
    for series, times in published.items():
        assert all(b - a >= interval for a, b in itertools.pairwise(times)), series
    for t, series in timed:
        # The level of a change goes out at the first publish at or after it, within the cap.
        after = [p for p in published.get(series, []) if p >= t]
        assert after, (series, t)
        assert after[0] - t <= interval


def test_without_a_cap_every_change_goes_out_at_once() -> None:
    cap = RateCap(0)
    assert cap.due({"A", "B"}, 10) == {"A", "B"}
    assert cap.due({"A"}, 11) == {"A"}
    assert cap.next_due_ns() is None


def test_a_series_changing_faster_than_its_cap_goes_out_on_the_cap() -> None:
    cap = RateCap(100)
    assert cap.due({"A"}, 1_000) == {"A"}
    assert cap.due({"A"}, 1_010) == set()  # waits
    assert cap.next_due_ns() == 1_100
    assert cap.due(set(), 1_100) == {"A"}  # its newest level, on time
    assert cap.next_due_ns() is None


@given(
    series=st.integers(1, 200_000),
    memory_mb=st.integers(1, 4096),
    interval_ms=st.integers(0, 10_000),
)
def test_the_history_budget_bounds_total_memory_whatever_the_series_count(
    series: int, memory_mb: int, interval_ms: int
) -> None:
    policy = HistoryPolicy(
        interval_ms=interval_ms,
        retention_ms=86_400_000,
        bars_retention_ms=172_800_000,
        memory_bytes=memory_mb << 20,
    ).for_series(series)
    raw_entries = series * policy.retention_ms / max(policy.interval_ms, 1)
    bars = series * policy.bars_retention_ms / 60_000
    estimate = raw_entries * HISTORY_ENTRY_BYTES + bars * BAR_ENTRY_BYTES
    assert estimate <= (memory_mb << 20) * 1.001
    assert policy.interval_ms >= interval_ms  # never samples faster than configured
    assert policy.bars_retention_ms <= 172_800_000


def test_a_small_universe_keeps_the_configured_history() -> None:
    policy = HistoryPolicy(1000, 86_400_000, 172_800_000, 1 << 30).for_series(23)
    assert policy == HistoryPolicy(1000, 86_400_000, 172_800_000, 1 << 30)
