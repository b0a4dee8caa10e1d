"""Builders shared by the engine's hand-worked tests: small indices, a hand-moved clock."""

from __future__ import annotations

from streamer.config import ConstituentSpec, IndexDefinition, Method, QualitySettings, Variant
from streamer.engine import Engine

T0 = 1_763_700_000_000_000_000  # 2025-11-21, UTC ns
SECOND = 1_000_000_000
REL = 1e-12


class ManualClock:
    """Market time, moved by hand and passed to the engine, so that no test depends on
    wall-clock time."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def at(seconds: float) -> int:
    return T0 + int(seconds * SECOND)


def member(symbol: str, price: float | None = None, **params: float | str) -> ConstituentSpec:
    return ConstituentSpec(symbol=symbol, price=price, **params)  # type: ignore[arg-type]


def index(
    index_id: str,
    method: Method,
    *constituents: ConstituentSpec,
    divisor: float | None = None,
    base_value: float | None = None,
    currency: str = "USD",
    variants: tuple[Variant, ...] = ("price",),
) -> IndexDefinition:
    return IndexDefinition(
        id=index_id,
        method=method,
        currency=currency,
        divisor=divisor,
        base_value=base_value,
        variants=variants,
        constituents=constituents,
    )


def engine_of(*definitions: IndexDefinition, start_ns: int = T0) -> Engine:
    return Engine(definitions, QualitySettings(max_move_pct=50.0), start_ns=start_ns)


def level(engine: Engine, series: str) -> float:
    value = engine.level_of(series)
    assert value is not None, f"{series} has no level"
    return value
