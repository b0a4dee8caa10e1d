"""Log lines: no input can forge one, and bad input is logged at a throttled rate."""

from __future__ import annotations

import json
import logging
import re

import pytest

from streamer.logs import JsonLogFormatter, TextLogFormatter, ThrottledLog, escape


def record(event: str, **fields: object) -> logging.LogRecord:
    entry = logging.LogRecord("streamer.input", logging.WARNING, __file__, 1, event, None, None)
    entry.fields = fields
    return entry


@pytest.mark.parametrize(
    "hostile",
    [
        "ca-1\n2026-12-03 10:00:00 INFO streamer.service action applied id=forged",
        "x\r\ny",
        "a\x1b[31mred",
        "sym reason=ok",
        'q"uote',
        "",
    ],
)
def test_text_lines_cannot_be_forged_by_ids_or_symbols(hostile: str) -> None:
    line = TextLogFormatter().format(record("action not applied", id=hostile, reason="bad"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    # Each field is one token, a JSON string when it is not plain, which reads back as sent.
    tokens = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line)
    assert [k for k, _ in tokens] == ["id", "reason"]
    value = tokens[0][1]
    assert (json.loads(value) if value.startswith('"') else value) == hostile


def test_an_event_text_is_escaped_too() -> None:
    line = TextLogFormatter().format(record("bad\nline"))
    assert "\n" not in line and "bad\\x0aline" in line


def test_json_lines_escape_by_construction() -> None:
    line = JsonLogFormatter().format(record("action not applied", id="a\nb"))
    assert "\n" not in line
    assert json.loads(line)["id"] == "a\nb"


def test_escape_leaves_printable_text_alone() -> None:
    assert escape("AAPL ünïcode") == "AAPL ünïcode"
    assert escape("\x00\x7f\x9f") == "\\x00\\x7f\\x9f"


def test_throttled_log_says_how_many_it_skipped(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttled = ThrottledLog(logging.getLogger("streamer.input"), 10.0, lambda: now[0])
    caplog.set_level(logging.WARNING)
    for second in range(25):
        now[0] = float(second)
        throttled.warning("malformed", "malformed payload dropped", 2)
    lines = [r for r in caplog.records if r.getMessage() == "malformed payload dropped"]
    assert len(lines) == 3  # at 0, 10 and 20 s
    assert [getattr(r, "fields", {}).get("suppressed") for r in lines] == [None, 18, 18]
    assert not throttled.allows("malformed")
    now[0] = 30.0
    assert throttled.allows("malformed")
