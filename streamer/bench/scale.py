"""``streamer bench scale``: how the live service's costs grow with the universe.

For each ``--universe SYMBOLSxSERIES`` a synthetic cap-weighted universe of the ``bench
kernel`` shape (~20 index memberships per symbol, so one tick moves ~20 series; built by
:func:`streamer.bench.kernel.cap_universe`) is written as config files (one TOML and one CSV
per index) in a temporary directory, private mosquitto and redis-server are started, and the
real ``streamer run`` runs on it with ``interval_ms = 0`` (every change).  Measured, in order:

1. **start-up**: process start to ``/readyz`` answering 200 (the config loaded, the engine
   built, the broker and Redis connected, every index with a level from its seed prices).
   The restart of step 6 is timed too: the same config again, its index definitions read
   from the cache the first start wrote and its state restored from Redis.
2. **latency**: single-tick JSON on ``ticks/<symbol>`` at ``--rate`` (5,000/s) for
   ``--duration``; a subscriber on ``P:levels`` takes receipt minus ``source_ts`` of every
   level (p50/p99).  Over the same window, Redis's time per published series: the delta of
   ``INFO commandstats`` (every command's ``usec``) divided by the series published (levels
   the subscriber received), and Redis's CPU share (``INFO cpu``).
3. **batched zero-loss ticks/s**: 1,000-tick MessagePack batches, the rate search of ``bench
   e2e`` (a step passes when every tick is accepted and the service keeps up).
4. **/metrics scrape stall**: the service's HTTP server runs on its event loop, so a probe
   thread asking ``/healthz`` back to back sees every stall of the loop as the round trip of
   its request.  Scrapes run every 0.25 s meanwhile; the figure is the longest ``/healthz``
   round trip that overlapped a scrape, next to the longest one with no scrape running (the
   loop's other work, e.g. the one-second gauge rendering) and the median round trip.
5. **history memory**: Redis ``used_memory`` after the run minus before the service started
   (every key the service wrote, so an upper bound of its history), next to the configured
   ``history_memory_mb`` budget.
6. **a 1 s dissemination cycle**: the service is restarted with ``interval_ms = 1000`` (every
   series written every second) and a probe client sends PING every 1 ms on its own
   connection: the longest PING round trip is the longest time Redis was blocked (plus the
   probe's own scheduling; its median shows that floor).  Redis's latency monitor
   (``latency-monitor-threshold 1``) is read as well: it times single commands, and inner
   commands of a MULTI/EXEC one by one, so it shows a slow command but not a long
   transaction.

``--scale-out``: the 10,000-symbol / 2,000-index universe split into two regions (each index
draws its members from one half of the symbols, as a universe sharded by region or market
shares no constituents between shards), run once as one process and once as two shards (``[shard]
name``, ``[mqtt] tick_topics = "constituents"``, indices split by glob) on the same broker,
Redis and feed.  Single ticks go on ``ticks/<symbol>`` (the broker routes each to its shard);
batches are partitioned by the producer, each shard's on ``ticks/batch/<shard>``, which the
one process subscribes to as well.  Reported: zero-loss batched ticks/s and p99 latency for
each, and the ratio.

Wall-clock figures on a shared machine are noisy: compare variants measured in one run.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from streamer.bench.e2e import (
    BATCH_SIZE,
    BenchError,
    PublisherHandle,
    RateSearch,
    RateStep,
    ServiceTally,
    StepRunner,
    Tally,
    _machine,
    _percentiles_ms,
    drain,
    search_rate,
    settle,
)
from streamer.bench.kernel import cap_universe
from streamer.config import IndexDefinition
from streamer.localservices import LocalMosquitto, LocalRedis, free_port
from streamer.tools.bench_workers import Latency, Opening
from streamer.tools.feed import FeedUniverse
from streamer.tools.levels_tap import LevelsTap
from streamer.tools.mqtt_publisher import BrokerEndpoint
from streamer.tools.processes import ChildProcess, child_environment, streamer_command
from streamer.tools.scrape import ScrapeError, metrics_url

HELP = (
    "scale benchmark: synthetic universes of growing size through the live service "
    "(latency, batched ticks/s, Redis us per series and longest block, /metrics stall, "
    "start-up, history memory); --scale-out: one process vs two shards"
)

DEFAULT_UNIVERSES = ("520x23", "2000x200", "10000x2000", "20000x10000")
QUICK_UNIVERSES = ("200x10",)
SCALE_OUT_UNIVERSE = "10000x2000"
QUICK_SCALE_OUT_UNIVERSE = "400x40"
PREFIX = "streamer"
HISTORY_MEMORY_MB = 256  # the budget the benchmark's config sets (smaller than the default)
SHARDS = ("A", "B")
# Commands the service sends only inside MULTI/EXEC (the lease's EVALSHA renewals outside one
# are a few per TTL): their time is part of EXEC's.
TRANSACTION_COMMANDS = frozenset({"hset", "publish", "xadd", "evalsha"})

# Targets of the scale issue (#15) and of the sharding issue's scale-out (#13).
TARGET_P99_MS = {"10000x2000": 5.0, "20000x10000": 20.0}
TARGET_BATCH_TICKS_PER_S = {"20000x10000": 2_000_000.0}
TARGET_REDIS_US_PER_SERIES = 3.0
TARGET_CYCLE_BLOCK_MS = 10.0
TARGET_SCRAPE_STALL_MS = 5.0
TARGET_STARTUP_S = {"20000x10000": 1.5}
TARGET_SCALE_OUT_RATIO = 1.7


@dataclass(frozen=True)
class UniverseShape:
    symbols: int
    series: int

    @classmethod
    def parse(cls, text: str) -> UniverseShape:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
        if not match:
            raise argparse.ArgumentTypeError(f"{text!r}: expected SYMBOLSxSERIES, e.g. 10000x2000")
        shape = cls(int(match[1]), int(match[2]))
        if shape.symbols < 1 or shape.series < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: at least one symbol and one series")
        return shape

    @property
    def label(self) -> str:
        return f"{self.symbols}x{self.series}"


@dataclass(frozen=True)
class Plan:
    rate: float  # single ticks/s of the latency window
    duration_s: float  # the latency window
    step_s: float  # a batched rate step
    batch_start: float
    factor: float
    max_steps: int
    refinements: int
    scrapes: int
    cycle_s: float  # how long the 1 s dissemination cycle is probed
    quiet_s: float
    min_interval_ms: int = 0  # [publish] min_interval_ms of the change-driven service

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            return cls(
                rate=min(args.rate, 1_000.0),
                duration_s=0.5,
                step_s=0.5,
                batch_start=20_000,
                factor=1.0,
                max_steps=1,
                refinements=0,
                scrapes=3,
                cycle_s=1.5,
                quiet_s=0.3,
                min_interval_ms=args.min_interval_ms,
            )
        return cls(
            rate=args.rate,
            duration_s=args.duration,
            step_s=args.step_seconds,
            batch_start=250_000,
            factor=1.6,
            max_steps=8,
            refinements=max(0, args.refinements),
            scrapes=20,
            cycle_s=6.0,
            quiet_s=1.0,
            min_interval_ms=args.min_interval_ms,
        )


@dataclass
class Universe:
    """A universe written as config files: the definitions and the feed's view of them."""

    shape: UniverseShape
    directory: Path
    definitions: list[IndexDefinition]
    feed: FeedUniverse
    build_s: float  # generating and writing the files

    @property
    def memberships(self) -> int:
        return sum(len(d.constituents) for d in self.definitions)


