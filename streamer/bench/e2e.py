"""``streamer bench e2e``: broker -> service -> Redis, measured from the outside.

Setup: private mosquitto and redis-server on loopback, ``streamer run`` as a subprocess on
the demo universe (or ``--config``), a publisher in its own process, a Redis subscriber.

1. Single-tick JSON messages: the highest rate the service sustains with zero loss.  Rates
   step up geometrically until a step fails, then bisect between the last good and the first
   bad rate.  A step passes when the service accepted every tick sent
   (``streamer_ticks_total{outcome="accepted"}`` gained vs sent, after draining; nothing
   rejected or conflated) *and* it kept up while they came: at most ``MAX_LAG_S`` behind when
   the publisher stopped, since broker and service queues can hide an overload for seconds.
2. The same for 1,000-tick MessagePack batches on ``ticks/batch``.
3. Tick-to-publish latency at 5,000 ticks/s (single JSON, live ``ts``): receipt of each
   ``P:levels`` message by a Redis subscriber minus its ``source_ts`` (the producer's stamp of
   the newest tick in it), and the service's own ``streamer_tick_to_publish_seconds``
   (receipt to Redis acknowledgement), interpolated from its buckets.
4. Peak RSS of the service (``VmHWM``).
5. The ceiling: the service is stopped and a paho-mqtt callback consumer that only receives
   and decodes takes its place; step 1 is repeated against it, and our ratio printed.
6. The latency floor: a bare forwarder (asyncio protocols, one Redis PUBLISH per tick, no
   engine) takes the service's place and step 3 is repeated: the latency this machine, the
   broker and Redis cost before any index arithmetic.

Steps 3 and 6 also report the share of CPU time the hypervisor stole during them
(``/proc/stat``): on a VM the latency tail follows it, and without it two runs cannot be
compared.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamer.config import Settings, load_settings
from streamer.errors import StreamerError
from streamer.localservices import LocalMosquitto, LocalRedis, free_port
from streamer.tools.bench_workers import (
    Latency,
    Opening,
    Quit,
    Sent,
    Throughput,
    ceiling_consumer_process,
    latency_floor_process,
    publisher_process,
)
from streamer.tools.feed import FeedUniverse
from streamer.tools.levels_tap import LevelsTap
from streamer.tools.mqtt_publisher import BrokerEndpoint
from streamer.tools.processes import ChildProcess, child_environment, streamer_command
from streamer.tools.scrape import Histogram, ScrapeError, metrics_url, scrape
from streamer.tools.tick_encoding import PayloadFormat

HELP = (
    "end-to-end benchmark: private mosquitto and Redis, the service as a subprocess, a "
    "separate publisher; zero-loss ticks/s, tick-to-publish latency, peak RSS, and the "
    "ratio to a bare paho-mqtt consumer"
)

# Targets of the live-service issue.
TARGET_SINGLE_TICKS_PER_S = 25_000.0
TARGET_CEILING_RATIO = 0.7
TARGET_BATCH_TICKS_PER_S = 1_000_000.0
TARGET_P99_MS = 2.0
BATCH_SIZE = 1_000
# Mosquitto leaves Nagle's algorithm on by default: small messages to a subscriber then wait
# for the previous segment's ACK (and Linux delays ACKs up to 40 ms).  A latency-sensitive
# deployment turns it off; so does the benchmark.
ACHIEVED_TOLERANCE = 0.97  # a step counts only if the publisher reached 97% of its rate
DRAIN_QUIET_S = 1.0  # the count stopped moving this long: the pipeline is drained
# A consumer more than this far behind when the publisher stops is buffering, not keeping up
# (queues in the broker and the service can hide an overload for seconds).
MAX_LAG_S = 0.25


class BenchError(StreamerError):
    """The benchmark could not run (a process failed to start or died)."""


PHASES = ("single", "batch", "latency", "ceiling", "floor")


@dataclass(frozen=True)
class Plan:
    step_s: float
    single_start: float
    batch_start: float
    factor: float  # rate multiplier between steps until one fails
    max_steps: int
    refinements: int  # geometric bisections between the last good and the first bad rate
    latency_rate: float
    latency_s: float
    phases: tuple[str, ...] = PHASES
    quiet_s: float = DRAIN_QUIET_S  # a count unchanged this long is drained

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        phases = tuple(p.strip() for p in args.only.split(",")) if args.only else PHASES
        unknown = set(phases) - set(PHASES)
        if unknown:
            raise BenchError(f"--only: unknown phase {sorted(unknown)}; known: {PHASES}")
        if args.quick:
            return cls(
                step_s=0.5,
                single_start=2_000,
                batch_start=100_000,
                factor=1.0,
                max_steps=1,
                refinements=0,
                latency_rate=1_000,
                latency_s=0.5,
                phases=phases,
                quiet_s=0.3,
            )
        return cls(
            step_s=args.step_seconds,
            single_start=10_000,
            batch_start=250_000,
            factor=1.5,
            max_steps=12,
            refinements=3,
            latency_rate=args.latency_rate,
            latency_s=args.latency_seconds,
            phases=phases,
        )


@dataclass
class RateStep:
    target: float  # ticks/s asked of the publisher
    achieved: float  # ticks/s it sent
    sent: int
    processed: int  # ticks the consumer accounted for
    lost: int
    rejected: int = 0  # rejected, held or conflated by the service
    lag_s: float | None = None  # how far behind the consumer was when the publisher stopped
    passed: bool = False


@dataclass
class RateSearch:
    label: str
    steps: list[RateStep] = field(default_factory=list)

    @property
    def zero_loss_ticks_per_s(self) -> float | None:
        good = [s.achieved for s in self.steps if s.passed]
        return max(good) if good else None

    def to_json(self) -> dict[str, Any]:
        return {
            "zero_loss_ticks_per_s": _round(self.zero_loss_ticks_per_s),
            "steps": [asdict(s) | {"achieved": round(s.achieved)} for s in self.steps],
        }


@dataclass
class LatencyFigures:
    rate: float
    duration_s: float
    ticks: int = 0
    end_to_end_ms: dict[str, float | None] = field(default_factory=dict)
    service_ms: dict[str, float | None] = field(default_factory=dict)
    steal_pct: float | None = None  # CPU time stolen by the hypervisor meanwhile, all CPUs


def cpu_times(stat_text: str | None = None) -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from ``/proc/stat``; None where it does not exist.

    Guest time is already counted in user and nice, so it is left out of the total."""
    if stat_text is None:
        try:
            stat_text = Path("/proc/stat").read_text(encoding="ascii")
        except OSError:
            return None
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            # user nice system idle iowait irq softirq steal (older kernels stop earlier)
            jiffies = [int(v) for v in fields[1:9]]
            return (jiffies[7] if len(jiffies) > 7 else 0), sum(jiffies)
    return None


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 2)


