"""The local-services fixtures: servers answer, restart on the same port, configs load; a
private Redis Cluster forms, routes keys and scripts, and recovers from a killed master."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.client import PubSub
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, RedisClusterException, ResponseError

from streamer import localservices
from streamer.config import load_settings
from streamer.localservices import (
    LocalMosquitto,
    LocalRedis,
    LocalRedisCluster,
    LocalRedisClusterNode,
    LocalServiceError,
)
from tests.conftest import ServiceConfigFactory

WAIT_S = 10.0


def test_redis_restarts_on_the_same_port(redis_server: LocalRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    port = redis_server.port
    redis_server.restart(graceful=False)
    assert redis_server.port == port
    fresh = redis.Redis.from_url(redis_server.url)
    assert fresh.ping()
    assert fresh.get("k") is None  # nothing persisted


def test_password_protected_services() -> None:
    with LocalRedis(password="s3cret") as server:
        assert redis.Redis.from_url(server.authenticated_url).ping()
        try:
            redis.Redis.from_url(server.url).set("k", "v")
        except redis.AuthenticationError:
            pass
        else:  # pragma: no cover
            raise AssertionError("unauthenticated write accepted")
    with LocalMosquitto(username="feed", password="pw") as broker:
        assert broker.is_running()
        assert broker.authenticated_url.startswith("mqtt://feed:pw@127.0.0.1:")


def test_service_config_loads(service_config: ServiceConfigFactory) -> None:
    config = service_config(publish={"interval_ms": 250})
    settings = load_settings(config.path)
    assert [d.id for d in settings.indices] == sorted(config.index_ids)
    assert settings.publish.interval_ms == 250
    assert settings.redis.prefix == config.prefix


def _session(broker: LocalMosquitto, client_id: str) -> mqtt.Client:
    """A connected persistent-session (clean_session=False) client."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
        protocol=mqtt.MQTTv311,
    )  # fmt: skip
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(WAIT_S)
    return client


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_persistent_broker_delivers_a_queued_qos1_message_after_a_crash() -> None:
    with LocalMosquitto(persistent=True) as broker:
        subscriber = _session(broker, "svc")
        subscribed = threading.Event()
        subscriber.on_subscribe = lambda *_: subscribed.set()
        subscriber.subscribe("control/#", qos=1)
        assert subscribed.wait(WAIT_S)
        _close(subscriber)  # offline: the broker queues QoS 1 messages for the session

        publisher = _session(broker, "operator")
        payload = f"action-{time.time_ns()}".encode()
        publisher.publish("control/actions", payload, qos=1).wait_for_publish(WAIT_S)
        _close(publisher)
        # The PUBACK goes out before the save, which follows in the same event-loop pass
        # (autosave_on_changes): a SIGKILL in that fraction of a millisecond would lose the
        # message, one after the save cannot.  No graceful stop, no SIGUSR1, no timer.
        deadline = time.monotonic() + 5.0
        while not (broker.database_path.exists() and payload in broker.database_path.read_bytes()):
            assert time.monotonic() < deadline, "the queued message was not saved"
            time.sleep(0.01)

        port = broker.port
        broker.kill()
        broker.start()
        assert broker.port == port

        received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        present: queue.Queue[bool] = queue.Queue()
        again = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="svc", clean_session=False,
            protocol=mqtt.MQTTv311,
        )  # fmt: skip
        again.on_connect = lambda _c, _u, flags, _r, _p: present.put(flags.session_present)
        again.on_message = lambda _c, _u, msg: received.put((msg.topic, bytes(msg.payload)))
        again.connect(broker.host, broker.port)
        again.loop_start()
        assert present.get(timeout=WAIT_S), "the session did not survive the crash"
        assert received.get(timeout=WAIT_S) == ("control/actions", payload)
        _close(again)


def test_non_persistent_broker_forgets_sessions() -> None:
    with LocalMosquitto() as broker:
        _close(_session(broker, "svc"))
        broker.restart()
        present: queue.Queue[bool] = queue.Queue()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="svc", clean_session=False,
            protocol=mqtt.MQTTv311,
        )  # fmt: skip
        client.on_connect = lambda _c, _u, flags, _r, _p: present.put(flags.session_present)
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert present.get(timeout=WAIT_S) is False
        _close(client)


