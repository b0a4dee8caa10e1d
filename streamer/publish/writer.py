"""Writes publish cycles to Redis: MULTI/EXEC transactions of plain commands (levels,
history, bars, audit and close records, checkpoints), guarded by the writer lease.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.exceptions import RedisError

from streamer.endpoints import RedisEndpoint
from streamer.engine import AuditRecord, LevelColumns, SeriesLevel
from streamer.engine.funds import FundLevel, NavRecord
from streamer.errors import StreamerError
from streamer.fund_outputs import fund_record, nav_row
from streamer.keys import KeyLayout
from streamer.lease import ACQUIRE_LUA, RELEASE_LUA, RENEW_LUA
from streamer.outputs import audit_row, close_row
from streamer.persistence.checkpoint import Blobs
from streamer.publish.level_writes import ChannelInterest, LevelWrites
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
# A checkpoint (KEYS: structure, market, meta, revision, incoming structure): the structural
# part (when it changed) and the market part, which is written only over the structure of its
# own revision, so a reader never finds the two mixed.  A large structure (ARGV[5]: its number
# of slices) was pushed beforehand, slice by slice, to the list KEYS[5] and is renamed into
# place here, in O(1): one SET of 26 MB inside this script held Redis for 85-102 ms at
# 20,000 x 10,000, and growing one string slice by slice copied it (APPEND up to 75 ms).
# Readers take a string or a list (streamer.persistence.stores.READ_STATE_LUA).  If the
# slices are not all there (Redis restarted, the list expired) nothing is written and the
# writer sends the checkpoint again.
STATE_LUA = b"""#!lua
if ARGV[5] ~= '' then
  if redis.call('LLEN', KEYS[5]) ~= tonumber(ARGV[5]) then
    return 0
  end
  redis.call('RENAME', KEYS[5], KEYS[1])
  redis.call('PERSIST', KEYS[1])
  redis.call('SET', KEYS[4], ARGV[1])
elseif ARGV[2] ~= '' then
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
# A checkpoint structure larger than this is pushed in slices of this size before its cycle,
# each a short command.
STRUCTURE_SLICE = 512 * 1024
# How long an incoming structure may wait for its cycle (a writer that died leaves it behind).
INCOMING_TTL_MS = 600_000
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


class _Names:
    """The key layout's names as bytes, made once per series (the hot path formats none)."""

    def __init__(self, layout: KeyLayout) -> None:
        self.layout = layout
        self.levels = layout.levels_channel().encode()
        self.actions = [layout.actions().encode(), layout.actions_written().encode()]
        self.state = [key.encode() for key in layout.state_keys()]  # STATE_PARTS order
        # Where this writer puts a large structure before its cycle: its own key (a fenced
        # writer's slices never mix with the leader's), in the same slot as the state.
        self.incoming = self.state[0] + b":incoming:" + secrets.token_hex(6).encode()
        self.directory = layout.directory().encode()
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

    def closes(self, series: str) -> bytes:
        """The official closes stream of a series (its hash, channel, history and bars are
        LevelWrites')."""
        return self.layout.closes(series).encode()


