"""``streamer watch`` against a real Redis: late joiners see the snapshot, then live updates."""

from __future__ import annotations

import io
import json
import threading
import time

import redis
from redis.typing import EncodableT, FieldT
from rich.console import Console

from streamer.commands.watch import WatchTarget, watch
from streamer.localservices import LocalRedis
from streamer.tools.shutdown import StopSignal
from tests.tools.support import run_streamer, wait_until

PREFIX = "desk"


def publish_level(client: redis.Redis, series: str, level: float, seq: int) -> None:
    """What the service writes for one publish: hash, history stream and channel message."""
    now = time.time_ns()
    fields: dict[FieldT, EncodableT] = {
        "level": level, "divisor": 0.5, "ts": now, "source_ts": now - 1_000_000, "seq": seq,
        "prev_close": 100.0, "change": level - 100.0, "change_pct": (level / 100.0 - 1) * 100,
        "stale": 1 if series == "PX3" else 0, "coverage": 0.75 if series == "PX3" else 1.0,
    }  # fmt: skip
    client.hset(f"{PREFIX}:index:{series}", mapping=fields)
    client.xadd(f"{PREFIX}:history:{series}", fields, maxlen=1000, approximate=True)
    client.publish(f"{PREFIX}:levels", json.dumps(fields | {"index": series}))


def row(text: str, series: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells and cells[0] == series:
            return cells
    raise AssertionError(f"no row for {series} in:\n{text}")


def test_once_prints_the_current_levels(redis_server: LocalRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for seq, level in enumerate((100.0, 101.0, 102.5), start=1):
        publish_level(client, "PX3", level, seq)
    publish_level(client, "CAP2", 99.0, 1)
    result = run_streamer("watch", "--once", "--redis-url", redis_server.url, "--prefix", PREFIX)
    assert result.returncode == 0, result.stderr
    assert row(result.stdout, "CAP2")[1:4] == ["99.00", "-1.00", "-1.00%"]
    px3 = row(result.stdout, "PX3")
    assert px3[1:8] == ["102.50", "+2.50", "+2.50%", "0.5", "1", "75.0%", px3[7]]
    assert px3[8] == "▁▄█"  # the history: 100, 101, 102.5

    only = run_streamer("watch", "--once", "--redis-url", redis_server.url, "--prefix", PREFIX,
                        "--index", "CAP2")  # fmt: skip
    assert "CAP2" in only.stdout and "PX3" not in only.stdout


def test_live_view_follows_the_channel(redis_server: LocalRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    publish_level(client, "PX3", 100.0, 1)  # before we join
    output = io.StringIO()
    console = Console(file=output, width=150, force_terminal=False)
    stop = StopSignal()
    target = WatchTarget(url=redis_server.url, password=None, prefix=PREFIX, known=("PX3", "CAP2"))

    def feed() -> None:
        wait_until(lambda: client.pubsub_numsub(f"{PREFIX}:levels")[0][1] == 1, what="watch")
        for seq in range(2, 12):
            publish_level(client, "PX3", 100.0 + seq, seq)
        publish_level(client, "CAP2", 250.0, 1)
        time.sleep(0.5)
        stop.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    problem = watch(target, stop, console, refresh_hz=10, footer=lambda: "footer-text")
    feeder.join()
    assert problem is None
    final = output.getvalue()
    assert row(final, "PX3")[1:3] == ["111.00", "+11.00"]
    assert row(final, "CAP2")[1] == "250.00"
    assert "11 updates" in final and "footer-text" in final


def test_watch_reports_a_missing_redis_and_keeps_trying() -> None:
    from streamer.localservices import free_port

    output = io.StringIO()
    stop = StopSignal()
    threading.Timer(1.0, stop.set).start()
    target = WatchTarget(url=f"redis://127.0.0.1:{free_port()}/0", password=None, prefix=PREFIX)
    assert watch(target, stop, Console(file=output, width=120), refresh_hz=10) is None
    assert "disconnected" in output.getvalue()
