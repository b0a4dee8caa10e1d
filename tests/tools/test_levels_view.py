"""The watch board: late-joiner seeding, channel updates, and the rendered rows."""

from __future__ import annotations

from rich.console import Console

from streamer.tools.levels_view import (
    COLUMNS,
    LevelsBoard,
    fit_columns,
    format_age,
    render_board,
    series_matches,
    series_order,
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


# The demo universe's 23 series, as `streamer watch --config config/streamer.toml` lists them.
DEMO_SERIES = [
    "DEMO30", "DEMO30.TR", "DEMO30.NTR", "GLOBAL40", "GLOBAL40.NTR", "US500", "US500.TR",
    "US500.NTR", "US500.COMM", "US500.DISC", "US500.ENRG", "US500.FINL", "US500.HLTH",
    "US500.INDU", "US500.MATL", "US500.REIT", "US500.STAP", "US500.TECH", "US500.UTIL",
    "US500C", "US500C.NTR", "US500EW", "US500EW.TR",
]  # fmt: skip


def demo_board() -> LevelsBoard:
    board = LevelsBoard(known=DEMO_SERIES)
    for series in DEMO_SERIES:
        board.seed(series, HASH, [44000.0, 44012.35])
    return board


def screen(board: LevelsBoard, width: int, height: int, **kwargs: list[str]) -> list[str]:
    """What a width x height terminal shows: the board fitted to it, with a status line."""
    console = Console(width=width, height=height, force_terminal=False, file=None)
    with console.capture() as capture:
        console.print(render_board(board, NOW, "levels", "live", width, height, **kwargs))
    return capture.get().splitlines()


def test_an_80x24_terminal_keeps_coverage_and_says_how_many_rows_were_cut() -> None:
    lines = screen(demo_board(), 80, 24)
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    header = next(line for line in lines if "Level" in line)
    for column in ("Index", "Level", "Change", "Chg %", "Stale", "Coverage", "Age"):
        assert column in header, f"{column} dropped at 80 columns:\n{header}"
    assert "Divisor" not in header and "Trend" not in header
    shown = [s for s in DEMO_SERIES if any(line.startswith(f"│ {s} ") for line in lines)]
    assert shown == DEMO_SERIES[: len(shown)] and len(shown) == 24 - 7  # title, frame, 2 lines
    assert row_of(lines, "DEMO30")[5] == "100.0%"  # Coverage
    assert lines[-2] == f"… {len(DEMO_SERIES) - len(shown)} more series (resize or use --index)"
    assert lines[-1] == "live"


def test_a_tall_enough_terminal_cuts_nothing_and_wide_ones_get_the_sparkline() -> None:
    lines = screen(demo_board(), 120, 40)
    assert all(any(line.startswith(f"│ {s} ") for line in lines) for s in DEMO_SERIES)
    assert not any("more series" in line for line in lines)
    header = next(line for line in lines if "Level" in line)
    assert "Coverage" in header and "Trend" in header and "Divisor" in header
    middle = next(line for line in screen(demo_board(), 100, 40) if "Level" in line)
    assert "Coverage" in middle and "Trend" in middle and "Divisor" not in middle


def test_fit_columns_drops_divisor_then_sparkline_then_coverage() -> None:
    columns = [(h, j, 12 if h == "Index" else w) for h, j, w in COLUMNS]

    def kept(width: int) -> list[str]:
        return [h for h, _, _ in fit_columns(columns, width, 30)[0]]

    everything = [h for h, _, _ in COLUMNS]
    assert kept(200) == everything
    assert kept(100) == [h for h in everything if h != "Divisor"]
    assert kept(80) == [h for h in everything if h not in ("Divisor", "Trend")]
    assert kept(70) == [h for h in everything if h not in ("Divisor", "Trend", "Coverage")]


def test_index_filters_take_any_case_and_only_the_variants() -> None:
    assert [s for s in DEMO_SERIES if series_matches(s, ["us500"])] == [
        "US500",
        "US500.TR",
        "US500.NTR",
    ]
    assert [s for s in DEMO_SERIES if series_matches(s, ["US500.tech"])] == ["US500.TECH"]
    assert [s for s in DEMO_SERIES if series_matches(s, ["us500c"])] == ["US500C", "US500C.NTR"]
    assert not series_matches("US500.TR", ["US500.T"]) and not series_matches("US500", ["US50"])
    board = LevelsBoard(wanted=["us500"], known=DEMO_SERIES)
    assert [r.series for r in board.rows()] == ["US500", "US500.TR", "US500.NTR"]


def test_a_problem_replaces_the_table_until_a_level_arrives_and_notes_go_under_it() -> None:
    board = LevelsBoard(known=["DEMO30"])
    problem = ["no series under prefix 'x'", "try --prefix streamer"]
    lines = screen(board, 80, 24, problem=problem)
    assert lines == ["levels", *problem, "live"]
    board.seed("DEMO30", HASH, [44012.35])
    lines = screen(board, 80, 24, problem=problem, notes=["--index FOO matches no series"])
    assert row_of(lines, "DEMO30")[1] == "44,012.35"
    assert not any("prefix" in line for line in lines)
    assert lines[-2:] == ["--index FOO matches no series", "live"]


def test_series_without_a_config_are_listed_each_id_with_its_variants() -> None:
    found = ["US500C.NTR", "US500.TR", "US500.TECH", "US500", "US500C", "US500.NTR", "DEMO30.TR"]
    assert sorted(found, key=series_order) == [
        "DEMO30.TR", "US500", "US500.TR", "US500.NTR", "US500.TECH", "US500C", "US500C.NTR",
    ]  # fmt: skip
    board = LevelsBoard()
    for series in found:
        board.apply({"index": series, "level": 1.0, "seq": 1})
    assert [r.series for r in board.rows()] == sorted(found, key=series_order)
