"""Redis output: one script call per publish cycle, and the loop that decides when to publish.

Per published series ``S`` (prefix ``P``), one cycle writes ``HSET P:index:S``,
``PUBLISH P:levels`` (JSON with ``"index"``) and ``XADD P:history:S MAXLEN ~``, plus one
``XADD P:actions`` per applied corporate action.  All of it runs inside one Lua script call:
Python packs and parses one command instead of three per series (that was most of the
service's CPU at high publish rates), and Redis applies the cycle atomically, so readers never
see half of it.  Cycles go over a :class:`~streamer.redis_pipe.CommandPipe`, so the next one
is written while earlier ones are still on their way.

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
from collections import deque
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
from streamer.metrics import Metrics
from streamer.redis_pipe import CommandPipe, PipeError, Reply, pack

log = logging.getLogger("streamer.publish")

# Audit records are kept across a Redis outage (unlike levels, which are simply republished);
# past this many the oldest are dropped and logged.
MAX_PENDING_AUDIT = 10_000
# Latency samples waiting for the next acknowledgement (one per tick receipt).
MAX_PENDING_RECEIPTS = 200_000

# With nothing to publish, Redis is pinged this often to notice a restart.
IDLE_PROBE_S = 1.0
# Publish cycles written and not yet acknowledged, at most.  Two keep Redis busy while the
# next cycle is built; more would only queue in Redis while changes could be conflating here.
PIPELINE_DEPTH = 2
# A cycle not acknowledged within this long fails the connection (Redis stopped answering).
ACK_TIMEOUT_S = 2.0

_json = msgspec.json.Encoder()

# ARGV: prefix, maxlen, then two MessagePack arrays: level rows, each
# [series id, JSON for the channel, name1, value1, name2, value2, ...], and action rows
# [action id|index, name1, value1, ...], values as strings: one argument to pack instead of
# hundreds, the numbers keep their shortest round-trip text, and Lua passes each row's pairs on
# without rebuilding them.  One script call is one cycle: applied atomically, and in order
# with the others.  An action is written once even if its cycle is sent again (a cycle that
# timed out may still have been applied): ``P:actions:written`` holds the ones written.
PUBLISH_CYCLE_LUA = b"""
local prefix, maxlen = ARGV[1], ARGV[2]
local channel = prefix .. ':levels'
for _, row in ipairs(cmsgpack.unpack(ARGV[3])) do
  redis.call('HSET', prefix .. ':index:' .. row[1], unpack(row, 3))
  redis.call('PUBLISH', channel, row[2])
  redis.call('XADD', prefix .. ':history:' .. row[1], 'MAXLEN', '~', maxlen, '*',
             unpack(row, 3))
end
local actions = prefix .. ':actions'
for _, row in ipairs(cmsgpack.unpack(ARGV[4])) do
  if redis.call('SADD', actions .. ':written', row[1]) == 1 then
    redis.call('XADD', actions, 'MAXLEN', '~', maxlen, '*', unpack(row, 2))
  end
end
return 1
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


LEVEL_FIELD_NAMES = (
    "level",
    "divisor",
    "ts",  # publish time, UTC ns
    "source_ts",  # newest tick used, UTC ns
    "seq",  # per-series publish counter
    "prev_close",
    "change",
    "change_pct",
    "stale",
    "coverage",
)
# The P:levels message: the same fields plus the series id, which needs no JSON escaping
# ([A-Za-z0-9._-], checked when the config is loaded).
_MESSAGE_PARTS: list[str] = []  # ['{"level":', value, ',"divisor":', value, ..., '"}']
for _k, _name in enumerate(LEVEL_FIELD_NAMES):
    _MESSAGE_PARTS += ("{" if _k == 0 else ",") + f'"{_name}":', ""
_MESSAGE_PARTS += ',"index":"', "", '"}'


def level_texts(level: SeriesLevel, seq: int, publish_ns: int) -> tuple[str, list[str]]:
    """The ``P:levels`` JSON message of one series and its hash/stream values as Redis
    strings (in LEVEL_FIELD_NAMES order).

    Numbers are msgspec's shortest round-trip text, all ten in one C call (``repr`` per float
    was most of a publish cycle); an unknown (NaN) value is ``null`` in JSON and "" in Redis.
    """
    text = _json.encode(
        (
            level.level,
            level.divisor,
            publish_ns,
            level.source_ts,
            seq,
            level.prev_close,
            level.change,
            level.change_pct,
            level.stale,
            level.coverage,
        )
    ).decode()[1:-1]
    values = text.split(",")
    parts = _MESSAGE_PARTS.copy()
    parts[1:-3:2] = values
    parts[-2] = level.series
    message = "".join(parts)
    if "null" in text:
        values = text.replace("null", "").split(",")
    return message, values


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


