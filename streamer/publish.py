"""Redis output: publish cycles as MULTI/EXEC transactions, and the loop that decides when.

Per published series ``S`` (prefix ``P``) a cycle writes ``HSET P:index:S`` and
``PUBLISH P:levels:S`` (its JSON message), and ``XADD P:history:S`` when the series' history
is due; per transaction one ``PUBLISH P:levels`` carries every series of it as a JSON array;
minute bars go to ``P:bars:1m:S`` when their minute is over; and the cycle's audit records
(``P:actions``, written once per action and index), official closes (``P:closes:S``) and,
when one is due, the engine's checkpoint (``P:state:*``) go in its first transaction.  The
schema of every record is ``streamer.outputs``.

Why plain commands in MULTI rather than one Lua script: Redis spent 7.1 us per series on the
script (the Lua layer and its MessagePack unpacking more than the commands), against 2.8 us
for the same writes as plain commands (10,000 series, measured with a subscriber attached);
the all-series channel batched per transaction costs Redis one PUBLISH instead of one per
series.  A transaction holds at most CHUNK_COMMANDS commands (about 2 ms of Redis), so a
cycle of 10,000 series never blocks Redis for long; each is atomic, and the first one, with
the checkpoint, is applied before any level of the cycle.

:class:`Outbox` sits between the pipeline and the publisher: it collects which series changed,
the audit and close records, the receipt times of the ticks that fed them, and the QoS 1
packet ids waiting for a durable checkpoint.  It conflates by nature (a series changed ten
times since the last cycle is published once, at its latest level), so a slow or absent
Redis never slows ingestion down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal

import hiredis
import msgspec
import numpy as np
from redis.exceptions import RedisError

from streamer.backoff import Backoff, reraise_if_cancelled
from streamer.config import PublishSettings
from streamer.endpoints import RedisEndpoint
from streamer.engine import AuditRecord, SeriesLevel
from streamer.engine.funds import FundLevel, NavRecord
from streamer.engine.results import CloseRecord
from streamer.errors import StreamerError
from streamer.fund_outputs import InavSchedule, fund_record, nav_row
from streamer.keys import KeyLayout
from streamer.lease import ACQUIRE_LUA, RELEASE_LUA, RENEW_LUA, ROLES, LeaseState, Role
from streamer.metrics import Metrics
from streamer.outputs import LEVEL_FIELDS as _LEVEL_FIELDS
from streamer.outputs import (
    Bar,
    LevelRecord,
    audit_row,
    bar_row,
    batch_message,
    close_row,
    level_fields,
    level_record,
)
from streamer.persistence.checkpoint import Blobs, Checkpoints
from streamer.redis_clients import SlotRouter
from streamer.redis_pipe import CommandPipe, PipeError, Reply, ReplyError, pack

log = logging.getLogger("streamer.publish")

# What a cycle writes once by close time: an index series' official close (P:closes:S) or a
# fund's official NAV (P:navs:F).
OfficialRecord = CloseRecord | NavRecord
FundLevelSource = Callable[[Iterable[str] | None], list[FundLevel]]

# Audit and close records are kept across a Redis outage (unlike levels, which are simply
# republished); past this many the oldest are dropped and logged.
MAX_PENDING_AUDIT = 10_000
# Latency samples waiting for the next acknowledgement (one per tick receipt).
MAX_PENDING_RECEIPTS = 200_000
# One entry per session and series: decades of closes.
CLOSES_MAXLEN = 100_000
# Commands in one transaction at most: ~700 series, ~2 ms of Redis.
CHUNK_COMMANDS = 2_000
# Directory entries per HSET.
DIRECTORY_CHUNK = 500
# Estimated Redis memory of one stream entry (a stream stores the field names once per node),
# for the history memory budget.
HISTORY_ENTRY_BYTES = 160
BAR_ENTRY_BYTES = 90

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

# Both scripts declare every key they touch and start with #!lua, so that on a Redis Cluster
# they run on the node of their keys' slot and Redis refuses any other name.
#
# The audit records of a cycle: each written once even if its cycle is sent again (a cycle
# that timed out may still have been applied): KEYS[2] holds those written.
ACTIONS_LUA = b"""#!lua
for _, row in ipairs(cmsgpack.unpack(ARGV[2])) do
  if redis.call('SADD', KEYS[2], row[1]) == 1 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(row, 2))
  end
