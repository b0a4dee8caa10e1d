"""The paced feed loop behind ``streamer simulate``: market -> payloads -> broker.

Moves are drawn a chunk at a time (a quarter second of ticks) and sent in slices as they
fall due, so each message is stamped with the time it leaves (``ts``), which is what the
service's feed-delay metric and the end-to-end benchmark need.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from streamer.mqtt.codec import publish_packet
from streamer.tools.feed import GbmMarket, TickChunk
from streamer.tools.fund_listings import ListingQuoter
from streamer.tools.mqtt_publisher import MqttPublisher
from streamer.tools.pacing import Pacer
from streamer.tools.shutdown import StopSignal
from streamer.tools.tick_encoding import PayloadFormat, TickEncoder, topic_for
from streamer.wire import FxRate, encode

log = logging.getLogger(__name__)

_MAX_SLICE_TICKS = 5_000  # upper bound of one write: keeps the loop responsive to signals
_PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class SimulationOptions:
    rate: float = 1_000.0  # ticks per second
    batch: int = 1  # ticks per message; > 1 publishes arrays on ticks/batch
    fmt: PayloadFormat = "json"
    duration_s: float | None = None  # None: until stopped
    time_scale: float = 1.0  # simulated trading seconds per real second
    fx_interval_s: float = 0.5
    listing_interval_s: float = 0.5  # fund listing quotes (with funds configured)


@dataclass
class SimulationReport:
    opening_ticks: int = 0
    ticks: int = 0  # paced ticks after the opening
    messages: int = 0
    fx_messages: int = 0
    listing_messages: int = 0
    elapsed_s: float = 0.0
    behind: int = 0  # ticks the schedule asked for that we could not send in time
    dropped: int = 0  # messages lost to a broken broker connection
    reconnects: int = 0

    @property
    def achieved_rate(self) -> float:
        return self.ticks / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self, target_rate: float) -> str:
        parts = [
            f"simulate: {self.ticks:,} ticks in {self.messages:,} messages "
            f"(+ {self.opening_ticks:,} opening ticks, {self.fx_messages:,} fx) "
            f"over {self.elapsed_s:.1f} s: {self.achieved_rate:,.0f} ticks/s "
            f"(target {target_rate:,.0f})"
        ]
        if self.behind > 0.01 * (self.ticks + self.behind):  # ignore sub-percent jitter
            parts.append(f"fell behind by {self.behind:,} ticks")
        if self.dropped or self.reconnects:
            parts.append(f"{self.dropped:,} messages lost in {self.reconnects} reconnects")
        if self.listing_messages:
            parts.append(f"{self.listing_messages:,} fund listing quotes")
        return "; ".join(parts)


class FeedSimulator:
    """Publishes the market's ticks and FX rates to the broker at a steady rate."""

    def __init__(
        self,
        market: GbmMarket,
        publisher: MqttPublisher,
        options: SimulationOptions,
        stop: StopSignal | None = None,
        listings: ListingQuoter | None = None,
    ) -> None:
        if options.rate <= 0 or options.batch <= 0:
            raise ValueError("rate and batch must be positive")
        self.market = market
        self.publisher = publisher
        self.options = options
        self.stop = stop or StopSignal()
        self.encoder = TickEncoder(market.universe.symbols)
        self.report = SimulationReport()
        self.listings = listings
        self._fx_topics = [topic_for("fx", p).encode() for p in market.universe.fx_pairs]
        self._chunk = TickChunk(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
        self._cursor = 0
        self._generated = 0  # ticks drawn so far (excluding the opening): the market clock

    def run(self) -> SimulationReport:
        self._publish_fx(0.0)
        opening = self.market.opening()
        self._send(opening, 0, len(opening))
        self.report.opening_ticks = len(opening)
        self.report.messages = 0

        options = self.options
        pacer = Pacer(options.rate / options.batch)  # paces messages
        started = time.perf_counter()
        next_fx = started + options.fx_interval_s
        next_listing = started
        next_progress = started + _PROGRESS_EVERY_S
        deadline = None if options.duration_s is None else started + options.duration_s
        while not self.stop.is_set():
            now = time.perf_counter()
            if deadline is not None and now >= deadline:
                break
            if now >= next_fx:
                self._publish_fx(self._generated / options.rate * options.time_scale)
                next_fx = now + options.fx_interval_s
            if self.listings is not None and now >= next_listing:
                self._publish_listings(self._generated / options.rate * options.time_scale)
                next_listing = now + options.listing_interval_s
            if now >= next_progress:
                self._log_progress(now - started)
                next_progress = now + _PROGRESS_EVERY_S
            messages = min(pacer.due(), max(1, _MAX_SLICE_TICKS // options.batch))
            if messages == 0:
                pacer.wait()
                self.publisher.keepalive()
                continue
            self._send_ticks(messages * options.batch)
            pacer.release(messages)
        self.report.elapsed_s = time.perf_counter() - started
        scheduled = int(self.report.elapsed_s * options.rate)
        self.report.behind = max(scheduled - self.report.ticks - options.batch, 0)
        self.report.dropped = self.publisher.stats.dropped
        self.report.reconnects = self.publisher.stats.reconnects
        return self.report

    def _send_ticks(self, count: int) -> None:
        while count > 0:
            if self._cursor >= len(self._chunk):
                self._draw_chunk()
            # Chunks and requests are whole batches, so every message stays a full batch.
            take = min(count, len(self._chunk) - self._cursor)
            self._send(self._chunk, self._cursor, take)
            self._cursor += take
            self.report.ticks += take
            count -= take

    def _draw_chunk(self) -> None:
        options = self.options
        size = max(int(options.rate / 4), options.batch, 256)
        size -= size % options.batch
        ticks_so_far = self._generated + np.arange(size, dtype=np.float64)
        times = ticks_so_far / options.rate * options.time_scale
        self._chunk = self.market.step(self.market.random_symbols(size), times)
        self._cursor = 0
        self._generated += size

    def _send(self, chunk: TickChunk, start: int, count: int) -> None:
        stop = start + count
        ids, prices, seqs = (
            chunk.symbol_ids[start:stop],
            chunk.prices[start:stop],
            chunk.seqs[start:stop],
        )
        ts = time.time_ns()
        batch, fmt = self.options.batch, self.options.fmt
        if batch == 1:
            packets = self.encoder.single_packets(ids, prices, seqs, ts, fmt)
        else:
            packets = [
                self.encoder.batch_packet(
                    ids[i : i + batch], prices[i : i + batch], seqs[i : i + batch], ts, fmt
                )
                for i in range(0, count, batch)
            ]
        self.publisher.publish_packets(packets)
        self.report.messages += len(packets)

    def _publish_fx(self, trading_time_s: float) -> None:
        pairs = self.market.universe.fx_pairs
        if not pairs:
            return
        rates = self.market.fx_step(trading_time_s).tolist()
        ts = time.time_ns()
        packets = [
            publish_packet(topic, encode(FxRate(pair, rate, ts), self.options.fmt))
            for topic, pair, rate in zip(self._fx_topics, pairs, rates, strict=True)
        ]
        self.publisher.publish_packets(packets)
        self.report.fx_messages += len(packets)

    def _publish_listings(self, trading_time_s: float) -> None:
        """The funds' listing quotes around their iNAV (see ``tools.fund_listings``)."""
        assert self.listings is not None
        ticks = self.listings.quotes(np.exp(self.market.log_price), trading_time_s, time.time_ns())
        packets = [
            publish_packet(topic_for("ticks", t.symbol).encode(), encode(t, self.options.fmt))
            for t in ticks
        ]
        self.publisher.publish_packets(packets)
        self.report.listing_messages += len(packets)

    def _log_progress(self, elapsed_s: float) -> None:
        log.info(
            "simulate progress",
            extra={
                "fields": {
                    "ticks": self.report.ticks,
                    "ticks_per_s": round(self.report.ticks / elapsed_s),
                    "fx": self.report.fx_messages,
                }
            },
        )