def build_universe(
    shape: UniverseShape, directory: Path, regions: int = 1, seed: int = 7
) -> Universe:
    """Write ``shape`` as index TOML + CSV files under ``directory/indices``.  With regions,
    index ids are ``<letter><k>`` (``A0000``...), one letter per region, for globbing."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    definitions = cap_universe(rng, shape.symbols, shape.series, regions=regions)
    if regions > 1:
        definitions = [
            _renamed(d, f"{SHARDS[k * regions // len(definitions)]}{k:05d}")
            for k, d in enumerate(definitions)
        ]
    indices = directory / "indices"
    indices.mkdir(parents=True, exist_ok=True)
    prices: dict[str, float] = {}
    for d in definitions:
        rows = ["symbol,shares,iwf,price"]
        for c in d.constituents:
            rows.append(f"{c.symbol},{c.shares!r},{c.iwf!r},{c.price!r}")
            prices[c.symbol] = c.price or 100.0
        (indices / f"{d.id}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        (indices / f"{d.id}.toml").write_text(
            f'id = "{d.id}"\nmethod = "cap"\nbase_value = 1000.0\nconstituents = "{d.id}.csv"\n',
            encoding="utf-8",
        )
    symbols = tuple(sorted(prices))
    feed = FeedUniverse(
        symbols=symbols, start_prices=np.array([prices[s] for s in symbols], dtype=np.float64)
    )
    return Universe(shape, directory, definitions, feed, time.perf_counter() - started)


def _renamed(d: IndexDefinition, index_id: str) -> IndexDefinition:
    return IndexDefinition(
        id=index_id, method=d.method, base_value=d.base_value, constituents=d.constituents
    )


def write_service_config(
    path: Path,
    indices: Sequence[str],
    *,
    shard: str = "",
    tick_topics: str = "all",
    batch_topics: Sequence[str] = (),
) -> Path:
    topics = ["ticks/#", *batch_topics, "fx/#", "control/#", "reference/#"]
    lines = [
        f"indices = {json.dumps(list(indices))}",
        "",
        "[mqtt]",
        f"topics = {json.dumps(topics)}",
        f'tick_topics = "{tick_topics}"',
        "",
        "[redis]",
        f'prefix = "{PREFIX}"',
        "",
        "[publish]",
        "interval_ms = 0",
        f"history_memory_mb = {HISTORY_MEMORY_MB}",
        "",
        "[ingest]",
        "queue_max = 2000000",
        "",
        "[shard]",
        f'name = "{shard}"',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- measurements ---------------------------------------------------------------------------


@dataclass
class StartupFigures:
    metrics_s: float | None = None  # process start -> /metrics answers
    ready_s: float | None = None  # process start -> /readyz 200


@dataclass
class LatencyWindow:
    rate: float
    ticks: int = 0
    end_to_end_ms: dict[str, float | None] = field(default_factory=dict)
    series_published: int = 0
    redis_usec: float = 0.0
    redis_us_per_series: float | None = None
    redis_cpu_pct: float | None = None  # of one core, over the window
    # Redis's CPU time (INFO cpu: commands, parsing, networking) per series published
    redis_cpu_us_per_series: float | None = None
    redis_top_commands: dict[str, float] = field(default_factory=dict)  # usec per command


@dataclass
class ScrapeFigures:
    scrapes: int = 0
    page_bytes: int = 0
    scrape_ms: dict[str, float | None] = field(default_factory=dict)  # wall time of a GET
    healthz_median_ms: float | None = None
    healthz_max_during_scrape_ms: float | None = None
    healthz_max_otherwise_ms: float | None = None
    probes: int = 0

    @property
    def stall_ms(self) -> float | None:
        """The longest loop stall a scrape caused, beyond a probe's ordinary round trip."""
        if self.healthz_max_during_scrape_ms is None or self.healthz_median_ms is None:
            return None
        return round(max(0.0, self.healthz_max_during_scrape_ms - self.healthz_median_ms), 3)


