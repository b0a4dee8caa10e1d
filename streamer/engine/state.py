"""The engine's checkpointable state, in one place.

Everything the engine needs to go on exactly as if nothing had happened is here, and nothing
that can be derived: the universe's columns (symbols with their market data, membership with
its parameters and weights, FX rates), divisors, total-return bases and dividend points,
pending and applied actions, reference levels, and where each calendar stands.  Index sums,
unpriced counts, newest-tick stamps, row caches and dirty marks are the engine's, rebuilt from
this on restore.  ``engine.snapshot`` turns it into a versioned, typed document and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.engine.arrays import F64
from streamer.engine.funds import FundState
from streamer.engine.returns import ReturnsBook
from streamer.engine.schedule import Agenda, Cursor
from streamer.engine.universe import Universe


@dataclass(slots=True)
class EngineState:
    universe: Universe
    divisor: F64  # per index; NaN until established
    returns: ReturnsBook
    agenda: Agenda  # pending actions (and the calendars' next closes, re-derived on restore)
    applied: dict[str, int] = field(default_factory=dict)  # action id -> effective
    references: dict[str, tuple[float, int]] = field(default_factory=dict)  # (level, ts)
    cursors: dict[str, Cursor] = field(default_factory=dict)  # calendar -> where it stands
    # Bumped by every change other than market data (ticks, FX, references): a checkpoint
    # rewrites its structural part only when this moved.
    revision: int = 0
    funds: FundState | None = None  # None: no fund configured (or a fresh state)
