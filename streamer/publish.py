"""Redis output: one pipeline per publish cycle, and the loop that decides when to publish.

Per published series ``S`` (prefix ``P``), one cycle writes
``HSET P:index:S``, ``PUBLISH P:levels`` (JSON with ``"index"``), ``XADD P:history:S MAXLEN ~``,
plus one ``XADD P:actions`` per applied corporate action, all in a single round trip.  The
per-series commands run inside one Lua script call: redis-py packs and parses one command
instead of three per series, which was most of the service's CPU at high publish rates (and
the cycle is applied atomically, so readers never see half of it).

:class:`Outbox` sits between the engine side and the publisher: it collects which series
changed, the audit records and the receipt times of the ticks that fed them.  It conflates by
nature (a series changed ten times since the last cycle is published once, at its latest
level), so a slow or absent Redis never slows ingestion down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streamer.engine import AuditRecord, SeriesLevel
from streamer.errors import StreamerError
from streamer.ingest import Backoff
from streamer.metrics import Metrics, observe_many

log = logging.getLogger("streamer.publish")

# Audit records are kept across a Redis outage (unlike levels, which are simply republished);
# past this many the oldest are dropped and logged.
MAX_PENDING_AUDIT = 10_000
# Latency samples waiting for the next acknowledgement (one per tick receipt).
MAX_PENDING_RECEIPTS = 200_000

# With nothing to publish, Redis is pinged this often to notice a restart.
IDLE_PROBE_S = 1.0

_json = msgspec.json.Encoder()

# ARGV: prefix, maxlen, then one MessagePack array of rows, each row
# [series id, JSON for the channel, name1, value1, name2, value2, ...] with values as strings:
# one argument for redis-py to pack instead of hundreds, the numbers keep Python's shortest
# round-trip formatting, and Lua passes each row's pairs on without rebuilding them.
PUBLISH_LEVELS_LUA = """
local prefix, maxlen = ARGV[1], ARGV[2]
local channel = prefix .. ':levels'
local rows = cmsgpack.unpack(ARGV[3])
for _, row in ipairs(rows) do
  redis.call('HSET', prefix .. ':index:' .. row[1], unpack(row, 3))
  redis.call('PUBLISH', channel, row[2])
  redis.call('XADD', prefix .. ':history:' .. row[1], 'MAXLEN', '~', maxlen, '*',
             unpack(row, 3))