def test_appendonly_redis_keeps_a_key_through_kill_and_restart() -> None:
    with LocalRedis(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.set("streamer:state:test", "v1")
        # The write reaches the AOF (the kernel) before the reply: a process crash keeps it.
        server.kill()
        server.start()
        assert redis.Redis.from_url(server.url).get("streamer:state:test") == b"v1"
        server.restart(graceful=False)
        assert redis.Redis.from_url(server.url).get("streamer:state:test") == b"v1"


# -- Redis Cluster --------------------------------------------------------------------------

# The shape of a publish cycle on a cluster: one declared key fixes the node (redis-py routes
# on it), the script derives every other name from the shard's hash tag, and `#!lua` makes
# Redis refuse a name outside that slot (without it, Redis 7.0 lets a script touch any key
# that happens to be on the same node, which would break on the first resharding).
CYCLE_LIKE_LUA = """#!lua
local tag = ARGV[1]
redis.call('HSET', tag .. ':index:' .. ARGV[2], 'level', ARGV[3])
redis.call('XADD', tag .. ':history:' .. ARGV[2], '*', 'level', ARGV[3])
redis.call('SET', tag .. ':state:revision', ARGV[3])
redis.call('PUBLISH', 'test:levels', ARGV[3])
return redis.call('HGET', tag .. ':index:' .. ARGV[2], 'level')
"""
TWO_KEYS_LUA = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return 2"


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[LocalRedisCluster]:
    """One cluster for the tests that only read and write keys (each costs about 2 s)."""
    with LocalRedisCluster() as cluster:
        yield cluster


def _keys_on_every_master(cluster: LocalRedisCluster, count: int = 60) -> dict[int, list[str]]:
    owners: dict[int, list[str]] = {}
    for number in range(count):
        key = f"spread:{number}"
        owners.setdefault(cluster.node_for_key(key).port, []).append(key)
    return owners


def _other_slot_than(tag: str) -> str:
    """A hash tag whose slot differs from ``tag``'s."""
    return next(
        f"{{{name}}}" for name in ("shard-b", "shard-c", "shard-d")
        if key_slot(f"{{{name}}}".encode()) != key_slot(tag.encode())
    )  # fmt: skip


def test_redis_cluster_starts_ok_with_three_masters(shared_cluster: LocalRedisCluster) -> None:
    assert len(shared_cluster.nodes) == 3
    assert shared_cluster.startup_s is not None and shared_cluster.startup_s < 15
    assert shared_cluster.url == f"redis://127.0.0.1:{shared_cluster.nodes[0].port}"
    assert shared_cluster.startup_nodes == [("127.0.0.1", n.port) for n in shared_cluster.nodes]
    ports = {n.port for n in shared_cluster.nodes} | {n.bus_port for n in shared_cluster.nodes}
    assert len(ports) == 6  # a client port and a bus port each, all distinct
    for node in shared_cluster.nodes:
        info = node.cluster_info()
        assert info["cluster_state"] == "ok"
        assert info["cluster_size"] == "3"
        assert node.role() == "master"
    assert len(shared_cluster.current_masters()) == 3
    assert len({n.node_id() for n in shared_cluster.nodes}) == 3
    assert len({n.workdir for n in shared_cluster.nodes}) == 3


def test_cluster_client_reads_and_writes_keys_on_every_master(
    shared_cluster: LocalRedisCluster,
) -> None:
    # ClusterNode and a few RedisCluster methods are unannotated in redis-py.
    nodes = [ClusterNode(h, p) for h, p in shared_cluster.startup_nodes]  # type: ignore[no-untyped-call]
    client = RedisCluster(startup_nodes=nodes, decode_responses=True)
    try:
        owners = _keys_on_every_master(shared_cluster)
        assert set(owners) == {n.port for n in shared_cluster.nodes}
        for port, keys in owners.items():
            for key in keys:
                client.set(key, f"{port}")
            node = next(n for n in shared_cluster.nodes if n.port == port)
            # Each key is stored on the master of its slot, and only there.
            assert node.query("GET", keys[0]) == str(port)
            assert client.get(keys[-1]) == str(port)
        seeded = RedisCluster.from_url(shared_cluster.url, decode_responses=True)
        second = shared_cluster.nodes[1].port
        assert seeded.get(owners[second][0]) == str(second)
        seeded.close()
    finally:
        client.close()


def test_a_script_on_one_hash_tag_runs_and_one_across_slots_is_refused(
    shared_cluster: LocalRedisCluster,
) -> None:
    client = RedisCluster.from_url(shared_cluster.url, decode_responses=True)
    try:
        same = ["{shard-a}:index:X", "{shard-a}:history:X"]
        assert key_slot(same[0].encode()) == key_slot(same[1].encode())
        assert client.eval(TWO_KEYS_LUA, 2, *same, "v") == 2
        assert client.mget(same) == ["v", "v"]

        other = _other_slot_than("{shard-a}")
        across = ["{shard-a}:index:X", f"{other}:index:X"]
        # redis-py refuses it before sending ...
        with pytest.raises(RedisClusterException, match="same key slot"):
            client.eval(TWO_KEYS_LUA, 2, *across, "v")
        # ... and the server does too, when it is sent anyway.
        with pytest.raises(ClusterCrossSlotError):
            target = client.get_node_from_key(across[0])  # type: ignore[no-untyped-call]
            client.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", TWO_KEYS_LUA, 2, *across, "v", target_nodes=target
            )

        # A cycle-shaped script: one declared key, every other name derived from the tag.
        plain, subscriber = _subscribe_elsewhere(shared_cluster, "{test:shard-a}", "test:levels")
        tag = "{test:shard-a}"
        assert client.eval(CYCLE_LIKE_LUA, 1, f"{tag}:lease", tag, "X", "101.5") == "101.5"
        assert client.hget(f"{tag}:index:X", "level") == "101.5"
        assert client.get(f"{tag}:state:revision") == "101.5"
        # PUBLISH inside the script reaches a subscriber on another node (cluster broadcast).
        assert _next_message(subscriber) == "101.5"
        subscriber.close()
        plain.close()
        # A name outside the declared key's slot is refused: on the same node because of
        # `#!lua` (an old-style script would be let through), on another node in any case.
        owner = shared_cluster.node_for_key(tag)
        tags = [f"{{t{n}}}" for n in range(200)]
        local = next(t for t in tags if shared_cluster.node_for_key(t) is owner)
        remote = next(t for t in tags if shared_cluster.node_for_key(t) is not owner)
        with pytest.raises(ResponseError, match="do not hash to the same slot"):
            client.eval(CYCLE_LIKE_LUA, 1, f"{tag}:lease", local, "X", "1")
        with pytest.raises(ResponseError, match="non local key"):
            client.eval(CYCLE_LIKE_LUA, 1, f"{tag}:lease", remote, "X", "1")
        assert client.exists(f"{local}:index:X", f"{remote}:index:X") == 0
    finally:
        client.close()


