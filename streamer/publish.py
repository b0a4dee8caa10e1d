"""Redis output: one script call per publish cycle, and the loop that decides when to publish.

Per published series ``S`` (prefix ``P``), one cycle writes ``HSET P:index:S``,
``PUBLISH P:levels`` (JSON with ``"index"``) and ``XADD P:history:S MAXLEN ~``, plus one
``XADD P:actions`` per applied corporate action, one ``XADD P:closes:S`` per official close,
and, when a checkpoint is due, the engine's state (``P:state:*``).  All of it runs inside one
Lua script call: Python packs one command instead of several per series, and Redis applies
the cycle atomically, so readers never see half of it and a level is never stored without
the state that produced it.  Cycles go over a :class:`~streamer.redis_pipe.CommandPipe`, so
the next one is written while earlier ones are still on their way.

:class:`Outbox` sits between the pipeline and the publisher: it collects which series
changed, the audit and close records, the receipt times of the ticks that fed them, and the
QoS 1 packet ids waiting for a durable checkpoint.  It conflates by nature (a series changed
ten times since the last cycle is published once, at its latest level), so a slow or absent
Redis never slows ingestion down.
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
from typing import Any, Literal

import msgspec
import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streamer.backoff import Backoff, reraise_if_cancelled
from streamer.engine import AuditRecord, SeriesLevel
from streamer.engine.results import CloseRecord
from streamer.errors import StreamerError
from streamer.metrics import Metrics
from streamer.persistence.checkpoint import Blobs, Checkpoints
from streamer.redis_pipe import CommandPipe, PipeError, Reply, ReplyError, pack

log = logging.getLogger("streamer.publish")

# Audit and close records are kept across a Redis outage (unlike levels, which are simply
# republished); past this many the oldest are dropped and logged.
MAX_PENDING_AUDIT = 10_000
# Latency samples waiting for the next acknowledgement (one per tick receipt).
MAX_PENDING_RECEIPTS = 200_000
# One entry per session and series: decades of closes.
CLOSES_MAXLEN = 100_000

# With nothing to publish, Redis is pinged this often to notice a restart.
IDLE_PROBE_S = 1.0
# Publish cycles written and not yet acknowledged, at most.  Two keep Redis busy while the
# next cycle is built; more would only queue in Redis while changes could be conflating here.
PIPELINE_DEPTH = 2
# A cycle not acknowledged within this long fails the connection (Redis stopped answering).
ACK_TIMEOUT_S = 2.0
# While Redis is unreachable or refuses writes, a reminder is logged this often.
REMINDER_S = 60.0

RedisState = Literal["connected", "unreachable", "refusing_writes"]
REDIS_STATES: tuple[RedisState, ...] = ("connected", "unreachable", "refusing_writes")

_json = msgspec.json.Encoder()

# ARGV: prefix, maxlen, then MessagePack arrays: level rows, each [series id, JSON for the
# channel, name1, value1, name2, value2, ...]; action rows [action id|index, name1, value1,
# ...]; close rows [series id, name1, value1, ...]; values as strings: one argument to pack
# instead of hundreds, the numbers keep their shortest round-trip text, and Lua passes each
# row's pairs on without rebuilding them.  Then the checkpoint: revision ("" for none),
# structure ("" when unchanged), market part, meta.  An action is written once even if its
# cycle is sent again (a cycle that timed out may still have been applied):
# ``P:actions:written`` holds the ones written.  A market part is written only over the
# structure of its own revision, so a reader can never find the two mixed.
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
for _, row in ipairs(cmsgpack.unpack(ARGV[5])) do
  redis.call('XADD', prefix .. ':closes:' .. row[1], 'MAXLEN', '~', ARGV[10], '*',
             unpack(row, 2))
end
if ARGV[6] == '' then
  return 1
end
local state = prefix .. ':state:'
if ARGV[7] ~= '' then
  redis.call('SET', state .. 'structure', ARGV[7])
  redis.call('SET', state .. 'revision', ARGV[6])
end
if redis.call('GET', state .. 'revision') ~= ARGV[6] then
  return 0
end
redis.call('SET', state .. 'market', ARGV[8])
redis.call('SET', state .. 'meta', ARGV[9])
return 2
"""
_msgpack = msgspec.msgpack.Encoder()
CHECKPOINT_WRITTEN = 2


class PublishError(StreamerError):
    """A publish cycle failed (Redis unreachable, timed out or refused the write)."""


DurableAck = int  # a packet id tagged with its connection (see ingest.inbox)


