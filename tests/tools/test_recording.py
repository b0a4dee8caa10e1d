"""Reading recordings for replay: JSON Lines and CSV, topics by kind, errors by line."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from streamer.tools.recording import RecordingError, parse_timestamp, read_recording


def test_json_lines_give_topics_by_kind_and_keep_the_recorded_bytes(tmp_path: Path) -> None:
    path = tmp_path / "day.jsonl"
    path.write_text(
        '{"pair": "EURUSD", "rate": 1.0842, "ts": 100}\n'
        "\n"
        '{"symbol": "AAPL", "price": 189.25, "ts": 200, "seq": 1}\n'
        '[{"symbol": "MSFT", "price": 370.1, "ts": 300}, {"symbol": "AAPL", "price": 189.5}]\n'
        '{"action": "split", "symbol": "AAPL", "ratio": 4.0, "id": "ca-1", "effective": 250}\n'
        '{"index": "DJIA", "level": 12376.72, "ts": 400}\n',
        encoding="utf-8",
    )
    records = list(read_recording(path))
    assert [(r.kind, r.topic, r.ts) for r in records] == [
        ("fx", "fx/EURUSD", 100),
        ("tick", "ticks/AAPL", 200),
        ("tick", "ticks/MSFT", 300),
        ("tick", "ticks/AAPL", None),
        ("control", "control/split", None),
        ("reference", "reference/DJIA", 400),
    ]
    assert records[1].payload == b'{"symbol": "AAPL", "price": 189.25, "ts": 200, "seq": 1}'
    assert msgspec.msgpack.decode(records[1].encoded("msgpack")) == {
        "symbol": "AAPL",
        "price": 189.25,
        "ts": 200,
        "seq": 1,
    }


def test_csv_with_header_and_iso_or_integer_times(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(
        "symbol,price,ts\n"
        "AAPL,189.25,1700000000000000000\n"
        "MSFT,370,2023-11-14T22:13:20.5Z\n"
        "IBM,150.5,\n",
        encoding="utf-8",
    )
    records = list(read_recording(path))
    assert [r.obj for r in records] == [
        {"symbol": "AAPL", "price": 189.25, "ts": 1_700_000_000_000_000_000},
        {"symbol": "MSFT", "price": 370.0, "ts": 1_700_000_000_500_000_000},
        {"symbol": "IBM", "price": 150.5},
    ]
    assert [r.topic for r in records] == ["ticks/AAPL", "ticks/MSFT", "ticks/IBM"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"symbol": "A", "price": 1.0}\n{"nonsense": 1}\n', "day.jsonl:2: not a tick"),
        ("{not json\n", "day.jsonl:1: invalid JSON"),
        ('{"symbol": "A", "price": 1.0, "ts": "yesterday"}\n', "integer nanoseconds"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "day.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecordingError, match=problem):
        list(read_recording(path))


def test_timestamps_need_a_zone() -> None:
    assert parse_timestamp("1970-01-01T00:00:01.000001+00:00") == 1_000_001_000
    with pytest.raises(RecordingError, match="time zone"):
        parse_timestamp("2024-01-02T10:00:00")