def _subscribe_elsewhere(
    cluster: LocalRedisCluster, key: str, channel: str
) -> tuple[redis.Redis, PubSub]:
    """A plain subscription on a node other than the one serving ``key``, and its client
    (which must stay referenced: collecting it closes the subscription's connection)."""
    owner = cluster.node_for_key(key)
    elsewhere = next(n for n in cluster.nodes if n is not owner)
    plain = redis.Redis(host=elsewhere.host, port=elsewhere.port, decode_responses=True)
    pubsub: PubSub = plain.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel)
    confirmation = pubsub.get_message(timeout=WAIT_S)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    return plain, pubsub


def _next_message(pubsub: PubSub) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message is not None and message["type"] == "message":
            return str(message["data"])
    raise AssertionError("no message")


async def test_asyncio_cluster_client_writes_and_runs_scripts(
    shared_cluster: LocalRedisCluster,
) -> None:
    client = AsyncRedisCluster.from_url(shared_cluster.url, decode_responses=True)
    try:
        for port, keys in _keys_on_every_master(shared_cluster).items():
            await client.set(keys[0], f"async-{port}")
            assert await client.get(keys[0]) == f"async-{port}"
        tag = "{test:shard-async}"
        level = await client.eval(CYCLE_LIKE_LUA, 1, f"{tag}:lease", tag, "Y", "7")
        assert level == "7"
        assert await client.hgetall(f"{tag}:index:Y") == {"level": "7"}
        with pytest.raises(RedisClusterException, match="same key slot"):
            await client.eval(
                TWO_KEYS_LUA, 2, "{shard-a}:x", f"{_other_slot_than('{shard-a}')}:x", "v"
            )
    finally:
        await client.aclose()