@dataclass
class E2eReport:
    quick: bool
    machine: dict[str, Any]
    universe: dict[str, Any]
    single_json: RateSearch
    batch_msgpack: RateSearch
    latency: LatencyFigures
    service_peak_rss_mb: float | None
    ceiling: RateSearch
    floor: LatencyFigures

    @property
    def ratio_to_ceiling(self) -> float | None:
        ours, ceiling = self.single_json.zero_loss_ticks_per_s, self.ceiling.zero_loss_ticks_per_s
        return ours / ceiling if ours and ceiling else None

    def targets(self) -> dict[str, dict[str, Any]]:
        p99 = self.latency.end_to_end_ms.get("p99")

        def entry(
            target: float, measured: float | None, higher_is_better: bool = True
        ) -> dict[str, Any]:
            met = measured is not None and (
                measured >= target if higher_is_better else measured <= target
            )
            return {"target": target, "measured": _round(measured, 3), "met": met}

        return {
            "single_json_ticks_per_s": entry(
                TARGET_SINGLE_TICKS_PER_S, self.single_json.zero_loss_ticks_per_s
            ),
            "ratio_to_ceiling": entry(TARGET_CEILING_RATIO, self.ratio_to_ceiling),
            "batch_msgpack_ticks_per_s": entry(
                TARGET_BATCH_TICKS_PER_S, self.batch_msgpack.zero_loss_ticks_per_s
            ),
            "p99_ms_at_5000": entry(TARGET_P99_MS, p99, higher_is_better=False),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "command": "streamer bench e2e" + (" --quick" if self.quick else ""),
            "quick": self.quick,
            "machine": self.machine,
            "universe": self.universe,
            "single_json": self.single_json.to_json(),
            "batch_msgpack": self.batch_msgpack.to_json() | {"batch": BATCH_SIZE},
            "latency": asdict(self.latency),
            "service_peak_rss_mb": _round(self.service_peak_rss_mb, 1),
            "ceiling": self.ceiling.to_json(),
            "ratio_to_ceiling": _round(self.ratio_to_ceiling, 3),
            "latency_floor": asdict(self.floor),
            "targets": self.targets(),
        }


