"""``streamer watch``: a live terminal view of the index levels the service publishes to Redis."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.layout import Layout
from rich.live import Live
from rich.text import Text

from streamer.config import INDEX_ID_PATTERN, load_settings, redact_url
from streamer.fund_outputs import FUND_KIND, parse_fund_messages
from streamer.outputs import parse_levels_message
from streamer.tools.funds_view import FundsBoard, render_funds
from streamer.tools.levels_view import (
    DEFAULT_HISTORY,
    LevelsBoard,
    render_board,
    series_matches,
    series_order,
)
from streamer.tools.shutdown import StopSignal, stop_on_signals

HELP = (
    "live terminal view of published index levels: level, change, divisor, stale count, "
    "coverage, age and a sparkline per index, from Redis"
)

log = logging.getLogger(__name__)

_RETRY_MAX_S = 5.0

# ``--once`` exit codes: Redis could not be read; Redis was read but holds nothing to show
# (no series under the prefix, or an --index that matches none).
EXIT_UNREACHABLE = 1
EXIT_NOTHING_TO_SHOW = 2

# Looking for other prefixes when ours has no series: SCAN at most this many keys.
_DISCOVERY_SCAN_KEYS = 100_000
_DISCOVERY_SCAN_COUNT = 1_000
_LISTED = 8  # ids named in a message before "and N more"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index",
        action="append",
        default=[],
        metavar="ID",
        help="show only this series id, in any case, and its .TR/.NTR variants; repeatable",
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
        "--once",
        action="store_true",
        help="print the current levels once and exit: 1 if Redis cannot be read, 2 if it holds "
        "nothing to show (no series under the prefix, an --index matching none)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the Redis is a Redis Cluster (with --config: its [redis] cluster)",
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
    cluster: bool = False  # a Redis Cluster: key names from the directory, no transaction

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
                cluster=args.cluster or settings.redis.cluster,
            )
        return cls(
            url=args.redis_url or os.environ.get("STREAMER_REDIS_URL", "redis://127.0.0.1:6379/0"),
            password=os.environ.get("STREAMER_REDIS_PASSWORD"),
            prefix=args.prefix or os.environ.get("STREAMER_REDIS_PREFIX", "streamer"),
            wanted=wanted,
            cluster=args.cluster,
        )

    @property
    def channel(self) -> str:
        return f"{self.prefix}:levels"

    @property
    def display_url(self) -> str:
        """The URL as it may be shown: any password masked."""
        return redact_url(self.url)

    def connect(self) -> redis.Redis:
        options: dict[str, Any] = {
            "password": self.password,
            "decode_responses": True,
            "socket_connect_timeout": 2.0,
            "socket_timeout": 5.0,
        }
        if self.cluster:
            # The same reading methods; each key goes to the node serving it.
            return cast("redis.Redis", redis.RedisCluster.from_url(self.url, **options))
        client: redis.Redis = redis.Redis.from_url(self.url, health_check_interval=10, **options)
        return client


@dataclass(frozen=True)
class Findings:
    """What a snapshot found: enough to say why nothing is shown, and what to try instead."""

    series: tuple[str, ...] = ()  # series with a hash P:index:<id> (configured ones, if known)
    shown: int = 0  # how many of them the --index filters let through
    unmatched: tuple[str, ...] = ()  # --index values that match no series
    other_prefixes: tuple[tuple[str, int], ...] = ()  # (prefix, series) with *:index:* keys
    other_databases: tuple[tuple[int, int], ...] = ()  # (db, keys) of other non-empty databases
    scanned_everything: bool = True  # the search for other prefixes saw every key

    @property
    def nothing_to_show(self) -> bool:
        return self.shown == 0


def snapshot(client: redis.Redis, target: WatchTarget, board: LevelsBoard) -> Findings:
    """Seed the board from the hashes and the tails of the history streams (late joiners).

    Returns what was found; when that is nothing to show, also where else series are (other
    prefixes in this database, other databases), for the message that says so.
    """
    scanned: list[str] | None = None

    def under_prefix() -> list[str]:
        nonlocal scanned
        if scanned is None:
            scanned = _series_under(client, target.prefix)
        return scanned

    candidates = list(target.known) if target.known else under_prefix()
    shown = [s for s in candidates if board.shows(s)]
    if target.known and target.wanted and not shown:  # published, perhaps, if not configured
        candidates = list(dict.fromkeys([*target.known, *under_prefix()]))
        shown = [s for s in candidates if board.shows(s)]
    present = _seed(client, target, board, shown)
    unmatched = tuple(
        w for w in target.wanted if not any(series_matches(c, [w]) for c in candidates)
    )
    if present:
        return Findings(tuple(candidates), len(shown), unmatched)
    existing = under_prefix()
    if existing:  # configured series still waiting, or filters that let nothing through
        return Findings(tuple(existing), len(shown), unmatched)
    try:
        prefixes, complete = _other_prefixes(client, target.prefix)
    except redis.ResponseError:  # SCAN refused by an ACL: say nothing about other prefixes
        prefixes, complete = (), False
    return Findings(
        (),
        0,
        unmatched,
        other_prefixes=prefixes,
        other_databases=_other_databases(client),
        scanned_everything=complete,
    )


def _seed(client: redis.Redis, target: WatchTarget, board: LevelsBoard, shown: list[str]) -> bool:
    """Seed the rows of ``shown`` in one transaction; whether any of them has a hash."""
    if not shown:
        return False
    # One consistent view across hash and stream; on a cluster the keys of several shards
    # are on several nodes, where no transaction spans them.
    pipe = client.pipeline(transaction=not target.cluster)
    keys = _directory_keys(client, target.prefix)
    for s in shown:
        entry = keys.get(s, {})
        pipe.hgetall(entry.get("index", f"{target.prefix}:index:{s}"))
        pipe.xrevrange(entry.get("history", f"{target.prefix}:history:{s}"), count=board.history)
    replies = pipe.execute()
    present = False
    for i, s in enumerate(shown):
        fields, entries = replies[2 * i], replies[2 * i + 1]
        levels = []
        for _entry_id, entry in reversed(entries):
            try:
                levels.append(float(entry["level"]))
            except (KeyError, TypeError, ValueError):
                continue
        board.seed(s, fields, levels)
        present = present or bool(fields)
    return present


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _directory_keys(client: redis.Redis, prefix: str) -> dict[str, dict[str, str]]:
    """The directory ``P:series``: series -> the names of its keys (empty when absent)."""
    entries: dict[str, dict[str, str]] = {}
    for series, text in cast("dict[str, str]", client.hgetall(f"{prefix}:series")).items():
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        keys = entry.get("keys") if isinstance(entry, dict) else None
        if isinstance(entry, dict) and entry.get("kind") == FUND_KIND:
            continue  # a fund: the funds table shows it (tools.funds_view), not the board
        if isinstance(keys, dict):
            entries[series] = {k: v for k, v in keys.items() if isinstance(v, str)}
    return entries


def _series_under(client: redis.Redis, prefix: str) -> list[str]:
    # The directory names every published series, whatever the shards and the key layout;
    # without one (an older writer) the hashes are found by their names.
    listed = [s for s in _directory_keys(client, prefix) if INDEX_ID_PATTERN.fullmatch(s)]
    if listed:
        return sorted(listed, key=series_order)
    marker = f"{prefix}:index:"
    found = (key[len(marker) :] for key in client.scan_iter(match=_glob_escape(marker) + "*"))
    return sorted((s for s in found if INDEX_ID_PATTERN.fullmatch(s)), key=series_order)


def _other_prefixes(client: redis.Redis, prefix: str) -> tuple[tuple[tuple[str, int], ...], bool]:
    """Prefixes with ``*:index:<id>`` keys, most series first; and whether SCAN saw every key."""
    counts: Counter[str] = Counter()
    cursor, seen = 0, 0
    while True:
        cursor, keys = client.scan(cursor, match="*:index:*", count=_DISCOVERY_SCAN_COUNT)
        for raw in keys:
            key = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
            head, _, series = key.rpartition(":index:")
            if head and head != prefix and INDEX_ID_PATTERN.fullmatch(series):
                counts[head] += 1
        seen += _DISCOVERY_SCAN_COUNT
        if cursor == 0:
            return tuple(counts.most_common()), True
        if seen >= _DISCOVERY_SCAN_KEYS:
            return tuple(counts.most_common()), False


def _other_databases(client: redis.Redis) -> tuple[tuple[int, int], ...]:
    """Other databases of this server that hold keys (``INFO keyspace``), as (db, keys)."""
    ours = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
    try:
        keyspace = client.info("keyspace")
    except redis.ResponseError:  # INFO refused by an ACL: then we cannot tell
        return ()
    found = []
    for name, stats in keyspace.items():
        if name.startswith("db") and name[2:].isdigit() and int(name[2:]) != ours:
            keys = stats.get("keys", 0) if isinstance(stats, dict) else 0
            if keys:
                found.append((int(name[2:]), int(keys)))
    return tuple(sorted(found))


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _listing(series: Sequence[str]) -> str:
    named = ", ".join(series[:_LISTED])
    more = len(series) - _LISTED
    return named + (f" and {more} more" if more > 0 else "")


_HOW_TO_POINT = (
    "point watch at the service's Redis and prefix: --config PATH (the service's config), "
    "or --redis-url URL --prefix P (defaults STREAMER_REDIS_URL, STREAMER_REDIS_PREFIX)"
)


def problem_lines(target: WatchTarget, findings: Findings) -> list[str]:
    """Why nothing is shown and what to try, one sentence a line; [] when all is well."""
    if findings.series and findings.nothing_to_show:
        wanted = " ".join(f"--index {w}" for w in target.wanted)
        return [
            f"{wanted} matches no series under prefix {target.prefix!r} in {target.display_url}",
            f"series there ({len(findings.series)}): {_listing(findings.series)}",
            "--index takes a series id, in any case, and also shows its .TR and .NTR variants",
        ]
    if findings.series:
        return []
    lines = [
        f"no series under prefix {target.prefix!r} in {target.display_url} "
        f"(no {target.prefix}:index:* keys)"
    ]
    if findings.other_prefixes:
        listed = ", ".join(f"{p} ({n} series)" for p, n in findings.other_prefixes[:_LISTED])
        best = findings.other_prefixes[0][0]
        lines.append(f"prefixes with series in this database: {listed}; try --prefix {best}")
    elif findings.scanned_everything:
        lines.append("no other prefix has *:index:* keys in this database")
    else:
        lines.append(
            f"no other prefix with *:index:* keys among the first {_DISCOVERY_SCAN_KEYS:,} keys"
        )
    if findings.other_databases:
        listed = ", ".join(
            f"db {db} ({_count(keys, 'key')})" for db, keys in findings.other_databases
        )
        first = findings.other_databases[0][0]
        lines.append(
            f"other databases of this server hold keys: {listed}; the database is the URL's "
            f"path, e.g. --redis-url {_with_database(target.display_url, first)}"
        )
    lines.append(_HOW_TO_POINT)
    return lines


def note_lines(target: WatchTarget, findings: Findings) -> list[str]:
    """Filters that match nothing while others do: said under the table."""
    if findings.nothing_to_show or not findings.unmatched:
        return []
    missing = " ".join(f"--index {w}" for w in findings.unmatched)
    return [f"{missing} matches no series (series there: {_listing(findings.series)})"]


def unreachable_line(target: WatchTarget, exc: redis.RedisError) -> str:
    """One line naming the Redis (password masked) and what went wrong."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    for secret in {target.password, _url_password(target.url)} - {None, ""}:
        detail = detail.replace(str(secret), "***")
    return f"cannot read Redis at {target.display_url}: {detail} ({type(exc).__name__})"


