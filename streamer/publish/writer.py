"""Writes publish cycles to Redis: MULTI/EXEC transactions of plain commands (levels,
history, bars, audit and close records, checkpoints), guarded by the writer lease.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import msgspec
from redis.exceptions import RedisError

from streamer.endpoints import RedisEndpoint
from streamer.engine import AuditRecord, SeriesLevel
from streamer.engine.funds import FundLevel, NavRecord
from streamer.errors import StreamerError
from streamer.fund_outputs import fund_record, nav_row
from streamer.keys import KeyLayout
from streamer.lease import ACQUIRE_LUA, RELEASE_LUA, RENEW_LUA
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
from streamer.persistence.checkpoint import Blobs
from streamer.publish.outbox import OfficialRecord
from streamer.publish.policy import HistoryPolicy
from streamer.redis_clients import SlotRouter
from streamer.redis_pipe import CommandPipe, PipeError, Reply, pack

# One entry per session and series: decades of closes.
CLOSES_MAXLEN = 100_000
# Commands in one transaction at most: ~700 series, ~2 ms of Redis.
CHUNK_COMMANDS = 2_000
# Directory entries per HSET.
DIRECTORY_CHUNK = 500

# A cycle not acknowledged within this long fails the connection (Redis stopped answering).
ACK_TIMEOUT_S = 2.0

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