def _round(value: float | None, digits: int = 0) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits) if digits else float(round(value))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds: one step per measurement at low rates (for tests)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="index universe to run (default: the demo's config/streamer.toml)",
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=3.0,
        metavar="S",
        help="duration of each rate step (default 3)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=5_000.0,
        metavar="TICKS_PER_S",
        help="rate of the latency measurement (default 5000)",
    )
    parser.add_argument(
        "--only",
        metavar="PHASES",
        help="comma-separated subset of the phases: " + ",".join(PHASES),
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="duration of the latency measurement (default 10)",
    )


# -- the helpers' processes -----------------------------------------------------------------


class PublisherHandle:
    """The publisher process and its command pipe."""

    def __init__(self, endpoint: BrokerEndpoint, universe: FeedUniverse) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=publisher_process,
            args=(child, endpoint, universe),
            name="bench-publisher",
            daemon=True,
        )
        self._process.start()
        child.close()
        ready = self._receive(30.0)
        if ready != "ready":
            raise BenchError(f"the publisher did not start: {ready!r}")

    def _receive(self, timeout_s: float) -> Any:
        if not self._conn.poll(timeout_s):
            raise BenchError("the publisher process did not answer")
        try:
            answer = self._conn.recv()
        except EOFError:
            raise BenchError(f"the publisher process exited ({self._process.exitcode})") from None
        if isinstance(answer, Exception):
            raise BenchError(f"the publisher failed: {answer}")
        return answer

    def call(self, command: Opening | Throughput | Latency) -> Sent:
        self._conn.send(command)
        timeout = 30.0 + getattr(command, "duration_s", 0.0) * 2
        sent = self._receive(timeout)
        if not isinstance(sent, Sent):
            raise BenchError(f"unexpected answer from the publisher: {sent!r}")
        return sent

    def close(self) -> None:
        with suppress(OSError, EOFError):
            self._conn.send(Quit())
        self._process.join(timeout=5.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5.0)
        self._conn.close()


