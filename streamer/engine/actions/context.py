"""What an action handler may see and do: a narrow view of the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from streamer.engine.arrays import I64
from streamer.engine.results import AuditRecord
from streamer.engine.universe import Universe
from streamer.engine.weighting import Weighting
from streamer.fund_config import Basket

Outcome = list[AuditRecord] | str  # audit records, or the reason the action was rejected


class ActionContext(Protocol):
    @property
    def universe(self) -> Universe:
        """Symbols, membership and FX, with their mutation API."""
        ...

    def index_slot(self, index_id: str) -> int | None:
        """The slot of an index, None if no such index."""
        ...

    def index_id(self, j: int) -> str: ...

    def weighting(self, j: int) -> Weighting: ...

    def divisor_of(self, j: int) -> float:
        """NaN while the index is not established (no complete prices yet)."""
        ...

    def level(self, j: int) -> float:
        """The price-return level of index j (NaN while not established)."""
        ...

    def unpriced(self, j: int) -> int:
        """Members of index j without a price (or FX rate)."""
        ...

    def adjust(
        self,
        indices: Iterable[int],
        change: Callable[[], None],
        action: str,
        action_id: str,
        symbol: str,
        effective: int,
    ) -> list[AuditRecord]:
        """Apply ``change`` with the one divisor adjustment: levels stay where they were."""
        ...

    def first_prices(self, sids: I64) -> None:
        """Symbols just given their first price: recompute every index holding them."""
        ...

    def add_dividend_points(self, j: int, gross: float, net: float) -> None:
        """A regular dividend went ex in index j (TR/NTR reinvest it)."""
        ...

    def replace_basket(self, fund_id: str, basket: Basket) -> bool:
        """A fund's new basket, now (False: no such fund)."""
        ...

    def roll(
        self, indices: Iterable[int] | None, effective: int, action_id: str = ""
    ) -> list[AuditRecord]:
        """Take the official close of these indices (None: all) now, on demand."""
        ...