def audit_row(record: AuditRecord, publish_ns: int) -> list[str]:
    """The action's key, then its ``P:actions`` fields as Redis strings: name, value, ...
    ("" for an unknown value)."""
    row = [f"{record.action_id}|{record.index}"]  # written once per action and index
    for name, value in audit_fields(record, publish_ns).items():
        row.append(name)
        row.append("" if value is None else repr(value) if isinstance(value, float) else str(value))
    return row


class RedisPublisher:
    """Writes publish cycles (levels and audit records) for one key prefix.

    Each cycle is one script call on a :class:`CommandPipe`, so a cycle can be written while
    earlier ones are still on their way; Redis applies them in order.
    """

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
        self._pipe = CommandPipe(client, clock)
        self._evalsha: tuple[bytes, ...] = ()  # EVALSHA sha 0 prefix maxlen (once loaded)

    def index_key(self, series: str) -> str:
        return f"{self.prefix}:index:{series}"

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

    async def send(
        self, levels: Sequence[SeriesLevel], audit: Sequence[AuditRecord] = ()
    ) -> asyncio.Future[Reply]:
        """Write one cycle without waiting for Redis; the future resolves when Redis has
        applied it (its ``received_ns`` is the acknowledgement time)."""
        try:
            if not self._pipe.is_open:
                await self._open()
            publish_ns = self._clock()
            levels_blob = self._levels_blob(levels, publish_ns)
            audit_blob = _msgpack.encode([audit_row(r, publish_ns) for r in audit])
            return await self._pipe.send(pack(*self._evalsha, levels_blob, audit_blob))
        except PipeError as exc:
            raise PublishError(str(exc)) from exc

    async def publish(
        self, levels: Sequence[SeriesLevel], audit: Sequence[AuditRecord] = ()
    ) -> int:
        """Write one cycle and wait for Redis; returns the acknowledgement time (clock ns)."""
        if not levels and not audit:
            return self._clock()
        ack = await self.send(levels, audit)
        try:
            return (await ack).received_ns
        except PipeError as exc:
            raise PublishError(str(exc)) from exc

    async def _open(self) -> None:
        # The script is loaded on every new connection: a restarted Redis has forgotten it.
        await self._pipe.open()
        reply = await self._pipe.call(pack(b"SCRIPT", b"LOAD", PUBLISH_CYCLE_LUA))
        sha = reply.value if isinstance(reply.value, bytes) else reply.value.encode()
        self._evalsha = (b"EVALSHA", sha, b"0", self.prefix.encode(), b"%d" % self.history_maxlen)

    def abort(self, reason: str) -> None:
        """Fail the cycles in flight (Redis stopped answering); the next send reconnects."""
        self._pipe.abort(reason)

    async def close(self) -> None:
        await self._pipe.close()

    def _levels_blob(self, levels: Sequence[SeriesLevel], publish_ns: int) -> bytes:
        rows = []
        seqs = self._seq
        for level in levels:
            seq = seqs[level.series] = seqs.get(level.series, 0) + 1
            row = _ROW_TEMPLATE.copy()  # [series, JSON, name, value, name, value, ...]
            row[0] = level.series
            row[1], row[3::2] = level_texts(level, seq, publish_ns)
            rows.append(row)
        return _msgpack.encode(rows)


_ROW_TEMPLATE: list[str | None] = [None, None]
for _name in LEVEL_FIELD_NAMES:
    _ROW_TEMPLATE += (_name, None)


LevelSource = Callable[[Iterable[str] | None], list[SeriesLevel]]


@dataclass(slots=True)
class InFlight:
    """A cycle written to Redis and not yet acknowledged."""

    ack: asyncio.Future[Reply]
    levels: list[SeriesLevel]
    audit: list[AuditRecord]
    receipts: list[int]


