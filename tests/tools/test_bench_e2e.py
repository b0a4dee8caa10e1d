"""``streamer bench e2e --quick --json``: the whole benchmark in a few seconds, as JSON."""

from __future__ import annotations

import json

from streamer.bench.e2e import cpu_times, steal_pct
from tests.tools.support import run_streamer


def test_quick_benchmark_produces_its_json() -> None:
    result = run_streamer("bench", "e2e", "--quick", "--json", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["quick"] is True
    assert report["universe"]["series"] > 0 and report["universe"]["symbols"] > 0
    for run in ("single_json", "batch_msgpack", "ceiling"):
        steps = report[run]["steps"]
        assert steps, run
        # At these low rates nothing may be lost: the service (or the ceiling consumer)
        # accounts for every tick the publisher sent.
        assert all(s["sent"] > 0 and s["lost"] == 0 and s["processed"] == s["sent"]
                   for s in steps), steps  # fmt: skip
    latency = report["latency"]
    assert latency["ticks"] > 0
    assert latency["end_to_end_ms"]["samples"] > 0 and latency["end_to_end_ms"]["p50"] > 0
    assert latency["service_ms"]["samples"] > 0
    # The floor forwarder published a level for the paced ticks, each carrying its stamp.
    floor = report["latency_floor"]
    assert floor["ticks"] > 0 and floor["end_to_end_ms"]["samples"] >= floor["ticks"] * 0.9
    # Linux: the host's steal time over each latency window, a share of all CPU time.
    for window in (latency, floor):
        assert window["steal_pct"] is not None and 0.0 <= window["steal_pct"] <= 100.0
    assert report["service_peak_rss_mb"] > 10
    assert set(report["targets"]) == {
        "single_json_ticks_per_s", "ratio_to_ceiling", "batch_msgpack_ticks_per_s",
        "p99_ms_at_5000",
    }  # fmt: skip


def test_table_output_names_every_measurement() -> None:
    result = run_streamer("bench", "e2e", "--help")
    assert result.returncode == 0
    assert "--quick" in result.stdout and "--json" in result.stdout


def test_steal_share_from_proc_stat() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user.
    before = cpu_times("cpu  100 0 50 800 10 0 5 35 40 0\ncpu0 50 0 25 400 5 0 2 18 20 0\n")
    after = cpu_times("cpu  300 0 150 1500 10 0 5 135 90 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    assert before == (35, 1000) and after == (135, 2100)
    assert steal_pct(before, after) == round(100 * 100 / 1100, 2)
    assert steal_pct(None, after) is None and steal_pct(after, after) is None
    assert cpu_times("intr 1 2 3\n") is None
