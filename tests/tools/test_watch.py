"""``streamer watch`` against a real Redis: late joiners see the snapshot, then live updates."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import redis
from redis.typing import EncodableT, FieldT
from rich.console import Console

from streamer.commands.watch import WatchTarget, watch
from streamer.localservices import LocalRedis, free_port
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


def rows(text: str) -> list[list[str]]:
    """The cells of every table row (header and rules left out)."""
    return [
        [c.strip() for c in line.strip("│ ").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def row(text: str, series: str) -> list[str]:
    for cells in rows(text):
        if cells[0] == series:
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
    output = io.StringIO()
    stop = StopSignal()
    threading.Timer(1.0, stop.set).start()
    port = free_port()
    target = WatchTarget(url=f"redis://:sekret@127.0.0.1:{port}/0", password=None, prefix=PREFIX)
    assert watch(target, stop, Console(file=output, width=120), refresh_hz=10) is None
    screen = output.getvalue()
    assert "disconnected" in screen
    assert f"cannot read Redis at redis://:***@127.0.0.1:{port}/0: " in screen
    assert "sekret" not in screen


def test_once_says_redis_is_unreachable_in_one_line_with_the_password_masked() -> None:
    port = free_port()
    result = run_streamer("watch", "--once", "--redis-url", f"redis://:sekret@127.0.0.1:{port}/0")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"streamer watch: cannot read Redis at redis://:***@127.0.0.1:{port}/0: "
    )
    assert "Connection refused" in result.stderr and "(ConnectionError)" in result.stderr
    assert result.stderr.count("\n") == 1 and "sekret" not in result.stderr


def test_once_names_the_url_but_not_a_wrong_password(tmp_path: Path) -> None:
    with LocalRedis(workdir=tmp_path / "redis", password="right-one") as server:
        url = server.url.replace("://", "://:wrong-one@", 1)
        result = run_streamer("watch", "--once", "--redis-url", url)
    assert result.returncode == 1
    assert f"cannot read Redis at {server.url.replace('://', '://:***@', 1)}: " in result.stderr
    assert "(AuthenticationError)" in result.stderr
    assert "wrong-one" not in result.stderr + result.stdout


def test_once_without_series_under_the_prefix_points_to_the_prefixes_that_have_some(
    redis_server: LocalRedis,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    publish_level(client, "PX3", 100.0, 1)
    publish_level(client, "CAP2", 99.0, 1)
    result = run_streamer(
        "watch", "--once", "--redis-url", redis_server.url, "--prefix", "streamer"
    )
    assert result.returncode == 2
    assert result.stdout == ""  # no empty table
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"streamer watch: no series under prefix 'streamer' in {redis_server.url} "
        "(no streamer:index:* keys)"
    )
    assert (
        lines[1]
        == f"  prefixes with series in this database: {PREFIX} (2 series); try --prefix {PREFIX}"
    )
    assert "--config PATH" in lines[-1] and "--redis-url URL --prefix P" in lines[-1]


def test_once_on_an_empty_database_says_so_and_names_databases_with_keys(
    redis_server: LocalRedis,
) -> None:
    redis.Redis.from_url(redis_server.url.replace("/0", "/3")).set("something", "else")
    result = run_streamer("watch", "--once", "--redis-url", redis_server.url, "--prefix", PREFIX)
    assert result.returncode == 2
    err = result.stderr
    assert f"no series under prefix '{PREFIX}' in {redis_server.url}" in err
    assert "no other prefix has *:index:* keys in this database" in err
    assert "other databases of this server hold keys: db 3 (1 key)" in err
    assert f"--redis-url {redis_server.url.replace('/0', '/3')}" in err


def test_once_with_an_index_that_matches_nothing_lists_existing_ids(
    redis_server: LocalRedis,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    publish_level(client, "PX3", 100.0, 1)
    publish_level(client, "CAP2", 99.0, 1)
    watch_desk = ("watch", "--once", "--redis-url", redis_server.url, "--prefix", PREFIX)
    result = run_streamer(*watch_desk, "--index", "DJIA")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[:2] == [
        f"streamer watch: --index DJIA matches no series under prefix '{PREFIX}' "
        f"in {redis_server.url}",
        "  series there (2): CAP2, PX3",
    ]
    # One filter of two matching nothing: the other's rows are printed, and the miss is said.
    partial = run_streamer(*watch_desk, "--index", "DJIA", "--index", "px3")
    assert partial.returncode == 2
    assert row(partial.stdout, "PX3")[1] == "100.00"
    assert "CAP2" not in partial.stdout
    assert partial.stderr == (
        "streamer watch: --index DJIA matches no series (series there: CAP2, PX3)\n"
    )


def test_index_takes_any_case_and_shows_only_the_variants(redis_server: LocalRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for series in ("US500", "US500.TR", "US500.NTR", "US500.TECH", "US500C", "US500C.NTR"):
        publish_level(client, series, 6000.0, 1)
    result = run_streamer("watch", "--once", "--redis-url", redis_server.url, "--prefix", PREFIX,
                          "--index", "us500")  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = [cells[0] for cells in rows(result.stdout)]
    assert shown == ["US500", "US500.TR", "US500.NTR"]  # an id, then its variants


def test_live_view_in_80x24_keeps_coverage_and_says_what_was_cut(
    redis_server: LocalRedis,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    series = [f"IDX{i:02d}" for i in range(23)]
    for name in series:
        publish_level(client, name, 1000.0, 1)
    output = io.StringIO()
    console = Console(file=output, width=80, height=24, force_terminal=False)
    stop = StopSignal()
    threading.Timer(1.0, stop.set).start()
    target = WatchTarget(url=redis_server.url, password=None, prefix=PREFIX)
    assert watch(target, stop, console, refresh_hz=10, fit_height=True) is None
    frame = output.getvalue().splitlines()  # not a terminal: the final frame only
    assert len(frame) <= 24 and all(len(line) <= 80 for line in frame)
    header = next(line for line in frame if "Level" in line)
    assert "Coverage" in header and "Chg %" in header
    shown = [cells[0] for cells in rows("\n".join(frame))]
    assert shown == series[: len(shown)] and len(shown) == 24 - 7
    assert f"… {23 - len(shown)} more series (resize or use --index)" in frame
    assert frame[-1].startswith("live · ")


def test_live_view_keeps_the_links_in_a_footer_at_the_bottom(redis_server: LocalRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    series = [f"IDX{i:02d}" for i in range(23)]
    for name in series:
        publish_level(client, name, 1000.0, 1)
    output = io.StringIO()
    console = Console(file=output, width=80, height=24, force_terminal=False)
    stop = StopSignal()
    threading.Timer(1.0, stop.set).start()
    links = [
        ("broker", "mqtt://127.0.0.1:1883"),
        ("redis", redis_server.url),
        ("metrics", "http://127.0.0.1:9108/metrics"),
        ("gateway", "http://127.0.0.1:8080"),  # what the demo's footer will gain
    ]
    target = WatchTarget(url=redis_server.url, password=None, prefix=PREFIX)
    watch(
        target, stop, console, refresh_hz=10, fit_height=True, links=links, footer=lambda: "Ctrl-C"
    )
    frame = [line.rstrip() for line in output.getvalue().splitlines()]
    assert len(frame) == 24  # the layout fills the screen: the footer is on its last lines
    footer = frame[-3:]
    assert footer[0] == f"broker mqtt://127.0.0.1:1883 · redis {redis_server.url}"
    assert footer[1] == "metrics http://127.0.0.1:9108/metrics · gateway http://127.0.0.1:8080"
    assert footer[2].startswith("live · ") and footer[2].endswith(" · Ctrl-C")
    assert any("more series (resize or use --index)" in line for line in frame[:-3])


def test_live_view_says_when_the_prefix_is_empty_until_levels_arrive(
    redis_server: LocalRedis,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    target = WatchTarget(url=redis_server.url, password=None, prefix=PREFIX)
    empty = io.StringIO()
    stop = StopSignal()
    threading.Timer(0.8, stop.set).start()
    watch(target, stop, Console(file=empty, width=200), refresh_hz=10)
    screen = empty.getvalue()
    assert f"no series under prefix '{PREFIX}' in {redis_server.url}" in screen
    assert f"still watching {PREFIX}:levels for levels" in screen
    assert "Level" not in screen  # no empty table

    # The service starts publishing: the first level replaces the message with the table.
    output = io.StringIO()
    stop = StopSignal()

    def feed() -> None:
        wait_until(lambda: client.pubsub_numsub(f"{PREFIX}:levels")[0][1] == 1, what="watch")
        publish_level(client, "PX3", 101.0, 1)
        time.sleep(0.5)
        stop.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    watch(target, stop, Console(file=output, width=200), refresh_hz=10)
    feeder.join()
    assert row(output.getvalue(), "PX3")[1] == "101.00"
    assert "no series under prefix" not in output.getvalue()
