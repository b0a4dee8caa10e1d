"""Two shards, each with a leader and a hot standby, on a private Redis Cluster (three masters,
one replica each) against real mosquitto.  The master serving one shard's slot is killed (the
cluster fails over to its replica) and then that shard's leader is killed: both shards keep
publishing levels that `streamer calc` computes over the whole message log, and a consumer
finds every series of both shards in one directory and on one channel."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from redis.crc import key_slot

from streamer.keys import KeyLayout
from streamer.localservices import LocalMosquitto, LocalRedisCluster
from streamer.outputs import parse_levels_message
from tests.e2e.logged_feed import ACTIONS, INDICES, Stream
from tests.e2e.replicas import Replica, check_published, series_keys, settle
from tests.integration.harness import Store, metric, scrape, streamer_command, wait_for

LEASE_TTL_S = 2.0
SLACK_S = 15.0
SHARDS = {"s1": ("pw.toml", ("PW", "PW.TR")), "s2": ("cw.toml", ("CW", "CW.TR", "CW.NTR"))}


def leader_of(replicas: list[Replica]) -> Replica:
    def find() -> Replica | None:
        leaders = [r for r in replicas if r.role() == "leader"]
        assert len(leaders) <= 1, [r.name for r in leaders]
        return leaders[0] if leaders else None

    return wait_for(find, SLACK_S, 0.05, "a leader")


def test_two_shards_with_standbys_survive_a_master_failover_and_a_leader_kill(
    tmp_path: Path,
) -> None:
    with LocalMosquitto() as broker, LocalRedisCluster(masters=3, replicas=1) as cluster:
        replicas: dict[str, list[Replica]] = {
            shard: [
                Replica(
                    tmp_path / f"{shard}-{n}",
                    broker.url,
                    cluster.url,
                    {filename: INDICES[filename]},
                    shard,
                    LEASE_TTL_S,
                    redis={"cluster": True},
                )
                for n in "ab"
            ]
            for shard, (filename, _) in SHARDS.items()
        }
        stream = Stream(broker, tmp_path / "sent.jsonl")
        store = Store(cluster.url, cluster=True)
        try:
            for pair in replicas.values():
                for replica in pair:
                    replica.start()
                leader_of(pair)
            for action in ACTIONS[:2]:
                for _ in range(3):
                    stream.batch()
                stream.action(action)
            for shard, (_, series) in SHARDS.items():
                settle(store, replicas[shard][0].config, stream, series[0])

            # Each shard's keys are in its own slot (one script per cycle, on one node).
            prefix = replicas["s1"][0].config.prefix
            for shard, (_, series) in SHARDS.items():
                layout = KeyLayout(prefix, shard, cluster=True)
                slots = {key_slot(k.encode()) for k in layout.cycle_keys(series)}
                assert len(slots) == 1, (shard, slots)
                assert series_keys(store, prefix, series[0])["index"] == layout.index(series[0])

            # The master serving s1 dies: the cluster promotes its replica, and the writers
            # find the slot's new master.
            victim = cluster.node_for_key(KeyLayout(prefix, "s1", cluster=True).lease())
            victim.kill()
            cluster.wait_ok(timeout=30)
            for action in ACTIONS[2:4]:
                for _ in range(3):
                    stream.batch()
                stream.action(action)
            for shard, (_, series) in SHARDS.items():
                settle(store, replicas[shard][0].config, stream, series[0])

            # Then s1's leader dies: its standby takes over.
            old = leader_of(replicas["s1"])
            old.kill()
            new = leader_of(replicas["s1"])
            assert new is not old
            for action in ACTIONS[4:]:
                for _ in range(3):
                    stream.batch()
                stream.action(action)
            for shard, (_, series) in SHARDS.items():
                settle(store, replicas[shard][0].config, stream, series[0])
                config = leader_of(replicas[shard]).config
                check_published(store, config, tmp_path / "sent.jsonl", series)

            # One directory for both shards; one channel carries both shards' levels.
            directory = {s: json.loads(e) for s, e in store.hgetall(f"{prefix}:series").items()}
            assert {s: e["shard"] for s, e in directory.items()} == {
                s: shard for shard, (_, series) in SHARDS.items() for s in series
            }
            pubsub = store.pubsub()
            pubsub.subscribe(f"{prefix}:levels")
            seen: set[str] = set()
            deadline = time.monotonic() + SLACK_S
            while seen != set(directory) and time.monotonic() < deadline:
                stream.batch()
                message = pubsub.get_message(timeout=0.2)
                if message and message["type"] == "message":
                    seen.update(level["index"] for level in parse_levels_message(message["data"]))
            assert seen == set(directory)
            pubsub.close()

            # The operator tools read the cluster too.
            view = subprocess.run(
                [*streamer_command(), "watch", "--once", "--cluster", "--redis-url",
                 cluster.url, "--prefix", prefix],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert view.returncode == 0, view.stderr
            assert all(series in view.stdout for series in directory), view.stdout
            state = subprocess.run(
                [*streamer_command(), "state", "show", "--config",
                 str(replicas["s2"][0].config.path)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert state.returncode == 0, state.stderr
            assert '"CW"' in state.stdout and '"PW"' not in state.stdout

            # Another shard's actions are not errors; a standby's first start (restoring its
            # leader's checkpoint) expects no broker session of its own.
            for pair in replicas.values():
                for replica in pair:
                    logs = replica.config.path.parent.joinpath("service.log").read_text()
                    assert "action not applied" not in logs, replica.name
                    assert "lost our persistent session" not in logs, replica.name
            ignored = metric(
                scrape(leader_of(replicas["s1"]).config.metrics_url),
                "streamer_actions_total",
                outcome="ignored",
                reason="not_in_shard",
            )
            assert ignored >= 1
        finally:
            stream.close()
            for pair in replicas.values():
                for replica in pair:
                    replica.discard()
