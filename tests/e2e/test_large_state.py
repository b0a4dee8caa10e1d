"""A checkpoint whose structure is larger than one slice (a universe of 2,000 symbols and 200
indices): pushed to Redis slice by slice and renamed into place, read back whole after a
kill -9 by the restarted service and by `streamer state show`."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import redis

from streamer.bench.scale import UniverseShape, build_universe
from streamer.localservices import LocalMosquitto, LocalRedis
from streamer.publish.writer import STRUCTURE_SLICE
from tests.conftest import write_service_config
from tests.integration.harness import ServiceProcess, streamer_command, wait_for


def test_a_sliced_structure_survives_kill_9_and_reads_back_whole(
    tmp_path: Path, mosquitto: LocalMosquitto, redis_server: LocalRedis
) -> None:
    build_universe(UniverseShape.parse("2000x200"), tmp_path)
    config = write_service_config(
        tmp_path, mosquitto.url, redis_server.url, indices={}, state={"checkpoint_interval_s": 1}
    )
    raw = redis.Redis.from_url(redis_server.url)
    structure_key = "test:state:structure"

    def sliced() -> bool:
        return raw.type(structure_key) == b"list" and raw.exists("test:state:market") == 1

    service = ServiceProcess(config.path, config.metrics_url)
    try:
        service.wait_connected(timeout=60)
        wait_for(sliced, 60, 0.1, "the checkpoint structure in Redis, as a list of slices")
        pieces = raw.lrange(structure_key, 0, -1)
        assert len(pieces) >= 2
        assert all(len(p) == STRUCTURE_SLICE for p in pieces[:-1])
        assert not raw.keys("test:state:structure:incoming:*")  # renamed, none left behind
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)
    finally:
        service.kill()

    restarted = ServiceProcess(config.path, config.metrics_url)
    try:
        restarted.wait_connected(timeout=60)

        def restored() -> bool:
            return any(e.get("event") == "state restored" for e in restarted.log_events())

        wait_for(restored, 60, 0.1, "the restarted service to restore the stored state")
        assert not any(e.get("level") in ("error", "critical") for e in restarted.log_events()), (
            restarted.logs()
        )
    finally:
        assert restarted.terminate(timeout=20) == 0
    shown = subprocess.run(
        [*streamer_command(), "state", "show", "--config", str(config.path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["stored"] is True
    assert len(summary["indices"]) == 200
    assert sum(index["members"] for index in summary["indices"]) >= 2_000
    raw.close()