@dataclass
class CycleFigures:
    """Redis while every series is written once a second."""

    seconds: float = 0.0
    pings: int = 0
    ping_median_ms: float | None = None
    ping_p999_ms: float | None = None
    ping_max_ms: float | None = None  # the longest block seen by the probe
    latency_monitor_max_ms: int | None = None
    series_per_cycle: int = 0
    # The slowest single commands (SLOWLOG, wall time in Redis, so a descheduled Redis shows
    # too): "NAME us", slowest first; EXEC is not logged, its commands are.
    slowest_commands: list[str] = field(default_factory=list)


@dataclass
class ScaleFigures:
    universe: str
    symbols: int
    series: int
    memberships: int
    files: int
    build_s: float
    startup: StartupFigures  # the first start (index files parsed)
    restart: StartupFigures  # the second (the definitions cache read instead)
    latency: LatencyWindow
    batched: RateSearch
    scrape: ScrapeFigures
    history_memory_mb: float | None
    history_budget_mb: float
    cycle: CycleFigures
    service_peak_rss_mb: float | None

    def targets(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        p99 = self.latency.end_to_end_ms.get("p99")
        if self.universe in TARGET_P99_MS:
            out["p99_ms"] = _entry(TARGET_P99_MS[self.universe], p99, higher_is_better=False)
        if self.universe in TARGET_BATCH_TICKS_PER_S:
            out["batch_ticks_per_s"] = _entry(
                TARGET_BATCH_TICKS_PER_S[self.universe], self.batched.zero_loss_ticks_per_s
            )
        out["redis_us_per_series"] = _entry(
            TARGET_REDIS_US_PER_SERIES, self.latency.redis_us_per_series, higher_is_better=False
        )
        out["cycle_block_ms"] = _entry(
            TARGET_CYCLE_BLOCK_MS, self.cycle.ping_max_ms, higher_is_better=False
        )
        if self.series >= 10_000:
            out["scrape_stall_ms"] = _entry(
                TARGET_SCRAPE_STALL_MS, self.scrape.stall_ms, higher_is_better=False
            )
        if self.universe in TARGET_STARTUP_S:
            out["startup_s"] = _entry(
                TARGET_STARTUP_S[self.universe], self.startup.ready_s, higher_is_better=False
            )
        out["history_within_budget"] = {
            "target": self.history_budget_mb,
            "measured": self.history_memory_mb,
            "met": self.history_memory_mb is not None
            and self.history_memory_mb <= self.history_budget_mb,
        }
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "batched": self.batched.to_json(),
            "scrape": asdict(self.scrape) | {"stall_ms": self.scrape.stall_ms},
            "targets": self.targets(),
        }


