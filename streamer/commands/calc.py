"""``streamer calc``: the offline calculator over JSON Lines message files.

Back-fill, end-of-day verification and audit: the same message objects the broker carries
(tick, fx, control, reference; the kind inferred from the fields), run in order through the same
engine.  The engine's clock follows the data (the newest ``ts`` read), so effective times and
staleness behave as they did live.  A bad line is counted and reported, never fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec

from streamer.config import load_settings
from streamer.engine import BatchResult, Engine
from streamer.wire import FxRate, ReferenceLevel, Tick, message_from_object

HELP = "offline calculator: run JSON Lines message files through the engine, print final levels"

# Consecutive ticks are applied as one batch of up to this many (unless --every).
CHUNK = 10_000
MAX_REPORTED_ERRORS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="PATH", help="service config (TOML)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines message files")
    parser.add_argument(
        "--every",
        action="store_true",
        help="print every change (one message at a time), not only final levels",
    )


@dataclass
class _Summary:
    lines: int = 0
    bad: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    actions_applied: int = 0
    actions_rejected: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def add(self, result: BatchResult) -> None:
        self.outcomes.update(result.outcomes)
        self.actions_applied += len({a.action_id for a in result.audit})
        self.actions_rejected.update(reason for _, reason in result.rejected_actions)


class _DataClock:
    """The engine's clock in offline mode: the newest timestamp seen in the data."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def see(self, ts: int | None) -> None:
        if ts is not None and ts > self.now:
            self.now = ts


def _read(paths: list[Path], summary: _Summary) -> Iterator[Any]:
    decoder = msgspec.json.Decoder()
    for path in paths:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                summary.lines += 1
                try:
                    obj = decoder.decode(raw)
                    objects = obj if isinstance(obj, list) else [obj]
                    for item in objects:
                        yield message_from_object(item)
                except (msgspec.DecodeError, ValueError) as exc:
                    summary.bad += 1
                    if len(summary.errors) < MAX_REPORTED_ERRORS:
                        summary.errors.append(f"{path}:{lineno}: {exc}")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    paths = [Path(f) for f in args.files]
    for p in paths:
        if not p.is_file():
            print(f"streamer: error: {p}: no such file", file=sys.stderr)
            return 2
    clock = _DataClock()
    engine = Engine(settings.indices, settings.quality, clock=clock)
    summary = _Summary()
    out = sys.stdout
    chunk = 1 if args.every else CHUNK
    ticks: list[Tick] = []

    def flush() -> None:
        if ticks:
            _apply(engine, summary, out, args.every, ticks=list(ticks))
            ticks.clear()

    for message in _read(paths, summary):
        kind = type(message).__name__
        summary.kinds[kind] += 1
        ts = getattr(message, "ts", None) if not hasattr(message, "effective") else None
        clock.see(ts)
        if isinstance(message, Tick):
            ticks.append(message)
            if len(ticks) >= chunk:
                flush()
            continue
        flush()
        if isinstance(message, FxRate):
            _apply(engine, summary, out, args.every, fx=[message])
        elif isinstance(message, ReferenceLevel):
            _apply(engine, summary, out, args.every, references=[message])
        else:
            _apply(engine, summary, out, args.every, actions=[message])
    flush()
    # Due actions whose time the data reached, then exact sums: the final figures do not
    # depend on how ticks were batched.
    summary.add(engine.advance(clock.now))
    engine.recompute()
    if not args.every:
        for level in engine.levels():
            _print_level(out, level.series, level.level, level.divisor, level.source_ts)
    _report(summary, engine, sys.stderr)
    return 0


def _apply(engine: Engine, summary: _Summary, out: TextIO, every: bool, **batch: Any) -> None:
    result = engine.apply(**batch, received_ns=engine.clock())
    summary.add(result)
    if every and result.changed:
        for level in engine.levels(result.changed):
            _print_level(out, level.series, level.level, level.divisor, level.source_ts)


def _print_level(out: TextIO, series: str, level: float, divisor: float, source_ts: int) -> None:
    out.write(
        json.dumps({"index": series, "level": level, "divisor": divisor, "source_ts": source_ts})
        + "\n"
    )


def _report(summary: _Summary, engine: Engine, err: TextIO) -> None:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(summary.kinds.items())) or "no messages"
    err.write(f"calc: {summary.lines} lines: {kinds}; {summary.bad} bad lines\n")
    for line in summary.errors:
        err.write(f"calc:   {line}\n")
    if summary.bad > len(summary.errors):
        err.write(f"calc:   ... and {summary.bad - len(summary.errors)} more\n")
    if summary.outcomes:
        outcomes = ", ".join(f"{o}/{r} {n}" for (o, r), n in sorted(summary.outcomes.items()))
        err.write(f"calc: ticks: {outcomes}\n")
    rejected = ", ".join(f"{r} {n}" for r, n in sorted(summary.actions_rejected.items()))
    err.write(
        f"calc: actions: {summary.actions_applied} applied"
        + (f", rejected: {rejected}" if rejected else "")
        + "\n"
    )
    unpublished = [s for s in engine.series_ids if engine.level_of(s) is None]
    if unpublished:
        err.write(f"calc: no level yet (prices or FX missing): {', '.join(unpublished)}\n")