end
return 1
"""
# A checkpoint (KEYS: structure, market, meta, revision): the structural part (when it
# changed) and the market part, which is written only over the structure of its own
# revision, so a reader never finds the two mixed.
STATE_LUA = b"""#!lua
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[4], ARGV[1])
end
if redis.call('GET', KEYS[4]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[4])
return 2
"""
CHECKPOINT_WRITTEN = 2
# An official close (KEYS: its series' closes stream; ARGV: the scheduled close in ms, the
# stream's cap, then the fields): its entry id is the close time, so a close written twice (a
# retried cycle, a standby that takes over) is written once, and entries stay in close order.
CLOSE_LUA = b"""#!lua
local id = ARGV[1] .. '-1'
if redis.call('XREVRANGE', KEYS[1], '+', id, 'COUNT', 1)[1] then
  return 0
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, unpack(ARGV, 3))
return 1
"""
LEASE_SCRIPTS = {b"acquire": ACQUIRE_LUA, b"renew": RENEW_LUA, b"release": RELEASE_LUA}
_msgpack = msgspec.msgpack.Encoder()


class PublishError(StreamerError):
    """A publish cycle failed (Redis unreachable, timed out or refused the write)."""


class FencedError(PublishError):
    """The writer lease is no longer ours: another replica publishes now."""


DurableAck = int  # a packet id tagged with its connection (see ingest.inbox)


@dataclass(slots=True)
class Outbox:
    """What changed since the last publish cycle, and what waits for a durable checkpoint."""

    dirty: set[str] = field(default_factory=set)
    audit: list[AuditRecord] = field(default_factory=list)
    closes: list[OfficialRecord] = field(default_factory=list)
    receipts: list[int] = field(default_factory=list)
    durable_acks: list[DurableAck] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    funds: set[str] = field(default_factory=set)  # funds whose figures changed

    def add(
        self,
        changed: Iterable[str],
        audit: Sequence[AuditRecord] = (),
        receipts: Sequence[int] = (),
        closes: Sequence[OfficialRecord] = (),
        funds: Iterable[str] = (),
    ) -> None:
        before = len(self.dirty) + len(self.audit) + len(self.closes) + len(self.funds)
        self.dirty.update(changed)
        self.funds.update(funds)
        if audit:
            self.audit.extend(audit)
            _bound(self.audit, "audit records")
        if closes:
            self.closes.extend(closes)
            _bound(self.closes, "close records")
        if receipts and len(self.receipts) < MAX_PENDING_RECEIPTS:
            self.receipts.extend(receipts)
        if len(self.dirty) + len(self.audit) + len(self.closes) + len(self.funds) > before:
            self.event.set()

    def await_durable(self, acks: Iterable[DurableAck]) -> None:
        """Packet ids to acknowledge once a checkpoint taken after now is durable."""
        before = len(self.durable_acks)
        self.durable_acks.extend(acks)
        if len(self.durable_acks) > before:
            self.event.set()

    def take(self) -> tuple[set[str], list[AuditRecord], list[OfficialRecord], list[int]]:
        taken = (self.dirty, self.audit, self.closes, self.receipts)
        self.dirty, self.audit, self.closes, self.receipts = set(), [], [], []
        self.event.clear()
        return taken

    def take_funds(self) -> set[str]:
        funds, self.funds = self.funds, set()
        return funds

    def take_durable_acks(self) -> list[DurableAck]:
        acks, self.durable_acks = self.durable_acks, []
        return acks

    def drop_levels(self) -> None:
        """A standby's cycle: the changed series and their latency samples go (the leader
        publishes them); audit and close records stay, for the day it leads (written once
        by id whoever writes them first), the oldest past a bound."""
        self.dirty, self.receipts, self.funds = set(), [], set()
        for records in (self.audit, self.closes):
            if len(records) > MAX_PENDING_AUDIT:
                del records[: len(records) - MAX_PENDING_AUDIT]
        self.event.clear()

    def restore(
        self,
        audit: list[AuditRecord],
        closes: list[OfficialRecord],
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


class RateCap:
    """At most one publish per series per ``interval_ns``; a series that changed sooner
    waits, and goes out (at its newest level) as soon as its interval has passed."""

    def __init__(self, interval_ns: int) -> None:
        self.interval_ns = interval_ns
        self._last: dict[str, int] = {}
        self._waiting: set[str] = set()

    def due(self, changed: set[str], now: int) -> set[str]:
        """The series of ``changed`` (and those waiting) that may go out now."""
        if self.interval_ns <= 0:
            return changed
        candidates = changed | self._waiting if self._waiting else changed
        last, interval = self._last, self.interval_ns
        ready = {s for s in candidates if now - last.get(s, -interval) >= interval}
        self._waiting = candidates - ready
        for s in ready:
            last[s] = now
        return ready

    def next_due_ns(self) -> int | None:
        """When the first waiting series may go out (None: none waits)."""
        if not self._waiting:
            return None
        return min(self._last[s] for s in self._waiting) + self.interval_ns

    def published_all(self, series: Iterable[str], now: int) -> None:
        """Every series went out now (a full cycle): none waits, each interval restarts."""
        if self.interval_ns <= 0:
            return
        self._waiting = set()
        last = self._last
        for s in series:
            last[s] = now


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much history is kept: sampled raw entries and minute bars, trimmed by time."""

    interval_ms: int = 1000  # per series, at most one raw entry per this many ms
    retention_ms: int = 86_400_000
    bars_retention_ms: int = 172_800_000
    memory_bytes: int = 1 << 30

    def for_series(self, count: int) -> HistoryPolicy:
        """The policy that keeps ``count`` series within the memory budget: half of it for
        raw entries (the sampling interval grows), half for bars (their retention
        shrinks)."""
        if count <= 0:
            return self
        half = self.memory_bytes / 2
        # count * (retention / interval) * entry_bytes <= half
        needed = count * self.retention_ms * HISTORY_ENTRY_BYTES / half
        interval = max(self.interval_ms, math.ceil(needed))
        # count * (retention / 60 s) * bar_bytes <= half
        bars = min(self.bars_retention_ms, int(half / (count * BAR_ENTRY_BYTES) * 60_000))
        return HistoryPolicy(interval, self.retention_ms, bars, self.memory_bytes)


def history_policy(settings: PublishSettings) -> HistoryPolicy:
    return HistoryPolicy(
        interval_ms=settings.history_interval_ms,
        retention_ms=int(settings.history_retention_s * 1000),
        bars_retention_ms=int(settings.bars_retention_s * 1000),
        memory_bytes=int(settings.history_memory_mb * (1 << 20)),
    )


# A level's HSET and PUBLISH as RESP, each from one format (what ``pack`` makes of the same
# arguments, byte for byte): packing them argument by argument was the largest part of a
# publish cycle in the service (a third of its time at 2,000 series).
_HSET_FIELDS_FORMAT = b"".join(
    b"$%d\r\n%s\r\n" % (len(name), name) + b"$%d\r\n%s\r\n"
    for name in (field.encode() for field in _LEVEL_FIELDS)
)


def _hset_head(key: bytes) -> bytes:
    return b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (2 + 2 * len(_LEVEL_FIELDS), len(key), key)


def _publish_head(channel: bytes) -> bytes:
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(channel), channel)


def _level_hset(head: bytes, values: list[bytes]) -> bytes:
    """HSET of a level's fields (``head``: from :func:`_hset_head`)."""
    return head + _HSET_FIELDS_FORMAT % tuple(
        chain.from_iterable(zip(map(len, values), values, strict=True))
    )


def _level_publish(head: bytes, message: bytes) -> bytes:
    """PUBLISH of a level's message (``head``: from :func:`_publish_head`)."""
    return head + b"$%d\r\n%s\r\n" % (len(message), message)


