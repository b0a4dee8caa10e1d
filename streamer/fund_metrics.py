"""Per-fund Prometheus gauges, rendered as exposition text from the engine's fund figures.

The same way as the per-series gauges (``series_metrics``): no labelled child per fund, one
family rendered at a time on the gauge timer, an unknown value (no iNAV yet, no NAV history
yet) without a sample.  Fund ids need no escaping as label values ([A-Za-z0-9._-]).

- ``streamer_fund_inav{fund}``, ``streamer_fund_premium_bps{fund}``;
- ``streamer_fund_tracking_difference_bps{fund,window}``: ``intraday`` (live, since the last
  NAV), and from the latest official NAV ``day``, ``mtd``, ``ytd``, ``inception``;
- ``streamer_fund_tracking_error_bps{fund,window}``: ``1y`` (252 sessions, fewer while the
  history is shorter) and ``3y`` (756, once there are that many).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from streamer.engine.funds import FundTable

TD_WINDOWS = (("day", "td_day_bps"), ("mtd", "td_mtd_bps"), ("ytd", "td_ytd_bps"),
              ("inception", "td_inception_bps"))  # fmt: skip
TE_WINDOWS = (("1y", "te_1y_bps"), ("3y", "te_3y_bps"))
# Every family render() writes (for dashboards and their tests).
FUND_FAMILIES = (
    "streamer_fund_inav",
    "streamer_fund_premium_bps",
    "streamer_fund_tracking_difference_bps",
    "streamer_fund_tracking_error_bps",
)


def _family(name: str, help_text: str, samples: Sequence[tuple[str, float]]) -> str:
    lines = [f"{name}{{{labels}}} {value!r}" for labels, value in samples if math.isfinite(value)]
    body = "\n".join(lines)
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{body}{chr(10) if body else ''}"


def render(table: FundTable) -> bytes:
    """Every fund family as exposition text (empty when no fund is configured)."""
    if not table.funds:
        return b""
    funds = table.funds
    inav = [(f'fund="{f}"', v) for f, v in zip(funds, table.inav.tolist(), strict=True)]
    premium = [(f'fund="{f}"', v) for f, v in zip(funds, table.premium_bps.tolist(), strict=True)]
    td = [(f'fund="{f}",window="intraday"', v)
          for f, v in zip(funds, table.td_bps.tolist(), strict=True)]  # fmt: skip
    te = []
    for f, figures in zip(funds, table.figures, strict=True):
        td += [(f'fund="{f}",window="{w}"', figures[key]) for w, key in TD_WINDOWS]
        te += [(f'fund="{f}",window="{w}"', figures[key]) for w, key in TE_WINDOWS]
    parts = [
        _family("streamer_fund_inav", "Indicative NAV per unit of the fund.", inav),
        _family(
            "streamer_fund_premium_bps",
            "Listing price minus iNAV, in basis points of the iNAV.",
            premium,
        ),
        _family(
            "streamer_fund_tracking_difference_bps",
            "Fund return minus tracked series return over the window, in basis points.",
            td,
        ),
        _family(
            "streamer_fund_tracking_error_bps",
            "Annualized standard deviation of daily return differences, in basis points.",
            te,
        ),
    ]
    return "".join(parts).encode()
