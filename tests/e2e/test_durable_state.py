"""Restarts that change nothing: `streamer run` killed with SIGKILL (or stopped with SIGTERM)
at several points of a stream of corporate actions, restarted, and compared with
`streamer calc` over the whole message log.

Everything goes at QoS 1, and the service acknowledges a QoS 1 message only once what it
changed is durable: a message received but not yet in a checkpoint when the service dies is
delivered again after the restart, and one delivered twice changes nothing the second time
(an action by its id, a tick by its timestamp).  So every level published after a restart is
one the calculator computes over the whole log: nothing is lost, nothing applied twice.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import pytest

from streamer.localservices import LocalMosquitto, LocalRedis
from tests.conftest import write_service_config
from tests.e2e.logged_feed import (
    ACTIONS,
    INDICES,
    SERIES,
    Stream,
    calc_levels,
    published_since,
    redis_ms,
)
from tests.integration.harness import ServiceProcess, Store, wait_for


def stop(service: ServiceProcess, how: str) -> None:
    if how == "kill":
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)
        service.kill()
    else:
        assert service.terminate(timeout=10) == 0


@pytest.mark.parametrize("how", ["kill", "term"])
def test_restarts_mid_stream_change_nothing(tmp_path: Path, how: str) -> None:
    with LocalMosquitto() as broker, LocalRedis() as redis:
        config = write_service_config(tmp_path, broker.url, redis.url, INDICES)
        store = Store(redis.url)
        log = tmp_path / "sent.jsonl"
        stream = Stream(broker, log)
        service = ServiceProcess(config.path, config.metrics_url)
        restarted_at_ms = []
        try:
            service.wait_connected()
            for n, action in enumerate(ACTIONS):
                for _ in range(3):
                    stream.batch()
                stream.action(action)
                if n in (1, 3):
                    # Stopped at once: the action was received, but was it made durable? The
                    # broker holds it until it was, and delivers it again after the restart.
                    stop(service, how)
                    stream.batch()  # sent while the service is down: the broker keeps it
                    service = ServiceProcess(config.path, config.metrics_url)
                    service.wait_connected()
                    restarted_at_ms.append(redis_ms(store))
                elif n == 4:
                    # Stopped once the action is durable, with ticks after it.
                    wait_for(lambda: store.xlen(f"{config.prefix}:actions") >= 5, what="5 actions")
                    stream.batch()
                    time.sleep(0.2)
                    stop(service, how)
                    service = ServiceProcess(config.path, config.metrics_url)
                    service.wait_connected()
                    restarted_at_ms.append(redis_ms(store))
            for _ in range(3):
                stream.batch()
            final = dict(stream.prices)
            wait_for(
                lambda: (store.hget(f"{config.prefix}:index:CW", "source_ts") or "0") >= str(0),
                what="levels",
            )
            time.sleep(1.0)
            assert service.terminate(timeout=10) == 0
        finally:
            stream.close()
            service.kill()

        expected = calc_levels(config, log)
        # Every action is in the audit stream once per index it touched.
        audit = [
            fields["id"] + "|" + fields["index"]
            for _, fields in store.xrange(f"{config.prefix}:actions")
        ]
        assert len(audit) == len(set(audit))
        assert {a.split("|")[0] for a in audit} == {a["id"] for a in ACTIONS}
        for series in SERIES:
            history = store.xrange(f"{config.prefix}:history:{series}")
            seqs = [int(fields["seq"]) for _, fields in history]
            assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), series
            after = published_since(store, config.prefix, series, restarted_at_ms[0])
            assert after, series
            for fields in after:
                level = float(fields["level"])
                assert any(math.isclose(level, x, rel_tol=1e-9) for x in expected[series]), (
                    f"{series}: published {level} (seq {fields['seq']}, source_ts "
                    f"{fields['source_ts']}) after a restart; calc never had it; calc went "
                    f"through {expected[series]}; restarts at {restarted_at_ms} ms; service "
                    f"log {tmp_path / 'service.log'}"
                )
            final_level = float(store.hget(f"{config.prefix}:index:{series}", "level") or "nan")
            assert math.isclose(final_level, expected[series][-1], rel_tol=1e-9), series
        assert final["EEE"] > 0
