"""What the engine hands back to its caller: outcome counts, changed series, audit records."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class SeriesLevel:
    """A published series (``ID``, ``ID.TR``, ``ID.NTR``) at one moment."""

    series: str
    level: float
    divisor: float
    source_ts: int
    prev_close: float
    change: float
    change_pct: float
    stale: int
    coverage: float
    constituents: int


Outcomes = defaultdict[tuple[str, str], int]


def new_outcomes() -> Outcomes:
    return defaultdict(int)


@dataclass(slots=True)
class BatchResult:
    # (outcome, reason) -> count; a defaultdict because Counter() costs a microsecond here.
    outcomes: Outcomes = field(default_factory=new_outcomes)
    changed: list[str] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)
    deviations: dict[str, float] = field(default_factory=dict)
    rejected_actions: list[tuple[str, str]] = field(default_factory=list)
