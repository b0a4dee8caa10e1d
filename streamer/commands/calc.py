"""``streamer calc``: the offline calculator over JSON Lines message files.

Back-fill, end-of-day verification and audit: the same message objects the broker carries
(tick, fx, control, reference; the kind inferred from the fields), run in order through the
service's own pipeline (``streamer.pipeline``), so an offline run computes what the service
published.  The market clock follows the data (the newest ``ts`` read), so effective times,
staleness and session closes behave as they did live: a file spanning several sessions gives
the same official closes offline as live.  A bad line is counted and reported, never fatal.
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
from streamer.engine.results import CloseRecord
from streamer.mqtt.codec import RawMessage
from streamer.pipeline import Pipeline
from streamer.publish import Outbox
from streamer.sessions import session_rules
from streamer.wire import kind_of_object, message_from_object

HELP = "offline calculator: run JSON Lines message files through the engine, print final levels"

# Consecutive lines are applied as one step of up to this many (unless --every).
CHUNK = 10_000
MAX_REPORTED_ERRORS = 10
_TOPIC_OF_KIND = {"tick": "ticks/calc", "fx": "fx/calc", "control": "control/calc",
                  "reference": "reference/calc"}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="PATH", help="service config (TOML)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines message files")
    parser.add_argument(
        "--every",
        action="store_true",
        help="print every change (one message at a time), not only final levels",
    )
    parser.add_argument(
        "--closes",
        action="store_true",
        help="print every official close the data crosses (one JSON line each), as well",
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

    def add(self, result: BatchResult | None, rejected: Counter[str] | None = None) -> None:
        if rejected:
            self.outcomes.update({("rejected", r): n for r, n in rejected.items()})
        if result is None:
            return
        self.outcomes.update(result.outcomes)
        self.actions_applied += len({a.action_id for a in result.audit})
        self.actions_rejected.update(reason for _, reason in result.rejected_actions)


def _read(paths: list[Path], summary: _Summary) -> Iterator[RawMessage]:
    """Each good line as a raw message on its kind's topic, received at the data clock: the
    newest ts read so far (an action's effective time does not move it)."""
    decoder = msgspec.json.Decoder()
    clock = 0
    for path in paths:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                summary.lines += 1
                try:
                    obj = decoder.decode(raw)
                    items = obj if isinstance(obj, list) else [obj]
                    # Checked here as well, to report a bad line with its place.
                    names = [type(message_from_object(item)).__name__ for item in items]
                except (msgspec.DecodeError, ValueError, RecursionError) as exc:
                    summary.bad += 1
                    if len(summary.errors) < MAX_REPORTED_ERRORS:
                        summary.errors.append(f"{path}:{lineno}: {exc}")
                    continue
                for item, name in zip(items, names, strict=True):
                    kind = kind_of_object(item)
                    assert kind is not None  # checked by message_from_object
                    summary.kinds[name] += 1
                    ts = item.get("ts") if kind != "control" else None
                    if isinstance(ts, int) and ts > clock:
                        clock = ts
                    yield (_TOPIC_OF_KIND[kind], msgspec.json.encode(item), clock, 0)


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    paths = [Path(f) for f in args.files]
    for p in paths:
        if not p.is_file():
            print(f"streamer: error: {p}: no such file", file=sys.stderr)
            return 2
    engine = Engine(
        settings.indices,
        settings.quality,
        sessions=session_rules(settings),
        max_pending=settings.control.max_pending,
        id_retention_ns=int(settings.control.id_retention_days * 86_400e9),
    )
    pipeline = Pipeline(engine, Outbox(), batch_max=1 if args.every else CHUNK, clock="data")
    summary = _Summary()
    out = sys.stdout
    chunk: list[RawMessage] = []

    def flush() -> None:
        if args.every and chunk and pipeline.market_now > 0:
            # Actions due before this message fire on a step of their own, as they do live
            # (where the clock reaches their effective time between messages): the levels
            # right after them are levels the service can publish.
            before = chunk[-1][2] - 1
            if before > pipeline.market_now:
                _report_changes(engine, pipeline, engine.advance(before), out, args)
        while chunk or len(pipeline):
            step = pipeline.step(chunk, chunk[-1][2] if chunk else pipeline.market_now)
            chunk.clear()
            summary.add(step.result, step.rejected)
            if step.result is not None:
                _report_changes(engine, pipeline, step.result, out, args)

    size = 1 if args.every else CHUNK
    for message in _read(paths, summary):
        chunk.append(message)
        if len(chunk) >= size:
            flush()
    flush()
    # Due actions and closes the data reached, then exact sums: the final figures do not
    # depend on how ticks were batched.
    result = pipeline.advance(pipeline.market_now)
    summary.add(result)
    _report_changes(engine, pipeline, result, out, args)
    engine.recompute()
    if not args.every:
        for level in engine.levels(now=pipeline.market_now):
            _print_level(out, level.series, level.level, level.divisor, level.source_ts)
    _report(summary, engine, sys.stderr)
    return 0


def _report_changes(
    engine: Engine, pipeline: Pipeline, result: BatchResult, out: TextIO, args: argparse.Namespace
) -> None:
    if args.closes:
        for close in result.closes:
            _print_close(out, close)
    if args.every and result.changed:
        for level in engine.levels(result.changed, now=pipeline.market_now):
            _print_level(out, level.series, level.level, level.divisor, level.source_ts)


def _print_level(out: TextIO, series: str, level: float, divisor: float, source_ts: int) -> None:
    out.write(
        json.dumps({"index": series, "level": level, "divisor": divisor, "source_ts": source_ts})
        + "\n"
    )


def _print_close(out: TextIO, close: CloseRecord) -> None:
    entry: dict[str, Any] = {
        "close": close.series,
        "session": close.session,
        "close_ts": close.close_ns,
        "level": close.level,
        "divisor": close.divisor,
        "dividend_points": close.gross_points,
        "net_dividend_points": close.net_points,
        "pr_close": close.pr_close,
        "tr_close": close.tr_close,
        "ntr_close": close.ntr_close,
    }
    out.write(json.dumps(entry) + "\n")


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
    unpublished = engine.series_without_level()
    if unpublished:
        err.write(f"calc: no level yet (prices or FX missing): {', '.join(unpublished)}\n")
