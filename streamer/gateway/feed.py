"""The gateway's side of Redis: one subscription to the all-series channel, and the reads.

:meth:`RedisFeed.run` subscribes to ``P:levels`` (one message per publish transaction, every
series in it: one subscription serves every client, whatever they follow), then loads the
directory and every series' hash into the hub; only then is the hub "live".  Subscribing
before loading means no publish falls between the two: an update that arrives during the load
is newer than the hash or equal to it, and the hub keeps the newer.  When Redis goes away
the hub says "disconnected" to every client, the feed retries with jittered backoff, and
after it is back it loads the hashes again, which fills each client's gap with the current
value of every series that moved meanwhile (levels are state: the newest value is the whole
gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from streamer.backoff import Backoff, reraise_if_cancelled
from streamer.endpoints import parse_redis_url, redact_url
from streamer.gateway.hub import Hub
from streamer.gateway.metrics import GatewayMetrics
from streamer.gateway.records import (
    FUND_ENTRY,
    bar_fields,
    level_fields,
    level_from_hash,
    parse_directory_entry,
    parse_levels_payload,
)
from streamer.keys import KeyLayout

log = logging.getLogger("streamer.gateway")

# The directory changes only with the configuration (adds, deletes): re-read this often.
DIRECTORY_REFRESH_S = 10.0
# With no message for this long, Redis is pinged (a dead connection is noticed in seconds).
IDLE_PING_S = 2.0
# While Redis stays away, a reminder is logged this often.
REMINDER_S = 60.0
# Hashes read per pipeline when loading the snapshot.
LOAD_CHUNK = 500


class RedisUnavailableError(Exception):
    """A read could not be served: Redis is unreachable or refused it."""


def redis_client(
    url: str, password: str | None, *, host: str | None = None, port: int | None = None
) -> aioredis.Redis:
    """A client that fails fast: the feed owns retries, and a REST read answers 503 at once
    rather than hanging while Redis is down (``host``/``port``: another node, same
    credentials)."""
    endpoint = parse_redis_url(url, password)
    return aioredis.Redis(
        host=host or endpoint.host,
        port=port or endpoint.port,
        db=endpoint.db if host is None else 0,
        username=endpoint.username,
        password=endpoint.password,
        ssl=endpoint.tls,
        socket_timeout=5.0,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
    )


def cluster_client(url: str, password: str | None) -> aiocluster.RedisCluster:
    """For reads of a Redis Cluster: each key from the node serving it."""
    endpoint = parse_redis_url(url, password)
    return aiocluster.RedisCluster(
        host=endpoint.host,
        port=endpoint.port,
        username=endpoint.username,
        password=endpoint.password,
        ssl=endpoint.tls,
        socket_timeout=5.0,
        socket_connect_timeout=2.0,
    )


class RedisFeed:
    def __init__(
        self,
        url: str,
        password: str | None,
        keys: KeyLayout,
        hub: Hub,
        metrics: GatewayMetrics,
        cluster: bool = False,
    ) -> None:
        self._url = url
        self._password = password
        self._keys = keys
        self._hub = hub
        self._metrics = metrics
        # Reads (the directory, hashes, streams). On a Redis Cluster the keys of several
        # shards are on several nodes; the channel is broadcast to every node, so the
        # subscription goes to any one of them.
        self._cluster = cluster_client(url, password) if cluster else None
        self._reader: Any = self._cluster or redis_client(url, password)
        self._attempt = 0

    async def close(self) -> None:
        await self._reader.aclose()

    # -- the subscription ---------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        connected_once = False
        last_logged = float("-inf")
        while True:
            client = await self._subscriber()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._keys.levels_channel())
                await self.load(self._reader)
                if connected_once:
                    self._metrics.redis_reconnects.inc()
                    log.info("gateway: Redis subscription restored")
                connected_once = True
                self._hub.set_state("live")
                self._metrics.redis_connected.set(1)
                backoff.reset()
                await self._follow(client, pubsub)
            except (aioredis.RedisError, OSError) as exc:
                reraise_if_cancelled()
                now = asyncio.get_running_loop().time()
                # Once when it goes, then a reminder a minute: never a line per retry.
                if self._hub.state == "live" or now - last_logged >= REMINDER_S:
                    last_logged = now
                    log.warning(
                        "gateway: Redis %s unavailable (%s: %s); retrying with backoff",
                        redact_url(self._url),
                        type(exc).__name__,
                        exc,
                    )
                self._hub.set_state("disconnected")
                self._metrics.redis_connected.set(0)
                await asyncio.sleep(backoff.next())
            finally:
                await _close_quietly(pubsub, client)

    async def _subscriber(self) -> aioredis.Redis:
        """A connection for the subscription: the configured node, or on a cluster the next
        of its nodes at each attempt (so a dead seed node is not tried for ever)."""
        if self._cluster is None:
            return redis_client(self._url, self._password)
        self._attempt += 1
        try:
            await self._cluster.initialize()
            nodes = self._cluster.get_nodes()
        except (aioredis.RedisError, OSError):
            reraise_if_cancelled()
            return redis_client(self._url, self._password)
        node = nodes[self._attempt % len(nodes)]
        return redis_client(self._url, self._password, host=node.host, port=int(node.port))

    async def _follow(self, client: aioredis.Redis, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + DIRECTORY_REFRESH_S
        while True:
            message = await pubsub.get_message(timeout=IDLE_PING_S)
            if message is None:
                await client.ping()  # the subscriber's socket says nothing when Redis hangs
            elif message.get("type") == "message":
                self._metrics.redis_messages.inc()
                updates, bad = parse_levels_payload(message["data"])
                if bad:
                    self._metrics.bad_records.labels("channel").inc(bad)
                self._hub.publish(updates)
            if loop.time() >= next_refresh:
                next_refresh = loop.time() + DIRECTORY_REFRESH_S
                await self.load(self._reader, only_new=True)

    async def load(self, client: Any, *, only_new: bool = False) -> None:
        """Read the directory, then the hash of each series (only those not cached yet with
        ``only_new``) into the hub."""
        raw = cast("dict[bytes, bytes]", await client.hgetall(self._keys.directory()))
        directory = {}
        for field, value in raw.items():
            entry = parse_directory_entry(field, value)
            if entry is FUND_ENTRY:
                continue
            if entry is None:
                self._metrics.bad_records.labels("directory").inc()
                continue
            directory[entry.id] = entry
        self._hub.directory = directory
        wanted = [s for s in directory if not (only_new and s in self._hub.latest)]
        for start in range(0, len(wanted), LOAD_CHUNK):
            chunk = wanted[start : start + LOAD_CHUNK]
            async with client.pipeline(transaction=False) as pipe:
                for series in chunk:
                    pipe.hgetall(self._hash_key(series))
                hashes = await pipe.execute()
            updates = []
            for series, fields in zip(chunk, hashes, strict=True):
                update = level_from_hash(series, fields)
                if update is None:
                    if fields:
                        self._metrics.bad_records.labels("hash").inc()
                    continue
                updates.append(update)
            self._hub.publish(updates)

    def _hash_key(self, series: str) -> str:
        entry = self._hub.directory.get(series)
        return entry.keys.get("index", "") if entry is not None else self._keys.index(series)

    # -- reads for the REST API ----------------------------------------------------------------

    async def history(
        self, series: str, from_ms: int, to_ms: int, limit: int
    ) -> list[dict[str, object]]:
        """Raw history entries of ``series`` published in [from_ms, to_ms]."""
        key = self._stream_key(series, "history")
        entries = await self._xrange(key, f"{from_ms}", f"{to_ms}", limit)
        out: list[dict[str, object]] = []
        for entry_id, fields in entries:
            try:
                out.append({"id": entry_id.decode(), **level_fields(fields)})
            except (ValueError, KeyError, UnicodeDecodeError):
                self._metrics.bad_records.labels("history").inc()
        return out

    async def bars(
        self, series: str, from_ms: int, to_ms: int, limit: int
    ) -> list[dict[str, object]]:
        """Minute bars of ``series`` whose minute starts in [from_ms, to_ms].  A bar is
        written when its minute is over, so its entry id is after its start: the range of
        ids read reaches two minutes past ``to_ms``."""
        key = self._stream_key(series, "bars")
        entries = await self._xrange(key, f"{from_ms}", f"{to_ms + 120_000}", limit)
        out: list[dict[str, object]] = []
        for _, fields in entries:
            try:
                bar = bar_fields(fields)
            except (ValueError, KeyError, UnicodeDecodeError):
                self._metrics.bad_records.labels("bars").inc()
                continue
            start = bar["t"]
            if isinstance(start, int) and from_ms <= start <= to_ms:
                out.append(bar)
        return out

    def _stream_key(self, series: str, kind: str) -> str:
        entry = self._hub.directory.get(series)
        if entry is not None and kind in entry.keys:
            return entry.keys[kind]
        return self._keys.history(series) if kind == "history" else self._keys.bars(series)

    async def _xrange(
        self, key: str, start: str, end: str, limit: int
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        try:
            entries = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await self._reader.xrange(key, start, end, count=limit),
            )
        except aioredis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                self._metrics.bad_records.labels("stream").inc()
                return []
            raise RedisUnavailableError(str(exc)) from None
        except (aioredis.RedisError, OSError) as exc:
            reraise_if_cancelled()
            raise RedisUnavailableError(type(exc).__name__) from None
        return entries


async def _close_quietly(pubsub: Any, client: aioredis.Redis) -> None:
    for closer in (pubsub.aclose, client.aclose):
        with contextlib.suppress(aioredis.RedisError, OSError, RuntimeError):
            await closer()


def now_ms() -> int:
    return time.time_ns() // 1_000_000
