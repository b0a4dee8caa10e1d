"""The service's Prometheus metrics, on an injected registry (a fresh one per test).

Names are DESIGN.md's public interface; ``streamer_sum_drift_ratio`` is added.  The
per-series gauges are in ``streamer.series_metrics``.  The hot path never touches a metric
object: latency samples and outcome counts are appended to plain Python buffers, and
:meth:`Metrics.flush`
applies them in bulk (one bucket update per bucket, :func:`observe_many`).  The service flushes
on a timer and before every scrape, so a scrape always sees every observation; per-tick
``observe`` calls cost more than the index arithmetic itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Receipt -> Redis acknowledgement on loopback is ~0.1-1 ms; dissemination timers reach 15 s.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0,
)  # fmt: skip
# Producer clock -> our receipt: network, broker queueing and clock skew (can be negative).
FEED_DELAY_BUCKETS = (
    0.0, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class Metrics:
    """Every metric the service exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ticks = Counter(
            "streamer_ticks",
            "Input messages by outcome (accepted/held/rejected) and reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.tick_to_publish = Histogram(
            "streamer_tick_to_publish_seconds",
            "Time from a tick's receipt to the Redis acknowledgement of the publish it fed.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.feed_delay = Histogram(
            "streamer_feed_delay_seconds",
            "Receipt time minus the tick's producer timestamp.",
            buckets=FEED_DELAY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "streamer_batch_size",
            "Ticks per micro-batch applied to the engine.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "streamer_queue_depth",
            "Messages and ticks received but not yet applied to the engine.",
            registry=r,
        )
        self.mqtt_reconnects = Counter(
            "streamer_mqtt_reconnects",
            "Connections re-established to the MQTT broker after a loss.",
            registry=r,
        )
        self.redis_errors = Counter(
            "streamer_redis_errors", "Failed Redis publish cycles or probes.", registry=r
        )
        self.actions = Counter(
            "streamer_actions",
            "Control actions by outcome (accepted, applied, rejected; ignored: not_in_shard, "
            "for another shard's index or symbol) and reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.references = Counter(
            "streamer_references",
            "Reference levels by outcome (accepted, rejected) and reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.seq_resets = Counter(
            "streamer_seq_resets",
            "Ticks whose lower seq was taken as a restarted producer (after a gap).",
            registry=r,
        )
        self.ingest_lag = Gauge(
            "streamer_ingest_lag_seconds",
            "Wall clock minus the ts of the newest tick applied: how far levels are behind "
            "the feed (it grows when the feed stops as well).",
            registry=r,
        )
        self.redis_state = Gauge(
            "streamer_redis_state",
            "1 for the current state of the Redis connection.",
            ["state"],
            registry=r,
        )
        self.mqtt_session_lost = Counter(
            "streamer_mqtt_session_lost",
            "Connections where the broker had lost our persistent session (QoS 1 messages "
            "sent meanwhile may be lost).",
            registry=r,
        )
        self.mqtt_takeovers = Counter(
            "streamer_mqtt_takeovers",
            "Times another client seemed to take our session over (same client id).",
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "streamer_checkpoint_age_seconds",
            "Seconds since the engine's state was last made durable.",
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            "streamer_checkpoint_bytes",
            "Size of the last checkpoint written (market part, plus structure when it moved).",
            registry=r,
        )
        self.checkpoint_errors = Counter(
            "streamer_checkpoint_errors",
            "Checkpoints that could not be written.",
            registry=r,
        )
        self.tick_wildcard = Gauge(
            "streamer_tick_wildcard_subscribed",
            "1 when a tick topic filter is a wildcard (ticks of symbols no index holds arrive "
            "and count as rejected/unknown_symbol), 0 when only constituents' topics are.",
            registry=r,
        )
        self.role = Gauge(
            "streamer_role",
            "1 for this replica's role: leader (holds the writer lease, publishes) or standby.",
            ["role"],
            registry=r,
        )
        self.lease_acquired = Counter(
            "streamer_lease_acquired",
            "Times this replica acquired its shard's writer lease.",
            registry=r,
        )
        self.lease_refusals = Counter(
            "streamer_lease_refusals",
            "Writes or renewals refused because the writer lease was no longer ours.",
            registry=r,
        )
        self._tick_children: dict[tuple[str, str], Counter] = {}
        self.sum_drift_ratio = Gauge(
            "streamer_sum_drift_ratio",
            "Largest relative difference between incremental and recomputed index sums.",
            registry=r,
        )

        self.tick_to_publish_samples = HistogramBuffer(self.tick_to_publish)
        self.feed_delay_samples = HistogramBuffer(self.feed_delay)
        self.batch_size_samples = HistogramBuffer(self.batch_size)
        self._pending_outcomes: dict[tuple[str, str], int] = {}

    def count_outcomes(self, outcomes: Mapping[tuple[str, str], int]) -> None:
        """Add to ``streamer_ticks_total`` (applied by the next :meth:`flush`)."""
        pending = self._pending_outcomes
        for key, n in outcomes.items():
            pending[key] = pending.get(key, 0) + n

    def flush(self) -> None:
        """Apply every buffered observation and count."""
        pending, self._pending_outcomes = self._pending_outcomes, {}
        children = self._tick_children
        for key, n in pending.items():
            if n:
                child = children.get(key)
                if child is None:
                    child = children[key] = self.ticks.labels(*key)
                child.inc(n)
        self.tick_to_publish_samples.flush()
        self.feed_delay_samples.flush()
        self.batch_size_samples.flush()