@dataclass(slots=True)
class Outbox:
    """What changed since the last publish cycle, and what waits for a durable checkpoint."""

    dirty: set[str] = field(default_factory=set)
    audit: list[AuditRecord] = field(default_factory=list)
    closes: list[CloseRecord] = field(default_factory=list)
    receipts: list[int] = field(default_factory=list)
    durable_acks: list[DurableAck] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def add(
        self,
        changed: Iterable[str],
        audit: Sequence[AuditRecord] = (),
        receipts: Sequence[int] = (),
        closes: Sequence[CloseRecord] = (),
    ) -> None:
        before = len(self.dirty) + len(self.audit) + len(self.closes)
        self.dirty.update(changed)
        if audit:
            self.audit.extend(audit)
            _bound(self.audit, "audit records")
        if closes:
            self.closes.extend(closes)
            _bound(self.closes, "close records")
        if receipts and len(self.receipts) < MAX_PENDING_RECEIPTS:
            self.receipts.extend(receipts)
        if len(self.dirty) + len(self.audit) + len(self.closes) > before:
            self.event.set()

    def await_durable(self, acks: Iterable[DurableAck]) -> None:
        """Packet ids to acknowledge once a checkpoint taken after now is durable."""
        before = len(self.durable_acks)
        self.durable_acks.extend(acks)
        if len(self.durable_acks) > before:
            self.event.set()

    def take(self) -> tuple[set[str], list[AuditRecord], list[CloseRecord], list[int]]:
        taken = (self.dirty, self.audit, self.closes, self.receipts)
        self.dirty, self.audit, self.closes, self.receipts = set(), [], [], []
        self.event.clear()
        return taken

    def take_durable_acks(self) -> list[DurableAck]:
        acks, self.durable_acks = self.durable_acks, []
        return acks

    def restore(
        self,
        audit: list[AuditRecord],
        closes: list[CloseRecord],
        acks: list[DurableAck],
    ) -> None:
        """Put back what a failed cycle was carrying, ahead of newer entries."""
        self.audit[:0] = audit
        self.closes[:0] = closes
        self.durable_acks[:0] = acks


def _bound(records: list[Any], what: str) -> None:
    if len(records) > MAX_PENDING_AUDIT:
        dropped = len(records) - MAX_PENDING_AUDIT
        del records[:dropped]
        log.error(f"{what} dropped", extra={"fields": {"count": dropped}})


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


def _text(value: Any) -> str:
    """A field value as Redis text: "" for unknown, shortest round trip for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


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
        row.append(_text(value))
    return row


def close_fields(record: CloseRecord) -> dict[str, Any]:
    return {
        "session": record.session,
        "close_ts": record.close_ns,
        "level": record.level,
        "divisor": record.divisor,
        "pr_close": record.pr_close,
        "tr_close": record.tr_close,
        "ntr_close": record.ntr_close,
        "dividend_points": record.gross_points,
        "net_dividend_points": record.net_points,
    }


def close_row(record: CloseRecord) -> list[str]:
    """The series id, then its ``P:closes`` fields as Redis strings."""
    row = [record.series]
    for name, value in close_fields(record).items():
        row.append(name)
        row.append(_text(value))
    return row


class RedisPublisher:
    """Writes publish cycles (levels, audit and close records, checkpoints) for one prefix.

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
        self.sequences_loaded = False
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
        self.sequences_loaded = True

    async def send(
        self,
        levels: Sequence[SeriesLevel],
        audit: Sequence[AuditRecord] = (),
        closes: Sequence[CloseRecord] = (),
        checkpoint: Blobs | None = None,
    ) -> asyncio.Future[Reply]:
        """Write one cycle without waiting for Redis; the future resolves when Redis has
        applied it (its ``received_ns`` is the acknowledgement time, its value
        CHECKPOINT_WRITTEN when the checkpoint was stored)."""
        try:
            if not self._pipe.is_open:
                await self._open()
            publish_ns = self._clock()
            levels_blob = self._levels_blob(levels, publish_ns)
            audit_blob = _msgpack.encode([audit_row(r, publish_ns) for r in audit])
            closes_blob = _msgpack.encode([close_row(r) for r in closes])
            if checkpoint is None:
                state: tuple[bytes, ...] = (b"", b"", b"", b"")
            else:
                state = (
                    b"%d" % checkpoint.revision,
                    checkpoint.structure or b"",
                    checkpoint.market,
                    checkpoint.meta,
                )
            command = pack(
                *self._evalsha, levels_blob, audit_blob, closes_blob, *state, b"%d" % CLOSES_MAXLEN
            )
            return await self._pipe.send(command)
        except PipeError as exc:
            raise PublishError(str(exc)) from exc

    async def publish(
        self,
        levels: Sequence[SeriesLevel],
        audit: Sequence[AuditRecord] = (),
        closes: Sequence[CloseRecord] = (),
        checkpoint: Blobs | None = None,
    ) -> int:
        """Write one cycle and wait for Redis; returns the acknowledgement time (clock ns)."""
        if not levels and not audit and not closes and checkpoint is None:
            return self._clock()
        ack = await self.send(levels, audit, closes, checkpoint)
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
    closes: list[CloseRecord]
    receipts: list[int]
    checkpoint: Blobs | None
    durable_acks: list[DurableAck]