def _entry(target: float, measured: float | None, higher_is_better: bool = True) -> dict[str, Any]:
    met = measured is not None and (measured >= target if higher_is_better else measured <= target)
    return {"target": target, "measured": measured, "met": met}


def _redis_command_usec(client: redis.Redis) -> dict[str, tuple[int, float]]:
    """``INFO commandstats``: (calls, usec) per command."""
    stats: dict[str, Any] = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"]))
        for name, v in stats.items()
    }


def _redis_cpu_s(client: redis.Redis) -> float:
    cpu: dict[str, Any] = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def _used_memory(client: redis.Redis) -> int:
    memory: dict[str, Any] = client.info("memory")
    return int(memory["used_memory"])


def _http_get(host: str, port: int, path: str, timeout: float = 5.0) -> bytes:
    """One HTTP/1.1 GET on a fresh connection (the service closes each): the body."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(1 << 20):
            chunks.append(data)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ScrapeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return body


def wait_ready(service: ChildProcess, host: str, port: int, timeout_s: float = 120.0) -> float:
    """Until ``/readyz`` answers 200; seconds since ``started``.  Raises if the child dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            raise BenchError(f"the service exited: {service.log_tail()}")
        try:
            _http_get(host, port, "/readyz", timeout=1.0)
            return time.monotonic()
        except (OSError, ScrapeError):
            time.sleep(0.01)
    raise BenchError(f"the service was not ready within {timeout_s:.0f} s: {service.log_tail()}")


def start_service(
    name: str,
    config: Path,
    env: dict[str, str],
    log_path: Path,
    host: str,
    port: int,
) -> tuple[ChildProcess, StartupFigures]:
    service = ChildProcess(name, streamer_command("run", "--config", str(config)), env, log_path)
    started = time.monotonic()
    service.start()
    figures = StartupFigures()
    deadline = time.monotonic() + 120.0
    while figures.metrics_s is None and time.monotonic() < deadline:
        if not service.alive():
            raise BenchError(f"{name} exited: {service.log_tail()}")
        try:
            _http_get(host, port, "/healthz", timeout=1.0)
            figures.metrics_s = round(time.monotonic() - started, 3)
        except (OSError, ScrapeError):
            time.sleep(0.01)
    figures.ready_s = round(wait_ready(service, host, port) - started, 3)
    return service, figures


