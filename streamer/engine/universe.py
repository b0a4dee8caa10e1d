"""Symbols and index membership as flat numpy arrays.

Membership is a list of entries ``(symbol, index, q)`` kept sorted by symbol, so the entries
of one symbol are a contiguous row (CSR: ``row_ptr[sid]:row_ptr[sid + 1]``).  Ticks touch rows;
index sums are scattered from rows with one ``np.bincount``.  Mutations (corporate actions,
index changes) are rare, so they rebuild the derived arrays wholesale.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

NO_TS = np.iinfo(np.int64).min
NO_SEQ = -1


def float_cells(a: F64) -> memoryview[float]:
    """A memoryview of a float64 array: indexing it gives and takes Python floats, without
    numpy's scalar boxing (about half the cost per access on the per-tick path).  The view
    aliases the array, so it is valid until the array is replaced (not merely written)."""
    return a.data.cast("B").cast("d")


def int_cells(a: I64) -> memoryview[int]:
    """``float_cells`` for an int64 array."""
    return a.data.cast("B").cast("q")


class SymbolCells:
    """The per-symbol arrays of a ``SymbolBook`` as memoryviews, for per-tick code."""

    __slots__ = ("floor_ts", "fresh_ns", "held", "last_seq", "last_ts", "price", "source_ts")

    def __init__(self, book: SymbolBook) -> None:
        self.price = float_cells(book.price)
        self.held = float_cells(book.held)
        self.last_ts = int_cells(book.last_ts)
        self.last_seq = int_cells(book.last_seq)
        self.floor_ts = int_cells(book.floor_ts)
        self.source_ts = int_cells(book.source_ts)
        self.fresh_ns = int_cells(book.fresh_ns)


class SymbolIds(dict[str, int]):
    """symbol -> sid; -1 for an unknown symbol, so lookups run as one C-level map()."""

    def __missing__(self, symbol: str) -> int:
        return -1


class SymbolBook:
    """Per-symbol state, indexed by a dense symbol id (sid), grown on demand."""

    def __init__(self, capacity: int = 64) -> None:
        self.ids: dict[str, int] = SymbolIds()
        self.names: list[str] = []
        self.currency: list[str] = []
        capacity = max(capacity, 8)
        self.price: F64 = np.full(capacity, np.nan)  # last accepted, constituent currency
        self.held: F64 = np.full(capacity, np.nan)  # a big move waiting for confirmation
        self.last_ts: I64 = np.full(capacity, NO_TS, dtype=np.int64)  # newest tick ts seen
        self.last_seq: I64 = np.full(capacity, NO_SEQ, dtype=np.int64)
        self.floor_ts: I64 = np.full(capacity, NO_TS, dtype=np.int64)  # last price-adjusting action
        self.source_ts: I64 = np.zeros(capacity, dtype=np.int64)  # ts of last accepted tick
        self.fresh_ns: I64 = np.zeros(capacity, dtype=np.int64)  # clock at last accepted tick
        self.floors_set = False  # any floor_ts set: the check can be skipped until one is
        self.cells = SymbolCells(self)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, symbol: str, currency: str, now_ns: int) -> int:
        sid = len(self.names)
        if sid == len(self.price):
            self._grow(2 * sid)
        self.ids[symbol] = sid
        self.names.append(symbol)
        self.currency.append(currency)
        self.fresh_ns[sid] = now_ns
        return sid

    def _grow(self, capacity: int) -> None:
        def grown(a: npt.NDArray[np.generic], fill: float | int) -> npt.NDArray[np.generic]:
            out = np.full(capacity, fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        self.price = grown(self.price, np.nan)  # type: ignore[assignment]
        self.held = grown(self.held, np.nan)  # type: ignore[assignment]
        self.last_ts = grown(self.last_ts, NO_TS)  # type: ignore[assignment]
        self.last_seq = grown(self.last_seq, NO_SEQ)  # type: ignore[assignment]
        self.floor_ts = grown(self.floor_ts, NO_TS)  # type: ignore[assignment]
        self.source_ts = grown(self.source_ts, 0)  # type: ignore[assignment]
        self.fresh_ns = grown(self.fresh_ns, 0)  # type: ignore[assignment]
        self.cells = SymbolCells(self)

    def lookup(self, symbols: list[str]) -> I64:
        """Symbol ids, -1 for unknown symbols."""
        return np.fromiter(map(self.ids.__getitem__, symbols), dtype=np.int64, count=len(symbols))


class Membership:
    """Entries ``(sid, index, params, q)`` sorted by sid, with CSR rows and FX slots."""

    def __init__(self) -> None:
        self.sid: I64 = np.zeros(0, dtype=np.int64)
        self.index: I64 = np.zeros(0, dtype=np.int64)
        self.shares: F64 = np.zeros(0)
        self.iwf: F64 = np.zeros(0)
        self.awf: F64 = np.zeros(0)
        self.withholding: F64 = np.zeros(0)
        self.q: F64 = np.zeros(0)
        self.fx_slot: I64 = np.zeros(0, dtype=np.int64)
        # Derived by rebuild()/refresh_fx():
        self.row_ptr: I64 = np.zeros(1, dtype=np.int64)
        self.qfx: F64 = np.zeros(0)  # q * fx factor, NaN where the FX rate is not known yet
        self.qfx0: F64 = np.zeros(0)  # qfx with NaN as 0: for scattering deltas
        self.count: I64 = np.zeros(0, dtype=np.int64)  # constituents per index
        # The same entries ordered by index (CSC), for one-pass segment reductions:
        self.by_index: I64 = np.zeros(0, dtype=np.int64)  # entry positions, sorted by index
        self.sid_by_index: I64 = np.zeros(0, dtype=np.int64)
        self.qfx0_by_index: F64 = np.zeros(0)
        self.nonempty: I64 = np.zeros(0, dtype=np.int64)  # indices with at least one entry
        self.segment_starts: I64 = np.zeros(0, dtype=np.int64)  # their first CSC position
        self.version = 0  # counts rebuilds: derived per-index figures are stale after one

    def __len__(self) -> int:
        return len(self.sid)

    def append(
        self,
        sid: I64,
        index: I64,
        shares: F64,
        iwf: F64,
        awf: F64,
        withholding: F64,
        q: F64,
        fx_slot: I64,
    ) -> None:
        self.sid = np.concatenate([self.sid, sid])
        self.index = np.concatenate([self.index, index])
        self.shares = np.concatenate([self.shares, shares])
        self.iwf = np.concatenate([self.iwf, iwf])
        self.awf = np.concatenate([self.awf, awf])
        self.withholding = np.concatenate([self.withholding, withholding])
        self.q = np.concatenate([self.q, q])
        self.fx_slot = np.concatenate([self.fx_slot, fx_slot])

    def remove(self, mask: Mask) -> None:
        keep = ~mask
        for name in ("sid", "index", "shares", "iwf", "awf", "withholding", "q", "fx_slot"):
            setattr(self, name, getattr(self, name)[keep])

    def rebuild(self, n_symbols: int, n_indices: int, fx_factor: F64) -> None:
        """Re-sort by (sid, index) and derive rows, counts and FX-converted weights."""
        self.version += 1
        order = np.lexsort((self.index, self.sid))
        for name in ("sid", "index", "shares", "iwf", "awf", "withholding", "q", "fx_slot"):
            setattr(self, name, getattr(self, name)[order])
        self.row_ptr = np.searchsorted(self.sid, np.arange(n_symbols + 1)).astype(np.int64)
        self.count = np.bincount(self.index, minlength=n_indices).astype(np.int64)
        self.by_index = np.argsort(self.index, kind="stable").astype(np.int64)
        self.sid_by_index = self.sid[self.by_index]
        self.nonempty = np.flatnonzero(self.count).astype(np.int64)
        ends = np.cumsum(self.count)
        self.segment_starts = (ends - self.count)[self.nonempty]
        self.refresh_fx(fx_factor)

    def refresh_fx(self, fx_factor: F64) -> None:
        self.qfx = self.q * fx_factor[self.fx_slot]
        self.qfx0 = np.where(np.isfinite(self.qfx), self.qfx, 0.0)
        self.qfx0_by_index = self.qfx0[self.by_index]

    def of_index(self, j: int) -> I64:
        return np.flatnonzero(self.index == j)

    def find(self, sid: int, j: int) -> int:
        """Entry position of (sid, index j), or -1."""
        start, stop = int(self.row_ptr[sid]), int(self.row_ptr[sid + 1])
        hits = np.flatnonzero(self.index[start:stop] == j)
        return start + int(hits[0]) if len(hits) else -1

    def spans(self, sids: I64) -> tuple[I64, I64]:
        """First entry position and entry count of the row of each of ``sids``."""
        starts = self.row_ptr.take(sids)
        return starts, self.row_ptr.take(sids + 1) - starts

    def rows(self, sids: I64) -> I64:
        """Entry positions of every row in ``sids``, concatenated (vectorized CSR gather)."""
        return concatenated_ranges(*self.spans(sids))


def concatenated_ranges(starts: I64, lengths: I64) -> I64:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without the loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Position k of the output belongs to range r: starts[r] + (k - offset[r]).
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)
