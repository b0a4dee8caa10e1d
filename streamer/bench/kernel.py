"""``streamer bench kernel``: throughput of the pure engine, and of a naive baseline.

Scenarios (symbols / indices / memberships per symbol):
  small   30 / 1 / 1         a price-weighted index (DJIA-like)
  medium  500 / 15 / ~4.6    a cap index, 11 sectors, equal, capped and top-100 variants
  large   10,000 / 2,000 / ~20  random memberships of 100 symbols per index
each at batch sizes 1, 100 and 10,000 ticks; and the funds scenario, 500 index funds of 500
holdings each over 10,000 symbols (250,000 holdings; one tracked index holds every symbol, so
each has a seed price), next to 500 indices of 500 members over 10,000 symbols (250,000
memberships): a fund's basket is valued by the same kernels as an index, so the two should
cost about the same.  Ticks are pre-built arrays of random symbols with
prices moving inside the quality band, so every tick is accepted and moves its indices; the
timed call is ``Engine.apply_tick_arrays`` (screening, conflation, scatter, the list of changed
series).  Per-index publishing metadata (staleness, newest tick ts) is computed when levels are
read for publishing, once per publish cycle, and is not part of this figure.

The baseline is what a straightforward implementation does: per tick, validate, store the
price and recompute every index holding the symbol from its members in pure Python.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from streamer.config import ConstituentSpec, IndexDefinition, QualitySettings
from streamer.engine import Engine
from streamer.fund_config import Basket, FundDefinition, HoldingSpec

HELP = "benchmark the calculation kernel (ticks/s, us per batch, peak RSS, speed-up vs naive)"

BATCH_SIZES = (1, 100, 10_000)
ROUNDS = 5  # timed rounds per measurement; the median round is reported


@dataclass(frozen=True)
class Scenario:
    name: str
    symbols: int
    indices: int
    definitions: list[IndexDefinition]
    funds: list[FundDefinition] = field(default_factory=list)
    naive: bool = True  # measure the naive baseline


@dataclass
class Figure:
    scenario: str
    symbols: int
    indices: int
    entries: int
    batch: int
    ticks: int
    ticks_per_s: float
    us_per_batch: float
    us_per_batch_rounds: list[float] = field(default_factory=list)  # sorted; the median is used
    naive_ticks_per_s: float | None = None
    speedup: float | None = None
    funds: int = 0
    holdings: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run (for smoke tests)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.5,
        help="time budget per measurement, warm-up and rounds together (default 1.5 s)",
    )


def _symbols(n: int) -> list[str]:
    return [f"S{i:05d}" for i in range(n)]


def _cap_spec(rng: np.random.Generator, symbol: str, price: float) -> ConstituentSpec:
    return ConstituentSpec(
        symbol=symbol,
        shares=float(rng.uniform(5e7, 5e9)),
        iwf=float(rng.uniform(0.5, 1.0)),
        price=price,
    )


def build_scenarios(rng: np.random.Generator) -> list[Scenario]:
    out = []
    names = _symbols(30)
    prices = rng.uniform(20, 500, 30)
    out.append(
        Scenario(
            "30 symbols / 1 index",
            30,
            1,
            [
                IndexDefinition(
                    id="PW30",
                    method="price",
                    divisor=0.15,
                    constituents=tuple(
                        ConstituentSpec(symbol=s, price=float(p))
                        for s, p in zip(names, prices, strict=True)
                    ),
                )
            ],
        )
    )

    names = _symbols(500)
    prices = rng.uniform(10, 1000, 500)
    specs = [_cap_spec(rng, s, float(p)) for s, p in zip(names, prices, strict=True)]
    sector = rng.integers(0, 11, 500)
    defs = [IndexDefinition(id="CAP", method="cap", divisor=1e9, constituents=tuple(specs))]
    defs += [
        IndexDefinition(
            id=f"SECTOR{k}",
            method="cap",
            base_value=1000.0,
            constituents=tuple(s for s, g in zip(specs, sector, strict=True) if g == k),
        )
        for k in range(11)
    ]
    defs.append(
        IndexDefinition(id="EW", method="equal", base_value=1000.0, constituents=tuple(specs))
    )
    defs.append(
        IndexDefinition(
            id="CAPPED",
            method="cap",
            base_value=1000.0,
            constituents=tuple(
                ConstituentSpec(
                    symbol=s.symbol,
                    shares=s.shares,
                    iwf=s.iwf,
                    awf=float(rng.uniform(0.3, 1.0)),
                    price=s.price,
                )
                for s in specs
            ),
        )
    )
    defs.append(
        IndexDefinition(
            id="TOP100", method="cap", base_value=1000.0, constituents=tuple(specs[:100])
        )
    )
    out.append(Scenario("500 symbols / 15 indices", 500, 15, defs))

    n_symbols, n_indices = 10_000, 2_000
    defs = cap_universe(rng, n_symbols, n_indices)
    out.append(Scenario("10,000 symbols / 2,000 indices", n_symbols, n_indices, defs))
    return out


MEMBERSHIPS_PER_SYMBOL = 20  # the large universe's shape: one tick moves ~20 indices


def cap_universe(
    rng: np.random.Generator,
    n_symbols: int,
    n_indices: int,
    memberships_per_symbol: int = MEMBERSHIPS_PER_SYMBOL,
    regions: int = 1,
    id_format: str = "IX{:04d}",
) -> list[IndexDefinition]:
    """Cap-weighted indices of random members, ~``memberships_per_symbol`` per symbol.

    Each index holds ``memberships_per_symbol * n_symbols / n_indices`` random symbols (at
    most all of its region).  ``regions`` > 1 splits symbols and indices into that many
    contiguous blocks, index block r drawing only from symbol block r (as a universe sharded
    by region shares no constituents between shards).  Index ids are ``id_format.format(k)``.
    """
    names = _symbols(n_symbols)
    prices = rng.uniform(5, 800, n_symbols)
    specs = [_cap_spec(rng, s, float(p)) for s, p in zip(names, prices, strict=True)]
    region_bounds = np.linspace(0, n_symbols, regions + 1).astype(np.int64)
    defs = []
    for k in range(n_indices):
        region = k * regions // n_indices
        lo, hi = int(region_bounds[region]), int(region_bounds[region + 1])
        per_index = max(1, min(hi - lo, round(memberships_per_symbol * n_symbols / n_indices)))
        members = lo + rng.choice(hi - lo, per_index, replace=False)
        defs.append(
            IndexDefinition(
                id=id_format.format(k),
                method="cap",
                base_value=1000.0,
                constituents=tuple(specs[i] for i in sorted(members)),
            )
        )
    return defs


FUND_COUNT, FUND_HOLDINGS = 500, 500


def build_fund_scenarios(rng: np.random.Generator) -> list[Scenario]:
    """500 x 500 index memberships, and 500 x 500 fund holdings, over 10,000 symbols."""
    n_symbols = 10_000
    names = _symbols(n_symbols)
    prices = rng.uniform(5, 800, n_symbols)
    specs = [_cap_spec(rng, s, float(p)) for s, p in zip(names, prices, strict=True)]

    def members() -> list[int]:
        return sorted(rng.choice(n_symbols, FUND_HOLDINGS, replace=False).tolist())

    indices = [
        IndexDefinition(
            id=f"IX{k:03d}",
            method="cap",
            base_value=1000.0,
            constituents=tuple(specs[i] for i in members()),
        )
        for k in range(FUND_COUNT)
    ]
    # Every symbol needs a price before funds have an iNAV: one tracked index seeds them all
    # (its 10,000 memberships are a twenty-fifth of the funds' holdings).
    tracked = IndexDefinition(id="ALL", method="cap", base_value=1000.0, constituents=tuple(specs))
    funds = [
        FundDefinition(
            id=f"F{k:03d}",
            tracks="ALL",
            listing=f"L{k:03d}",
            basket=Basket(
                holdings=tuple(
                    HoldingSpec(symbol=names[i], shares=float(rng.integers(1, 5000)))
                    for i in members()
                ),
                cash=1000.0,
                units=50_000.0,
            ),
        )
        for k in range(FUND_COUNT)
    ]
    return [
        Scenario(
            f"10,000 symbols / {FUND_COUNT} indices x {FUND_HOLDINGS}",
            n_symbols,
            FUND_COUNT,
            indices,
            naive=False,
        ),
        Scenario(
            f"10,000 symbols / {FUND_COUNT} funds x {FUND_HOLDINGS}",
            n_symbols,
            1,
            [tracked],
            funds,
            naive=False,
        ),
    ]


def _tick_arrays(
    rng: np.random.Generator, engine: Engine, n_ticks: int, start_ts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_symbols = len(engine.book)
    sids = rng.integers(0, n_symbols, n_ticks).astype(np.int64)
    # Small moves around the seed price: always inside the 10% band, never held.
    base = engine.book.price[:n_symbols].copy()
    base[np.isnan(base)] = 100.0  # symbols only a fund holds (or listings): no seed price
    prices = np.round(base[sids] * rng.uniform(0.98, 1.02, n_ticks), 2)
    ts = start_ts + np.arange(n_ticks, dtype=np.int64)
    seqs = np.full(n_ticks, -1, dtype=np.int64)
    return sids, prices, ts, seqs


def measure(
    scenario: Scenario, batch: int, seconds: float, rng: np.random.Generator, rounds: int = ROUNDS
) -> Figure:
    """Median time per batch over ``rounds`` timed rounds, after one untimed warm-up round.

    The warm-up fills what a running service has filled long ago (the per-symbol row cache,
    first prices, allocator pools).  Batches are sliced before the clock starts, so only the
    engine call is timed; the median of several rounds keeps a noisy neighbour on a shared
    machine from deciding the figure.
    """
    engine = Engine(scenario.definitions, QualitySettings(), funds=scenario.funds)
    n_batches = max(3, min(2_000_000 // batch, 20_000))
    sids, prices, ts, seqs = _tick_arrays(rng, engine, n_batches * batch, 1)
    span = len(ts)
    apply = engine.apply_tick_arrays
    budget = seconds / (rounds + 1)

    def run_round(shift: int) -> tuple[int, float]:
        # Each round replays the ticks later in time: every symbol's ts keeps increasing.
        shifted = ts + shift
        work = [
            (sids[lo:hi], prices[lo:hi], shifted[lo:hi], seqs[lo:hi], int(shifted[hi - 1]))
            for lo, hi in ((k * batch, (k + 1) * batch) for k in range(n_batches))
        ]
        done = 0
        started = time.perf_counter()
        deadline = started + budget
        for batch_sids, batch_prices, batch_ts, batch_seqs, now in work:
            apply(batch_sids, batch_prices, batch_ts, batch_seqs, now=now)
            done += 1
            if time.perf_counter() > deadline:
                break
        return done, time.perf_counter() - started

    run_round(0)
    timed = [run_round(span * r) for r in range(1, rounds + 1)]
    per_batch = sorted(elapsed / done for done, elapsed in timed)
    median_s = per_batch[len(per_batch) // 2]
    return Figure(
        scenario=scenario.name,
        symbols=scenario.symbols,
        indices=scenario.indices,
        entries=len(engine.universe.members),
        batch=batch,
        ticks=sum(done for done, _ in timed) * batch,
        ticks_per_s=batch / median_s,
        us_per_batch=median_s * 1e6,
        us_per_batch_rounds=[round(t * 1e6, 2) for t in per_batch],
        funds=len(scenario.funds),
        holdings=len(engine.funds.holdings) if engine.funds is not None else 0,
    )


def naive_ticks_per_s(scenario: Scenario, seconds: float, rng: np.random.Generator) -> float:
    """Per tick: validate, store, recompute each index holding the symbol, in pure Python."""
    prices: dict[str, float] = {}
    members: list[list[tuple[str, float]]] = []
    holders: dict[str, list[int]] = {}
    divisors: list[float] = []
    for j, d in enumerate(scenario.definitions):
        row = [(c.symbol, c.shares * c.iwf * c.awf) for c in d.constituents]
        members.append(row)
        for c in d.constituents:
            prices[c.symbol] = c.price or 1.0
            holders.setdefault(c.symbol, []).append(j)
        divisors.append(d.divisor or 1.0)
    levels = [0.0] * len(members)
    names = list(prices)
    picks = rng.integers(0, len(names), 200_000)
    moves = rng.uniform(0.98, 1.02, 200_000)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    for pick, move in zip(picks.tolist(), moves.tolist(), strict=True):
        symbol = names[pick]
        price = round(prices[symbol] * move, 2)
        if not (price > 0.0 and price != float("inf")):
            continue
        prices[symbol] = price
        for j in holders[symbol]:
            levels[j] = sum(prices[s] * q for s, q in members[j]) / divisors[j]
        done += 1
        if done % 256 == 0 and time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - started)


def run(seconds: float, quick: bool, progress: Callable[[str], None]) -> list[Figure]:
    rng = np.random.default_rng(7)
    figures = []
    # One group of scenarios alive at a time: the funds' 250,000 holdings are built only once
    # the index universes are gone, so the peak memory is the larger group's, not the sum.
    for scenario in (s for build in (build_scenarios, build_fund_scenarios) for s in build(rng)):
        naive = None
        if scenario.naive:
            progress(f"naive baseline: {scenario.name}")
            naive = naive_ticks_per_s(scenario, min(seconds, 1.0), rng)
        for batch in BATCH_SIZES:
            if quick and batch == 10_000 and scenario.symbols < 10_000:
                continue
            progress(f"{scenario.name}, batch {batch}")
            figure = measure(scenario, batch, seconds, rng)
            if naive is not None:
                figure.naive_ticks_per_s = naive
                figure.speedup = figure.ticks_per_s / naive
            figures.append(figure)
    return figures


def fund_ratios(figures: list[Figure]) -> dict[int, float]:
    """Per batch size: time per batch of the funds scenario over the indices scenario's
    (1.0: the same; the target is at most 2)."""
    funds = {f.batch: f for f in figures if f.funds}
    indices = {f.batch: f for f in figures if not f.funds and f.indices == FUND_COUNT}
    return {b: funds[b].us_per_batch / indices[b].us_per_batch for b in funds if b in indices}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    seconds = 0.2 if args.quick else args.seconds
    console = Console(stderr=True)
    with console.status("benchmarking") as status:
        figures = run(seconds, args.quick, lambda text: status.update(f"benchmarking: {text}"))
    rss = peak_rss_mb()
    if args.json:
        json.dump(
            {
                "kernel": [asdict(f) for f in figures],
                "funds_vs_indices": {str(b): r for b, r in fund_ratios(figures).items()},
                "peak_rss_mb": rss,
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    table = Table(title="streamer bench kernel")
    for column in (
        "scenario",
        "entries",
        "batch",
        "ticks/s",
        "us/batch",
        "naive ticks/s",
        "speed-up",
    ):
        table.add_column(column, justify="left" if column == "scenario" else "right", no_wrap=True)
    for f in figures:
        table.add_row(
            f.scenario,
            f"{f.entries:,}",
            f"{f.batch:,}",
            f"{f.ticks_per_s:,.0f}",
            f"{f.us_per_batch:,.1f}",
            "-" if f.naive_ticks_per_s is None else f"{f.naive_ticks_per_s:,.0f}",
            "-" if f.speedup is None else f"{f.speedup:,.1f}x",
        )
    out = Console(width=max(Console().width, 110))
    out.print(table)
    for batch, ratio in fund_ratios(figures).items():
        out.print(f"funds vs index memberships, batch {batch:,}: {ratio:.2f}x the time per batch")
    out.print(f"peak RSS: {rss:,.0f} MB")
    return 0
