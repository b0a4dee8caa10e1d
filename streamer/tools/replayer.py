"""Publish recorded messages to the broker, keeping their recorded rhythm (scaled), or flat out."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from streamer.mqtt.codec import publish_packet
from streamer.tools.mqtt_publisher import MqttPublisher
from streamer.tools.recording import RecordedMessage
from streamer.tools.shutdown import StopSignal

_FLUSH_PACKETS = 1_000


@dataclass
class ReplayReport:
    by_kind: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    recorded_span_s: float = 0.0  # first to last recorded ts
    interrupted: bool = False

    @property
    def messages(self) -> int:
        return sum(self.by_kind.values())

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(self.by_kind.items())) or "none"
        rate = self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0
        text = (
            f"replay: {self.messages:,} messages ({kinds}) in {self.elapsed_s:.2f} s "
            f"({rate:,.0f} messages/s; recorded span {self.recorded_span_s:.2f} s)"
        )
        return text + (" - interrupted" if self.interrupted else "")


class Replayer:
    """``speed`` scales recorded time (2.0 plays twice as fast); ``speed=None`` means flat out.

    A record without a recorded time (a control action, a tick without ``ts``) follows the
    previous record immediately.  ``max_gap_s`` caps any single recorded pause, e.g. overnight.
    """

    def __init__(
        self,
        publisher: MqttPublisher,
        speed: float | None = 1.0,
        fmt: Literal["json", "msgpack"] = "json",
        max_gap_s: float | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive")
        self.publisher = publisher
        self.speed = speed
        self.fmt = fmt
        self.max_gap_ns = None if max_gap_s is None else int(max_gap_s * 1e9)
        self.stop = stop or StopSignal()
        self.report = ReplayReport()

    def run(self, records: Iterable[RecordedMessage]) -> ReplayReport:
        started = time.perf_counter()
        first_ts: int | None = None
        clock_ts: int | None = None  # recorded time reached so far (never rewinds)
        skipped_ns = 0  # recorded time cut out by max_gap
        pending: list[bytes] = []
        for record in records:
            if self.stop.is_set():
                self.report.interrupted = True
                break
            if record.ts is not None:
                if first_ts is None or clock_ts is None:
                    first_ts = clock_ts = record.ts
                elif record.ts > clock_ts:
                    gap = record.ts - clock_ts
                    if self.max_gap_ns is not None and gap > self.max_gap_ns:
                        skipped_ns += gap - self.max_gap_ns
                    clock_ts = record.ts
                if self.speed is not None:
                    due = started + (clock_ts - first_ts - skipped_ns) / 1e9 / self.speed
                    if due > time.perf_counter():
                        self._flush(pending)
                        self._sleep_until(due)
            pending.append(publish_packet(record.topic.encode(), record.encoded(self.fmt)))
            self.report.by_kind[record.kind] += 1
            if len(pending) >= _FLUSH_PACKETS:
                self._flush(pending)
        self._flush(pending)
        self.report.elapsed_s = time.perf_counter() - started
        if first_ts is not None and clock_ts is not None:
            self.report.recorded_span_s = (clock_ts - first_ts) / 1e9
        return self.report

    def _flush(self, pending: list[bytes]) -> None:
        self.publisher.publish_packets(pending)
        pending.clear()

    def _sleep_until(self, due: float) -> None:
        while not self.stop.is_set():
            left = due - time.perf_counter()
            if left <= 0:
                return
            if left > 1.0:
                self.publisher.sleep(min(left - 0.5, 5.0))
            else:
                time.sleep(left)
