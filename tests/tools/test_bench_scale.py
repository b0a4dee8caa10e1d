"""``streamer bench scale --quick --json``: the report's shape (never its wall-clock figures)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from streamer.bench.scale import UniverseShape, build_universe, write_service_config
from streamer.config import load_settings
from tests.tools.support import run_streamer


def test_quick_scale_benchmark_reports_every_column() -> None:
    result = run_streamer("bench", "scale", "--quick", "--json", "--universe", "120x6",
                          timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["quick"] is True
    (universe,) = report["universes"]
    assert universe["universe"] == "120x6" and universe["series"] == 6
    assert universe["symbols"] <= 120 and universe["files"] == 12
    assert universe["startup"]["ready_s"] > 0 and universe["startup"]["metrics_s"] > 0
    latency = universe["latency"]
    assert latency["ticks"] > 0 and latency["end_to_end_ms"]["samples"] > 0
    assert latency["series_published"] > 0 and latency["redis_us_per_series"] > 0
    assert universe["batched"]["steps"], universe["batched"]
    assert all(s["lost"] == 0 for s in universe["batched"]["steps"])
    scrape = universe["scrape"]
    assert scrape["scrapes"] > 0 and scrape["page_bytes"] > 0 and scrape["probes"] > 0
    assert scrape["stall_ms"] is not None
    cycle = universe["cycle"]
    assert cycle["pings"] > 0 and cycle["ping_max_ms"] is not None
    assert cycle["latency_monitor_max_ms"] is not None
    assert universe["history_memory_mb"] is not None and universe["history_budget_mb"] > 0
    assert {"redis_us_per_series", "cycle_block_ms", "history_within_budget"} <= set(
        universe["targets"]
    )


def test_quick_scale_out_compares_one_process_with_two_shards() -> None:
    result = run_streamer("bench", "scale", "--scale-out", "--quick", "--json", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)["scale_out"]
    assert report["one_process"]["processes"] == 1 and report["two_shards"]["processes"] == 2
    for run in (report["one_process"], report["two_shards"]):
        steps = run["batched"]["steps"]
        # At the quick rate nothing is lost: the producer's partitioned batches reach their
        # shard, and each shard accepts every tick of its own.
        assert steps and all(s["lost"] == 0 and s["processed"] == s["sent"] for s in steps)
        assert run["latency"]["end_to_end_ms"]["samples"] > 0
        assert len(run["startup"]) == run["processes"]
    assert set(report["targets"]) == {"ratio"}


def test_universe_shape_parses_symbols_by_series() -> None:
    assert UniverseShape.parse("10000x2000") == UniverseShape(10_000, 2_000)
    assert UniverseShape.parse("520X23").label == "520x23"
    for bad in ("10000", "0x5", "ax3"):
        with pytest.raises(argparse.ArgumentTypeError):
            UniverseShape.parse(bad)


def test_regions_give_shards_disjoint_constituents(tmp_path: Path) -> None:
    universe = build_universe(UniverseShape(2000, 100), tmp_path, regions=2)
    members = {
        shard: {c.symbol for d in universe.definitions if d.id.startswith(shard)
                for c in d.constituents}
        for shard in ("A", "B")
    }  # fmt: skip
    assert members["A"] and members["B"] and not members["A"] & members["B"]
    # ~20 memberships per symbol, as the kernel benchmark's universe.
    assert universe.memberships == pytest.approx(20 * 2000, rel=0.05)
    config = write_service_config(tmp_path / "shard-A.toml", ["indices/A*.toml"], shard="A",
                                  tick_topics="constituents",
                                  batch_topics=["ticks/batch/A"])  # fmt: skip
    settings = load_settings(config)
    assert {d.id for d in settings.indices} == {
        d.id for d in universe.definitions if d.id.startswith("A")
    }
    assert settings.shard.name == "A" and "ticks/batch/A" in settings.mqtt.topics