def open_market(publisher: PublisherHandle, tally: Tally, symbols: int) -> None:
    """Opening prints until the services have taken one per symbol (they may still be
    subscribing when the first go out)."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        publisher.call(Opening())
        if drain(tally, (0, 0), symbols, timeout_s=3.0)[0] >= symbols:
            return
    raise BenchError("the service took no opening prints within 60 s")


def latency_window(
    publisher: PublisherHandle,
    client: redis.Redis,
    redis_url: str,
    plan: Plan,
) -> LatencyWindow:
    figures = LatencyWindow(rate=plan.rate)
    tap = LevelsTap(redis_url, f"{PREFIX}:levels").start()
    try:
        stats_before, cpu_before = _redis_command_usec(client), _redis_cpu_s(client)
        wall_before = time.monotonic()
        sent = publisher.call(Latency(plan.rate, plan.duration_s))
        time.sleep(0.5)  # the last levels on their way
        stats_after, cpu_after = _redis_command_usec(client), _redis_cpu_s(client)
        wall = time.monotonic() - wall_before
    finally:
        tap.stop()
    figures.ticks = sent.ticks
    figures.end_to_end_ms = _percentiles_ms(tap.latencies_ns(since_ts=sent.first_ts))
    figures.series_published = len(tap.latencies_ns())
    usec = {
        name: calls_usec[1] - stats_before.get(name, (0, 0.0))[1]
        for name, calls_usec in stats_after.items()
        if name not in ("info",)
    }
    # EXEC's time includes the commands it ran (Redis 7 counts them under their own names
    # too): the total is EXEC plus what ran outside transactions.
    figures.redis_usec = round(
        sum(v for name, v in usec.items() if name not in TRANSACTION_COMMANDS), 1
    )
    cpu_us = (cpu_after - cpu_before) * 1e6
    if figures.series_published:
        figures.redis_us_per_series = round(figures.redis_usec / figures.series_published, 3)
        figures.redis_cpu_us_per_series = round(cpu_us / figures.series_published, 3)
    figures.redis_cpu_pct = round(100.0 * (cpu_after - cpu_before) / wall, 1)
    top = sorted(usec.items(), key=lambda kv: -kv[1])[:6]
    figures.redis_top_commands = {k: round(v, 1) for k, v in top if v > 0}
    return figures


def scrape_stall(host: str, port: int, scrapes: int) -> ScrapeFigures:
    """``/healthz`` back to back in a thread while ``/metrics`` is scraped every 0.25 s."""
    figures = ScrapeFigures()
    probes: list[tuple[float, float]] = []  # (start, end), monotonic
    windows: list[tuple[float, float]] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                _http_get(host, port, "/healthz")
            except (OSError, ScrapeError):
                continue
            probes.append((start, time.monotonic()))
            time.sleep(0.0005)

    thread = threading.Thread(target=probe, name="healthz-probe", daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # a baseline second (it includes one gauge rendering)
        for _ in range(scrapes):
            start = time.monotonic()
            body = _http_get(host, port, "/metrics")
            windows.append((start, time.monotonic()))
            figures.page_bytes = len(body)
            time.sleep(0.25)
    finally:
        stop.set()
        thread.join(timeout=5.0)
    figures.scrapes = len(windows)
    figures.probes = len(probes)
    figures.scrape_ms = _percentiles_ms(
        np.array([(b - a) * 1e9 for a, b in windows], dtype=np.int64)
    )
    if probes:
        rtts = [(b - a) * 1e3 for a, b in probes]
        figures.healthz_median_ms = round(statistics.median(rtts), 3)
        during = [
            r
            for (a, b), r in zip(probes, rtts, strict=True)
            if any(a < we and b > ws for ws, we in windows)
        ]
        otherwise = [
            r
            for (a, b), r in zip(probes, rtts, strict=True)
            if not any(a < we and b > ws for ws, we in windows)
        ]
        if during:
            figures.healthz_max_during_scrape_ms = round(max(during), 3)
        if otherwise:
            figures.healthz_max_otherwise_ms = round(max(otherwise), 3)
    return figures


def probe_pings(host: str, port: int, seconds: float) -> list[float]:
    """PING every 1 ms on a connection of its own; the round trips in ms."""
    rtts: list[float] = []
    with socket.create_connection((host, port), timeout=5.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            start = time.perf_counter()
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += sock.recv(64)
            rtts.append((time.perf_counter() - start) * 1e3)
            next_at += 0.001
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()
    return rtts


def dissemination_cycle(
    client: redis.Redis, host: str, port: int, seconds: float, series: int
) -> CycleFigures:
    client.latency_reset()
    client.slowlog_reset()
    rtts = probe_pings(host, port, seconds)
    figures = CycleFigures(seconds=seconds, pings=len(rtts), series_per_cycle=series)
    if rtts:
        ordered = np.array(rtts)
        figures.ping_median_ms = round(float(np.median(ordered)), 3)
        figures.ping_p999_ms = round(float(np.percentile(ordered, 99.9)), 3)
        figures.ping_max_ms = round(float(ordered.max()), 3)
    latest = client.latency_latest() or []
    maxima = [int(row[3]) for row in latest if isinstance(row, list | tuple) and len(row) >= 4]
    figures.latency_monitor_max_ms = max(maxima) if maxima else 0
    slow = sorted(client.slowlog_get(128), key=lambda e: -int(e["duration"]))[:3]
    figures.slowest_commands = [
        f"{bytes(e['command']).split(b' ', 1)[0].decode(errors='replace')} {e['duration']}"
        for e in slow
    ]
    return figures


@contextmanager
def private_servers(workdir: Path) -> Iterator[tuple[LocalMosquitto, LocalRedis, redis.Redis]]:
    with ExitStack() as stack:
        broker = stack.enter_context(LocalMosquitto(workdir=workdir / "mosquitto"))
        redis_server = stack.enter_context(LocalRedis(workdir=workdir / "redis"))
        client = redis.Redis(host=redis_server.host, port=redis_server.port)
        stack.callback(client.close)
        client.config_set("latency-monitor-threshold", 1)
        client.config_set("slowlog-log-slower-than", 1000)  # us
        yield broker, redis_server, client


def service_env(broker: LocalMosquitto, redis_server: LocalRedis, client_id: str, listen: str,
                **more: str) -> dict[str, str]:  # fmt: skip
    """The service's environment; its definitions cache goes in the benchmark's temporary
    directory (beside the redis-server's), not in the user's."""
    return child_environment(
        {
            "XDG_CACHE_HOME": str(redis_server.workdir.parent / "cache"),
            "STREAMER_MQTT_URL": broker.url,
            "STREAMER_MQTT_CLIENT_ID": client_id,
            "STREAMER_REDIS_URL": redis_server.url,
            "STREAMER_METRICS_LISTEN": listen,
            **more,
        }
    )


def measure_universe(
    shape: UniverseShape, plan: Plan, workdir: Path, say: Callable[[str], None]
) -> ScaleFigures:
    say(f"{shape.label}: writing the universe")
    universe = build_universe(shape, workdir / "config")
    config = write_service_config(workdir / "config" / "streamer.toml", ["indices/*.toml"])
    host = "127.0.0.1"
    with ExitStack() as stack:
        broker, redis_server, client = stack.enter_context(private_servers(workdir))
        memory_before = _used_memory(client)
        port = free_port()
        env = service_env(broker, redis_server, "streamer-scale", f"{host}:{port}",
                          STREAMER_PUBLISH_MIN_INTERVAL_MS=str(plan.min_interval_ms))  # fmt: skip
        say(f"{shape.label}: starting the service")
        service, startup = start_service(
            "service", config, env, workdir / "service.log", host, port
        )
        stack.callback(service.stop)
        publisher = PublisherHandle(BrokerEndpoint.from_url(broker.url), universe.feed)
        stack.callback(publisher.close)
        tally = ServiceTally(metrics_url(f"{host}:{port}"))
        say(f"{shape.label}: opening the market")
        open_market(publisher, tally, len(universe.feed.symbols))
        settle(lambda: _accepted(tally), quiet_s=plan.quiet_s)
        say(f"{shape.label}: latency at {plan.rate:,.0f} ticks/s")
        latency = latency_window(publisher, client, redis_server.url, plan)
        runner = StepRunner(publisher, tally, _e2e_plan(plan), say)
        say(f"{shape.label}: batched zero-loss rate")
        batched = search_rate(
            "batched msgpack",
            lambda r: runner.measure(f"{shape.label} batches", r, BATCH_SIZE, "msgpack"),
            start=plan.batch_start,
            factor=plan.factor,
            max_steps=plan.max_steps,
            refinements=plan.refinements,
        )
        settle(lambda: _accepted(tally), quiet_s=plan.quiet_s)
        say(f"{shape.label}: /metrics scrape stall")
        scrape_figures = scrape_stall(host, port, plan.scrapes)
        history_mb = round((_used_memory(client) - memory_before) / 2**20, 2)
        rss = service.peak_rss_bytes()
        code = service.stop()
        if code not in (0, None):
            raise BenchError(f"the service exited with {code}: {service.log_tail()}")
        say(f"{shape.label}: a 1 s dissemination cycle")
        cycle_port = free_port()
        cycle_env = service_env(broker, redis_server, "streamer-scale-cycle",
                                f"{host}:{cycle_port}",
                                STREAMER_PUBLISH_INTERVAL_MS="1000")  # fmt: skip
        cycling, restart = start_service(
            "service-cycle", config, cycle_env, workdir / "cycle.log", host, cycle_port
        )
        stack.callback(cycling.stop)
        time.sleep(1.5)  # the first full cycles (one after the restart resync)
        cycle = dissemination_cycle(
            client, redis_server.host, redis_server.port, plan.cycle_s, shape.series
        )
        cycling.stop()
    return ScaleFigures(
        universe=shape.label,
        symbols=len(universe.feed.symbols),
        series=shape.series,
        memberships=universe.memberships,
        files=2 * len(universe.definitions),
        build_s=round(universe.build_s, 3),
        startup=startup,
        restart=restart,
        latency=latency,
        batched=batched,
        scrape=scrape_figures,
        history_memory_mb=history_mb,
        history_budget_mb=float(HISTORY_MEMORY_MB),
        cycle=cycle,
        service_peak_rss_mb=round(rss / 2**20, 1) if rss else None,
    )


def _accepted(tally: Tally) -> int | None:
    reading = tally.read()
    return None if reading is None else reading[0] + reading[1]


def _e2e_plan(plan: Plan) -> Any:
    from streamer.bench.e2e import Plan as E2ePlan

    return E2ePlan(
        step_s=plan.step_s,
        single_start=plan.rate,
        batch_start=plan.batch_start,
        factor=plan.factor,
        max_steps=plan.max_steps,
        refinements=plan.refinements,
        latency_rate=plan.rate,
        latency_s=plan.duration_s,
        quiet_s=plan.quiet_s,
    )


# -- scale-out ------------------------------------------------------------------------------


class SumTally(Tally):
    """Ticks accounted for by several services together (each tick reaches exactly one)."""

    def __init__(self, tallies: Sequence[Tally]) -> None:
        self.tallies = list(tallies)

    def read(self) -> tuple[int, int] | None:
        readings = [t.read() for t in self.tallies]
        if any(r is None for r in readings):
            return None
        return (
            sum(r[0] for r in readings if r is not None),
            sum(r[1] for r in readings if r is not None),
        )


@dataclass
class ScaleOutRun:
    processes: int
    batched: RateSearch
    latency: LatencyWindow
    startup: list[StartupFigures]

    def to_json(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "batched": self.batched.to_json(),
            "latency": asdict(self.latency),
            "startup": [asdict(s) for s in self.startup],
        }


@dataclass
class ScaleOutReport:
    universe: str
    symbols: int
    series: int
    one: ScaleOutRun
    two: ScaleOutRun

    @property
    def ratio(self) -> float | None:
        a = self.one.batched.zero_loss_ticks_per_s
        b = self.two.batched.zero_loss_ticks_per_s
        return round(b / a, 3) if a and b else None

    def to_json(self) -> dict[str, Any]:
        return {
            "universe": self.universe,
            "symbols": self.symbols,
            "series": self.series,
            "one_process": self.one.to_json(),
            "two_shards": self.two.to_json(),
            "ratio": self.ratio,
            "targets": {"ratio": _entry(TARGET_SCALE_OUT_RATIO, self.ratio)},
        }


def measure_scale_out(
    shape: UniverseShape, plan: Plan, workdir: Path, say: Callable[[str], None]
) -> ScaleOutReport:
    say(f"scale-out {shape.label}: writing the universe (two regions)")
    universe = build_universe(shape, workdir / "config", regions=len(SHARDS))
    base = workdir / "config"
    batch_topics = [f"ticks/batch/{s}" for s in SHARDS]
    symbol_index = {s: i for i, s in enumerate(universe.feed.symbols)}
    partitions = tuple(
        (
            f"ticks/batch/{shard}",
            tuple(
                sorted(
                    {
                        symbol_index[c.symbol]
                        for d in universe.definitions
                        if d.id.startswith(shard)
                        for c in d.constituents
                    }
                )
            ),
        )
        for shard in SHARDS
    )
    one_config = write_service_config(
        base / "one.toml",
        ["indices/*.toml"],
        tick_topics="constituents",
        batch_topics=batch_topics,
    )
    shard_configs = [
        write_service_config(
            base / f"shard-{s}.toml",
            [f"indices/{s}*.toml"],
            shard=s,
            tick_topics="constituents",
            batch_topics=[f"ticks/batch/{s}"],
        )
        for s in SHARDS
    ]
    runs: list[ScaleOutRun] = []
    with ExitStack() as stack:
        broker, redis_server, client = stack.enter_context(private_servers(workdir))
        publisher = PublisherHandle(BrokerEndpoint.from_url(broker.url), universe.feed)
        stack.callback(publisher.close)
        for label, configs in (("one process", [one_config]), ("two shards", shard_configs)):
            runs.append(
                _scale_out_run(
                    label, configs, (broker, redis_server, client), publisher, universe,
                    partitions, plan, workdir, say,
                )
            )  # fmt: skip
    return ScaleOutReport(shape.label, len(universe.feed.symbols), shape.series, *runs)


def _scale_out_run(
    label: str,
    configs: Sequence[Path],
    servers: tuple[LocalMosquitto, LocalRedis, redis.Redis],
    publisher: PublisherHandle,
    universe: Universe,
    partitions: tuple[tuple[str, tuple[int, ...]], ...],
    plan: Plan,
    workdir: Path,
    say: Callable[[str], None],
) -> ScaleOutRun:
    """Start ``configs`` side by side, measure them as one, stop them."""
    broker, redis_server, client = servers
    host = "127.0.0.1"
    say(f"scale-out: {label}: starting")
    services: list[ChildProcess] = []
    startups: list[StartupFigures] = []
    tallies: list[Tally] = []
    try:
        for config in configs:
            port = free_port()
            env = service_env(broker, redis_server, f"streamer-{config.stem}", f"{host}:{port}")
            service, startup = start_service(
                config.stem, config, env, workdir / f"{config.stem}.log", host, port
            )
            services.append(service)
            startups.append(startup)
            tallies.append(ServiceTally(metrics_url(f"{host}:{port}")))
        tally = SumTally(tallies)
        open_market(publisher, tally, len(universe.feed.symbols))
        settle(lambda: _accepted(tally), quiet_s=plan.quiet_s)
        say(f"scale-out: {label}: latency")
        latency = latency_window(publisher, client, redis_server.url, plan)
        runner = StepRunner(publisher, tally, _e2e_plan(plan), say)

        def step(rate: float) -> RateStep:
            return runner.measure(f"scale-out {label}", rate, BATCH_SIZE, "msgpack", partitions)

        batched = search_rate(
            f"{label} batches",
            step,
            start=plan.batch_start,
            factor=plan.factor,
            max_steps=plan.max_steps,
            refinements=plan.refinements,
        )
    finally:
        for service in services:
            service.stop()
    return ScaleOutRun(len(configs), batched, latency, startups)


# -- presentation ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--universe",
        action="append",
        type=UniverseShape.parse,
        metavar="SYMBOLSxSERIES",
        help="a universe to measure (repeatable; default: " + ", ".join(DEFAULT_UNIVERSES) + ")",
    )
    parser.add_argument(
        "--rate", type=float, default=5_000.0, help="single ticks/s of the latency window"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, metavar="S", help="latency window (default 10)"
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=2.0,
        metavar="S",
        help="duration of each batched rate step (default 2)",
    )
    parser.add_argument(
        "--refinements",
        type=int,
        default=2,
        metavar="N",
        help="geometric bisections of the batched rate after the 1.6x steps (default 2: "
        "within 12%%; 4: within 3%%)",
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="one process vs two shards on the 10,000 x 2,000 universe (or --universe)",
    )
    parser.add_argument(
        "--min-interval-ms",
        type=int,
        default=0,
        metavar="MS",
        help="[publish] min_interval_ms of the measured service: each series at most once per "
        "this many ms, its newest level always within it (default 0: every change)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny, short run (for tests)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def universe_table(figures: Sequence[ScaleFigures], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns = (
        "universe",
        "p50 / p99 ms",
        "batched ticks/s",
        "Redis us/series",
        "Redis CPU",
        "1 s cycle: max block ms",
        "scrape stall ms",
        "start-up s (restart)",
        "history MB / budget",
    )
    for name in columns:
        table.add_column(name, justify="left" if name == "universe" else "right")
    for f in figures:
        e2e = f.latency.end_to_end_ms
        table.add_row(
            f"{f.symbols:,} / {f.series:,}",
            f"{_fmt(e2e.get('p50'), '.2f')} / {_fmt(e2e.get('p99'), '.2f')}",
            _fmt(f.batched.zero_loss_ticks_per_s),
            _fmt(f.latency.redis_us_per_series, ".2f"),
            f"{_fmt(f.latency.redis_cpu_pct, '.0f')}%",
            f"{_fmt(f.cycle.ping_max_ms, '.1f')} (monitor {f.cycle.latency_monitor_max_ms})",
            f"{_fmt(f.scrape.stall_ms, '.1f')} (GET {_fmt(f.scrape.scrape_ms.get('p50'), '.1f')})",
            f"{_fmt(f.startup.ready_s, '.2f')} ({_fmt(f.restart.ready_s, '.2f')})",
            f"{_fmt(f.history_memory_mb, '.1f')} / {f.history_budget_mb:.0f}",
        )
    return table


def scale_out_table(report: ScaleOutReport) -> Any:
    from rich.table import Table

    table = Table(
        title=f"scale-out: {report.symbols:,} symbols / {report.series:,} series",
        title_justify="left",
    )
    for name in ("run", "batched zero-loss ticks/s", "p50 / p99 ms", "start-up s"):
        table.add_column(name, justify="left" if name == "run" else "right")
    for label, run in (("one process", report.one), ("two shards", report.two)):
        e2e = run.latency.end_to_end_ms
        table.add_row(
            label,
            _fmt(run.batched.zero_loss_ticks_per_s),
            f"{_fmt(e2e.get('p50'), '.2f')} / {_fmt(e2e.get('p99'), '.2f')}",
            " / ".join(_fmt(s.ready_s, ".2f") for s in run.startup),
        )
    table.add_row(
        "ratio", _fmt(report.ratio, ".2f") + "x", "", f"target ≥ {TARGET_SCALE_OUT_RATIO}x"
    )
    return table


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    plan = Plan.for_args(args)
    console = Console(stderr=True)
    with ExitStack() as stack:
        status = stack.enter_context(console.status("bench scale"))

        def say(text: str) -> None:
            status.update(f"bench scale: {text}")

        out: dict[str, Any] = {"command": " ".join(["streamer bench scale", *sys.argv[3:]]),
                               "quick": args.quick, "machine": _machine(),
                               "plan": asdict(plan)}  # fmt: skip
        if args.scale_out:
            shape = (args.universe or [None])[0] or UniverseShape.parse(
                QUICK_SCALE_OUT_UNIVERSE if args.quick else SCALE_OUT_UNIVERSE
            )
            with tempfile.TemporaryDirectory(prefix="streamer-scaleout-") as tmp:
                report = measure_scale_out(shape, plan, Path(tmp), say)
            out["scale_out"] = report.to_json()
            figures: list[ScaleFigures] = []
        else:
            shapes = args.universe or [
                UniverseShape.parse(u)
                for u in (QUICK_UNIVERSES if args.quick else DEFAULT_UNIVERSES)
            ]
            figures = []
            for shape in shapes:
                with tempfile.TemporaryDirectory(prefix="streamer-scale-") as tmp:
                    figures.append(measure_universe(shape, plan, Path(tmp), say))
            out["universes"] = [f.to_json() for f in figures]
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    printer = Console(width=max(Console().width, 160))
    m = out["machine"]
    title = f"streamer bench scale · {m['cpus']} x {m['cpu']} · Python {m['python']}"
    if figures:
        printer.print(universe_table(figures, title))
    if args.scale_out:
        printer.print(scale_out_table(report))
    return 0
