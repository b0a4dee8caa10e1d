"""``streamer replay`` of a recorded day reproduces ``streamer calc``'s final levels exactly."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import redis

from streamer.localservices import LocalMosquitto, LocalRedis
from streamer.tools.mqtt_publisher import BrokerEndpoint, MqttPublisher
from streamer.tools.recording import read_recording
from streamer.tools.replayer import Replayer
from tests.conftest import DEFAULT_INDICES, ServiceConfigFactory
from tests.tools.support import run_streamer, running_service, wait_until

# The default PX3 / CAP2 indices plus a cross-currency one, so FX is replayed too.
INDICES = DEFAULT_INDICES | {
    "fx2.toml": """
        id = "FX2"
        method = "cap"
        currency = "USD"
        divisor = 1000.0
        variants = ["price", "total"]
        constituents = [
          { symbol = "AAA", shares = 100.0 },
          { symbol = "EEE", shares = 300.0, currency = "EUR" },
        ]
    """,
}


def record_a_day(path: Path, start_ns: int, with_actions: bool = True) -> None:
    """Ticks (single and batched), FX, a split, a dividend and a reference level, in time order."""
    rng = random.Random(7)
    prices = {"AAA": 100.0, "BBB": 50.0, "CCC": 20.0, "DDD": 10.0, "EEE": 80.0}
    lines = [json.dumps({"pair": "EURUSD", "rate": 1.0842, "ts": start_ns})]
    ts = start_ns
    seq = dict.fromkeys(prices, 0)

    def tick(symbol: str) -> dict[str, object]:
        nonlocal ts
        ts += 1_000_000  # 1 ms apart: the recorded span is 0.3 s
        seq[symbol] += 1
        prices[symbol] = round(prices[symbol] * (1 + rng.gauss(0, 0.002)), 2)
        return {"symbol": symbol, "price": prices[symbol], "ts": ts, "seq": seq[symbol]}

    for i in range(300):
        if i == 150 and with_actions:
            split_at = ts + 500_000
            lines.append(
                json.dumps(
                    {
                        "action": "split",
                        "symbol": "AAA",
                        "ratio": 2.0,
                        "effective": split_at,
                        "id": "ca-aaa-split",
                    }
                )
            )
            lines.append(
                json.dumps(
                    {
                        "action": "dividend",
                        "symbol": "EEE",
                        "amount": 0.5,
                        "effective": split_at,
                        "id": "ca-eee-div",
                    }
                )
            )
            prices["AAA"] /= 2
        if i % 50 == 25:
            lines.append(json.dumps([tick(s) for s in ("BBB", "CCC", "DDD")]))
        elif i % 40 == 0:
            lines.append(
                json.dumps(
                    {"pair": "EURUSD", "rate": round(1.08 + rng.random() / 100, 5), "ts": ts}
                )
            )
        else:
            lines.append(json.dumps(tick(rng.choice(list(prices)))))
    lines.append(json.dumps({"index": "PX3", "level": 700.0, "ts": ts}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("with_actions", [False, True])
def test_replay_reproduces_calc_exactly(
    tmp_path: Path,
    mosquitto: LocalMosquitto,
    redis_server: LocalRedis,
    service_config: ServiceConfigFactory,
    with_actions: bool,
) -> None:
    config = service_config(INDICES, ingest={"recompute_interval_s": 0.2})
    recording = tmp_path / "day.jsonl"
    record_a_day(recording, time.time_ns() - 60_000_000_000, with_actions)

    calc = run_streamer("calc", "--config", str(config.path), str(recording))
    assert calc.returncode == 0, calc.stderr
    expected = {row["index"]: row for row in map(json.loads, calc.stdout.splitlines())}
    assert set(expected) == {"PX3", "CAP2", "FX2", "FX2.TR"}
    assert f"{2 if with_actions else 0} applied" in calc.stderr

    with running_service(config, tmp_path):
        replay = run_streamer("replay", "--max-speed", "--config", str(config.path),
                              str(recording))  # fmt: skip
        assert replay.returncode == 0, replay.stderr
        assert ("control 2" in replay.stdout) == with_actions and "tick " in replay.stdout
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)

        def published() -> dict[str, tuple[float, float]]:
            out = {}
            for series in expected:
                fields = client.hgetall(f"test:index:{series}")
                if fields:
                    out[series] = (float(fields["level"]), float(fields["divisor"]))
            return out

        wanted = {s: (row["level"], row["divisor"]) for s, row in expected.items()}

        def reproduced() -> bool:
            # calc ends on a full recompute; the service recomputes on its timer and publishes
            # what the recompute corrected, so both land on the same bits.
            return published() == wanted

        try:
            wait_until(reproduced, timeout=6.0, what="calc's levels")
        except AssertionError:
            raise AssertionError(f"published {published()} != calc {wanted}") from None
        entries: list[tuple[str, dict[str, str]]] = client.xrange("test:actions")  # type: ignore[assignment]
        actions = {entry["id"] for _, entry in entries}
        assert actions == ({"ca-aaa-split", "ca-eee-div"} if with_actions else set())


def test_recorded_gaps_are_kept_scaled_by_speed(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    recording = tmp_path / "ticks.csv"
    recording.write_text(
        "symbol,price,ts\nAAA,1.0,1000000000\nBBB,2.0,1400000000\nAAA,1.5,1800000000\n",
        encoding="utf-8",
    )
    with MqttPublisher(BrokerEndpoint.from_url(mosquitto.url)) as publisher:
        report = Replayer(publisher, speed=4.0).run(read_recording(recording))
    assert report.recorded_span_s == 0.8
    assert report.elapsed_s >= 0.8 / 4.0  # waited for the recorded gaps (a lower bound only)
    assert report.by_kind == {"tick": 3}
