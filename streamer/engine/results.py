"""What the engine hands back to its caller: outcome counts, changed series, audit records."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import msgspec

# Outcomes and reasons of streamer_ticks_total{outcome,reason}.
ACCEPTED = "accepted"
HELD = "held"
REJECTED = "rejected"

OK = "ok"
CONFIRMED = "confirmed"  # a held tick that the next tick confirmed
BIG_MOVE = "big_move"  # held: moved more than max_move_pct from the last accepted price
UNCONFIRMED = "unconfirmed"  # a held tick the next tick did not confirm
BAD_PRICE = "bad_price"  # non-finite or non-positive
UNKNOWN_SYMBOL = "unknown_symbol"
OUT_OF_ORDER = "out_of_order"  # seq not increasing, or ts older than the last tick's
PRE_ACTION = "pre_action"  # ts before a price-adjusting corporate action already applied


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One applied corporate action or index change, as seen by one index."""

    action_id: str
    action: str
    index: str
    symbol: str
    effective: int
    divisor_before: float
    divisor_after: float
    level_before: float
    level_after: float


class SeriesLevel(msgspec.Struct, frozen=True, gc=False):
    """A published series (``ID``, ``ID.TR``, ``ID.NTR``) at one moment.  A Struct: one is
    built per series per publish cycle."""

    series: str
    level: float
    divisor: float
    source_ts: int  # ts of the newest accepted tick among the constituents (0: none yet)
    prev_close: float
    change: float
    change_pct: float
    stale: int  # constituents without a tick for stale_after_s
    coverage: float  # share of constituents that are not stale
    constituents: int


Outcomes = defaultdict[tuple[str, str], int]


class BatchResult(msgspec.Struct, gc=False):
    """What one ``Engine.apply`` did.  A Struct: one is made per micro-batch, and msgspec
    builds it in C (a dataclass with default factories costs three times as much)."""

    # (outcome, reason) -> count
    outcomes: Outcomes = msgspec.field(default_factory=partial(defaultdict, int))
    changed: list[str] = msgspec.field(default_factory=list)  # series that moved, index order
    audit: list[AuditRecord] = msgspec.field(default_factory=list)
    deviations: dict[str, float] = msgspec.field(default_factory=dict)  # series -> bps vs ref
    rejected_actions: list[tuple[str, str]] = msgspec.field(default_factory=list)  # (id, why)
