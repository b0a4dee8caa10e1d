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

import json
import math
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from streamer.localservices import LocalMosquitto, LocalRedis
from tests.conftest import ServiceConfig, write_service_config
from tests.integration.harness import Feed, ServiceProcess, Store, streamer_command, wait_for

INDICES = {
    "pw.toml": """
        id = "PW"
        method = "price"
        divisor = 1.0
        variants = ["price", "total"]
        constituents = [
          { symbol = "AAA", price = 100.0 },
          { symbol = "BBB", price = 50.0 },
          { symbol = "CCC", price = 20.0 },
        ]
    """,
    "cw.toml": """
        id = "CW"
        method = "cap"
        divisor = 1000000.0
        variants = ["price", "total", "net"]
        constituents = [
          { symbol = "AAA", shares = 1000000.0, price = 100.0, withholding = 0.15 },
          { symbol = "DDD", shares = 2000000.0, iwf = 0.5, price = 10.0 },
        ]
    """,
}
SYMBOLS = {"AAA": 100.0, "BBB": 50.0, "CCC": 20.0, "DDD": 10.0, "EEE": 30.0}
SERIES = ("PW", "PW.TR", "CW", "CW.TR", "CW.NTR")


class Stream:
    """The feed, and the log of every message it sent (what calc reads)."""

    def __init__(self, broker: LocalMosquitto, log_path: Path) -> None:
        self.feed = Feed(broker.port)
        self.log = log_path.open("w", encoding="utf-8")
        self.prices = dict(SYMBOLS)
        self.step = 0

    def batch(self) -> None:
        """Every symbol once, moved a little (never a big move: no hold)."""
        self.step += 1
        ts = time.time_ns()
        ticks = []
        for k, symbol in enumerate(sorted(self.prices)):
            self.prices[symbol] = round(
                self.prices[symbol] * (1 + 0.001 * ((self.step + k) % 5 - 2)), 4
            )
            ticks.append({"symbol": symbol, "price": self.prices[symbol], "ts": ts + k})
        self._send("ticks/batch", ticks, qos=1)

    def action(self, action: dict[str, Any]) -> None:
        action = {**action, "effective": time.time_ns()}
        self._send(f"control/{action['action']}", action, qos=1)
        # From the effective time on, the market quotes the adjusted price.
        if action["action"] == "split":
            self.prices[action["symbol"]] /= action["ratio"]
        elif action["action"] == "special_dividend":
            self.prices[action["symbol"]] -= action["amount"]

    def _send(self, topic: str, payload: Any, qos: int) -> None:
        self.feed.send(topic, json.dumps(payload), qos=qos)
        for item in payload if isinstance(payload, list) else [payload]:
            self.log.write(json.dumps(item) + "\n")
        self.log.flush()

    def close(self) -> None:
        self.feed.close()
        self.log.close()


ACTIONS: list[dict[str, Any]] = [
    {"action": "split", "id": "split-AAA", "symbol": "AAA", "ratio": 2.0},
    {"action": "dividend", "id": "div-AAA", "symbol": "AAA", "amount": 0.5},
    {"action": "special_dividend", "id": "sdiv-BBB", "symbol": "BBB", "amount": 1.0},
    {
        "action": "add",
        "id": "add-EEE",
        "index": "CW",
        "symbol": "EEE",
        "shares": 500000.0,
        "price": 30.0,
    },
    {"action": "delete", "id": "del-CCC", "index": "PW", "symbol": "CCC"},
    {"action": "shares", "id": "shares-DDD", "symbol": "DDD", "shares": 2500000.0},
]


def calc_levels(config: ServiceConfig, log: Path) -> dict[str, list[float]]:
    """Every level `streamer calc` goes through, per series: where it starts (the levels of
    an empty log), then each change (--every)."""
    empty = log.with_name("empty.jsonl")
    empty.write_text("", encoding="utf-8")
    seen: dict[str, list[float]] = {}
    for args in ([str(empty)], ["--every", str(log)]):
        run = subprocess.run(
            [*streamer_command(), "calc", "--config", str(config.path), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        for line in run.stdout.splitlines():
            row = json.loads(line)
            seen.setdefault(row["index"], []).append(row["level"])
    return seen


def published_since(store: Store, prefix: str, series: str, since_ms: int) -> list[dict[str, str]]:
    entries = store.xrange(f"{prefix}:history:{series}")
    return [fields for entry_id, fields in entries if int(entry_id.split("-")[0]) >= since_ms]


def redis_ms(store: Store) -> int:
    seconds, micros = store.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


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
