"""``streamer watch``: a live terminal view of the index levels the service publishes to Redis."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from rich.console import Console, RenderableType
from rich.live import Live

from streamer.config import load_settings, redact_url
from streamer.outputs import parse_levels_message
from streamer.tools.levels_view import DEFAULT_HISTORY, LevelsBoard, render_board
from streamer.tools.shutdown import StopSignal, stop_on_signals

HELP = (
    "live terminal view of published index levels: level, change, divisor, stale count, "
    "coverage, age and a sparkline per index, from Redis"
)

log = logging.getLogger(__name__)

_RETRY_MAX_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index",
        action="append",
        default=[],
        metavar="ID",
        help="show only this index (and its .TR/.NTR variants); repeatable",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="take Redis url, prefix and the index list from a service config",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis (default STREAMER_REDIS_URL, else redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--prefix", metavar="P", help="key prefix (default STREAMER_REDIS_PREFIX, else streamer)"
    )
    parser.add_argument(
        "--history",
        type=int,
        default=DEFAULT_HISTORY,
        metavar="N",
        help=f"levels in the sparkline (default {DEFAULT_HISTORY})",
    )
    parser.add_argument(
        "--refresh",
        type=float,
        default=4.0,
        metavar="HZ",
        help="screen refreshes per second (default 4)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print the current levels once and exit"
    )
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")


@dataclass(frozen=True)
class WatchTarget:
    """Which Redis, which prefix, which series."""

    url: str
    password: str | None
    prefix: str
    known: tuple[str, ...] = ()  # series in display order (from a config), if known
    wanted: tuple[str, ...] = ()  # --index filters

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WatchTarget:
        wanted = tuple(args.index)
        if args.config:
            settings = load_settings(args.config)
            known = tuple(s for d in settings.indices for s in d.series_ids())
            return cls(
                url=args.redis_url or settings.redis.url,
                password=settings.redis.password,
                prefix=args.prefix or settings.redis.prefix,
                known=known,
                wanted=wanted,
            )
        return cls(
            url=args.redis_url or os.environ.get("STREAMER_REDIS_URL", "redis://127.0.0.1:6379/0"),
            password=os.environ.get("STREAMER_REDIS_PASSWORD"),
            prefix=args.prefix or os.environ.get("STREAMER_REDIS_PREFIX", "streamer"),
            wanted=wanted,
        )

    @property
    def channel(self) -> str:
        return f"{self.prefix}:levels"

    def connect(self) -> redis.Redis:
        client: redis.Redis = redis.Redis.from_url(
            self.url,
            password=self.password,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            health_check_interval=10,
        )
        return client


def snapshot(client: redis.Redis, target: WatchTarget, board: LevelsBoard) -> None:
    """Seed the board from the hashes and the tails of the history streams (late joiners)."""
    series = list(target.known)
    if not series:
        marker = f"{target.prefix}:index:"
        series = sorted(key[len(marker) :] for key in client.scan_iter(match=marker + "*"))
    series = [s for s in series if board.shows(s)]
    if not series:
        return
    pipe = client.pipeline(transaction=True)  # one consistent view across hash and stream
    for s in series:
        pipe.hgetall(f"{target.prefix}:index:{s}")
        pipe.xrevrange(f"{target.prefix}:history:{s}", count=board.history)
    replies = pipe.execute()
    for i, s in enumerate(series):
        fields, entries = replies[2 * i], replies[2 * i + 1]
        levels = []
        for _entry_id, entry in reversed(entries):
            try:
                levels.append(float(entry["level"]))
            except (KeyError, TypeError, ValueError):
                continue
        board.seed(s, fields, levels)


def watch(
    target: WatchTarget,
    stop: StopSignal,
    console: Console | None = None,
    *,
    history: int = DEFAULT_HISTORY,
    refresh_hz: float = 4.0,
    duration_s: float | None = None,
    title: str = "",
    footer: Callable[[], str] = lambda: "",
    health: Callable[[], str | None] = lambda: None,
) -> str | None:
    """Run the live view until stopped; returns why it ended abnormally (``health``), or None."""
    console = console or Console()
    board = LevelsBoard(target.wanted, target.known, history)
    title = title or f"streamer watch · {redact_url(target.url)} · prefix {target.prefix}"
    deadline = None if duration_s is None else time.monotonic() + duration_s
    state = "connecting"
    period = 1.0 / max(refresh_hz, 0.5)
    rate = _UpdateRate()

    def screen() -> RenderableType:
        status = f"{state} · {board.messages:,} updates · {rate.per_second:,.0f}/s"
        extra = footer()
        status_line = status + (f" · {extra}" if extra else "")
        return render_board(board, time.time_ns(), title, status_line, width=console.width)

    with Live(screen(), console=console, refresh_per_second=refresh_hz, transient=False) as live:
        delay = 0.2
        while not stop.is_set():
            try:
                client = target.connect()
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(target.channel)  # before the snapshot: nothing falls between
                snapshot(client, target, board)
                state = "live"
                delay = 0.2
                next_frame = 0.0
                while not stop.is_set():
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    problem = health()
                    if problem:
                        return problem
                    message = pubsub.get_message(timeout=period / 2)
                    while message is not None:
                        if _apply(board, message):
                            rate.tick()
                        message = pubsub.get_message(timeout=0)
                    if time.monotonic() >= next_frame:
                        live.update(screen())
                        next_frame = time.monotonic() + period
            except redis.RedisError as exc:
                state = f"disconnected ({type(exc).__name__}), retrying"
                log.debug("redis unavailable", extra={"fields": {"error": str(exc)}})
                live.update(screen())
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                problem = health()
                if problem:
                    return problem
                stop.wait(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        return None


class _UpdateRate:
    """Updates per second over the last few seconds."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window_s = window_s
        self._times: list[float] = []

    def tick(self) -> None:
        self._times.append(time.monotonic())

    @property
    def per_second(self) -> float:
        cutoff = time.monotonic() - self.window_s
        self._times = [t for t in self._times if t >= cutoff]
        return len(self._times) / self.window_s


def _apply(board: LevelsBoard, message: dict[str, object]) -> bool:
    if message.get("type") != "message":
        return False
    data = message.get("data")
    if not isinstance(data, str | bytes):
        return False
    applied = [board.apply(level) for level in parse_levels_message(data)]
    return any(applied)


def print_once(target: WatchTarget, console: Console, history: int) -> int:
    board = LevelsBoard(target.wanted, target.known, history)
    try:
        snapshot(target.connect(), target, board)
    except redis.RedisError as exc:
        console.print(f"streamer watch: cannot read {redact_url(target.url)}: {exc}")
        return 1
    title = f"streamer · {redact_url(target.url)} · prefix {target.prefix}"
    console.print(render_board(board, time.time_ns(), title, width=console.width))
    return 0


def main(args: argparse.Namespace) -> int:
    target = WatchTarget.from_args(args)
    console = Console()
    if args.once:
        return print_once(target, console, args.history)
    with stop_on_signals() as stop:
        problem = watch(
            target,
            stop,
            console,
            history=args.history,
            refresh_hz=args.refresh,
            duration_s=args.duration,
        )
    if problem:
        console.print(f"[red]streamer watch: {problem}[/red]")
        return 1
    return 0