end
return #rows
"""
_msgpack = msgspec.msgpack.Encoder()


class PublishError(StreamerError):
    """A publish cycle failed (Redis unreachable, timed out or refused the write)."""


@dataclass(slots=True)
class Outbox:
    """What changed since the last publish cycle."""

    dirty: set[str] = field(default_factory=set)
    audit: list[AuditRecord] = field(default_factory=list)
    receipts: list[int] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def add(
        self,
        changed: Iterable[str],
        audit: Sequence[AuditRecord] = (),
        receipts: Sequence[int] = (),
    ) -> None:
        before = len(self.dirty) + len(self.audit)
        self.dirty.update(changed)
        if audit:
            self.audit.extend(audit)
            if len(self.audit) > MAX_PENDING_AUDIT:
                dropped = len(self.audit) - MAX_PENDING_AUDIT
                del self.audit[:dropped]
                log.error("audit records dropped", extra={"fields": {"count": dropped}})
        if receipts and len(self.receipts) < MAX_PENDING_RECEIPTS:
            self.receipts.extend(receipts)
        if len(self.dirty) + len(self.audit) > before:
            self.event.set()

    def take(self) -> tuple[set[str], list[AuditRecord], list[int]]:
        taken = (self.dirty, self.audit, self.receipts)
        self.dirty, self.audit, self.receipts = set(), [], []
        self.event.clear()
        return taken

    def restore_audit(self, audit: list[AuditRecord]) -> None:
        """Put back audit records whose publish failed, ahead of newer ones."""
        self.audit[:0] = audit


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def level_fields(level: SeriesLevel, seq: int, publish_ns: int) -> dict[str, Any]:
    """The published fields of one series (hash, channel and stream share them)."""
    return {
        "level": _number(level.level),
        "divisor": _number(level.divisor),
        "ts": publish_ns,
        "source_ts": level.source_ts,
        "seq": seq,
        "prev_close": _number(level.prev_close),
        "change": _number(level.change),
        "change_pct": _number(level.change_pct),
        "stale": level.stale,
        "coverage": _number(level.coverage),
    }


LEVEL_FIELD_NAMES = (
    "level",
    "divisor",
    "ts",
    "source_ts",
    "seq",
    "prev_close",
    "change",
    "change_pct",
    "stale",
    "coverage",
)


def audit_fields(record: AuditRecord, publish_ns: int) -> dict[str, Any]:
    return {
        "id": record.action_id,
        "action": record.action,
        "index": record.index,
        "symbol": record.symbol,
        "effective": record.effective,
        "divisor_before": _number(record.divisor_before),
        "divisor_after": _number(record.divisor_after),
        "level_before": _number(record.level_before),
        "level_after": _number(record.level_after),
        "ts": publish_ns,
    }


def _text(value: str | int | float) -> str:
    # What redis-py would send for the value: repr of floats (shortest round trip), str else.
    return repr(value) if isinstance(value, float) else str(value)


def _redis_mapping(fields: dict[str, Any]) -> dict[str, str | int | float]:
    # Redis stores strings; an unknown value (NaN before a previous close exists) is "".
    return {k: ("" if v is None else v) for k, v in fields.items()}


class RedisPublisher:
    """Writes levels and audit records for one key prefix; one pipeline per call."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        history_maxlen: int,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.history_maxlen = history_maxlen
        self._clock = clock
        self._seq: dict[str, int] = {}
        self._seq_loaded = False
        self.levels_channel = f"{prefix}:levels"
        self.actions_stream = f"{prefix}:actions"
        # redis-py runs it by EVALSHA and reloads it after a Redis restart (NOSCRIPT).
        self._publish_levels = client.register_script(PUBLISH_LEVELS_LUA)

    def index_key(self, series: str) -> str:
        return f"{self.prefix}:index:{series}"

    def history_key(self, series: str) -> str:
        return f"{self.prefix}:history:{series}"

    async def load_sequences(self, series: Sequence[str]) -> None:
        """Continue each series' ``seq`` from what a previous run left in Redis."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for s in series:
                    pipe.hget(self.index_key(s), "seq")
                values = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise PublishError(f"reading sequences: {exc}") from exc
        for s, value in zip(series, values, strict=True):
            with contextlib.suppress(TypeError, ValueError):
                self._seq[s] = max(self._seq.get(s, 0), int(value))
        self._seq_loaded = True

    async def publish(
        self, levels: Sequence[SeriesLevel], audit: Sequence[AuditRecord] = ()
    ) -> int:
        """Write one cycle; returns the acknowledgement time (clock ns)."""
        if not levels and not audit:
            return self._clock()
        publish_ns = self._clock()
        try:
            if audit:
                async with self.client.pipeline(transaction=False) as pipe:
                    await self._queue_cycle(pipe, levels, audit, publish_ns)
                    await pipe.execute()
            else:
                # A pipeline would ask SCRIPT EXISTS first on every execute: one more round trip.
                await self._publish_levels(keys=[], args=self._levels_args(levels, publish_ns))
        except (RedisError, OSError) as exc:
            raise PublishError(str(exc) or type(exc).__name__) from exc
        return self._clock()

    async def _queue_cycle(
        self,
        pipe: Any,
        levels: Sequence[SeriesLevel],
        audit: Sequence[AuditRecord],
        publish_ns: int,
    ) -> None:
        if levels:
            args = self._levels_args(levels, publish_ns)
            await self._publish_levels(keys=[], args=args, client=pipe)
        for record in audit:
            pipe.xadd(
                self.actions_stream,
                _redis_mapping(audit_fields(record, publish_ns)),
                maxlen=self.history_maxlen,
                approximate=True,
            )

    def _levels_args(self, levels: Sequence[SeriesLevel], publish_ns: int) -> list[Any]:
        rows = []
        for level in levels:
            seq = self._seq.get(level.series, 0) + 1
            self._seq[level.series] = seq
            fields = level_fields(level, seq, publish_ns)
            mapping = _redis_mapping(fields)
            fields["index"] = level.series
            row: list[str] = [level.series, _json.encode(fields).decode()]
            for name in LEVEL_FIELD_NAMES:
                row.append(name)
                row.append(_text(mapping[name]))
            rows.append(row)
        return [self.prefix, self.history_maxlen, _msgpack.encode(rows)]


LevelSource = Callable[[Iterable[str] | None], list[SeriesLevel]]


class PublishLoop:
    """Decides when to publish and what, and rides out Redis outages.

    ``interval_ms == 0``: every series that changed, once per micro-batch (or per cycle, when
    Redis is slower than the engine).  ``interval_ms > 0``: every series with a level on a fixed
    timer, as official indices disseminate.  On failure: count the error, probe with backoff,
    then publish every series' latest level once (no backlog replay).
    """

    def __init__(
        self,
        publisher: RedisPublisher,
        levels: LevelSource,
        outbox: Outbox,
        metrics: Metrics,
        *,
        interval_ms: int = 0,
        clock: Callable[[], int] = time.time_ns,
        backoff: Backoff | None = None,
    ) -> None:
        self.publisher = publisher
        self._levels = levels
        self.outbox = outbox
        self._metrics = metrics
        self.interval_s = interval_ms / 1000.0
        self._clock = clock
        self._backoff = backoff or Backoff(base_s=0.05, cap_s=2.0)
        self.connected = False
        self.cycles = 0
        self._resync = True  # the first cycle publishes everything known

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if not self.connected:
                await self._reconnect()
                await self.cycle(everything=True)  # the latest levels, no backlog
                continue
            if self.interval_s > 0:
                next_at += self.interval_s
                delay = next_at - loop.time()
                if delay < 0:  # fell behind (e.g. an outage): skip missed ticks, keep the phase
                    next_at += math.ceil(-delay / self.interval_s) * self.interval_s
                    delay = next_at - loop.time()
                await asyncio.sleep(delay)
                await self.cycle(everything=True)
            else:
                try:
                    async with asyncio.timeout(IDLE_PROBE_S):
                        await self.outbox.event.wait()
                except TimeoutError:
                    await self._probe()
                    continue
                await self.cycle()

    async def _probe(self) -> None:
        # Without changes nothing is written, so a Redis restart (which loses every key) would
        # go unnoticed until the next tick; an idle ping notices it and triggers a resync.
        try:
            await self.publisher.client.ping()
        except (RedisError, OSError) as exc:
            self._metrics.redis_errors.inc()
            log.warning("redis probe failed", extra={"fields": {"error": str(exc)}})
            self.connected = False

    async def _reconnect(self) -> None:
        while True:
            try:
                await self.publisher.client.ping()
                if not self.publisher._seq_loaded:
                    await self.publisher.load_sequences(self._all_series())
            except (RedisError, OSError, PublishError) as exc:
                self._metrics.redis_errors.inc()
                delay = self._backoff.next()
                log.warning(
                    "redis unavailable",
                    extra={"fields": {"error": str(exc), "retry_in_s": round(delay, 3)}},
                )
                await asyncio.sleep(delay)
                continue
            self._backoff.reset()
            self.connected = True
            self._resync = True
            # Ticks that waited out the outage would report its length, not the pipeline's
            # latency; the outage itself shows in streamer_redis_errors_total.
            self.outbox.receipts.clear()
            log.info("redis connected")
            return

    def _all_series(self) -> list[str]:
        return [level.series for level in self._levels(None)]

    async def cycle(self, everything: bool = False) -> bool:
        """Publish what is due now; False when Redis failed (the loop then reconnects)."""
        dirty, audit, receipts = self.outbox.take()
        everything = everything or self._resync
        levels = self._levels(None if everything else dirty)
        if not levels and not audit:
            return True
        try:
            ack_ns = await self.publisher.publish(levels, audit)
        except asyncio.CancelledError:
            # Stopped mid-cycle (shutdown): the final cycle must still write these records.
            self.outbox.restore_audit(audit)
            raise
        except PublishError as exc:
            self._metrics.redis_errors.inc()
            self.outbox.restore_audit(audit)
            # Levels are not queued: the next successful cycle republishes every series.
            self._resync = True
            if self.connected:
                log.warning("redis publish failed", extra={"fields": {"error": str(exc)}})
            self.connected = False
            return False
        self._resync = False
        self.connected = True
        self.cycles += 1
        if len(receipts) <= 16:
            observe_many(self._metrics.tick_to_publish, [(ack_ns - r) / 1e9 for r in receipts])
        else:
            latency_s = (ack_ns - np.asarray(receipts, dtype=np.int64)) / 1e9
            observe_many(self._metrics.tick_to_publish, latency_s)
        for level in levels:
            if math.isfinite(level.level):
                self._metrics.index_level.labels(level.series).set(level.level)
            self._metrics.stale_constituents.labels(level.series).set(level.stale)
        return True
