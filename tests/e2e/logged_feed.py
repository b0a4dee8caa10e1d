"""A feed that logs every message it sends, and `streamer calc` over that log: the reference
every live level is checked against in the restart and failover tests.

Two indices over five symbols, a stream of corporate actions touching both, and ticks that
never move a price by more than 0.2% (no big-move hold)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from streamer.localservices import LocalMosquitto
from tests.conftest import ServiceConfig
from tests.integration.harness import Feed, Store, streamer_command

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
        self.broker = broker
        self.feed = Feed(broker.port)
        self.log = log_path.open("w", encoding="utf-8")
        self.prices = dict(SYMBOLS)
        self.step = 0
        self.last_ts = 0  # the newest batch's timestamp

    def batch(self) -> None:
        """Every symbol once, moved a little (never a big move: no hold)."""
        self.step += 1
        ts = self.last_ts = time.time_ns()
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

    def reconnect(self) -> None:
        """A new connection (after a broker restart)."""
        self.feed.close()
        self.feed = Feed(self.broker.port)

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
