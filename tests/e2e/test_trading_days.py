"""A recorded week on the XNYS calendar, offline and live, closes the same days the same way.

Thanksgiving week 2025: Monday to Wednesday are normal sessions (close 16:00 New York,
21:00 UTC), Thursday the 27th is a holiday, Friday the 28th closes early (13:00 New York,
18:00 UTC); the next session is Monday the 1st.  Dividends go ex at opens, a special dividend
adjusts the divisor mid-session.  `streamer calc --closes` and `streamer replay` into a live
`streamer run` whose clock follows the data must take the same closes: the same sessions,
levels, divisors, dividend points and TR/NTR closes.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streamer.localservices import LocalMosquitto, LocalRedis
from tests.conftest import write_service_config
from tests.integration.harness import ServiceProcess, Store, streamer_command, wait_for

INDICES = {
    "pw.toml": """
        id = "PW"
        method = "price"
        divisor = 1.0
        variants = ["price", "total", "net"]
        constituents = [
          { symbol = "AAA", price = 100.0, withholding = 0.15 },
          { symbol = "BBB", price = 50.0, withholding = 0.30 },
          { symbol = "CCC", price = 20.0 },
        ]
    """,
}
HOUR = 3_600 * 10**9
SESSIONS = [  # (date, open UTC hour, close UTC hour)
    ("2025-11-24", 14.5, 21.0),
    ("2025-11-25", 14.5, 21.0),
    ("2025-11-26", 14.5, 21.0),
    ("2025-11-28", 14.5, 18.0),
    ("2025-12-01", 14.5, 21.0),
]


def utc(day: str, hour: float) -> int:
    midnight = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    return int(midnight.timestamp() * 10**9) + int(hour * HOUR)


def recorded_week() -> list[dict[str, Any]]:
    prices = {"AAA": 100.0, "BBB": 50.0, "CCC": 20.0}
    out: list[dict[str, Any]] = []
    for n, (day, open_hour, close_hour) in enumerate(SESSIONS):
        opening = utc(day, open_hour)
        if day == "2025-11-25":
            out.append({"action": "dividend", "id": "div-AAA", "symbol": "AAA", "amount": 1.2,
                        "effective": opening})  # fmt: skip
        if day == "2025-11-28":
            out.append({"action": "dividend", "id": "div-BBB", "symbol": "BBB", "amount": 0.8,
                        "effective": opening})  # fmt: skip
        hour = open_hour + 0.25
        k = 0
        while hour < close_hour:
            k += 1
            for j, symbol in enumerate(sorted(prices)):
                prices[symbol] = round(prices[symbol] * (1 + 0.002 * ((n + k + j) % 5 - 2)), 4)
                out.append({"symbol": symbol, "price": prices[symbol],
                            "ts": utc(day, hour) + j})  # fmt: skip
            if day == "2025-11-26" and k == 4:
                out.append({"action": "special_dividend", "id": "sdiv-CCC", "symbol": "CCC",
                            "amount": 2.0, "effective": utc(day, hour) + 10})  # fmt: skip
                prices["CCC"] -= 2.0
            hour += 0.5
        # A tick stamped after the close (late trading): outside the session, refused.
        out.append({"symbol": "AAA", "price": prices["AAA"], "ts": utc(day, close_hour) + HOUR})
    return out


@pytest.mark.timeout(180)
def test_calc_and_a_live_replay_take_the_same_closes(tmp_path: Path) -> None:
    log = tmp_path / "week.jsonl"
    log.write_text("".join(json.dumps(m) + "\n" for m in recorded_week()), encoding="utf-8")
    with LocalMosquitto() as broker, LocalRedis() as redis_server:
        config = write_service_config(
            tmp_path,
            broker.url,
            redis_server.url,
            INDICES,
            session={"calendar": "XNYS", "clock": "data", "close_delay_s": 5.0},
        )
        offline = subprocess.run(
            [*streamer_command(), "calc", "--closes", "--config", str(config.path), str(log)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        closes = [json.loads(line) for line in offline.stdout.splitlines() if '"close"' in line]
        by_series: dict[str, list[dict[str, Any]]] = {}
        for close in closes:
            by_series.setdefault(close["close"], []).append(close)
        # The data crosses every close (each day ends with a late tick after it): not the
        # 27th, a holiday, and the 28th at 18:00 UTC.
        assert [c["session"] for c in by_series["PW"]] == [
            "2025-11-24", "2025-11-25", "2025-11-26", "2025-11-28", "2025-12-01"
        ]  # fmt: skip
        assert by_series["PW"][3]["close_ts"] == utc("2025-11-28", 18)
        # The dividend of the 25th is in that day's points and rolls into TR, not PR.
        assert by_series["PW"][1]["dividend_points"] == pytest.approx(1.2)
        assert by_series["PW"][1]["net_dividend_points"] == pytest.approx(1.2 * 0.85)
        assert by_series["PW.TR"][1]["level"] == pytest.approx(
            by_series["PW.TR"][0]["level"]
            * (by_series["PW"][1]["level"] + 1.2)
            / by_series["PW"][0]["level"]
        )

        service = ServiceProcess(config.path, config.metrics_url)
        store = Store(redis_server.url)
        try:
            service.wait_connected()
            replay = subprocess.run(
                [*streamer_command(), "replay", "--max-speed", "--mqtt-url", broker.url, str(log)],
                capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
            assert replay.returncode == 0, replay.stderr
            wait_for(lambda: store.xlen("test:closes:PW") == 5, timeout=30, what="5 closes")
            wait_for(lambda: store.xlen("test:closes:PW.NTR") == 5, timeout=10, what="NTR")
        finally:
            service.terminate()
        for series, expected in by_series.items():
            live = [fields for _, fields in store.xrange(f"test:closes:{series}")]
            assert [c["session"] for c in live] == [c["session"] for c in expected], series
            for got, want in zip(live, expected, strict=True):
                for name in ("level", "divisor", "dividend_points", "tr_close", "ntr_close"):
                    assert float(got[name]) == pytest.approx(want[name], rel=1e-9), (series, name)
        # prev_close in the hash is the last close taken.
        assert float(store.hget("test:index:PW.TR", "prev_close") or 0) == pytest.approx(
            by_series["PW.TR"][-1]["level"], rel=1e-9
        )