def test_a_killed_master_restarted_on_its_ports_brings_the_cluster_back(
    redis_cluster: LocalRedisCluster,
) -> None:
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        key = "{shard-a}:index:X"
        client.set(key, "before")
        victim = redis_cluster.node_for_key(key)
        port, bus_port, node_id = victim.port, victim.bus_port, victim.node_id()
        victim.kill()
        survivors = [n for n in redis_cluster.nodes if n is not victim]
        deadline = time.monotonic() + WAIT_S
        # Without replicas the killed master's slots are uncovered: the others mark it failed.
        while any(n.cluster_info()["cluster_state"] != "fail" for n in survivors):
            assert time.monotonic() < deadline, "the survivors did not notice the dead master"
            time.sleep(0.05)
        assert not redis_cluster.is_ok()

        victim.start()
        assert (victim.port, victim.bus_port, victim.node_id()) == (port, bus_port, node_id)
        redis_cluster.wait_ok()
        assert redis_cluster.node_for_key(key) is victim  # it still serves its slots ...
        assert client.get(key) is None  # ... with no data (no appendonly)
        client.set(key, "after")
        assert client.get(key) == "after"
    finally:
        client.close()


def test_with_replicas_a_killed_master_fails_over_and_rejoins_as_a_replica() -> None:
    with LocalRedisCluster(replicas=1) as cluster:
        assert len(cluster.nodes) == 6
        assert len(cluster.current_masters()) == 3
        client = RedisCluster.from_url(cluster.url, decode_responses=True)
        try:
            key = "{shard-a}:state:revision"
            client.set(key, "r1")
            victim = cluster.node_for_key(key)
            assert victim.query("WAIT", "1", "5000") == 1  # the replica has it
            victim.kill()
            cluster.wait_ok()  # the replica took over
            promoted = cluster.node_for_key(key)
            assert promoted is not victim and promoted.role() == "master"
            assert client.get(key) == "r1"
            victim.start()
            cluster.wait_ok()
            assert victim.role() == "slave"
            assert len(cluster.current_masters()) == 3
        finally:
            client.close()


def test_cluster_nodes_retry_with_new_ports_when_theirs_are_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as first, socket.socket() as second:
        for sock in (first, second):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        taken = [first.getsockname()[1], second.getsockname()[1]]
        real = localservices.free_port
        # Node 0: the client port taken on the first try, the bus port on the second.
        answers: list[int | None] = [taken[0], None, None, taken[1]]

        def fake(host: str = localservices.LOOPBACK) -> int:
            answer = answers.pop(0) if answers else None
            return answer if answer is not None else real(host)

        monkeypatch.setattr(localservices, "free_port", fake)
        with LocalRedisCluster() as cluster:
            assert not answers, "both taken ports were offered"
            used = {n.port for n in cluster.nodes} | {n.bus_port for n in cluster.nodes}
            assert not used & set(taken)
            assert cluster.is_ok()


def test_a_cluster_that_cannot_be_created_leaves_no_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = LocalRedisCluster()
    seen: list[LocalRedisClusterNode] = []
    real = localservices.find_executable

    def fake(name: str) -> str:
        if name == "redis-cli":
            seen.extend(cluster.nodes)
            assert all(node.is_running() for node in seen)
            return "/bin/false"
        return real(name)

    monkeypatch.setattr(localservices, "find_executable", fake)
    with pytest.raises(LocalServiceError, match="cluster create failed"), cluster:
        pass
    assert len(seen) == 3
    for node in seen:
        assert not node.is_running()
    assert cluster.nodes == []
    assert not cluster.workdir.exists()