class PublishLoop:
    """Decides when to publish and what, and rides out Redis outages.

    ``interval_ms == 0``: every series that changed, once per micro-batch.  A cycle is written
    as soon as it is ready, up to PIPELINE_DEPTH unacknowledged ones (Redis applies them in
    order); beyond that, changes accumulate in the outbox and go out together (conflated).
    ``interval_ms > 0``: every series with a level on a fixed timer, as official indices
    disseminate.  On failure: count the error, probe with backoff, then publish every series'
    latest level once (no backlog replay); audit records of failed cycles are kept.
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
        self._in_flight: deque[InFlight] = deque()
        self.last_published: dict[str, float] = {}  # series -> level of its last publish

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
                continue
            if len(self._in_flight) >= PIPELINE_DEPTH:
                await self._await_oldest()
                continue
            try:
                if not self.outbox.event.is_set():  # often already set: skip the timer setup
                    async with asyncio.timeout(IDLE_PROBE_S):
                        await self.outbox.event.wait()
            except TimeoutError:
                if self._in_flight:
                    await self._await_oldest()  # still unanswered after a second: check it
                else:
                    await self._probe()
                continue
            if self.connected:
                await self._start_cycle()

    async def cycle(self, everything: bool = False) -> bool:
        """Publish what is due now and wait until Redis has acknowledged it (and every cycle
        before it); False when Redis failed (the loop then reconnects)."""
        await self._start_cycle(everything)
        while self._in_flight and self.connected:
            await self._await_oldest()
        return self.connected

    async def _start_cycle(self, everything: bool = False) -> None:
        dirty, audit, receipts = self.outbox.take()
        everything = everything or self._resync
        levels = self._levels(None if everything else dirty)
        if not levels and not audit:
            return
        try:
            ack = await self.publisher.send(levels, audit)
        except asyncio.CancelledError:
            # Stopped mid-cycle (shutdown): the final cycle must still write these records.
            self.outbox.restore_audit(audit)
            raise
        except PublishError as exc:
            self._failed(audit, exc)
            return
        self._resync = False
        self._in_flight.append(InFlight(ack, levels, audit, receipts))
        ack.add_done_callback(self._settle)

    def _settle(self, _: object = None) -> None:
        """Account for every acknowledged cycle, oldest first (acks arrive in order)."""
        in_flight = self._in_flight
        while in_flight and in_flight[0].ack.done():
            cycle = in_flight.popleft()
            error = cycle.ack.exception() if not cycle.ack.cancelled() else PipeError("cancelled")
            if error is not None:
                # The pipe fails all its cycles at once: these are every one still in flight.
                failed = [cycle, *in_flight]
                in_flight.clear()
                for other in failed:  # retrieve every failure: none is left unobserved
                    if other.ack.done() and not other.ack.cancelled():
                        other.ack.exception()
                self._failed([record for c in failed for record in c.audit], error)
                return
            self._acknowledged(cycle, cycle.ack.result().received_ns)

    def _acknowledged(self, cycle: InFlight, ack_ns: int) -> None:
        self.connected = True
        self.cycles += 1
        receipts = cycle.receipts
        if len(receipts) > 64:
            # The ticks of one batched message share its receipt time: one sample per message.
            stamps, counts = np.unique(
                np.fromiter(receipts, np.int64, len(receipts)), return_counts=True
            )
            self._metrics.tick_to_publish_samples.add_counted((ack_ns - stamps) / 1e9, counts)
        elif receipts:
            self._metrics.tick_to_publish_samples.add([(ack_ns - r) / 1e9 for r in receipts])
        # The level gauges are set from here on the service's gauge timer, not per cycle.
        for level in cycle.levels:
            self.last_published[level.series] = level.level

    def _failed(self, audit: list[AuditRecord], error: BaseException) -> None:
        self._metrics.redis_errors.inc()
        self.outbox.restore_audit(audit)
        # Levels are not queued: the next successful cycle republishes every series.
        self._resync = True
        if self.connected:
            log.warning("redis publish failed", extra={"fields": {"error": str(error)}})
        self.connected = False
        self.outbox.event.set()  # wake the loop: it reconnects

    async def _await_oldest(self) -> None:
        """Wait for the oldest cycle's acknowledgement; give up on Redis past the timeout."""
        oldest = self._in_flight[0].ack
        done, _ = await asyncio.wait([oldest], timeout=ACK_TIMEOUT_S)
        if not done:
            self.publisher.abort(f"no reply within {ACK_TIMEOUT_S} s")
        await asyncio.sleep(0)  # the acknowledgement callbacks run before we go on
        self._settle()

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