def _with_database(url: str, db: int) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
    return parts._replace(path=f"/{db}", query=query).geturl()


def _url_password(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.password:
        return unquote(parts.password)
    values = parse_qs(parts.query).get("password")
    return values[0] if values else None


Link = tuple[str, str]  # (label, url) shown in the footer of the live view


def footer_lines(links: Sequence[Link], width: int) -> list[Text]:
    """``label url`` pairs packed into as few lines of ``width`` as they fit (none split)."""
    lines: list[Text] = []
    current = Text()
    for label, url in links:
        item = Text.assemble((label, "bold cyan"), " ", url)
        if current and current.cell_len + 3 + item.cell_len > width:
            lines.append(current)
            current = Text()
        if current:
            current.append(" · ", style="dim")
        current.append_text(item)
    if current:
        lines.append(current)
    for line in lines:
        line.no_wrap, line.overflow = True, "ellipsis"
    return lines


class _Fitted:
    """A renderable drawn at render time for the room rich gives it (a layout region, or the
    terminal), so a resize or a footer never pushes rows off the screen."""

    def __init__(self, draw: Callable[[int, int | None], RenderableType], fit: bool) -> None:
        self.draw = draw
        self.fit = fit

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = (options.height or options.size.height) if self.fit else None
        yield self.draw(options.max_width, height)


def screen_layout(
    body: Callable[[int, int | None], RenderableType],
    status: str,
    links: Sequence[Link],
    *,
    width: int,
    fit: bool,
) -> RenderableType:
    """The live view: the board, and under it a footer with the links and the status line.

    In a terminal (``fit``) a Layout pins the footer to the bottom rows and gives the board the
    rest; piped output gets them one after the other, nothing cut.
    """
    footer: list[RenderableType] = [*footer_lines(links, width)]
    if status:
        footer.append(Text(status, style="dim", no_wrap=True, overflow="ellipsis"))
    if not fit:
        return Group(_Fitted(body, fit=False), *footer)
    if not footer:
        return _Fitted(body, fit=True)
    layout = Layout()
    layout.split_column(
        Layout(_Fitted(body, fit=True), name="board"),
        Layout(Group(*footer), name="footer", size=len(footer)),
    )
    return layout


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
    links: Sequence[Link] = (),
    health: Callable[[], str | None] = lambda: None,
    fit_height: bool | None = None,
) -> str | None:
    """Run the live view until stopped; returns why it ended abnormally (``health``), or None.

    ``links`` (label, url) stay on screen in the footer with the status line (``footer()``
    adds to it); ``fit_height`` (default: whether the console is a terminal) fits the view to
    the console's height, cutting rows that do not fit.
    """
    console = console or Console()
    fit = console.is_terminal if fit_height is None else fit_height
    board = LevelsBoard(target.wanted, target.known, history)
    funds = FundsBoard()
    title = title or f"streamer watch · {target.display_url} · prefix {target.prefix}"
    deadline = None if duration_s is None else time.monotonic() + duration_s
    state = "connecting"
    problem: list[str] = []
    notes: list[str] = []
    period = 1.0 / max(refresh_hz, 0.5)
    rate = _UpdateRate()

    def screen() -> RenderableType:
        status = f"{state} · {board.messages:,} updates · {rate.per_second:,.0f}/s"
        extra = footer()
        status_line = status + (f" · {extra}" if extra else "")
        now_ns = time.time_ns()
        # With links the status line is the footer's last line; without, it closes the board.
        board_status, footer_status = ("", status_line) if links else (status_line, "")

        def draw(width: int, height: int | None) -> RenderableType:
            if funds and height is not None:
                height = max(height - len(funds.funds) - 5, 6)  # the funds table's rows
            levels = render_board(
                board, now_ns, title, board_status, width, height, problem=problem, notes=notes
            )
            return Group(levels, render_funds(funds, now_ns)) if funds else levels

        return screen_layout(draw, footer_status, links, width=console.width, fit=fit)

    with Live(screen(), console=console, refresh_per_second=refresh_hz, transient=False) as live:
        delay = 0.2
        while not stop.is_set():
            try:
                client = target.connect()
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(target.channel)  # before the snapshot: nothing falls between
                findings = snapshot(client, target, board)
                funds.seed(client, target.prefix)
                problem = problem_lines(target, findings)
                if problem:
                    problem.append(f"still watching {target.channel} for levels")
                notes = note_lines(target, findings)
                state = "live"
                delay = 0.2
                next_frame = 0.0
                while not stop.is_set():
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    ended = health()
                    if ended:
                        return ended
                    message = pubsub.get_message(timeout=period / 2)
                    while message is not None:
                        if _apply(board, message, funds):
                            rate.tick()
                        message = pubsub.get_message(timeout=0)
                    if time.monotonic() >= next_frame:
                        live.update(screen())
                        next_frame = time.monotonic() + period
            except redis.RedisError as exc:
                state = f"disconnected ({type(exc).__name__}), retrying in {delay:.1f}s"
                problem = [
                    unreachable_line(target, exc),
                    f"retrying every {_RETRY_MAX_S:.0f}s at most; {_HOW_TO_POINT}",
                ]
                log.debug("redis unavailable", extra={"fields": {"error": str(exc)}})
                live.update(screen())
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                ended = health()
                if ended:
                    return ended
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


