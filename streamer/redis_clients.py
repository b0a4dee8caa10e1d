"""redis-py clients for one ``[redis]`` section, single instance or Redis Cluster alike, and
the discovery of which cluster node serves a key.

The service's publish path writes on its own pipelined connection (streamer.redis_pipe), which
must go to the one node serving the shard's hash slot: :class:`SlotRouter` asks redis-py's
cluster client (its ``CLUSTER SHARDS``/``SLOTS`` discovery, its list of known nodes) for that
node, afresh after every failover or resharding.  Everything else (restoring a checkpoint, the
CLIs) uses the redis-py client itself, which follows ``MOVED`` on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from streamer.config import RedisSettings
from streamer.endpoints import RedisEndpoint, parse_redis_url

AsyncClient = aioredis.Redis | aiocluster.RedisCluster
SyncClient = redis.Redis | redis.RedisCluster


def _options(endpoint: RedisEndpoint) -> dict[str, Any]:
    return {
        "host": endpoint.host,
        "port": endpoint.port,
        "username": endpoint.username,
        "password": endpoint.password,
        "ssl": endpoint.tls,
    }


def async_client(settings: RedisSettings, socket_timeout: float = 2.0) -> AsyncClient:
    """The service's redis-py client: fails fast (the publish loop owns retries); the
    password may come from the environment (``settings.password``)."""
    endpoint = parse_redis_url(settings.url, settings.password)
    if settings.cluster:
        return aiocluster.RedisCluster(
            **_options(endpoint),
            socket_timeout=socket_timeout,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
    return aioredis.Redis(
        **_options(endpoint),
        db=endpoint.db,
        socket_timeout=socket_timeout,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


def sync_client(
    settings: RedisSettings, *, decode_responses: bool = False, socket_timeout: float = 10.0
) -> SyncClient:
    """A blocking client for the command-line tools."""
    endpoint = parse_redis_url(settings.url, settings.password)
    options = {
        **_options(endpoint),
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 2.0,
    }
    if settings.cluster:
        return redis.RedisCluster(**options)
    return redis.Redis(**options, db=endpoint.db)


class SlotRouter:
    """Which node of a Redis Cluster serves a key: the seed endpoint's credentials and TLS,
    that node's address.  :meth:`endpoint_for` rediscovers the cluster each time it is called
    (it is called once per new connection: after a failover or ``MOVED``)."""

    def __init__(self, seed: RedisEndpoint) -> None:
        self._seed = seed
        self._cluster = aiocluster.RedisCluster(
            **_options(seed), socket_timeout=2.0, socket_connect_timeout=1.0
        )
        self._initialized = False

    async def endpoint_for(self, key: str) -> RedisEndpoint:
        manager = self._cluster.nodes_manager
        # Discovery asks the nodes known so far (the seed and every node seen since), so a
        # dead seed does not stop it.
        await manager.initialize()
        self._initialized = True
        node = self._cluster.get_node_from_key(key)
        if node is None:
            raise redis.exceptions.ClusterDownError(f"no node serves the slot of {key}")
        return dataclasses.replace(self._seed, host=node.host, port=int(node.port), db=0)

    async def aclose(self) -> None:
        if self._initialized:
            await self._cluster.aclose()
