"""The watch board: late-joiner seeding, channel updates, and the rendered rows."""

from __future__ import annotations

from rich.console import Console

from streamer.tools.levels_view import (
    LevelsBoard,
    format_age,
    render_board,
    series_matches,
    sparkline,
)

NOW = 1_763_700_000_000_000_000
HASH = {
    "level": "44012.35", "divisor": "0.1624538636", "ts": str(NOW - 2_500_000_000),
    "source_ts": str(NOW - 2_600_000_000), "seq": "7", "prev_close": "44000.0",
    "change": "12.35", "change_pct": "0.028068", "stale": "0", "coverage": "1.0",
}  # fmt: skip


def rendered(board: LevelsBoard, width: int = 140) -> list[str]:
    console = Console(width=width, record=True, force_terminal=False, file=None)
    with console.capture() as capture:
        console.print(render_board(board, NOW, "levels", "live", width=width))
    return capture.get().splitlines()


def row_of(lines: list[str], series: str) -> list[str]:
    for line in lines:
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells and cells[0] == series:
            return cells
    raise AssertionError(f"no row for {series} in:\n" + "\n".join(lines))


def test_a_late_joiner_starts_from_the_hash_and_the_history() -> None:
    board = LevelsBoard(known=["DEMO30", "DEMO30.TR"])
    board.seed("DEMO30", HASH, [43990.0, 44001.0, 44012.35])
    lines = rendered(board)
    assert row_of(lines, "DEMO30")[:8] == [
        "DEMO30",
        "44,012.35",
        "+12.35",
        "+0.03%",
        "0.1624538636",
        "0",
        "100.0%",
        "2.5s",
    ]
    assert row_of(lines, "DEMO30")[8] == sparkline([43990.0, 44001.0, 44012.35])
    assert row_of(lines, "DEMO30.TR")[1] == "waiting"


def test_channel_updates_move_the_row_and_old_ones_are_ignored() -> None:
    board = LevelsBoard(known=["DEMO30"])
    board.seed("DEMO30", HASH, [44012.35])
    assert not board.apply({"index": "DEMO30", "level": 1.0, "seq": 7})  # in the snapshot
    assert board.apply({
        "index": "DEMO30", "level": 43950.5, "divisor": 0.1624538636, "seq": 8,
        "ts": NOW - 100_000_000, "change": -49.5, "change_pct": -0.1125, "stale": 3,
        "coverage": 0.9, "prev_close": 44000.0, "source_ts": NOW - 200_000_000,
    })  # fmt: skip
    cells = row_of(rendered(board), "DEMO30")
    assert cells[1:8] == ["43,950.50", "-49.50", "-0.11%", "0.1624538636", "3", "90.0%", "0.1s"]
    assert board.messages == 1


def test_new_series_appear_after_the_configured_ones_and_filters_apply() -> None:
    board = LevelsBoard(wanted=["US500"], known=["US500", "DEMO30"])
    assert board.apply({"index": "US500.NTR", "level": 100.0, "seq": 1})
    assert not board.apply({"index": "DEMO30", "level": 1.0, "seq": 1})
    assert [r.series for r in board.rows()] == ["US500", "US500.NTR"]
    assert series_matches("US500.TR", ["US500"]) and not series_matches("US500C", ["US500"])


def test_a_narrow_terminal_drops_the_divisor_before_the_numbers() -> None:
    board = LevelsBoard(known=["DEMO30"])
    board.seed("DEMO30", HASH, [44012.35])
    wide, narrow = rendered(board, 140), rendered(board, 84)
    header = next(line for line in wide if "Level" in line)
    narrow_header = next(line for line in narrow if "Level" in line)
    assert "Divisor" in header and "Divisor" not in narrow_header
    assert "44,012.35" in row_of(narrow, "DEMO30")
    assert all(len(line) <= 84 for line in narrow)


def test_sparkline_and_age_formatting() -> None:
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█"
    assert sparkline([5.0, 5.0]) == "▄▄"
    assert sparkline([]) == ""
    assert [format_age(s) for s in (0.04, 12.0, 75.0, 7300.0)] == ["0.0s", "12s", "1m15s", "2h01m"]