class _Names:
    """The key layout's names as bytes, made once per series (the hot path formats none)."""

    def __init__(self, layout: KeyLayout) -> None:
        self.layout = layout
        self.levels = layout.levels_channel().encode()
        self.actions = [layout.actions().encode(), layout.actions_written().encode()]
        self.state = [key.encode() for key in layout.state_keys()]  # STATE_PARTS order
        self.directory = layout.directory().encode()
        self._series: dict[str, tuple[bytes, bytes, bytes, bytes, bytes]] = {}
        self._heads: dict[str, tuple[bytes, bytes]] = {}
        self._funds: dict[str, tuple[bytes, bytes, bytes]] = {}

    def of_fund(self, fund: str) -> tuple[bytes, bytes, bytes]:
        """Hash, channel and history stream of a fund."""
        names = self._funds.get(fund)
        if names is None:
            layout = self.layout
            names = self._funds[fund] = (
                layout.fund(fund).encode(),
                layout.series_channel(fund).encode(),
                layout.history(fund).encode(),
            )
        return names

    def navs(self, fund: str) -> bytes:
        return self.layout.navs(fund).encode()

    def of(self, series: str) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """Hash, channel, history stream, bars stream and closes stream of a series."""
        names = self._series.get(series)
        if names is None:
            layout = self.layout
            names = self._series[series] = (
                layout.index(series).encode(),
                layout.series_channel(series).encode(),
                layout.history(series).encode(),
                layout.bars(series).encode(),
                layout.closes(series).encode(),
            )
        return names

    def heads(self, series: str) -> tuple[bytes, bytes]:
        """The RESP heads of a series' HSET (its hash) and PUBLISH (its channel)."""
        heads = self._heads.get(series)
        if heads is None:
            index_key, channel = self.of(series)[:2]
            heads = self._heads[series] = (_hset_head(index_key), _publish_head(channel))
        return heads


class _Transaction:
    """One MULTI ... EXEC being built."""

    __slots__ = ("commands", "state_at")

    def __init__(self) -> None:
        self.commands: list[bytes] = [b"*1\r\n$5\r\nMULTI\r\n"]
        self.state_at = -1  # position of the checkpoint script's reply in EXEC's array

    def __len__(self) -> int:
        return len(self.commands) - 1

    def add(self, *args: bytes) -> None:
        self.commands.append(pack(*args))

    def add_packed(self, command: bytes) -> None:
        """A command already in RESP."""
        self.commands.append(command)

    def packed(self) -> tuple[bytes, int]:
        """The request and how many replies it gets (OK, one QUEUED per command, EXEC)."""
        return b"".join([*self.commands, b"*1\r\n$4\r\nEXEC\r\n"]), len(self.commands) + 1


@dataclass(slots=True)
class Sent:
    """A cycle written to Redis: its transactions' acknowledgements, in order."""

    acks: list[asyncio.Future[Reply]]
    state_at: int  # position of the checkpoint reply in the cycle's first EXEC array, -1: none
    first: int = 0  # the index in acks of the cycle's first transaction


