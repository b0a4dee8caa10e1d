"""Total return (TR) and net total return (NTR) chained from the previous close.

    TR_t  = TR_close  * (PR_t + gross_dividend_points) / PR_close
    NTR_t = NTR_close * (PR_t + net_dividend_points)   / PR_close

Dividend points are ``sum(div_i * fx_i * q_i) / divisor`` of the dividends that went ex since
the last close (net: after withholding tax).  ``roll`` starts a new day from the current levels.
"""

from __future__ import annotations

import numpy as np

from streamer.engine.arrays import F64, I64

ALL = slice(None)


class ReturnsBook:
    def __init__(self, n_indices: int) -> None:
        self.pr_close: F64 = np.full(n_indices, np.nan)
        self.tr_close: F64 = np.full(n_indices, np.nan)
        self.ntr_close: F64 = np.full(n_indices, np.nan)
        self.gross_points: F64 = np.zeros(n_indices)
        self.net_points: F64 = np.zeros(n_indices)

    def start(self, indices: I64, pr_level: F64) -> None:
        """A new index's first level is the base of all three variants."""
        self.pr_close[indices] = pr_level
        self.tr_close[indices] = pr_level
        self.ntr_close[indices] = pr_level
        self.gross_points[indices] = 0.0
        self.net_points[indices] = 0.0

    def add_dividend(self, j: int, gross_points: float, net_points: float) -> None:
        self.gross_points[j] += gross_points
        self.net_points[j] += net_points

    def total(self, pr_level: F64, indices: I64 | slice = ALL) -> F64:
        """TR levels of ``indices`` (default all) from their PR levels ``pr_level``."""
        result: F64 = (
            self.tr_close[indices]
            * (pr_level + self.gross_points[indices])
            / self.pr_close[indices]
        )
        return result

    def net(self, pr_level: F64, indices: I64 | slice = ALL) -> F64:
        """NTR levels of ``indices`` (default all) from their PR levels ``pr_level``."""
        result: F64 = (
            self.ntr_close[indices] * (pr_level + self.net_points[indices]) / self.pr_close[indices]
        )
        return result

    def roll(self, indices: I64, pr_level: F64) -> None:
        """Close the day of ``indices``, whose PR levels are ``pr_level``: today's levels
        become the bases and the dividend points start over."""
        live = np.isfinite(pr_level) & np.isfinite(self.pr_close[indices])
        js, pr = indices[live], pr_level[live]
        tr, ntr = self.total(pr, js), self.net(pr, js)
        self.tr_close[js] = tr
        self.ntr_close[js] = ntr
        self.pr_close[js] = pr
        self.gross_points[js] = 0.0
        self.net_points[js] = 0.0