class PublishLoop:
    """Decides when to publish and what, and rides out Redis outages.

    ``interval_ms == 0``: every series that changed, once per micro-batch.  A cycle is written
    as soon as it is ready, up to PIPELINE_DEPTH unacknowledged ones (Redis applies them in
    order); beyond that, changes accumulate in the outbox and go out together (conflated).
    ``interval_ms > 0``: every series with a level on a fixed timer, as official indices
    disseminate.

    Redis is in one of three states, each change logged once (and a reminder a minute while
    it lasts): connected; unreachable (connection refused or lost: probe with backoff, then
    publish every series' latest level once, no backlog replay); refusing writes (an error
    reply, e.g. OOM or READONLY: retry with backoff, never in a hot loop).  Audit and close
    records and packet ids awaiting durability of failed cycles are kept.
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
        checkpoints: Checkpoints | None = None,
        on_durable: Callable[[list[DurableAck]], None] | None = None,
    ) -> None:
        self.publisher = publisher
        self._levels = levels
        self.outbox = outbox
        self._metrics = metrics
        self.interval_s = interval_ms / 1000.0
        self._clock = clock
        self._backoff = backoff or Backoff(base_s=0.05, cap_s=2.0)
        self._refusal_backoff = Backoff(base_s=0.1, cap_s=5.0)
        self.checkpoints = checkpoints or Checkpoints()
        self._on_durable = on_durable or (lambda acks: None)
        self.connected = False
        self.state: RedisState = "unreachable"
        self.problem = "redis not connected yet"
        self._state_since = self._reminded = time.monotonic()
        self._retry_at = 0.0  # after a refusal: no cycle before this (loop time)
        self.cycles = 0
        self._resync = True  # the first cycle publishes everything known
        self._in_flight: deque[InFlight] = deque()
        self.last_published: dict[str, float] = {}  # series -> level of its last publish
        self._set_state("unreachable", "not connected yet", quiet=True)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if not self.connected:
                await self._reconnect()
                await self.cycle(everything=True)  # the latest levels, no backlog
                continue
            if self._retry_at > loop.time():
                await asyncio.sleep(self._retry_at - loop.time())
                await self.cycle(everything=True)
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
                elif not await self._start_cycle():  # a checkpoint may be due meanwhile
                    await self._probe()
                continue
            if self.connected:
                await self._start_cycle()

    async def cycle(self, everything: bool = False, force_checkpoint: bool = False) -> bool:
        """Publish what is due now and wait until Redis has acknowledged it (and every cycle
        before it); False when Redis failed (the loop then reconnects or backs off)."""
        await self._start_cycle(everything, force_checkpoint=force_checkpoint)
        while self._in_flight and self.connected:
            await self._await_oldest()
        return self.connected and self.state == "connected"

    async def _start_cycle(self, everything: bool = False, force_checkpoint: bool = False) -> bool:
        """Build and send one cycle; False when there was nothing to send."""
        dirty, audit, closes, receipts = self.outbox.take()
        acks = self.outbox.take_durable_acks()
        everything = everything or self._resync
        # The levels and the checkpoint are read at the same moment: a checkpoint is never
        # older than a level it goes out with.
        levels = self._levels(None if everything else dirty)
        checkpoint = self.checkpoints.take(force=force_checkpoint or bool(acks) or bool(audit))
        if not levels and not audit and not closes and checkpoint is None:
            if acks:
                self.outbox.durable_acks[:0] = acks  # nothing made them durable yet
            return False
        try:
            if checkpoint is not None and not self.checkpoints.inline:
                await self.checkpoints.write(checkpoint)
                self.checkpoints.committed(checkpoint)
                self._on_durable(acks)
                acks, checkpoint = [], None
            ack = await self.publisher.send(levels, audit, closes, checkpoint)
        except asyncio.CancelledError:
            # Stopped mid-cycle (shutdown): the final cycle must still write these records.
            self.outbox.restore(audit, closes, acks)
            raise
        except PublishError as exc:
            self._failed(audit, closes, acks, exc)
            return True
        except OSError as exc:  # the directory store could not write
            self._checkpoint_failed(exc)
            self.outbox.restore(audit, closes, acks)
            self._resync = True
            return True
        self._resync = False
        self._in_flight.append(InFlight(ack, levels, audit, closes, receipts, checkpoint, acks))
        ack.add_done_callback(self._settle)
        return True

    def _settle(self, _: object = None) -> None:
        """Account for every acknowledged cycle, oldest first (acks arrive in order)."""
        in_flight = self._in_flight
        while in_flight and in_flight[0].ack.done():
            cycle = in_flight.popleft()
            error = cycle.ack.exception() if not cycle.ack.cancelled() else PipeError("cancelled")
            if isinstance(error, ReplyError):
                # One command refused; the connection stands and later cycles go on.
                self._refused(cycle, error)
                continue
            if error is not None:
                # The pipe fails all its cycles at once: these are every one still in flight.
                failed = [cycle, *in_flight]
                in_flight.clear()
                for other in failed:  # retrieve every failure: none is left unobserved
                    if other.ack.done() and not other.ack.cancelled():
                        other.ack.exception()
                self._failed(
                    [r for c in failed for r in c.audit],
                    [r for c in failed for r in c.closes],
                    [a for c in failed for a in c.durable_acks],
                    error,
                )
                return
            self._acknowledged(cycle, cycle.ack.result())

    def _acknowledged(self, cycle: InFlight, reply: Reply) -> None:
        self.connected = True
        self._set_state("connected", "")
        self._refusal_backoff.reset()
        self.cycles += 1
        if cycle.checkpoint is not None:
            if reply.value == CHECKPOINT_WRITTEN:
                self.checkpoints.committed(cycle.checkpoint)
                self._on_durable(cycle.durable_acks)
            else:  # its structure never made it: the next cycle carries both again
                self.outbox.await_durable(cycle.durable_acks)
        ack_ns = reply.received_ns
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

    def _refused(self, cycle: InFlight, error: ReplyError) -> None:
        """Redis refused a cycle (out of memory, a read-only replica, ...): keep what it
        carried, publish everything again once it accepts, and wait before trying."""
        self._metrics.redis_errors.inc()
        self.outbox.restore(cycle.audit, cycle.closes, cycle.durable_acks)
        self._resync = True
        reason = str(error).split("\n", 1)[0][:200]
        if reason.startswith("NOSCRIPT"):
            self.publisher.abort("script not loaded")  # reconnect: the script is reloaded
            return
        delay = self._refusal_backoff.next()
        self._retry_at = asyncio.get_running_loop().time() + delay
        self._set_state("refusing_writes", reason)
        self.outbox.event.set()

    def _failed(
        self,
        audit: list[AuditRecord],
        closes: list[CloseRecord],
        acks: list[DurableAck],
        error: BaseException,
    ) -> None:
        self._metrics.redis_errors.inc()
        self.outbox.restore(audit, closes, acks)
        # Levels are not queued: the next successful cycle republishes every series.
        self._resync = True
        self.connected = False
        self._set_state("unreachable", str(error)[:200])
        self.outbox.event.set()  # wake the loop: it reconnects

    def _checkpoint_failed(self, error: OSError) -> None:
        self._metrics.checkpoint_errors.inc()
        log.error(
            "checkpoint could not be written",
            extra={"fields": {"error": str(error), "store": "directory"}},
        )

    def _set_state(self, state: RedisState, reason: str, quiet: bool = False) -> None:
        """Log each change of state once, and a reminder while a bad state lasts."""
        now = time.monotonic()
        for name in REDIS_STATES:
            self._metrics.redis_state.labels(name).set(1.0 if name == state else 0.0)
        if state == "connected":
            self.problem = ""
        elif state == "refusing_writes":
            self.problem = f"redis refuses writes: {reason}"
        else:
            self.problem = f"redis not connected: {reason}" if reason else "redis not connected"
        if state == self.state:
            if state != "connected" and now - self._reminded >= REMINDER_S:
                self._reminded = now
                log.warning(
                    "redis still " + state.replace("_", " "),
                    extra={"fields": {"since_s": round(now - self._state_since), "reason": reason}},
                )
            return
        previous, self.state = self.state, state
        self._state_since = self._reminded = now
        if quiet:
            return
        if state == "connected":
            log.info("redis connected", extra={"fields": {"after": previous}})
        elif state == "refusing_writes":
            log.error("redis refuses writes", extra={"fields": {"reason": reason}})
        else:
            log.warning("redis unreachable", extra={"fields": {"reason": reason}})

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
            self.connected = False
            self._set_state("unreachable", str(exc)[:200])

    async def _reconnect(self) -> None:
        while True:
            try:
                await self.publisher.client.ping()
                if not self.publisher.sequences_loaded:
                    await self.publisher.load_sequences(self._all_series())
            except (RedisError, OSError, PublishError) as exc:
                reraise_if_cancelled()
                self._metrics.redis_errors.inc()
                self._set_state("unreachable", str(exc)[:200])
                await asyncio.sleep(self._backoff.next())
                continue
            self._backoff.reset()
            self.connected = True
            self._resync = True
            # Ticks that waited out the outage would report its length, not the pipeline's
            # latency; the outage itself shows in streamer_redis_errors_total.
            self.outbox.receipts.clear()
            return

    def _all_series(self) -> list[str]:
        return [level.series for level in self._levels(None)]
