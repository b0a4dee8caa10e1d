"""What the engine hands back to its caller: outcome counts, changed series, audit records."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from streamer.engine.funds import NavRecord

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
FUTURE_TS = "future_ts"  # stamped further ahead of its receipt than max_future_s
OUTSIDE_SESSION = "outside_session"  # stamped outside the trading session of its indices
UNKNOWN_PAIR = "unknown_pair"  # an FX pair that is not two known ISO 4217 codes


class SeriesTable(NamedTuple):
    """Every series at once, in series order, as arrays (NaN: not known): for consumers of
    all series (metrics) that want no Python object per series."""

    series: Sequence[str]
    level: npt.NDArray[np.float64]
    prev_close: npt.NDArray[np.float64]
    stale: npt.NDArray[np.int64]
    constituents: npt.NDArray[np.int64]
    deviation_bps: npt.NDArray[np.float64]  # against the last reference level


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
class CloseRecord:
    """The official close of one series at the end of one session."""

    series: str
    index: str
    session: str  # ISO date of the session
    close_ns: int  # the session's scheduled close (UTC ns)
    level: float  # this series' close
    divisor: float
    pr_close: float  # the price-return close of the index
    tr_close: float  # the total-return close (NaN-free: PR when the index has no TR base)
    ntr_close: float
    gross_points: float  # dividend points of the session (TR)
    net_points: float  # after withholding (NTR)


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


@dataclass(frozen=True, slots=True)
class LevelColumns:
    """Published fields of several series at one moment, a column each, in series order:
    the publish path formats them a column at a time (a :class:`SeriesLevel` per series
    and cycle was most of a cycle's cost at 2,000 series); :meth:`rows` gives them one by
    one.  Each series appears once."""

    series: list[str]
    level: npt.NDArray[np.float64]
    divisor: npt.NDArray[np.float64]
    source_ts: npt.NDArray[np.int64]
    prev_close: npt.NDArray[np.float64]
    change: npt.NDArray[np.float64]
    change_pct: npt.NDArray[np.float64]
    stale: npt.NDArray[np.int64]
    coverage: npt.NDArray[np.float64]
    constituents: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.series)

    def rows(self) -> list[SeriesLevel]:
        return [
            SeriesLevel(*fields)
            for fields in zip(
                self.series,
                self.level.tolist(),
                self.divisor.tolist(),
                self.source_ts.tolist(),
                self.prev_close.tolist(),
                self.change.tolist(),
                self.change_pct.tolist(),
                self.stale.tolist(),
                self.coverage.tolist(),
                self.constituents.tolist(),
                strict=True,
            )
        ]

    @classmethod
    def of_rows(cls, levels: Sequence[SeriesLevel]) -> LevelColumns:
        """The columns of levels made one by one (tests, tools)."""

        def floats(name: str) -> npt.NDArray[np.float64]:
            return np.array([getattr(level, name) for level in levels], dtype=np.float64)

        def ints(name: str) -> npt.NDArray[np.int64]:
            return np.array([getattr(level, name) for level in levels], dtype=np.int64)

        return cls(
            [level.series for level in levels],
            floats("level"),
            floats("divisor"),
            ints("source_ts"),
            floats("prev_close"),
            floats("change"),
            floats("change_pct"),
            ints("stale"),
            floats("coverage"),
            ints("constituents"),
        )

    @classmethod
    def empty(cls) -> LevelColumns:
        return cls.of_rows([])


Outcomes = defaultdict[tuple[str, str], int]


class BatchResult(msgspec.Struct, gc=False):
    """What one ``Engine.apply`` did.  A Struct: one is made per micro-batch, and msgspec
    builds it in C.  The rare outputs start as empty tuples and become lists only when the
    engine adds to them (a list per field and batch was a third of the cost of a
    single-tick batch)."""

    # (outcome, reason) -> count
    outcomes: Outcomes = msgspec.field(default_factory=partial(defaultdict, int))
    changed: list[str] = msgspec.field(default_factory=list)  # series that moved, index order
    audit: Sequence[AuditRecord] = ()
    deviations: Mapping[str, float] = msgspec.field(default_factory=dict)  # series -> bps vs ref
    rejected_actions: Sequence[tuple[str, str]] = ()  # (id, why)
    accepted_actions: Sequence[str] = ()  # ids now pending or applied
    closes: Sequence[CloseRecord] = ()
    seq_resets: Sequence[str] = ()  # symbols whose producer restarted its seq
    rejected_references: Sequence[tuple[str, str]] = ()  # (series, why)
    newest_ts: int = 0  # ts of the newest tick accepted in the batch (0: none)
    funds_changed: list[str] = msgspec.field(default_factory=list)  # fund ids, fund order
    navs: Sequence[NavRecord] = ()  # official NAVs taken

    def add_audit(self, records: Iterable[AuditRecord]) -> None:
        self.audit = _grown(self.audit, records)

    def reject_action(self, action_id: str, reason: str) -> None:
        self.rejected_actions = _grown(self.rejected_actions, [(action_id, reason)])

    def accept_action(self, action_id: str) -> None:
        self.accepted_actions = _grown(self.accepted_actions, [action_id])

    def add_closes(self, records: Iterable[CloseRecord]) -> None:
        self.closes = _grown(self.closes, records)

    def add_navs(self, records: Iterable[NavRecord]) -> None:
        self.navs = _grown(self.navs, records)

    def add_seq_resets(self, symbols: Iterable[str]) -> None:
        self.seq_resets = _grown(self.seq_resets, symbols)

    def reject_reference(self, series: str, reason: str) -> None:
        self.rejected_references = _grown(self.rejected_references, [(series, reason)])


T = TypeVar("T")


def _grown(items: Sequence[T], more: Iterable[T]) -> list[T]:
    """``items`` as a list (the same one when it already is) with ``more`` appended."""
    grown = items if isinstance(items, list) else list(items)
    grown.extend(more)
    return grown
