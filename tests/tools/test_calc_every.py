"""``streamer calc --every`` prints every level the calculator goes through, the ones right
after a corporate action included (live, the clock reaches an action's effective time between
two ticks, and the service publishes that state)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import write_service_config
from tests.tools.support import run_streamer

INDEX = """
    id = "PW"
    method = "price"
    divisor = 1.0
    variants = ["price", "total"]
    constituents = [{ symbol = "AAA", price = 100.0 }, { symbol = "BBB", price = 50.0 }]
"""


def test_every_prints_the_state_right_after_an_action(tmp_path: Path) -> None:
    config = write_service_config(tmp_path, "mqtt://127.0.0.1:1", "redis://127.0.0.1:1/0",
                                  {"pw.toml": INDEX})  # fmt: skip
    log = tmp_path / "day.jsonl"
    lines = [
        {"symbol": "AAA", "price": 101.0, "ts": 1_000},
        {"action": "dividend", "id": "d1", "symbol": "AAA", "amount": 2.0, "effective": 1_500},
        {"symbol": "BBB", "price": 51.0, "ts": 2_000},
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    run = run_streamer("calc", "--config", str(config.path), "--every", str(log))
    assert run.returncode == 0, run.stderr
    tr = [row["level"] for row in map(json.loads, run.stdout.splitlines())
          if row["index"] == "PW.TR"]  # fmt: skip
    # After AAA: 151; the dividend adds 2 points to TR (divisor 1) before BBB moves: 153;
    # then BBB: 152 + 2.
    assert tr == [151.0, 153.0, 154.0]
