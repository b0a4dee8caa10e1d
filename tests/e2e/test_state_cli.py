"""The stored state as an operator sees it: reconciliation with an edited config at start,
``streamer state show|export|reset``, and the directory store, through the CLI.

Indices (tests/conftest.py): PX3 = (AAA + BBB + CCC) / 0.5, CAP2 = (AAA * 1e6 + DDD * 1e6) / 1e6.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.localservices import LocalMosquitto, LocalRedis
from tests.conftest import DEFAULT_INDICES, ServiceConfig, write_service_config
from tests.integration.harness import Feed, ServiceProcess, Store, streamer_command, wait_for

SPLIT = {"action": "split", "id": "split-AAA", "symbol": "AAA", "ratio": 2.0}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [*streamer_command(), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def run_a_day(config: ServiceConfig, broker: LocalMosquitto, store: Store) -> float:
    """Seed prices and a split; returns PX3's divisor after it (stopped cleanly)."""
    service = ServiceProcess(config.path, config.metrics_url)
    feed = Feed(broker.port)
    try:
        service.wait_connected()
        for symbol, price in (("AAA", 100.0), ("BBB", 50.0), ("CCC", 25.0), ("DDD", 10.0)):
            feed.tick(symbol, price, ts=time.time_ns())
        wait_for(lambda: store.hget("test:index:PX3", "level") == "350.0", what="350")
        feed.control(SPLIT)
        wait_for(lambda: store.xlen("test:actions") == 2, what="the split")
    finally:
        feed.close()
        assert service.terminate() == 0
    return float(store.hget("test:index:PX3", "divisor") or 0)


@pytest.fixture
def servers() -> Iterator[tuple[LocalMosquitto, LocalRedis]]:
    with LocalMosquitto() as broker, LocalRedis() as redis_server:
        yield broker, redis_server


def test_show_export_and_a_deliberate_reset(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path
) -> None:
    broker, redis_server = servers
    config = write_service_config(tmp_path, broker.url, redis_server.url)
    store = Store(redis_server.url)
    divisor = run_a_day(config, broker, store)
    assert divisor == pytest.approx(0.5 * 125 / 175)

    shown = cli("state", "show", "--config", str(config.path))
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    by_id = {i["id"]: i for i in summary["indices"]}
    assert by_id["PX3"]["divisor"] == pytest.approx(divisor)
    assert by_id["PX3"]["members"] == 3 and summary["applied_actions"] == 1

    exported = json.loads(cli("state", "export", "--config", str(config.path), "--index",
                              "PX3").stdout)  # fmt: skip
    assert [r["id"] for r in exported["structure"]["indices"]] == ["PX3"]
    assert len(exported["structure"]["members"]["sid"]) == 3

    # Forgetting everything takes --yes; a running service's state cannot be reset under it.
    refused = cli("state", "reset", "--config", str(config.path))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    service = ServiceProcess(config.path, config.metrics_url)
    try:
        service.wait_connected()
        busy = cli("state", "reset", "--config", str(config.path), "--yes")
        assert busy.returncode == 2 and "running" in busy.stderr
    finally:
        service.terminate()

    # One index reset: it starts afresh (the config's divisor), the other continues.
    reset = cli("state", "reset", "--config", str(config.path), "--index", "PX3", "--force")
    assert reset.returncode == 0, reset.stderr
    service = ServiceProcess(config.path, config.metrics_url)
    try:
        service.wait_connected()
        wait_for(lambda: store.hget("test:index:PX3", "divisor") == "0.5", what="PX3 afresh")
        assert float(store.hget("test:index:CAP2", "divisor") or 0) == 1e6  # cap: no change
        restored = [e for e in service.log_events() if e["event"] == "state restored"][-1]
        assert restored["indices_kept"] == 1 and restored["indices_new"] == 1
    finally:
        service.terminate()
    gone = cli("state", "reset", "--config", str(config.path), "--yes", "--force")
    assert gone.returncode == 0
    assert json.loads(cli("state", "show", "--config", str(config.path)).stdout) == {
        "stored": False,
        "store": "redis test:state:*",
    }


def test_an_edited_config_is_reconciled_explicitly(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path
) -> None:
    broker, redis_server = servers
    config = write_service_config(tmp_path, broker.url, redis_server.url)
    store = Store(redis_server.url)
    divisor = run_a_day(config, broker, store)

    # PX3 gains a constituent in the config: the start is refused, in one line.
    changed = dict(DEFAULT_INDICES)
    changed["px3.toml"] = DEFAULT_INDICES["px3.toml"].replace(
        '{ symbol = "CCC" },', '{ symbol = "CCC" },\n  { symbol = "EEE", price = 5.0 },'
    )
    config = write_service_config(tmp_path, broker.url, redis_server.url, changed)
    start = subprocess.run(
        [*streamer_command(), "run", "--config", str(config.path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert start.returncode == 2
    [line] = start.stderr.strip().splitlines()
    assert "index PX3" in line and "+EEE" in line and "--reset-index PX3" in line

    # With --reset-index the operator starts it afresh; CAP2 continues.
    service = ServiceProcess(config.path, config.metrics_url, args=("--reset-index", "PX3"))
    try:
        service.wait_connected()
        assert float(store.hget("test:index:PX3", "divisor") or 0) == 0.5
    finally:
        service.terminate()

    # CAP2 removed from the config: dropped, with a line saying so.
    only_px3 = {"px3.toml": changed["px3.toml"]}
    config = write_service_config(tmp_path, broker.url, redis_server.url, only_px3)
    (tmp_path / "indices" / "cap2.toml").unlink()
    service = ServiceProcess(config.path, config.metrics_url)
    try:
        service.wait_connected()
        dropped = [e for e in service.log_events() if str(e["event"]).startswith("index dropped")]
        assert [e["index"] for e in dropped][-1:] == ["CAP2"]
    finally:
        service.terminate()
    assert divisor != 0.5


def test_the_directory_store_keeps_the_state_through_restarts(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path
) -> None:
    broker, redis_server = servers
    config = write_service_config(
        tmp_path, broker.url, redis_server.url, state={"store": "directory", "directory": "st"}
    )
    store = Store(redis_server.url)
    divisor = run_a_day(config, broker, store)
    assert (tmp_path / "st" / "current.msgpack").exists()
    assert len(list((tmp_path / "st").glob("structure-*.msgpack"))) == 1
    assert not store.client.exists("test:state:structure")  # not in Redis
    service = ServiceProcess(config.path, config.metrics_url)
    try:
        service.wait_connected()
        wait_for(lambda: store.hget("test:index:PX3", "divisor") is not None, what="PX3")
        assert float(store.hget("test:index:PX3", "divisor") or 0) == pytest.approx(divisor)
    finally:
        service.terminate()
    shown = json.loads(cli("state", "show", "--config", str(config.path)).stdout)
    assert shown["store"] == str(tmp_path / "st") and shown["applied_actions"] == 1
