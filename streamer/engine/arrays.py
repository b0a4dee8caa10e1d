"""Array types and helpers shared by the engine's modules.

The per-tick path reads and writes numpy arrays through memoryviews ("cells"): indexing one
gives and takes Python scalars without numpy's boxing, about half the cost per access.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

NO_TS = int(np.iinfo(np.int64).min)
MAX_TS = int(np.iinfo(np.int64).max)
NO_SEQ = -1


def float_cells(a: F64) -> memoryview[float]:
    """A memoryview of a float64 array.  It aliases the array, so it is valid until the array
    is replaced (not merely written)."""
    return a.data.cast("B").cast("d")


def int_cells(a: I64) -> memoryview[int]:
    """``float_cells`` for an int64 array."""
    return a.data.cast("B").cast("q")


def concatenated_ranges(starts: I64, lengths: I64) -> I64:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without the loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Position k of the output belongs to range r: starts[r] + (k - offset[r]).
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


def column(data: bytes, dtype: type[np.generic]) -> npt.NDArray[np.generic]:
    """A writable array from bytes written by ``ndarray.tobytes`` (checkpoints)."""
    return np.frombuffer(data, dtype=dtype).copy()
