"""`streamer bench kernel` runs and reports its figures (never asserted: not a test of speed)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_kernel_benchmark_reports_every_scenario_and_batch_size() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "bench", "kernel", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    rows = {(row["symbols"], row["indices"], row["batch"]) for row in report["kernel"]}
    assert {(30, 1, 1), (500, 15, 100), (10_000, 2_000, 1), (10_000, 2_000, 10_000)} <= rows
    for row in report["kernel"]:
        assert row["ticks"] > 0 and row["ticks_per_s"] > 0
        assert row["speedup"] is None or row["speedup"] > 0
    assert report["peak_rss_mb"] > 0
    funds = {row["batch"] for row in report["kernel"] if row["funds"] == 500}
    assert funds == {1, 100, 10_000}
    assert set(report["funds_vs_indices"]) == {"1", "100", "10000"}