class RedisPublisher:
    """Writes publish cycles (levels, history, bars, audit and close records, checkpoints)
    for one key prefix, over a :class:`CommandPipe`: a cycle is written while earlier ones
    are still on their way; Redis applies them in order."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        keys: KeyLayout,
        actions_maxlen: int,
        clock: Callable[[], int] = time.time_ns,
        history: HistoryPolicy | None = None,
        router: SlotRouter | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.keys = keys
        # On a Redis Cluster: finds the node serving the shard's slot (and the directory's)
        # for every new connection.
        self._router = router
        self._names = _Names(keys)
        self.actions_maxlen = actions_maxlen
        self.history = history or HistoryPolicy()
        self._clock = clock
        self._seq: dict[str, int] = {}
        self.sequences_loaded = False
        self._pipe = CommandPipe(endpoint, clock)
        # The directory is one key for every shard: on a cluster it is in another slot, maybe
        # on another node, so it gets a connection of its own there.
        self._directory_pipe = self._pipe if router is None else CommandPipe(endpoint, clock)
        self._actions_sha = b""
        self._state_sha = b""
        self._close_sha = b""
        # The writer lease (streamer.lease): while set, every transaction is guarded by it.
        self.fence: bytes | None = None
        self._lease_keys = [keys.lease().encode(), keys.lease_epoch().encode()]
        self._lease_sha: dict[bytes, bytes] = {}
        # A guarded transaction (WATCH, GET, then MULTI ... EXEC) must not have another
        # request between its WATCH and its EXEC: a lease renewal there would fire the WATCH.
        self._writing = asyncio.Lock()
        self._opening = asyncio.Lock()
        self._history_due: dict[str, int] = {}  # series -> ms when its next raw entry is due
        self._bars: dict[str, Bar] = {}
        self._bars_minute = 0  # the minute the bars being built are of
        self._pending_bars: list[tuple[str, Bar]] = []  # finished, to write
        self.exec_errors = 0  # command errors inside transactions (e.g. a foreign key type)

    def index_key(self, series: str) -> str:
        return self.keys.index(series)

    @property
    def is_open(self) -> bool:
        """False once a connection was lost: Redis may have restarted meanwhile."""
        return self._pipe.is_open and self._directory_pipe.is_open

    async def ping(self) -> None:
        """Round trip to Redis on the pipe (connecting first if needed)."""
        try:
            if not self.is_open:
                await self._open()
            await asyncio.wait_for(self._pipe.call(pack(b"PING")), ACK_TIMEOUT_S)
        except (PipeError, TimeoutError) as exc:
            raise PublishError(str(exc) or "no reply to PING") from exc

    async def load_sequences(self, series: Sequence[str], funds: Sequence[str] = ()) -> None:
        """Continue each series' (and fund's) ``seq`` from what a previous run left in Redis."""
        if not self.is_open:
            await self._open()
        transaction = _Transaction()
        for s in series:
            transaction.add(b"HGET", self._names.of(s)[0], b"seq")
        for f in funds:
            transaction.add(b"HGET", self._names.of_fund(f)[0], b"seq")
        series = [*series, *funds]
        request, replies = transaction.packed()
        try:
            reply = await asyncio.wait_for(self._pipe.call(request, replies), 10.0)
        except (PipeError, TimeoutError) as exc:
            raise PublishError(f"reading sequences: {exc}") from exc
        for s, value in zip(series, reply.value or [], strict=False):
            if isinstance(value, bytes) and value.isdigit():
                self._seq[s] = max(self._seq.get(s, 0), int(value))
        self.sequences_loaded = True

    async def send(
        self,
        levels: Sequence[SeriesLevel],
        audit: Sequence[AuditRecord] = (),
        closes: Sequence[OfficialRecord] = (),
        checkpoint: Blobs | None = None,
        directory: dict[str, bytes] | None = None,
        funds: Sequence[FundLevel] = (),
    ) -> Sent:
        """Write one cycle without waiting for Redis: its requests' futures resolve when
        Redis has applied them (``received_ns``: the acknowledgement time).  The directory,
        when given, goes first, in requests of its own: it is one key for every shard, so on
        a cluster it is in no shard's slot."""
        async with self._writing:
            return await self._send(levels, audit, closes, checkpoint, directory, funds)

    async def _send(
        self,
        levels: Sequence[SeriesLevel],
        audit: Sequence[AuditRecord],
        closes: Sequence[OfficialRecord],
        checkpoint: Blobs | None,
        directory: dict[str, bytes] | None,
        funds: Sequence[FundLevel] = (),
    ) -> Sent:
        try:
            if not self.is_open:
                await self._open()
            publish_ns = self._clock()
            transactions = self._build(levels, audit, closes, checkpoint, publish_ns, funds)
            acks = []
            if directory:
                names = self._names
                entries = list(directory.items())
                for lo in range(0, len(entries), DIRECTORY_CHUNK):
                    fields = [
                        x for s, e in entries[lo : lo + DIRECTORY_CHUNK] for x in (s.encode(), e)
                    ]
                    command = pack(b"HSET", names.directory, *fields)
                    acks.append(await self._directory_pipe.send(command))
            first = len(acks)
            for transaction in transactions:
                request, replies = transaction.packed()
                if self.fence is not None:
                    await self._guard(self.fence)
                acks.append(await self._pipe.send(request, replies))
            return Sent(acks, transactions[0].state_at, first)
        except PipeError as exc:
            raise PublishError(str(exc)) from exc

    async def _guard(self, fence: bytes) -> None:
        """WATCH the lease and read it: the transaction sent next is applied only if it is
        still ``fence`` now, and Redis refuses its EXEC if the lease changes or expires
        before it.  A round trip per transaction, paid only by a leased writer."""
        lease = self._lease_keys[0]
        reply = await asyncio.wait_for(
            self._pipe.call(pack(b"WATCH", lease) + pack(b"GET", lease), 2), ACK_TIMEOUT_S
        )
        if reply.value != fence:
            await self._pipe.send(pack(b"UNWATCH"))
            holder = reply.value.decode(errors="replace") if reply.value else "nobody"
            raise FencedError(f"the writer lease is no longer ours (held by {holder})")

    async def acquire_lease(self, holder: str, ttl_ms: int) -> tuple[int, bytes, int]:
        """(epoch, value, 0) when acquired; (0, the current holder's value, its remaining
        ms) when another replica holds it."""
        reply = await self._lease_call(b"acquire", holder.encode(), b"%d" % ttl_ms)
        value = reply if isinstance(reply, list) else []
        if len(value) >= 2 and isinstance(value[0], int) and value[0] > 0:
            return value[0], _bytes(value[1]), 0
        remaining = value[2] if len(value) >= 3 and isinstance(value[2], int) else 0
        return 0, _bytes(value[1]) if len(value) >= 2 else b"", remaining

    async def renew_lease(self, value: bytes, ttl_ms: int) -> bool:
        return bool(await self._lease_call(b"renew", value, b"%d" % ttl_ms) == 1)

    async def release_lease(self, value: bytes) -> None:
        await self._lease_call(b"release", value)

    async def _lease_call(self, script: bytes, *args: bytes) -> Any:
        async with self._writing:
            return await self._lease_request(script, *args)

    async def _lease_request(self, script: bytes, *args: bytes) -> Any:
        try:
            if not self.is_open:
                await self._open()
            keys = self._lease_keys if script == b"acquire" else self._lease_keys[:1]
            command = pack(b"EVALSHA", self._lease_sha[script], b"%d" % len(keys), *keys, *args)
            return (await asyncio.wait_for(self._pipe.call(command), ACK_TIMEOUT_S)).value
        except (PipeError, TimeoutError) as exc:
            raise PublishError(f"lease: {exc or 'no reply'}") from exc

    async def prune_directory(self, series: Iterable[str]) -> int:
        """Remove the directory entries of this shard's series that are no longer configured
        (entries of other shards are theirs to keep); returns how many went."""
        names = self._names
        shard = self.keys.shard or ""
        keep = set(series)
        try:
            if not self.is_open:
                await self._open()
            reply = await asyncio.wait_for(
                self._directory_pipe.call(pack(b"HGETALL", names.directory)), 10.0
            )
        except (PipeError, TimeoutError) as exc:
            raise PublishError(f"reading the directory: {exc}") from exc
        values = reply.value if isinstance(reply.value, list) else []
        stale = []
        for name, value in zip(values[::2], values[1::2], strict=True):
            if name.decode(errors="replace") in keep:
                continue
            try:
                owner = msgspec.json.decode(value).get("shard", "")
            except (msgspec.DecodeError, AttributeError):
                owner = shard  # not an entry at all: ours to clean up
            if owner == shard:
                stale.append(name)
        if stale:
            try:
                await asyncio.wait_for(
                    self._directory_pipe.call(pack(b"HDEL", names.directory, *stale)), 10.0
                )
            except (PipeError, TimeoutError) as exc:
                raise PublishError(f"pruning the directory: {exc}") from exc
        return len(stale)

    async def publish(
        self,
        levels: Sequence[SeriesLevel],
        audit: Sequence[AuditRecord] = (),
        closes: Sequence[OfficialRecord] = (),
        checkpoint: Blobs | None = None,
    ) -> int:
        """Write one cycle and wait for Redis; returns the acknowledgement time (clock ns)."""
        sent = await self.send(levels, audit, closes, checkpoint)
        try:
            replies = [await ack for ack in sent.acks]
        except PipeError as exc:
            raise PublishError(str(exc)) from exc
        return replies[-1].received_ns

    def _build(
        self,
        levels: Sequence[SeriesLevel],
        audit: Sequence[AuditRecord],
        closes: Sequence[OfficialRecord],
        checkpoint: Blobs | None,
        publish_ns: int,
        funds: Sequence[FundLevel] = (),
    ) -> list[_Transaction]:
        names = self._names
        first = _Transaction()
        transactions = [first]
        if audit:
            rows = _msgpack.encode([audit_row(r, publish_ns) for r in audit])
            first.add(b"EVALSHA", self._actions_sha, b"2", *names.actions,
                      b"%d" % self.actions_maxlen, rows)  # fmt: skip
        for record in closes:
            if isinstance(record, NavRecord):
                stream, row = names.navs(record.fund), nav_row(record)
            else:
                stream, row = names.of(record.series)[4], close_row(record)
            first.add(b"EVALSHA", self._close_sha, b"1", stream,
                      b"%d" % max(record.close_ns // 1_000_000, 0), b"%d" % CLOSES_MAXLEN,
                      *row)  # fmt: skip
        if checkpoint is not None:
            first.state_at = len(first)
            first.add(
                b"EVALSHA", self._state_sha, b"4", *names.state,
                b"%d" % checkpoint.revision, checkpoint.structure or b"", checkpoint.market,
                checkpoint.meta,
            )  # fmt: skip
        now_ms = publish_ns // 1_000_000
        self._roll_bars(now_ms)
        policy = self.history
        history_cutoff = b"%d" % max(0, now_ms - policy.retention_ms)
        seqs, due = self._seq, self._history_due
        current = first
        batch: list[LevelRecord] = []
        for level in levels:
            if len(current) >= CHUNK_COMMANDS:
                if batch:
                    current.add(b"PUBLISH", names.levels, batch_message(batch))
                    batch = []
                current = _Transaction()
                transactions.append(current)
            series = level.series
            hset_head, publish_head = names.heads(series)
            seq = seqs[series] = seqs.get(series, 0) + 1
            published = level_record(level, seq, publish_ns)
            current.add_packed(_level_hset(hset_head, published.values))
            current.add_packed(_level_publish(publish_head, published.message))
            if now_ms >= due.get(series, 0):
                due[series] = now_ms + policy.interval_ms
                current.add(b"XADD", names.of(series)[2], b"MINID", b"~", history_cutoff,
                            b"*", *level_fields(published))  # fmt: skip
            self._add_to_bar(series, published)
            batch.append(published)
        for fund in funds:
            if len(current) >= CHUNK_COMMANDS:
                if batch:
                    current.add(b"PUBLISH", names.levels, batch_message(batch))
                    batch = []
                current = _Transaction()
                transactions.append(current)
            hash_key, channel, history = names.of_fund(fund.fund)
            seq = seqs[fund.fund] = seqs.get(fund.fund, 0) + 1
            message, fields = fund_record(fund, seq, publish_ns)
            current.add(b"HSET", hash_key, *fields)
            current.add(b"PUBLISH", channel, message.message)
            if now_ms >= due.get(fund.fund, 0):
                due[fund.fund] = now_ms + policy.interval_ms
                current.add(b"XADD", history, b"MINID", b"~", history_cutoff, b"*",
                            *fields)  # fmt: skip
            batch.append(message)
        if batch:
            current.add(b"PUBLISH", names.levels, batch_message(batch))
        if self._pending_bars:
            bars_cutoff = b"%d" % max(0, now_ms - policy.bars_retention_ms)
            for series, bar in self._pending_bars:
                if len(current) >= CHUNK_COMMANDS:
                    current = _Transaction()
                    transactions.append(current)
                current.add(b"XADD", names.of(series)[3], b"MINID", b"~", bars_cutoff, b"*",
                            *bar_row(bar))  # fmt: skip
            self._pending_bars = []
        return transactions

    def _add_to_bar(self, series: str, record: LevelRecord) -> None:
        if not math.isfinite(record.level):
            return
        bar = self._bars.get(series)
        if bar is None:
            self._bars[series] = Bar(self._bars_minute, record.level, record.level,
                                     record.level, record.level)  # fmt: skip
        else:
            bar.add(record.level)

    def _roll_bars(self, now_ms: int) -> None:
        """A new minute: the bars of the last one are finished (written with this cycle)."""
        minute = now_ms - now_ms % 60_000
        if minute == self._bars_minute:
            return
        if self._bars:
            self._pending_bars.extend(self._bars.items())
            self._bars = {}
        self._bars_minute = minute

    def take_unfinished_bars(self) -> None:
        """At shutdown: write the bars of the current minute as they stand."""
        self._pending_bars.extend(self._bars.items())
        self._bars = {}

    async def _open(self) -> None:
        # One connection at a time: the publish loop and the lease task may both find the
        # pipe closed.
        async with self._opening:
            if not self._pipe.is_open:
                await self._connect()
            if not self._directory_pipe.is_open:
                if self._router is not None:
                    where = await self._route(self._names.directory.decode())
                    self._directory_pipe.retarget(where)
                await self._directory_pipe.open()

    async def _route(self, key: str) -> RedisEndpoint:
        assert self._router is not None
        try:
            return await self._router.endpoint_for(key)
        except (RedisError, OSError) as exc:
            raise PipeError(f"redis cluster: no node found for {key}: {exc}") from exc

    async def _connect(self) -> None:
        # The scripts are loaded on every new connection: a restarted Redis has forgotten them.
        # Its history may be gone too: every series' next publish writes a raw entry.
        if self._router is not None:
            self._pipe.retarget(await self._route(self.keys.lease()))
        await self._pipe.open()
        self._history_due.clear()
        try:
            actions = await self._pipe.call(pack(b"SCRIPT", b"LOAD", ACTIONS_LUA))
            state = await self._pipe.call(pack(b"SCRIPT", b"LOAD", STATE_LUA))
            close = await self._pipe.call(pack(b"SCRIPT", b"LOAD", CLOSE_LUA))
            for name, script in LEASE_SCRIPTS.items():
                loaded = await self._pipe.call(pack(b"SCRIPT", b"LOAD", script))
                self._lease_sha[name] = _bytes(loaded.value)
        except PipeError:
            self._pipe.abort("script load failed")
            raise
        self._actions_sha = _bytes(actions.value)
        self._state_sha = _bytes(state.value)
        self._close_sha = _bytes(close.value)

    def abort(self, reason: str) -> None:
        """Fail the cycles in flight (Redis stopped answering); the next send reconnects."""
        self._pipe.abort(reason)
        self._directory_pipe.abort(reason)

    async def close(self) -> None:
        await self._pipe.close()
        if self._directory_pipe is not self._pipe:
            await self._directory_pipe.close()
        if self._router is not None:
            await self._router.aclose()


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


LevelSource = Callable[[Iterable[str] | None], list[SeriesLevel]]
DirectorySource = Callable[[], dict[str, bytes]]


@dataclass(slots=True)
class InFlight:
    """A cycle written to Redis and not yet acknowledged."""

    sent: Sent
    levels: list[SeriesLevel]
    audit: list[AuditRecord]
    closes: list[OfficialRecord]
    receipts: list[int]
    checkpoint: Blobs | None
    durable_acks: list[DurableAck]

    @property
    def done(self) -> bool:
        return self.sent.acks[-1].done()


class PublishLoop:
    """Decides when to publish and what, and rides out Redis outages.

    ``interval_ms == 0``: every series that changed, once per micro-batch (and at most once
    per ``min_interval_ms`` each).  A cycle is written as soon as it is ready, up to
    PIPELINE_DEPTH unacknowledged ones (Redis applies them in order); beyond that, changes
    accumulate in the outbox and go out together (conflated).  ``interval_ms > 0``: every
    series with a level on a fixed timer, as official indices disseminate.

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
        min_interval_ms: int = 0,
        clock: Callable[[], int] = time.time_ns,
        backoff: Backoff | None = None,
        checkpoints: Checkpoints | None = None,
        on_durable: Callable[[list[DurableAck]], None] | None = None,
        directory: DirectorySource | None = None,
        lease: LeaseState | None = None,
        fund_levels: FundLevelSource | None = None,
        inav_intervals_ms: dict[str, int] | None = None,
    ) -> None:
        self.publisher = publisher
        self._fund_levels = fund_levels
        self.inav = InavSchedule(inav_intervals_ms or {})
        self._levels = levels
        self.lease = lease  # None: the only writer, no lease
        self.outbox = outbox
        self._metrics = metrics
        self.interval_s = interval_ms / 1000.0
        self.cap = RateCap(min_interval_ms * 1_000_000)
        self._clock = clock
        self._backoff = backoff or Backoff(base_s=0.05, cap_s=2.0)
        self._refusal_backoff = Backoff(base_s=0.1, cap_s=5.0)
        self.checkpoints = checkpoints or Checkpoints()
        self._on_durable = on_durable or (lambda acks: None)
        self._directory = directory
        self._directory_due = directory is not None
        self._directory_pruned = False
        self.connected = False
        self.state: RedisState = "unreachable"
        self.problem = "redis not connected yet"
        self._state_since = self._reminded = time.monotonic()
        self._retry_at = 0.0  # after a refusal: no cycle before this (loop time)
        self.cycles = 0
        self._resync = True  # the first cycle publishes everything known
        self._in_flight: deque[InFlight] = deque()
        self._set_state("unreachable", "not connected yet", quiet=True)
        self.role: Role = "leader" if lease is None else "standby"
        self._show_role()

    def directory_changed(self) -> None:
        """The directory of series changed (members added or deleted): write it again."""
        if self._directory is not None:
            self._directory_due = True
            self.outbox.event.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if not self.connected or not self.publisher.is_open:
                # A lost connection means Redis may have restarted (and lost every key):
                # reconnecting always republishes everything.
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
            wait = IDLE_PROBE_S
            due = self.cap.next_due_ns()
            if due is not None:  # a capped series goes out when its interval has passed
                wait = min(wait, max(0.0, (due - self._clock()) / 1e9))
            inav_due = self.inav.next_due_ns()
            if inav_due is not None:  # a fund's iNAV timer
                wait = min(wait, max(0.0, (inav_due - self._clock()) / 1e9))
            try:
                if not self.outbox.event.is_set():  # often already set: skip the timer setup
                    async with asyncio.timeout(wait):
                        await self.outbox.event.wait()
            except TimeoutError:
                if self._in_flight:
                    if wait >= IDLE_PROBE_S:
                        await self._await_oldest()  # still unanswered after a second
                    continue
                if not await self._start_cycle() and wait >= IDLE_PROBE_S:
                    await self._probe()  # a checkpoint may have been due meanwhile
                continue
            if self.connected:
                await self._start_cycle()

    async def cycle(self, everything: bool = False, force_checkpoint: bool = False) -> bool:
        """Publish what is due now and wait until Redis has acknowledged it (and every cycle
        before it); False when Redis failed (the loop then reconnects or backs off)."""
        await self._start_cycle(everything, force_checkpoint=force_checkpoint)
        while self._in_flight and self.connected:
            await self._await_oldest()
        return self.connected and self.state == "connected" and self.role == "leader"

    async def _start_cycle(self, everything: bool = False, force_checkpoint: bool = False) -> bool:
        """Build and send one cycle; False when there was nothing to send."""
        if self.role == "standby":
            self._stand_by()
            return False
        if not self.publisher.sequences_loaded:
            await self._load_sequences()
        if not self.publisher.is_open and not (everything or self._resync):
            # Lost since the last cycle (Redis may have restarted): reconnect, then resync.
            self._failed([], [], [], PublishError("connection lost"))
            return True
        dirty, audit, closes, receipts = self.outbox.take()
        acks = self.outbox.take_durable_acks()
        everything = everything or self._resync
        now = self._clock()
        if not everything:
            dirty = self.cap.due(dirty, now)
        # The levels and the checkpoint are read at the same moment: a checkpoint is never
        # older than a level it goes out with.
        levels = self._levels(None if everything else dirty)
        if everything:
            self.cap.published_all((level.series for level in levels), now)
        funds = self._due_funds(everything, now)
        checkpoint = self.checkpoints.take(force=force_checkpoint or bool(acks) or bool(audit))
        directory = None
        # The directory when it changed, and after a resync (Redis may have lost it); not on
        # every timer cycle of interval mode.
        if self._directory is not None and (self._directory_due or self._resync):
            directory = self._directory()
            self._directory_due = False
        if (
            not levels
            and not funds
            and not audit
            and not closes
            and checkpoint is None
            and directory is None
        ):
            if acks:
                self.outbox.durable_acks[:0] = acks  # nothing made them durable yet
            return False
        try:
            if checkpoint is not None and not self.checkpoints.inline:
                await self.checkpoints.write(checkpoint)
                self.checkpoints.committed(checkpoint)
                self._on_durable(acks)
                acks, checkpoint = [], None
            sent = await self.publisher.send(levels, audit, closes, checkpoint, directory, funds)
        except asyncio.CancelledError:
            # Stopped mid-cycle (shutdown): the final cycle must still write these records.
            self.outbox.restore(audit, closes, acks)
            raise
        except FencedError as exc:
            self._lost_lease(str(exc))
            self._stand_by(acks)
            return True
        except PublishError as exc:
            self._directory_due = directory is not None or self._directory_due
            self._failed(audit, closes, acks, exc)
            return True
        except OSError as exc:  # the directory store could not write
            self._checkpoint_failed(exc)
            self.outbox.restore(audit, closes, acks)
            self._resync = True
            return True
        self._resync = False
        cycle = InFlight(sent, levels, audit, closes, receipts, checkpoint, acks)
        self._in_flight.append(cycle)
        sent.acks[-1].add_done_callback(self._settle)
        return True

    def _due_funds(self, everything: bool, now: int) -> list[FundLevel]:
        """The funds whose iNAV goes out in this cycle (see InavSchedule)."""
        changed = self.outbox.take_funds()
        if self._fund_levels is None:
            return []
        due = self.inav.due(changed, now, everything)
        return self._fund_levels(due) if due else []

    def _settle(self, _: object = None) -> None:
        """Account for every acknowledged cycle, oldest first (acks arrive in order)."""
        in_flight = self._in_flight
        while in_flight and in_flight[0].done:
            cycle = in_flight.popleft()
            errors = [_failure(ack) for ack in cycle.sent.acks]
            error = next((e for e in errors if e is not None), None)
            if isinstance(error, ReplyError):
                # Refused (its first transaction at least); the connection stands.
                self._refused(cycle, error)
                continue
            if error is not None:
                # The pipe fails all its cycles at once: these are every one still in flight.
                failed = [cycle, *in_flight]
                in_flight.clear()
                for other in failed:  # retrieve every failure: none is left unobserved
                    for ack in other.sent.acks:
                        _failure(ack)
                self._failed(
                    [r for c in failed for r in c.audit],
                    [r for c in failed for r in c.closes],
                    [a for c in failed for a in c.durable_acks],
                    error,
                )
                return
            self._acknowledged(cycle, [ack.result() for ack in cycle.sent.acks])

    def _acknowledged(self, cycle: InFlight, replies: list[Reply]) -> None:
        if self.lease is not None and any(r.value is None for r in replies[cycle.sent.first :]):
            # An EXEC refused: the lease changed between our WATCH and it.
            self._lost_lease("a transaction was refused: the writer lease changed")
            self._stand_by(cycle.durable_acks)
            return
        self.connected = True
        self._set_state("connected", "")
        self._refusal_backoff.reset()
        self.cycles += 1
        for reply in replies:
            self._count_exec_errors(reply.value)
        if cycle.checkpoint is not None:
            results = replies[cycle.sent.first].value
            state_at = cycle.sent.state_at
            written = (
                isinstance(results, list)
                and 0 <= state_at < len(results)
                and results[state_at] == CHECKPOINT_WRITTEN
            )
            if written:
                self.checkpoints.committed(cycle.checkpoint)
                self._on_durable(cycle.durable_acks)
            else:  # its structure never made it (or a script was missing): send both again
                self.outbox.await_durable(cycle.durable_acks)
        ack_ns = replies[-1].received_ns
        receipts = cycle.receipts
        if len(receipts) > 64:
            # The ticks of one batched message share its receipt time: one sample per message.
            stamps, counts = np.unique(
                np.fromiter(receipts, np.int64, len(receipts)), return_counts=True
            )
            self._metrics.tick_to_publish_samples.add_counted((ack_ns - stamps) / 1e9, counts)
        elif receipts:
            self._metrics.tick_to_publish_samples.add([(ack_ns - r) / 1e9 for r in receipts])

    def _count_exec_errors(self, results: Any) -> None:
        """A command failing inside a transaction (a key of another type written by someone
        else, a script Redis lost) does not fail the others: count it and say so."""
        if not isinstance(results, list):
            return
        errors = [r for r in results if isinstance(r, hiredis.ReplyError)]
        if errors:
            self.publisher.exec_errors += len(errors)
            self._metrics.redis_errors.inc(len(errors))
            log.warning(
                "redis refused commands inside a publish transaction",
                extra={"fields": {"count": len(errors), "first": str(errors[0])[:200]}},
            )
            if any(str(e).startswith("NOSCRIPT") for e in errors):
                self.publisher.abort("script not loaded")  # reconnect: scripts are reloaded

    def _refused(self, cycle: InFlight, error: ReplyError) -> None:
        """Redis refused a cycle (out of memory, a read-only replica, ...): keep what it
        carried, publish everything again once it accepts, and wait before trying."""
        self._metrics.redis_errors.inc()
        self.outbox.restore(cycle.audit, cycle.closes, cycle.durable_acks)
        self._resync = True
        reason = str(error).split("\n", 1)[0][:200]
        delay = self._refusal_backoff.next()
        self._retry_at = asyncio.get_running_loop().time() + delay
        self._set_state("refusing_writes", reason)
        self.outbox.event.set()

    def _failed(
        self,
        audit: list[AuditRecord],
        closes: list[OfficialRecord],
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
        oldest = self._in_flight[0].sent.acks[-1]
        done, _ = await asyncio.wait([oldest], timeout=ACK_TIMEOUT_S)
        if not done:
            self.publisher.abort(f"no reply within {ACK_TIMEOUT_S} s")
        await asyncio.sleep(0)  # the acknowledgement callbacks run before we go on
        self._settle()

    async def _probe(self) -> None:
        # Without changes nothing is written, so a Redis restart (which loses every key) would
        # go unnoticed until the next tick; an idle ping notices it and triggers a resync.
        try:
            if not self.publisher.is_open:
                raise PublishError("connection lost")
            await self.publisher.ping()
        except PublishError as exc:
            self._metrics.redis_errors.inc()
            self.connected = False
            self._set_state("unreachable", str(exc)[:200])

    async def _reconnect(self) -> None:
        while True:
            try:
                await self.publisher.ping()
                if self.role == "leader" and not self.publisher.sequences_loaded:
                    await self.publisher.load_sequences(self._all_series(), self._all_funds())
                if (
                    self.role == "leader"
                    and self._directory is not None
                    and not self._directory_pruned
                ):
                    # Once per run: series a previous config had are no longer listed.
                    pruned = await self.publisher.prune_directory(self._directory())
                    self._directory_pruned = True
                    if pruned:
                        log.info("directory: series no longer configured removed",
                                 extra={"fields": {"count": pruned}})  # fmt: skip
            except PublishError as exc:
                reraise_if_cancelled()
                self._metrics.redis_errors.inc()
                self._set_state("unreachable", str(exc)[:200])
                await asyncio.sleep(self._backoff.next())
                continue
            self._backoff.reset()
            self.connected = True
            self._set_state("connected", "")  # Redis answered; a refusal shows on the cycle
            self._resync = True
            # Ticks that waited out the outage would report its length, not the pipeline's
            # latency; the outage itself shows in streamer_redis_errors_total.
            self.outbox.receipts.clear()
            return

    # ------------------------------------------------------------------ the writer lease

    async def run_lease(self) -> None:
        """Acquire, renew and lose the writer lease (a task beside :meth:`run`)."""
        lease = self.lease
        if lease is None:
            return
        while True:
            now = time.monotonic_ns()
            if lease.value and now >= lease.valid_until:
                self._lost_lease("not renewed in time", refused=False)
            if not lease.due(now):
                await asyncio.sleep((lease.next_attempt - now) / 1e9)
                continue
            try:
                await self._lease_step(lease)
            except PublishError as exc:
                reraise_if_cancelled()
                # Redis unreachable: the publish loop reports it; try again soon, and the
                # lease, if ours, is kept only until its local deadline.
                lease.next_attempt = time.monotonic_ns() + lease.ttl_ns // 10
                log.debug("lease request failed", extra={"fields": {"error": str(exc)[:200]}})

    async def _lease_step(self, lease: LeaseState) -> None:
        ttl_ms = lease.ttl_ns // 1_000_000
        sent_at = time.monotonic_ns()
        if lease.value:
            if await self.publisher.renew_lease(lease.value, ttl_ms):
                lease.renewed(sent_at)
            else:
                self._lost_lease("taken by another replica")
            return
        epoch, value, remaining_ms = await self.publisher.acquire_lease(lease.holder, ttl_ms)
        if not epoch:
            lease.refused(value.decode(errors="replace"), remaining_ms * 1_000_000, sent_at)
            return
        lease.acquired(value, epoch, sent_at)
        self.publisher.fence = value
        self.outbox.event.set()  # audit and close records kept while standing by go out
        # Continue where the last leader left off: its seqs, every series and the directory
        # once, a checkpoint with the structure (its revision numbers are not ours).
        self.publisher.sequences_loaded = False
        self._resync = True
        self._directory_due = self._directory is not None
        self._directory_pruned = False
        self.checkpoints.forget_durable()
        self.role = "leader"
        self._show_role()
        self._metrics.lease_acquired.inc()
        log.info("writer lease acquired: publishing", extra={"fields": {"epoch": epoch}})
        self.outbox.event.set()

    def _lost_lease(self, reason: str, refused: bool = True) -> None:
        """Stand by from now on; ``refused``: Redis refused a write or renewal (counted)."""
        lease = self.lease
        if lease is None or self.role == "standby":
            return
        lease.lost()  # publisher.fence stays: any stray write is refused by Redis
        self.role = "standby"
        self._show_role()
        if refused:
            self._metrics.lease_refusals.inc()
        log.warning("writer lease lost: standing by", extra={"fields": {"reason": reason}})

    def _stand_by(self, acks: Iterable[DurableAck] = ()) -> None:
        """A standby keeps computing and writes nothing: what would be published is dropped
        (the leader publishes it), and QoS 1 messages are acknowledged at once (the leader's
        own session holds them until its checkpoint does)."""
        self.outbox.drop_levels()
        self._on_durable([*acks, *self.outbox.take_durable_acks()])
        for cycle in self._in_flight:
            self._on_durable(cycle.durable_acks)
        self._in_flight.clear()

    def _show_role(self) -> None:
        for role in ROLES:
            self._metrics.role.labels(role).set(1.0 if role == self.role else 0.0)

    async def _load_sequences(self) -> None:
        try:
            await self.publisher.load_sequences(self._all_series(), self._all_funds())
        except PublishError as exc:
            self._failed([], [], [], exc)

    async def release_lease(self) -> None:
        """At a clean shutdown, after the final cycle: a standby takes over at once."""
        lease = self.lease
        if lease is None or not lease.value:
            return
        value = lease.value
        self._lost_lease("released at shutdown", refused=False)
        await self.publisher.release_lease(value)

    def _all_funds(self) -> list[str]:
        return [] if self._fund_levels is None else [f.fund for f in self._fund_levels(None)]

    def _all_series(self) -> list[str]:
        return [level.series for level in self._levels(None)]


def _failure(ack: asyncio.Future[Reply]) -> BaseException | None:
    """The exception an acknowledgement failed with (retrieved, so never left unobserved)."""
    if not ack.done():
        return None
    if ack.cancelled():
        return PipeError("cancelled")
    return ack.exception()