class _Transaction:
    """One MULTI ... EXEC being built."""

    __slots__ = ("commands", "count", "state_at")

    def __init__(self) -> None:
        self.commands: list[bytes] = [b"*1\r\n$5\r\nMULTI\r\n"]
        self.count = 0  # commands queued
        self.state_at = -1  # position of the checkpoint script's reply in EXEC's array

    def __len__(self) -> int:
        return self.count

    def add(self, *args: bytes) -> None:
        self.commands.append(pack(*args))
        self.count += 1

    def add_packed(self, commands: bytes, count: int = 1) -> None:
        """``count`` commands already in RESP."""
        self.commands.append(commands)
        self.count += count

    def packed(self) -> tuple[bytes, int]:
        """The request and how many replies it gets (OK, one QUEUED per command, EXEC)."""
        return b"".join([*self.commands, b"*1\r\n$4\r\nEXEC\r\n"]), self.count + 2


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
        self._seq: dict[str, int] = {}  # of funds; index series' are in self.levels
        # Interest in the series channels is asked of Redis; a cluster's nodes each know only
        # their own subscribers, so there every channel is written.
        self._interest = ChannelInterest(keys.levels_channel().encode() + b":")
        self._interest_asked = 0.0  # monotonic s
        self.levels = LevelWrites(keys, self._interest)
        self._fund_history_due: dict[str, int] = {}  # fund -> ms when its next raw entry is due
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
            transaction.add(b"HGET", self.keys.index(s).encode(), b"seq")
        for f in funds:
            transaction.add(b"HGET", self._names.of_fund(f)[0], b"seq")
        series = [*series, *funds]
        request, replies = transaction.packed()
        try:
            reply = await asyncio.wait_for(self._pipe.call(request, replies), 10.0)
        except (PipeError, TimeoutError) as exc:
            raise PublishError(f"reading sequences: {exc}") from exc
        index_series = len(series) - len(funds)
        for k, (s, value) in enumerate(zip(series, reply.value or [], strict=False)):
            if isinstance(value, bytes) and value.isdigit():
                if k < index_series:
                    self.levels.continue_seq(s, int(value))
                else:
                    self._seq[s] = max(self._seq.get(s, 0), int(value))
        # Loaded at start-up and on taking the lease over: the hashes may be another
        # writer's.
        self.levels.write_whole()
        self.sequences_loaded = True

    async def send(
        self,
        levels: LevelColumns | Sequence[SeriesLevel],
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
        levels: LevelColumns | Sequence[SeriesLevel],
        audit: Sequence[AuditRecord],
        closes: Sequence[OfficialRecord],
        checkpoint: Blobs | None,
        directory: dict[str, bytes] | None,
        funds: Sequence[FundLevel] = (),
    ) -> Sent:
        try:
            if not self.is_open:
                await self._open()
            if self._router is None:
                await self._ask_interest()
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
            if checkpoint is not None and len(checkpoint.structure or b"") > STRUCTURE_SLICE:
                acks += await self._send_structure(checkpoint.structure or b"")
            first = len(acks)
            for transaction in transactions:
                request, replies = transaction.packed()
                if self.fence is not None:
                    await self._guard(self.fence)
                acks.append(await self._pipe.send(request, replies))
            return Sent(acks, transactions[0].state_at, first)
        except PipeError as exc:
            raise PublishError(str(exc)) from exc

    async def _send_structure(self, structure: bytes) -> list[asyncio.Future[Reply]]:
        """A large checkpoint structure, slice by slice, to this writer's incoming list, each
        slice its own request (Redis serves other clients between them, and never copies
        what came before)."""
        key = self._names.incoming
        pipe = self._pipe
        view = memoryview(structure)
        acks = [
            await pipe.send(
                pack(b"DEL", key)
                + pack(b"RPUSH", key, bytes(view[:STRUCTURE_SLICE]))
                + pack(b"PEXPIRE", key, b"%d" % INCOMING_TTL_MS),
                3,
            )
        ]
        for lo in range(STRUCTURE_SLICE, len(structure), STRUCTURE_SLICE):
            piece = bytes(view[lo : lo + STRUCTURE_SLICE])
            acks.append(await pipe.send(pack(b"RPUSH", key, piece)))
        return acks

    async def _ask_interest(self) -> None:
        """Every ChannelInterest.POLL_MS, ask Redis which series channels have subscribers
        (pipelined with the cycle: no round trip waited for)."""
        now = time.monotonic()
        if now - self._interest_asked < ChannelInterest.POLL_MS / 1000:
            return
        self._interest_asked = now
        interest = self._interest
        channels = await self._pipe.send(pack(b"PUBSUB", b"CHANNELS", interest.pattern))
        patterns = await self._pipe.send(pack(b"PUBSUB", b"NUMPAT"))

        def heard(_: object) -> None:
            failed = [f for f in (channels, patterns) if f.cancelled() or f.exception()]
            if failed:  # refused (an ACL without PUBSUB): every channel, as before
                interest.update((), 1)
                return
            listed, numpat = channels.result().value, patterns.result().value
            if isinstance(listed, list) and isinstance(numpat, int):
                interest.update((c for c in listed if isinstance(c, bytes)), numpat)

        patterns.add_done_callback(heard)

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
        levels: LevelColumns | Sequence[SeriesLevel],
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
        levels: LevelColumns | Sequence[SeriesLevel],
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
                stream, row = names.closes(record.series), close_row(record)
            first.add(b"EVALSHA", self._close_sha, b"1", stream,
                      b"%d" % max(record.close_ns // 1_000_000, 0), b"%d" % CLOSES_MAXLEN,
                      *row)  # fmt: skip
        if checkpoint is not None:
            structure = checkpoint.structure or b""
            sliced = len(structure) > STRUCTURE_SLICE
            first.state_at = len(first)
            first.add(
                b"EVALSHA", self._state_sha, b"5", *names.state, names.incoming,
                b"%d" % checkpoint.revision, b"" if sliced else structure, checkpoint.market,
                checkpoint.meta, b"%d" % -(-len(structure) // STRUCTURE_SLICE) if sliced else b"",
            )  # fmt: skip
        now_ms = publish_ns // 1_000_000
        policy = self.history
        history_cutoff = b"%d" % max(0, now_ms - policy.retention_ms)
        seqs, due = self._seq, self._fund_history_due
        current = first
        # One P:levels message per transaction: the JSON objects of its series (and funds).
        said: list[bytes] = []

        def next_transaction() -> _Transaction:
            if said:
                current.add(b"PUBLISH", names.levels, b"[" + b",".join(said) + b"]")
                said.clear()
            transactions.append(_Transaction())
            return transactions[-1]

        chunks = self.levels.chunks(_columns(levels), publish_ns, policy)
        for k, (commands, count, messages) in enumerate(chunks):
            if k:
                current = next_transaction()
            current.add_packed(commands, count)
            said.append(messages)
        for fund in funds:
            if len(current) >= CHUNK_COMMANDS:
                current = next_transaction()
            hash_key, channel, history = names.of_fund(fund.fund)
            seq = seqs[fund.fund] = seqs.get(fund.fund, 0) + 1
            message, fields = fund_record(fund, seq, publish_ns)
            current.add(b"HSET", hash_key, *fields)
            current.add(b"PUBLISH", channel, message.message)
            if now_ms >= due.get(fund.fund, 0):
                due[fund.fund] = now_ms + policy.interval_ms
                current.add(b"XADD", history, b"MINID", b"~", history_cutoff, b"*",
                            *fields)  # fmt: skip
            said.append(message.message)
        bar_commands = self.levels.bar_commands(policy.bars_retention_ms, now_ms)
        for commands, count in bar_commands:
            if len(current) >= CHUNK_COMMANDS:
                current = next_transaction()
            current.add_packed(commands, count)
        if said:
            current.add(b"PUBLISH", names.levels, b"[" + b",".join(said) + b"]")
        return transactions

    def take_unfinished_bars(self) -> None:
        """At shutdown: write the bars of the current minute as they stand."""
        self.levels.take_bars()

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
        self.levels.connected()
        self._fund_history_due.clear()
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


def _columns(levels: LevelColumns | Sequence[SeriesLevel]) -> LevelColumns:
    return levels if isinstance(levels, LevelColumns) else LevelColumns.of_rows(levels)
