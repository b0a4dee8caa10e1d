"""Per-series Prometheus gauges, rendered from arrays rather than one labelled child each.

At 10,000 series, prometheus-client's labelled gauges made a 1.44 MB page whose scrape held
the event loop for ~200 ms, and setting them every second took ~80 ms more.  Here the values
come from the engine's :class:`~streamer.engine.results.SeriesTable` (arrays, no object per
series), and the page for them is rendered as exposition text one family at a time on the
gauge timer, yielding to the event loop between families (~2-3 ms each at 10,000 series).  A
scrape serves the text as it stands: it costs a concatenation, whatever the series count.

Which series get these gauges is configurable (``[metrics] series``: glob patterns over
series ids, default every series): a desk with 10,000 series may want a hundred on its
dashboards and the rest only in Redis.  A value that is not known (NaN: no level yet, no close
yet, no reference) has no sample, so a panel shows nothing rather than NaN.

Series ids need no escaping as label values ([A-Za-z0-9._-], checked when the config loads).
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections.abc import Iterator, Sequence
from itertools import chain, repeat

import numpy as np
import numpy.typing as npt

from streamer.engine.results import SeriesTable
from streamer.outputs import number_texts

# name, help, the SeriesTable column
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("streamer_index_level", "Latest index level of the series.", "level"),
    ("streamer_index_prev_close", "Previous official close of the series.", "prev_close"),
    (
        "streamer_stale_constituents",
        "Constituents of the index without a tick for stale_after_s.",
        "stale",
    ),
    (
        "streamer_constituents",
        "Constituents of the index (the denominator of the stale ratio).",
        "constituents",
    ),
    (
        "streamer_reference_deviation_bps",
        "Computed level minus the official reference level, in basis points of the latter.",
        "deviation_bps",
    ),
)
# Series rendered between two turns of the event loop (~1-2 ms of rendering).
RENDER_CHUNK = 1_000
LAST_CLOSE = (
    "streamer_last_close_timestamp_seconds",
    "Scheduled close time of the last official close taken, per series.",
)


def series_filter(patterns: Sequence[str]) -> re.Pattern[str]:
    """One pattern for the globs (``*``, ``?``, ``[..]``) of ``[metrics] series``."""
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class SeriesMetrics:
    """The per-series families for one set of series ids (series order), as text."""

    def __init__(self, series: Sequence[str], patterns: Sequence[str] = ("*",)) -> None:
        wanted = series_filter(patterns)
        self.series = list(series)
        self._position = {s: k for k, s in enumerate(self.series)}
        self.selected = np.array([bool(wanted.match(s)) for s in self.series], dtype=np.bool_)
        chosen = [s for s, keep in zip(self.series, self.selected.tolist(), strict=True) if keep]
        self._heads = {
            name: [f'{name}{{index="{s}"}} '.encode() for s in chosen] for name, _, _ in FAMILIES
        }
        self._heads[LAST_CLOSE[0]] = [f'{LAST_CLOSE[0]}{{index="{s}"}} '.encode() for s in chosen]
        self.last_close_s = np.full(len(self.series), np.nan)
        self._text: dict[str, bytes] = {}

    @property
    def count(self) -> int:
        """Series with gauges."""
        return int(self.selected.sum())

    def closed(self, series: str, close_s: float) -> None:
        k = self._position.get(series)
        if k is not None:
            self.last_close_s[k] = close_s

    def render_family(self, name: str, help_text: str, values: npt.NDArray[np.generic]) -> None:
        """The exposition text of one gauge family from one value per series."""
        for _ in self._render_steps(name, help_text, values):
            pass

    def _render_steps(
        self, name: str, help_text: str, values: npt.NDArray[np.generic]
    ) -> Iterator[None]:
        """Render one family ``RENDER_CHUNK`` series at a time, yielding after each chunk (the
        caller may give the event loop a turn there); the family's text changes at the end."""
        picked = values[self.selected] if len(values) == len(self.selected) else values[:0]
        floats = picked.astype(np.float64, copy=False)
        known = np.isfinite(floats)
        heads = self._heads[name]
        parts = [f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".encode()]
        for lo in range(0, len(heads), RENDER_CHUNK):
            hi = lo + RENDER_CHUNK
            chunk_heads, chunk_values = heads[lo:hi], floats[lo:hi]
            chunk_known = known[lo:hi]
            if not chunk_known.all():
                at = np.flatnonzero(chunk_known).tolist()
                chunk_heads = [chunk_heads[k] for k in at]
                chunk_values = chunk_values[chunk_known]
            texts = number_texts(chunk_values.tolist())  # finite: never null
            if texts:
                parts.append(b"".join(chain.from_iterable(zip(chunk_heads, texts, repeat(b"\n")))))
            yield
        self._text[name] = b"".join(parts)

    async def refresh(self, table: SeriesTable) -> None:
        """Render every family from ``table``, yielding to the event loop after every
        ``RENDER_CHUNK`` series: a family of 10,000 series rendered at once held the loop
        for 15-20 ms on a shared 2-core VM."""
        families = [
            (name, help_text, getattr(table, column)) for name, help_text, column in FAMILIES
        ]
        families.append((*LAST_CLOSE, self.last_close_s))
        for name, help_text, values in families:
            for _ in self._render_steps(name, help_text, values):
                await asyncio.sleep(0)

    def text(self) -> bytes:
        """Every family as rendered last (empty before the first refresh)."""
        return b"".join(self.parts())

    def parts(self) -> list[bytes]:
        """:meth:`text` a family at a time, uncopied: a page of 2-4 MB built anew for every
        scrape cost the event loop 1-4 ms in fresh memory alone."""
        return list(self._text.values())
