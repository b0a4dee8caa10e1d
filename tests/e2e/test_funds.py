"""Index funds through ``streamer run`` against the private mosquitto and Redis.

The fund FND holds, per creation unit of 2 units, 2 AAA and 2 BBB and 10 of cash, and tracks
PX3 ((AAA + BBB + CCC) / 0.5).  With AAA = 100, BBB = 50, CCC = 10:

    iNAV = (2 * 100 + 2 * 50 + 10) / 2 = 155          PX3 = 160 / 0.5 = 320
    listing 155.31 (no quote): premium (155.31 - 155) / 155 = 20 bps
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServiceConfig, ServiceConfigFactory
from tests.integration.harness import (
    Feed,
    ServiceProcess,
    Store,
    metric,
    promtool,
    scrape,
    streamer_command,
    wait_for,
)

FUND = """
id = "FND"
name = "Test fund"
currency = "USD"
tracks = "PX3"
listing = "FNDL"
basket = [{ symbol = "AAA", shares = 2.0 }, { symbol = "BBB", shares = 2.0 }]
cash = 10.0
units = 2.0
expense_ratio = 0.0365
inav_interval_ms = 0
"""


@pytest.fixture
def config(service_config: ServiceConfigFactory) -> ServiceConfig:
    made = service_config(state={"checkpoint_interval_s": 0.2})
    funds = made.path.parent / "funds"
    funds.mkdir()
    (funds / "fnd.toml").write_text(textwrap.dedent(FUND).strip() + "\n", encoding="utf-8")
    text = made.path.read_text(encoding="utf-8")
    made.path.write_text('funds = ["funds/*.toml"]\n' + text, encoding="utf-8")
    return made


def fund_hash(store: Store, config: ServiceConfig) -> dict[str, str]:
    return store.hgetall(f"{config.prefix}:fund:FND")


def fund_hash_with(
    store: Store, config: ServiceConfig, field: str, value: str | None = None
) -> Callable[[], dict[str, str] | None]:
    """The fund's hash once ``field`` is set (to ``value``, if given); None before."""

    def probe() -> dict[str, str] | None:
        fields = fund_hash(store, config)
        present = fields.get(field)
        return fields if present and (value is None or present == value) else None

    return probe


def start(config: ServiceConfig) -> ServiceProcess:
    process = ServiceProcess(config.path, config.metrics_url)
    process.wait_connected()
    return process


def test_inav_premium_directory_channel_and_metrics(config: ServiceConfig) -> None:
    store = Store(config.redis_url)
    channel = store.pubsub()
    channel.subscribe(f"{config.prefix}:levels:FND")
    service = start(config)
    feed = Feed(int(config.mqtt_url.rsplit(":", 1)[1]))
    try:
        feed.ticks(
            [
                {"symbol": "AAA", "price": 100.0},
                {"symbol": "BBB", "price": 50.0},
                {"symbol": "CCC", "price": 10.0},
            ]
        )
        wait_for(lambda: fund_hash(store, config).get("inav") == "155.0", what="the iNAV")
        feed.tick("FNDL", 155.31)
        fields = wait_for(fund_hash_with(store, config, "listing", "155.31"), what="the listing")
        assert fields["kind"] == "fund"
        assert fields["tracks"] == "PX3"
        assert float(fields["premium_bps"]) == pytest.approx(20.0, rel=1e-9)
        assert fields["coverage"] == "1.0"
        entry = json.loads(store.hgetall(f"{config.prefix}:series")["FND"])
        assert entry["kind"] == "fund" and entry["keys"]["navs"] == f"{config.prefix}:navs:FND"

        def fund_message() -> dict[str, object] | None:
            message = channel.get_message(timeout=0.1)
            if message and message["type"] == "message":
                decoded: dict[str, object] = json.loads(message["data"])
                return decoded if decoded.get("listing") == 155.31 else None
            return None

        message = wait_for(fund_message, what="a fund message on P:levels:FND")
        assert message["kind"] == "fund" and message["fund"] == "FND"

        def gauges() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            samples = scrape(config.metrics_url)
            return samples if metric(samples, "streamer_fund_premium_bps", fund="FND") else None

        samples = wait_for(gauges, what="the fund gauges")
        assert metric(samples, "streamer_fund_inav", fund="FND") == 155.0
        assert metric(
            samples, "streamer_fund_tracking_difference_bps", fund="FND", window="intraday"
        ) == pytest.approx(0.0)
        tool = promtool()
        if tool is not None:
            with urllib.request.urlopen(config.metrics_url + "/metrics", timeout=5) as page:
                text = page.read()
            checked = subprocess.run(
                [tool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        feed.close()
        service.kill()


def test_the_official_nav_is_published_and_survives_kill_9(config: ServiceConfig) -> None:
    store = Store(config.redis_url)
    service = start(config)
    feed = Feed(int(config.mqtt_url.rsplit(":", 1)[1]))
    try:
        feed.ticks(
            [
                {"symbol": "AAA", "price": 100.0},
                {"symbol": "BBB", "price": 50.0},
                {"symbol": "CCC", "price": 10.0},
            ]
        )
        wait_for(lambda: fund_hash(store, config).get("inav") == "155.0", what="the iNAV")
        feed.control({"action": "close", "id": "close-1", "index": "PX3"})
        navs = wait_for(lambda: store.xrange(f"{config.prefix}:navs:FND"), what="the NAV")
        [(_, nav)] = navs
        assert float(nav["nav"]) == 155.0  # the first NAV: no earlier one to accrue fee from
        assert float(nav["index_close"]) == 320.0
        assert nav["session"]
        # Then the market moves: AAA 108 -> iNAV (216 + 100 + 10) / 2 = 163 against the NAV.
        feed.tick("AAA", 108.0)
        wait_for(lambda: fund_hash(store, config).get("inav") == "163.0", what="the move")
        seq_before = int(fund_hash(store, config)["seq"])
        service.kill()  # SIGKILL: no drain, no final checkpoint
        store.client.hdel(f"{config.prefix}:fund:FND", "nav_prev")
        service = start(config)
        fields = wait_for(fund_hash_with(store, config, "nav_prev"), what="a republish")
        assert int(fields["seq"]) > seq_before  # seq continues across the restart
        # The base is the stored NAV (a fresh start would take today's iNAV, 163, instead).
        assert fields["nav_prev"] == "155.0"
        assert fields["inav"] == "163.0"
        # fund +5.16%, PX3 (108 + 50 + 10) / 0.5 = 336: +5%  ->  TD +16.13 bps
        assert float(fields["td_bps"]) == pytest.approx((163 / 155 - 336 / 320) * 1e4)
        exported = subprocess.run(
            [*streamer_command(), "state", "export", "--config", str(config.path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        [stored] = json.loads(exported.stdout)["structure"]["funds"]
        assert stored["id"] == "FND" and stored["navs"] == [155.0]
        assert stored["index_closes"] == [320.0]
    finally:
        feed.close()
        service.kill()


def test_check_config_lists_the_fund_and_refuses_a_bad_one(config: ServiceConfig) -> None:
    done = subprocess.run(
        [*streamer_command(), "check-config", "--config", str(config.path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "fund FND" in done.stdout and "tracks PX3" in done.stdout
    bad = Path(config.path.parent / "funds" / "fnd.toml")
    bad.write_text(bad.read_text().replace('tracks = "PX3"', 'tracks = "NOPE"'))
    done = subprocess.run(
        [*streamer_command(), "check-config", "--config", str(config.path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "fnd.toml: field `tracks`: unknown series 'NOPE'" in done.stderr
