"""``streamer demo``: README command 1, end to end, for a few seconds."""

from __future__ import annotations

import re

from tests.tools.support import run_streamer


def test_demo_runs_the_whole_stack_and_cleans_up() -> None:
    result = run_streamer("demo", "--duration", "3", timeout=90)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "metrics  http://127.0.0.1:" in out
    assert "page     http://127.0.0.1:" in out
    # The final frame shows live levels for the demo universe's indices.
    assert re.search(r"DEMO30\s+│\s+[\d,]+\.\d\d\s+│", out), out
    assert re.search(r"GLOBAL40\s+│\s+[\d,]+\.\d\d\s+│", out), out
    assert re.search(r"simulate: [\d,]+ ticks", out), out
    # Under the final frame's table: the footer with the URLs (label url, ...) and the status.
    frame = out.splitlines()
    bottom = max(i for i, line in enumerate(frame) if line.startswith("└"))
    footer = " · ".join(frame[bottom + 1 : bottom + 4])
    for label, url in (
        ("page", "http"),
        ("broker", "mqtt"),
        ("redis", "redis"),
        ("metrics", "http"),
    ):
        assert re.search(rf"\b{label} {url}://127\.0\.0\.1:\d+", footer), footer
    assert "updates" in footer and "Ctrl-C to stop" in footer
    assert "logs kept" not in out  # nothing failed, so the working directory is gone
