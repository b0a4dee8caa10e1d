"""``streamer bench state``: what durable state costs.

1. Checkpoint and restore on the 10,000-symbol / 2,000-index universe of ``bench kernel``
   (200,000 memberships), in process: the structural part (membership, divisors, actions:
   rewritten only when one of those changed) and the market part (prices, ts, seq: every
   checkpoint) taken and encoded, their sizes, and a restore (decode, reconcile with the
   config, build the engine) beside a cold start from the config.  Medians of several rounds.
2. The live service's tick-to-publish latency at 5,000 ticks/s on the demo universe with
   checkpoints (Redis store, every second: five times the default rate) and without (store
   "none"), alternating runs in one invocation, as ``bench e2e`` measures it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from streamer.bench.e2e import E2eBench, Plan, _machine
from streamer.bench.kernel import _tick_arrays, build_scenarios
from streamer.config import QualitySettings, load_settings
from streamer.engine import Engine, snapshot

HELP = "durable state: checkpoint size/time and restore time (10k/2,000), latency with/without"

ROUNDS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="config for the live part (demo)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds, not figures)")
    parser.add_argument(
        "--pairs", type=int, default=3, metavar="N", help="live runs with and without (default 3)"
    )
    parser.add_argument("--latency-seconds", type=float, default=10.0, metavar="S")
    parser.add_argument("--latency-rate", type=float, default=5_000.0, metavar="TICKS_PER_S")


@dataclass
class StateFigures:
    symbols: int
    indices: int
    memberships: int
    structure_bytes: int
    market_bytes: int
    structure_ms: float  # take + encode
    market_ms: float
    restore_ms: float  # decode + reconcile + build the engine
    cold_start_ms: float  # build the engine from the config, for comparison
    live: list[dict[str, Any]] = field(default_factory=list)  # per run: store, p50/p99 ms


def _median_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def measure_checkpoints(rounds: int) -> StateFigures:
    scenario = build_scenarios(np.random.default_rng(7))[2]
    definitions = scenario.definitions
    engine = Engine(definitions, QualitySettings(), start_ns=1)
    sids, prices, ts, seqs = _tick_arrays(np.random.default_rng(1), engine, 20_000, 2)
    engine.apply_tick_arrays(sids, prices, ts, seqs, now=int(ts[-1]))
    state = engine.state

    identities = snapshot.identities(definitions)  # once per run, as the service does

    def take_structure() -> bytes:
        return snapshot.encode_part(snapshot.structure(state, identities))

    def take_market() -> bytes:
        return snapshot.encode_part(snapshot.market(state))

    structure, market = take_structure(), take_market()

    def restore() -> Engine:
        restored, _ = snapshot.restore(
            snapshot.decode_parts(structure, market), definitions, start_ns=int(ts[-1])
        )
        return Engine(definitions, QualitySettings(), start_ns=int(ts[-1]), state=restored)

    # The same levels (to rounding: restored sums are exact, the live ones incremental).
    restored_levels, levels = restore().series_levels(), engine.series_levels()
    assert restored_levels.keys() == levels.keys()
    assert all(abs(restored_levels[s] / levels[s] - 1) < 1e-9 for s in levels)
    return StateFigures(
        symbols=scenario.symbols,
        indices=scenario.indices,
        memberships=len(engine.universe.members),
        structure_bytes=len(structure),
        market_bytes=len(market),
        structure_ms=_median_ms(take_structure, rounds),
        market_ms=_median_ms(take_market, rounds),
        restore_ms=_median_ms(restore, rounds),
        cold_start_ms=_median_ms(lambda: Engine(definitions, QualitySettings()), rounds),
    )


def measure_live(args: argparse.Namespace, say: Callable[[str], None]) -> list[dict[str, Any]]:
    from streamer.commands.demo import default_config

    settings = load_settings(args.config or default_config())
    rate, seconds = args.latency_rate, args.latency_seconds
    if args.quick:
        rate, seconds = 1_000.0, 0.5
    plan = Plan(
        step_s=1.0, single_start=0, batch_start=0, factor=1.0, max_steps=0, refinements=0,
        latency_rate=rate, latency_s=seconds, phases=("latency",),
    )  # fmt: skip
    runs = []
    for pair in range(1 if args.quick else args.pairs):
        for store in ("none", "redis"):
            say(f"live latency, pair {pair + 1}, state store {store}")
            env = {"STREAMER_STATE_STORE": store, "STREAMER_STATE_CHECKPOINT_INTERVAL_S": "1"}
            report = E2eBench(settings, plan, say, extra_env=env).run(quick=args.quick)
            runs.append(
                {
                    "store": store,
                    "rate": rate,
                    "seconds": seconds,
                    "end_to_end_ms": report.latency.end_to_end_ms,
                    "service_ms": report.latency.service_ms,
                    "steal_pct": report.latency.steal_pct,
                }
            )
    return runs


def main(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    console.print("bench state: checkpoints of the 10,000 / 2,000 universe", style="bold")
    figures = measure_checkpoints(1 if args.quick else ROUNDS)
    figures.live = measure_live(args, lambda text: console.print(f"  {text}"))
    if args.json:
        json.dump({"machine": _machine(), **asdict(figures)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = Console()
    table = Table(title="checkpoint and restore: 10,000 symbols / 2,000 indices")
    for column in ("part", "bytes", "ms"):
        table.add_column(column, justify="right" if column != "part" else "left")
    table.add_row(
        "structure (on change)", f"{figures.structure_bytes:,}", f"{figures.structure_ms:.1f}"
    )
    table.add_row(
        "market (every checkpoint)", f"{figures.market_bytes:,}", f"{figures.market_ms:.1f}"
    )
    table.add_row("restore (decode, reconcile, build)", "", f"{figures.restore_ms:.1f}")
    table.add_row("cold start from the config", "", f"{figures.cold_start_ms:.1f}")
    out.print(table)
    live = Table(title="tick to subscriber at the live service, with and without checkpoints")
    for column in ("store", "p50 ms", "p99 ms", "p99.9 ms", "service p99 ms", "steal %"):
        live.add_column(column, justify="right" if column != "store" else "left")
    for run in figures.live:
        e2e, service = run["end_to_end_ms"] or {}, run["service_ms"] or {}
        live.add_row(
            run["store"],
            _ms(e2e.get("p50")),
            _ms(e2e.get("p99")),
            _ms(e2e.get("p999")),
            _ms(service.get("p99")),
            _ms(run["steal_pct"]),
        )
    out.print(live)
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
