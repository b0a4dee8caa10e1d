"""Constituents CSV files: what the column-at-a-time reading and checking must agree with.

Large universes are read and checked a column at a time (`streamer.config`); these properties
hold that fast path to the plain meaning of a file: every row a constituent, absent columns
and empty cells their defaults, and a definition refused exactly when one of its constituents
breaks a rule.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.config import ConstituentSpec, IndexDefinition, load_index, validate_index
from streamer.errors import ConfigError

OPTIONAL_COLUMNS = ("shares", "iwf", "awf", "currency", "withholding", "price")

symbols = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-", min_size=1, max_size=8)
positive = st.floats(min_value=1e-6, max_value=1e12, allow_nan=False, allow_infinity=False)
fraction = st.floats(min_value=0.01, max_value=1.0)
withholding = st.floats(min_value=0.0, max_value=0.99)
CELLS: dict[str, st.SearchStrategy[Any]] = {
    "shares": positive,
    "iwf": fraction,
    "awf": positive,
    "currency": st.sampled_from(["USD", "EUR", "JPY"]),
    "withholding": withholding,
    "price": positive,
}


@st.composite
def constituent_files(draw: st.DrawFn) -> tuple[list[str], list[dict[str, Any]], str, bool]:
    """(header, rows as values or None for an empty cell, the CSV style, has comments)."""
    columns = draw(st.lists(st.sampled_from(OPTIONAL_COLUMNS), unique=True))
    header = ["symbol", *columns]
    names = draw(st.lists(symbols, min_size=1, max_size=30, unique=True))
    rows = []
    for name in names:
        row: dict[str, Any] = {"symbol": name}
        for column in columns:
            row[column] = draw(st.none() | CELLS[column])  # None: the cell is left empty
        rows.append(row)
    style = draw(st.sampled_from(["plain", "quoted", "spaced"]))
    return header, rows, style, draw(st.booleans())


def _cell(value: Any) -> str:
    """A CSV cell: empty for None, a float exactly (repr round-trips)."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _csv_text(header: list[str], rows: list[dict[str, Any]], style: str, comments: bool) -> str:
    out = io.StringIO()
    if style == "quoted":
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    else:
        writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for k, row in enumerate(rows):
        cells = [_cell(row[name]) for name in header]
        if style == "spaced":  # blanks around numbers and codes, which reading ignores
            cells = [
                f" {cell} " if cell and name != "symbol" else cell
                for name, cell in zip(header, cells, strict=True)
            ]
        writer.writerow(cells)
        if comments and k % 3 == 0:
            out.write("# a comment line\n\n")
    return out.getvalue()


def _index_file(directory: Path, csv_text: str) -> Path:
    (directory / "ix.csv").write_text(csv_text, encoding="utf-8")
    toml = directory / "ix.toml"
    toml.write_text('id = "IX"\nmethod = "cap"\nbase_value = 100.0\nconstituents = "ix.csv"\n')
    return toml


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(constituent_files())
def test_every_row_is_read_as_written_with_defaults_for_the_rest(
    tmp_path: Path, drawn: tuple[list[str], list[dict[str, Any]], str, bool]
) -> None:
    header, rows, style, comments = drawn
    definition = load_index(_index_file(tmp_path, _csv_text(header, rows, style, comments)))
    expected = tuple(
        ConstituentSpec(**{k: v for k, v in row.items() if v is not None}) for row in rows
    )
    assert definition.constituents == expected


# Each field's values: good ones and ones a rule refuses (NaN, infinities, zero, negatives,
# out of range).
BAD_NUMBERS = [math.nan, math.inf, -math.inf, 0.0, -1.0]
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "shares": positive | st.sampled_from(BAD_NUMBERS),
    "iwf": fraction | st.sampled_from([*BAD_NUMBERS, 1.0000001, 2.0]),
    "awf": positive | st.sampled_from(BAD_NUMBERS),
    "withholding": withholding | st.sampled_from([math.nan, math.inf, -0.1, 1.0]),
    "price": st.none() | positive | st.sampled_from(BAD_NUMBERS),
    "currency": st.none() | st.sampled_from(["USD", "EUR", "ZZZ", "usd"]),
}


def _breaks_a_rule(c: ConstituentSpec) -> bool:
    """The rules of an index's constituents, one at a time and plainly."""
    finite_positive = [c.shares, c.awf] + ([c.price] if c.price is not None else [])
    return (
        any(not (math.isfinite(x) and x > 0.0) for x in finite_positive)
        or not (0.0 < c.iwf <= 1.0)
        or not (0.0 <= c.withholding < 1.0)
        or c.currency not in (None, "USD", "EUR")
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(FIELD_VALUES),
        min_size=1,
        max_size=12,
    )
)
def test_a_definition_is_refused_exactly_when_a_constituent_breaks_a_rule(
    fields: list[dict[str, Any]],
) -> None:
    constituents = tuple(
        ConstituentSpec(symbol=f"S{k}", **{f: v for f, v in values.items() if v is not None})
        for k, values in enumerate(fields)
    )
    definition = IndexDefinition(id="IX", method="cap", base_value=100.0, constituents=constituents)
    if any(map(_breaks_a_rule, constituents)):
        with pytest.raises(ConfigError):
            validate_index(definition)
    else:
        validate_index(definition)