@contextmanager
def helper_process(name: str, target: Callable[..., None], *args: Any) -> Iterator[None]:
    """Runs ``target(*args, ready, stop)`` in a process of its own, from its ``ready`` (it is
    subscribed) until the block ends (``stop``)."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    process = ctx.Process(target=target, args=(*args, ready, stop), name=name, daemon=True)
    process.start()
    try:
        if not ready.wait(30.0):
            raise BenchError(f"{name} did not subscribe")
        yield
    finally:
        stop.set()
        process.join(timeout=5.0)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5.0)


@contextmanager
def ceiling_consumer(endpoint: BrokerEndpoint) -> Iterator[Callable[[], int]]:
    """Runs the bare paho consumer; yields a function reading its received-ticks count."""
    received = multiprocessing.get_context("spawn").Value("q", 0, lock=False)
    with helper_process("bench-ceiling", ceiling_consumer_process, endpoint, received):
        yield lambda: int(received.value)


def latency_floor(
    endpoint: BrokerEndpoint, redis_port: int, channel: str
) -> AbstractContextManager[None]:
    """Runs the bare forwarder (see ``latency_floor_process``) in place of the service."""
    return helper_process("bench-floor", latency_floor_process, endpoint, redis_port, channel)


# -- measurement --------------------------------------------------------------------------


class Tally:
    """Ticks a consumer has accounted for: ``(processed, refused)``, or None when it is too busy
    to say (a saturated service answers /metrics late)."""

    def read(self) -> tuple[int, int] | None:
        raise NotImplementedError


class ServiceTally(Tally):
    def __init__(self, url: str) -> None:
        self.url = url

    def read(self) -> tuple[int, int] | None:
        try:
            metrics = scrape(self.url, timeout=5.0)
        except ScrapeError:
            return None
        accepted = metrics.value("streamer_ticks_total", outcome="accepted", reason="ok")
        others = metrics.value("streamer_ticks_total") - metrics.value(
            "streamer_ticks_total", outcome="accepted"
        )
        return int(accepted), int(others)


class CeilingTally(Tally):
    def __init__(self, received: Callable[[], int]) -> None:
        self.received = received

    def read(self) -> tuple[int, int] | None:
        return self.received(), 0


def _total(reading: tuple[int, int] | None) -> int | None:
    return None if reading is None else reading[0] + reading[1]


def drain(
    tally: Tally,
    base: tuple[int, int],
    expected: int,
    timeout_s: float,
    quiet_s: float = DRAIN_QUIET_S,
) -> tuple[int, int]:
    """Poll until the consumer accounted for ``expected`` ticks since ``base``, or stopped
    moving for ``DRAIN_QUIET_S``; returns ``(processed, refused)`` since ``base``."""
    deadline = time.monotonic() + timeout_s
    last = (0, 0)
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        reading = tally.read()
        if reading is None:  # busy, hence not drained
            last_change = time.monotonic()
        else:
            since = (reading[0] - base[0], reading[1] - base[1])
            if since != last:
                last, last_change = since, time.monotonic()
            if sum(since) >= expected or time.monotonic() - last_change >= quiet_s:
                return since
        time.sleep(0.05)
    return last


def settle(
    read: Callable[[], int | None], timeout_s: float = 120.0, quiet_s: float = DRAIN_QUIET_S
) -> int:
    """Wait until ``read`` answers and has not moved for ``DRAIN_QUIET_S``: what a failed step
    left in the broker and the service is gone before the next measurement starts."""
    deadline = time.monotonic() + timeout_s
    last: int | None = None
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        value = read()
        if value is None or value != last:
            last, last_change = value, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            return value
        time.sleep(0.1)
    raise BenchError(f"the consumer did not settle within {timeout_s:.0f} s")


class StepRunner:
    """Runs rate steps against one consumer, each from a quiet start."""

    def __init__(
        self, publisher: PublisherHandle, tally: Tally, plan: Plan, say: Callable[[str], None]
    ) -> None:
        self.publisher = publisher
        self.tally = tally
        self.plan = plan
        self.say = say
        self._dirty = True  # the consumer may still be busy with earlier ticks

    def measure(
        self,
        label: str,
        rate: float,
        batch: int,
        fmt: PayloadFormat,
        partitions: tuple[tuple[str, tuple[int, ...]], ...] = (),
    ) -> RateStep:
        """One step; ``partitions``: batches split by shard (see ``Throughput``)."""
        self.say(f"{label}: {rate:,.0f} ticks/s")
        if self._dirty:
            settle(lambda: _total(self.tally.read()), quiet_s=self.plan.quiet_s)
        base = self._read()
        sent = self.publisher.call(Throughput(rate, self.plan.step_s, batch, fmt, partitions))
        at_end = self.tally.read()
        processed, refused = drain(
            self.tally, base, sent.ticks, 10.0 + 3 * self.plan.step_s, self.plan.quiet_s
        )
        behind = sent.ticks - (at_end[0] - base[0]) if at_end else sent.ticks
        step = _step(rate, sent, processed, refused, lag_s=max(behind, 0) / rate)
        self._dirty = not step.passed
        return step

    def _read(self) -> tuple[int, int]:
        deadline = time.monotonic() + 30.0
        while (reading := self.tally.read()) is None:
            if time.monotonic() > deadline:
                raise BenchError("the consumer does not answer")
            time.sleep(0.1)
        return reading


def search_rate(
    label: str,
    measure: Callable[[float], RateStep],
    *,
    start: float,
    factor: float,
    max_steps: int,
    refinements: int,
) -> RateSearch:
    """Step up by ``factor`` until a step fails, then bisect (geometrically) ``refinements``
    times between the best passing and the first failing rate.  A failing first step steps
    down instead."""
    search = RateSearch(label)
    passed_at: float | None = None
    failed_at: float | None = None
    rate = start
    for _ in range(max_steps):
        step = measure(rate)
        search.steps.append(step)
        if step.passed:
            passed_at = rate
            if failed_at is not None or factor <= 1.0:
                break
            rate *= factor
        else:
            failed_at = rate
            if passed_at is not None or factor <= 1.0:
                break
            rate /= factor**2
    if passed_at is not None and failed_at is not None:
        for _ in range(refinements):
            rate = math.sqrt(passed_at * failed_at)
            step = measure(rate)
            search.steps.append(step)
            if step.passed:
                passed_at = rate
            else:
                failed_at = rate
    return search


def _percentiles_ms(values_ns: np.ndarray) -> dict[str, float | None]:
    if not len(values_ns):
        return {"p50": None, "p99": None, "p999": None, "max": None, "samples": 0}
    ms = values_ns.astype(np.float64) / 1e6
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    return {
        "p50": round(float(p50), 3),
        "p99": round(float(p99), 3),
        "p999": round(float(p999), 3),
        "max": round(float(ms.max()), 3),
        "samples": len(ms),
    }


def _histogram_ms(histogram: Histogram) -> dict[str, float | None]:
    def q(x: float) -> float | None:
        value = histogram.quantile(x)
        return None if math.isnan(value) else round(value * 1e3, 3)

    return {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "samples": int(histogram.count)}


class E2eBench:
    """One benchmark run; ``run`` returns the report.  ``say`` narrates progress."""

    def __init__(
        self,
        settings: Settings,
        plan: Plan,
        say: Callable[[str], None],
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """``extra_env``: more STREAMER_* settings for the service under test."""
        self.settings = settings
        self.plan = plan
        self.say = say
        self.extra_env = extra_env or {}
        self.universe = FeedUniverse.from_settings(settings)

    def run(self, quick: bool) -> E2eReport:
        with ExitStack() as stack:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="streamer-bench-"))
            )
            self.say("starting mosquitto and redis-server")
            broker = stack.enter_context(LocalMosquitto(workdir=workdir / "mosquitto"))
            redis_server = stack.enter_context(LocalRedis(workdir=workdir / "redis"))
            listen = f"127.0.0.1:{free_port()}"
            url = metrics_url(listen)
            env = child_environment(
                {
                    "STREAMER_MQTT_URL": broker.url,
                    "STREAMER_MQTT_CLIENT_ID": "streamer-bench",
                    "STREAMER_REDIS_URL": redis_server.url,
                    "STREAMER_METRICS_LISTEN": listen,
                    "STREAMER_PUBLISH_INTERVAL_MS": "0",
                    **self.extra_env,
                }
            )
            service = ChildProcess(
                "service",
                streamer_command("run", "--config", str(Path(self.settings.path).resolve())),
                env,
                workdir / "service.log",
            )
            self.say("starting the service")
            service.start()
            stack.callback(service.stop)
            service.wait_for_metrics(url)
            endpoint = BrokerEndpoint.from_url(broker.url)
            self.say("starting the publisher")
            publisher = PublisherHandle(endpoint, self.universe)
            stack.callback(publisher.close)

            plan = self.plan
            tally = ServiceTally(url)
            self._open_market(publisher, tally, service)
            runner = StepRunner(publisher, tally, plan, self.say)
            single = RateSearch("single JSON")
            if "single" in plan.phases:
                single = self._search(
                    "single JSON",
                    lambda r: runner.measure("single-tick JSON", r, 1, "json"),
                    plan.single_start,
                )
            batched = RateSearch("batched msgpack")
            if "batch" in plan.phases:
                batched = self._search(
                    "batched msgpack",
                    lambda r: runner.measure("1,000-tick msgpack", r, BATCH_SIZE, "msgpack"),
                    plan.batch_start,
                )
            latency = LatencyFigures(rate=plan.latency_rate, duration_s=plan.latency_s)
            if "latency" in plan.phases:
                latency = self._latency(publisher, redis_server.url, url)
            rss = service.peak_rss_bytes()
            self.say("stopping the service")
            code = service.stop()
            if code not in (0, None):
                raise BenchError(f"the service exited with {code}: {service.log_tail()}")

            ceiling = RateSearch("ceiling")
            if "ceiling" in plan.phases:
                with ceiling_consumer(endpoint) as received:
                    ceiling_runner = StepRunner(publisher, CeilingTally(received), plan, self.say)
                    ceiling = self._search(
                        "ceiling",
                        lambda r: ceiling_runner.measure("ceiling (paho consumer)", r, 1, "json"),
                        plan.single_start,
                    )
            floor = LatencyFigures(rate=plan.latency_rate, duration_s=plan.latency_s)
            if "floor" in plan.phases:
                channel = f"{self.settings.redis.prefix}:levels"
                self.say(f"latency floor at {plan.latency_rate:,.0f} ticks/s")
                with latency_floor(endpoint, redis_server.port, channel):
                    floor = self._tap_latency(publisher, redis_server.url)
            return E2eReport(
                quick=quick,
                machine=_machine(),
                universe=self._universe_summary(),
                single_json=single,
                batch_msgpack=batched,
                latency=latency,
                service_peak_rss_mb=rss / 2**20 if rss else None,
                ceiling=ceiling,
                floor=floor,
            )

    def _search(self, label: str, measure: Callable[[float], RateStep], start: float) -> RateSearch:
        plan = self.plan
        return search_rate(
            label,
            measure,
            start=start,
            factor=plan.factor,
            max_steps=plan.max_steps,
            refinements=plan.refinements,
        )

    def _open_market(self, publisher: PublisherHandle, tally: Tally, service: ChildProcess) -> None:
        """Send the opening prints until the service has taken them (it may still be
        subscribing when the first ones go out)."""
        self.say("opening the market")
        deadline = time.monotonic() + 30.0
        symbols = len(self.universe.symbols)
        while time.monotonic() < deadline:
            if not service.alive():
                raise BenchError(f"the service died: {service.log_tail()}")
            publisher.call(Opening())
            if drain(tally, (0, 0), symbols, timeout_s=2.0)[0] >= symbols:
                return
        raise BenchError(f"the service took no ticks within 30 s: {service.log_tail()}")

    def _latency(self, publisher: PublisherHandle, redis_url: str, metrics: str) -> LatencyFigures:
        plan = self.plan
        self.say(f"latency at {plan.latency_rate:,.0f} ticks/s")

        def published_receipts() -> int | None:
            try:
                sample = scrape(metrics, timeout=5.0)
            except ScrapeError:
                return None
            return int(sample.value("streamer_tick_to_publish_seconds_count"))

        # Earlier phases' ticks all published: a clean window.
        settle(published_receipts, quiet_s=plan.quiet_s)
        histogram_before = scrape(metrics).histogram("streamer_tick_to_publish_seconds")
        figures = self._tap_latency(publisher, redis_url)
        histogram = scrape(metrics).histogram("streamer_tick_to_publish_seconds")
        figures.service_ms = _histogram_ms(histogram.minus(histogram_before))
        return figures

    def _tap_latency(self, publisher: PublisherHandle, redis_url: str) -> LatencyFigures:
        """Paced single-tick messages; producer stamp to receipt of each ``P:levels`` message."""
        plan = self.plan
        figures = LatencyFigures(rate=plan.latency_rate, duration_s=plan.latency_s)
        tap = LevelsTap(redis_url, f"{self.settings.redis.prefix}:levels").start()
        try:
            cpu_before = cpu_times()
            sent = publisher.call(Latency(plan.latency_rate, plan.latency_s))
            figures.steal_pct = steal_pct(cpu_before, cpu_times())
            time.sleep(0.5)  # the last levels on their way
        finally:
            tap.stop()
        figures.ticks = sent.ticks
        figures.end_to_end_ms = _percentiles_ms(tap.latencies_ns(since_ts=sent.first_ts))
        return figures

    def _universe_summary(self) -> dict[str, Any]:
        indices = self.settings.indices
        return {
            "config": self.settings.path,
            "indices": len(indices),
            "series": sum(len(d.series_ids()) for d in indices),
            "symbols": len(self.universe.symbols),
            "fx_pairs": list(self.universe.fx_pairs),
        }


def _step(rate: float, sent: Sent, processed: int, rejected: int, lag_s: float) -> RateStep:
    achieved = sent.ticks / sent.elapsed_s if sent.elapsed_s > 0 else 0.0
    return RateStep(
        target=rate,
        achieved=achieved,
        sent=sent.ticks,
        processed=processed,
        lost=max(sent.ticks - processed, 0),
        rejected=rejected,
        lag_s=round(lag_s, 4),
        # Sustained, not buffered: everything arrived, and the consumer kept up while it came.
        passed=processed == sent.ticks
        and rejected == 0
        and achieved >= ACHIEVED_TOLERANCE * rate
        and lag_s <= MAX_LAG_S,
    )


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


# -- presentation -------------------------------------------------------------------------


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report_table(report: E2eReport) -> Table:
    targets = report.targets()

    def mark(key: str) -> str:
        return "[green]yes[/green]" if targets[key]["met"] else "[red]no[/red]"

    m, u = report.machine, report.universe
    table = Table(
        title=f"streamer bench e2e{' --quick' if report.quick else ''} · "
        f"{m['cpus']} x {m['cpu']} · Python {m['python']} · "
        f"{u['indices']} indices / {u['series']} series / {u['symbols']} symbols",
        title_justify="left",
    )
    table.add_column("Measurement")
    table.add_column("Result", justify="right")
    table.add_column("Target", justify="right")
    table.add_column("Met", justify="center")
    e2e, svc = report.latency.end_to_end_ms, report.latency.service_ms
    ratio = report.ratio_to_ceiling
    table.add_row(
        "single-tick JSON, zero loss (ticks/s)",
        _fmt_rate(report.single_json.zero_loss_ticks_per_s),
        f"≥ {TARGET_SINGLE_TICKS_PER_S:,.0f}",
        mark("single_json_ticks_per_s"),
    )
    table.add_row(
        "ceiling: bare paho consumer (ticks/s)",
        _fmt_rate(report.ceiling.zero_loss_ticks_per_s),
        "",
        "",
    )
    table.add_row(
        "ratio to ceiling",
        "-" if ratio is None else f"{ratio:.2f}",
        f"≥ {TARGET_CEILING_RATIO}",
        mark("ratio_to_ceiling"),
    )
    table.add_row(
        f"{BATCH_SIZE:,}-tick msgpack batches, zero loss (ticks/s)",
        _fmt_rate(report.batch_msgpack.zero_loss_ticks_per_s),
        f"≥ {TARGET_BATCH_TICKS_PER_S:,.0f}",
        mark("batch_msgpack_ticks_per_s"),
    )
    rate = f"{report.latency.rate:,.0f}"
    table.add_row(
        f"tick→subscriber p50 / p99 / p99.9 at {rate}/s (ms)",
        f"{_fmt_ms(e2e.get('p50'))} / {_fmt_ms(e2e.get('p99'))} / {_fmt_ms(e2e.get('p999'))}",
        f"p99 ≤ {TARGET_P99_MS}",
        mark("p99_ms_at_5000"),
    )
    table.add_row(
        f"service receipt→Redis ack p50 / p99 / p99.9 at {rate}/s (ms)",
        f"{_fmt_ms(svc.get('p50'))} / {_fmt_ms(svc.get('p99'))} / {_fmt_ms(svc.get('p999'))}",
        "",
        "",
    )
    floor = report.floor.end_to_end_ms
    table.add_row(
        f"floor: bare forwarder, tick→subscriber p50 / p99 / p99.9 at {rate}/s (ms)",
        f"{_fmt_ms(floor.get('p50'))} / {_fmt_ms(floor.get('p99'))} / {_fmt_ms(floor.get('p999'))}",
        "",
        "",
    )
    steal = (report.latency.steal_pct, report.floor.steal_pct)
    table.add_row(
        "CPU time stolen by the host during latency / floor (%)",
        " / ".join("-" if v is None else f"{v:.1f}" for v in steal),
        "",
        "",
    )
    rss = report.service_peak_rss_mb
    table.add_row("service peak RSS (MB)", "-" if rss is None else f"{rss:,.0f}", "", "")
    return table


def steps_table(report: E2eReport) -> Table:
    table = Table(title="rate steps", title_justify="left")
    columns = ("run", "target/s", "achieved/s", "sent", "processed", "lost", "refused", "lag s")
    for name in (*columns, "ok"):
        table.add_column(name, justify="left" if name == "run" else "right")
    for search in (report.single_json, report.batch_msgpack, report.ceiling):
        for s in search.steps:
            table.add_row(
                search.label,
                f"{s.target:,.0f}",
                f"{s.achieved:,.0f}",
                f"{s.sent:,}",
                f"{s.processed:,}",
                f"{s.lost:,}",
                f"{s.rejected:,}",
                "-" if s.lag_s is None else f"{s.lag_s:.3f}",
                "✓" if s.passed else "✗",
            )
    return table


def main(args: argparse.Namespace) -> int:
    from streamer.commands.demo import default_config

    settings = load_settings(args.config or default_config())
    plan = Plan.for_args(args)
    progress_console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]bench e2e[/bold] {task.description}"),
        TimeElapsedColumn(),
        console=progress_console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=None)
        bench = E2eBench(settings, plan, lambda text: progress.update(task, description=text))
        report = bench.run(quick=args.quick)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    console = Console()
    console.print(report_table(report))
    console.print(steps_table(report))
    return 0