class HistogramBuffer:
    """Observations waiting for one bulk update of their histogram."""

    __slots__ = ("_limit", "_values", "_weighted", "histogram")

    def __init__(self, histogram: Histogram, limit: int = 1 << 16) -> None:
        self.histogram = histogram
        self._values: list[float] = []  # observed once each
        # Values observed several times each: samples standing for more, or repeated values.
        self._weighted: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
        self._limit = limit  # flush early past this many values (or 1/16 as many chunks)

    def add(self, values: Sequence[float], weight: float = 1.0) -> None:
        """Observe each of ``values`` (``weight`` times: for a sample standing for more)."""
        if weight != 1.0:
            array = np.asarray(values, dtype=np.float64)
            self._add_weighted(array, np.full(len(array), weight))
            return
        self._values.extend(values)
        if len(self._values) >= self._limit:
            self.flush()

    def add_counted(self, values: npt.NDArray[np.float64], counts: npt.NDArray[np.int64]) -> None:
        """Observe ``values[i]`` ``counts[i]`` times."""
        self._add_weighted(values, counts.astype(np.float64))

    def _add_weighted(
        self, values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64]
    ) -> None:
        self._weighted.append((values, weights))
        if len(self._weighted) >= self._limit >> 4:
            self.flush()

    def flush(self) -> None:
        if self._values:
            values, self._values = self._values, []
            observe_many(self.histogram, values)
        if self._weighted:
            weighted, self._weighted = self._weighted, []
            observe_many(
                self.histogram,
                np.concatenate([values for values, _ in weighted]),
                np.concatenate([weights for _, weights in weighted]),
            )


def observe_many(histogram: Histogram, values: ArrayLike, weights: ArrayLike | None = None) -> None:
    """Observe every value (each ``weights[i]`` times) with one bucket update per bucket.

    Relies on prometheus-client's internal bucket layout (non-cumulative counters, one per
    upper bound); falls back to per-value ``observe`` if that layout ever changes.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0:
        return
    counts = (
        np.ones_like(data) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    )
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value, count in zip(data.tolist(), counts.tolist(), strict=True):
            for _ in range(round(count)):
                histogram.observe(value)
        return
    # The last bound is +Inf; NaN would sort past it, so it is clipped into that bucket.
    slots = np.minimum(
        np.searchsorted(np.asarray(bounds, dtype=np.float64), data, side="left"), len(bounds) - 1
    )
    per_bucket = np.bincount(slots, weights=counts, minlength=len(bounds))
    for slot in np.flatnonzero(per_bucket).tolist():
        buckets[slot].inc(float(per_bucket[slot]))
    total.inc(float(np.dot(data, counts)))