def _apply(board: LevelsBoard, message: dict[str, object], funds: FundsBoard) -> bool:
    if message.get("type") != "message":
        return False
    data = message.get("data")
    if not isinstance(data, str | bytes):
        return False
    applied = [board.apply(level) for level in parse_levels_message(data)]
    for fund in parse_fund_messages(data):
        funds.update(str(fund["fund"]), fund)
        applied.append(True)
    return any(applied)


def print_once(target: WatchTarget, console: Console, history: int) -> int:
    """One snapshot on stdout; what is wrong on stderr. Exit 0; 1 when Redis cannot be read;
    2 when it holds nothing to show (no series under the prefix, an --index matching none)."""
    board = LevelsBoard(target.wanted, target.known, history)
    funds = FundsBoard()
    try:
        client = target.connect()
        findings = snapshot(client, target, board)
        funds.seed(client, target.prefix)
    except redis.RedisError as exc:
        _complain([unreachable_line(target, exc)])
        return EXIT_UNREACHABLE
    problem = problem_lines(target, findings)
    if problem:
        _complain(problem)
        return EXIT_NOTHING_TO_SHOW
    title = f"streamer · {target.display_url} · prefix {target.prefix}"
    console.print(render_board(board, time.time_ns(), title, width=console.width))
    if funds:
        console.print(render_funds(funds))
    notes = note_lines(target, findings)
    if notes:
        _complain(notes)
        return EXIT_NOTHING_TO_SHOW
    return 0


def _complain(lines: Sequence[str]) -> None:
    """``streamer watch: first line`` and the rest indented, on stderr (no markup)."""
    for i, line in enumerate(lines):
        print(f"streamer watch: {line}" if i == 0 else f"  {line}", file=sys.stderr)


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
