"""``streamer bench gateway``: many SSE clients on ``streamer gateway``, measured end to end.

Setup: a private redis-server, ``streamer gateway`` as a subprocess, a synthetic publisher in
this process writing exactly what the service writes per publish (``HSET P:index:<id>``,
``PUBLISH P:levels:<id>``, one ``PUBLISH P:levels`` array per transaction, built with
``streamer.outputs``), and the clients in separate processes (``gateway_clients``).

The series are in groups (``--series-per-client`` each); client k follows group k mod groups,
as desk screens share their watch lists.  Each group is published ``--rate`` times a second,
the groups staggered evenly, and clients ask for ``max_rate = --rate``: every update is
delivered (nothing to conflate) unless a client falls behind.

Reported: delivery latency p50/p99/p99.9 from the publish (the level's ``ts``) to receipt by
a client, events received against those published, the gateway's CPU% and RSS over the
window, the load processes' CPU (a saturated load generator inflates the latency), and the
same latency for one plain Redis subscriber on one group's ``P:levels:<id>`` channels: what
reading Redis directly costs, the floor under the gateway's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import queue
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from streamer.bench.gateway_clients import ClientLoad, LoadResult, client_process
from streamer.engine import SeriesLevel
from streamer.errors import StreamerError
from streamer.keys import KeyLayout
from streamer.localservices import LocalRedis, free_port
from streamer.outputs import (
    SCHEMA_VERSION,
    SeriesEntry,
    batch_message,
    level_fields,
    level_record,
)
from streamer.tools.processes import ChildProcess, child_environment, streamer_command

HELP = (
    "gateway benchmark: N concurrent SSE clients (separate processes) on a private Redis fed "
    "like the service; delivery latency from the Redis publish to the client, the gateway's "
    "CPU and RSS, and the same latency reading Redis directly"
)

PREFIX = "bench"
WARMUP_S = 2.0
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BenchShape:
    clients: int
    series_per_client: int
    groups: int
    rate: float
    seconds: float
    processes: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=1000, help="SSE clients (default 1000)")
    parser.add_argument(
        "--series-per-client", type=int, default=10, help="series each client follows (10)"
    )
    parser.add_argument(
        "--groups", type=int, default=10, help="distinct watch lists among the clients (10)"
    )
    parser.add_argument(
        "--rate", type=float, default=4.0, help="updates per second per series, and max_rate (4)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window (20)")
    parser.add_argument(
        "--processes", type=int, default=2, help="processes the clients are spread over (2)"
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds, 20 clients (tests)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    shape = BenchShape(
        clients=20 if args.quick else args.clients,
        series_per_client=4 if args.quick else args.series_per_client,
        groups=3 if args.quick else args.groups,
        rate=args.rate,
        seconds=3.0 if args.quick else args.seconds,
        processes=1 if args.quick else args.processes,
    )
    if min(shape.clients, shape.series_per_client, shape.groups, shape.processes) < 1 or not (
        0 < shape.rate <= 100 and 0 < shape.seconds <= 3600
    ):
        print("streamer bench gateway: counts must be >= 1, rate in (0, 100], seconds in (0, 3600]")
        return 2
    console = Console(stderr=True)
    report = run_bench(shape, console)
    report["quick"] = bool(args.quick)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


def series_groups(shape: BenchShape) -> list[list[str]]:
    return [
        [f"G{g:03d}.S{s:02d}" for s in range(shape.series_per_client)] for g in range(shape.groups)
    ]


def write_config(directory: Path, redis_url: str, listen: str, shape: BenchShape) -> Path:
    (directory / "indices").mkdir()
    # The gateway reads only [redis] and [gateway]; a config must still name an index.
    (directory / "indices" / "bench.toml").write_text(
        'id = "BENCH"\nmethod = "price"\ndivisor = 1.0\n'
        'constituents = [{ symbol = "X", price = 1.0 }]\n',
        encoding="utf-8",
    )
    path = directory / "gateway.toml"
    path.write_text(
        'indices = ["indices/*.toml"]\n\n'
        f'[redis]\nurl = "{redis_url}"\nprefix = "{PREFIX}"\n\n'
        f'[gateway]\nlisten = "{listen}"\nmax_clients = {shape.clients + 100}\n'
        f"default_rate = {shape.rate}\nmax_rate = {max(shape.rate, 20.0)}\n"
        "write_timeout_s = 10.0\n",
        encoding="utf-8",
    )
    return path


def _level(series: str, value: float, now_ns: int) -> SeriesLevel:
    change = value - 1000.0
    return SeriesLevel(
        series=series, level=value, divisor=1.0, source_ts=now_ns, prev_close=1000.0,
        change=change, change_pct=change / 10.0, stale=0, coverage=1.0, constituents=1,
    )  # fmt: skip


class Publisher:
    """What the service writes for one group's publish, in one MULTI/EXEC."""

    def __init__(self, client: aioredis.Redis, groups: list[list[str]]) -> None:
        self.client = client
        self.groups = groups
        self.keys = KeyLayout(PREFIX)
        self.seq = dict.fromkeys((s for g in groups for s in g), 0)
        self.published = 0

    async def setup(self) -> None:
        entries: dict[Any, Any] = {}
        for group in self.groups:
            for series in group:
                keys = self.keys.directory_entry(series)
                keys.pop("shard")
                entry = SeriesEntry(
                    schema=SCHEMA_VERSION, id=series, kind="index", index=series,
                    variant="price", name=f"bench {series}", currency="USD", method="price",
                    constituents=1, calendar="24/7", shard="", keys=keys,
                )  # fmt: skip
                entries[series] = msgspec.json.encode(entry)
        await self.client.hset(self.keys.directory(), mapping=entries)
        for group in self.groups:
            await self.publish(group)

    async def publish(self, group: list[str]) -> None:
        now = time.time_ns()
        records = []
        async with self.client.pipeline(transaction=True) as pipe:
            for series in group:
                self.seq[series] += 1
                value = 1000.0 + (self.seq[series] % 200) / 10
                record = level_record(_level(series, value, now), self.seq[series], now)
                records.append(record)
                pipe.hset(self.keys.index(series), mapping=_pairs(level_fields(record)))
                pipe.publish(self.keys.series_channel(series), record.message)
            pipe.publish(self.keys.levels_channel(), batch_message(records))
            await pipe.execute()
        self.published += len(group)


def _pairs(flat: list[bytes]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def _direct_subscriber(
    url: str, channels: list[str], window: dict[str, bool], samples: list[int]
) -> None:
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(*channels)
    try:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and window["open"]:
                data: bytes = message["data"]
                at = data.find(b'"ts":')
                samples.append(time.time_ns() - int(data[at + 5 : data.find(b",", at)]))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def _publish_for(publisher: Publisher, rate: float, seconds: float) -> None:
    """Every group ``rate`` times a second, the groups spread evenly over the period."""
    loop = asyncio.get_running_loop()
    step = 1.0 / rate / len(publisher.groups)
    start = loop.time()
    n = 0
    while True:
        due = start + n * step
        if due - start >= seconds:
            return
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await publisher.publish(publisher.groups[n % len(publisher.groups)])
        n += 1


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory_mb(pid: int, name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(name + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _percentiles_ms(values_ns: np.ndarray[Any, Any]) -> dict[str, float | int | None]:
    if not len(values_ns):
        return {"p50": None, "p99": None, "p999": None, "max": None, "samples": 0}
    ms = values_ns.astype(np.float64) / 1e6
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2),
            "p999": round(float(p999), 2), "max": round(float(ms.max()), 2),
            "samples": len(ms)}  # fmt: skip


def run_bench(shape: BenchShape, console: Console) -> dict[str, Any]:
    groups = series_groups(shape)
    with tempfile.TemporaryDirectory(prefix="streamer-bench-gateway-") as tmp:
        workdir = Path(tmp)
        with LocalRedis(workdir=workdir / "redis") as redis_server:
            listen = f"127.0.0.1:{free_port()}"
            config = write_config(workdir, redis_server.url, listen, shape)
            publisher_client = aioredis.Redis.from_url(redis_server.url)
            publisher = Publisher(publisher_client, groups)
            asyncio.run(publisher.setup())
            gateway = ChildProcess(
                "gateway",
                streamer_command("gateway", "--config", str(config)),
                child_environment({}),
                workdir / "gateway.log",
            ).start()
            try:
                gateway.wait_for_metrics(f"http://{listen}/metrics")
                return _measure(shape, groups, redis_server.url, listen, gateway, console)
            finally:
                code = gateway.stop()
                if code not in (0, None):
                    console.print(f"gateway exited {code}: {gateway.log_tail()}")


def _measure(
    shape: BenchShape,
    groups: list[list[str]],
    redis_url: str,
    listen: str,
    gateway: ChildProcess,
    console: Console,
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    reports: Any = ctx.Queue()
    controls = [ctx.Queue() for _ in range(shape.processes)]
    per_process = [shape.clients // shape.processes] * shape.processes
    for k in range(shape.clients % shape.processes):
        per_process[k] += 1
    workers = []
    first = 0
    for count, control in zip(per_process, controls, strict=True):
        load = ClientLoad(f"http://{listen}", groups, count, first, shape.rate)
        first += count
        worker = ctx.Process(target=client_process, args=(load, control, reports), daemon=True)
        worker.start()
        workers.append(worker)
    try:
        return asyncio.run(
            _drive(shape, groups, redis_url, gateway, controls, reports, workers, console)
        )
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()


async def _drive(
    shape: BenchShape,
    groups: list[list[str]],
    redis_url: str,
    gateway: ChildProcess,
    controls: list[Any],
    reports: Any,
    workers: list[Any],
    console: Console,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    publisher = Publisher(aioredis.Redis.from_url(redis_url), groups)
    publisher.seq = {s: 10 for g in groups for s in g}  # after the setup's first publish
    connected = failed = 0
    console.print(f"connecting {shape.clients} SSE clients over {shape.processes} processes ...")
    deadline = loop.time() + READY_TIMEOUT_S
    for _ in workers:
        remaining = max(0.1, deadline - loop.time())
        try:
            kind, ok, bad = await loop.run_in_executor(None, reports.get, True, remaining)
        except queue.Empty:
            raise StreamerError("the client processes did not connect in time") from None
        assert kind == "connected"
        connected, failed = connected + ok, failed + bad
    window = {"open": False}
    direct_samples: list[int] = []
    direct = asyncio.create_task(
        _direct_subscriber(
            redis_url, [publisher.keys.series_channel(s) for s in groups[0]], window,
            direct_samples,
        )
    )  # fmt: skip
    console.print(f"{connected} connected ({failed} failed); warming up ...")
    await _publish_for(publisher, shape.rate, WARMUP_S)
    for control in controls:
        control.put("open")
    window["open"] = True
    published_before = publisher.published
    cpu_before, wall_before = _cpu_seconds(gateway.pid), time.monotonic()
    console.print(f"measuring for {shape.seconds:g} s ...")
    await _publish_for(publisher, shape.rate, shape.seconds)
    await asyncio.sleep(0.5)  # the last updates in flight
    window["open"] = False
    wall = time.monotonic() - wall_before
    cpu = _cpu_seconds(gateway.pid) - cpu_before
    rss_mb, peak_mb = _memory_mb(gateway.pid, "VmRSS"), _memory_mb(gateway.pid, "VmHWM")
    published = publisher.published - published_before
    for control in controls:
        control.put("close")
    direct.cancel()
    await asyncio.gather(direct, return_exceptions=True)
    await publisher.client.aclose()
    results: list[LoadResult] = []
    for _ in workers:
        kind, result = await loop.run_in_executor(None, reports.get, True, 60)
        assert kind == "result"
        results.append(result)
    latencies = np.concatenate(
        [np.frombuffer(r.latencies_ns, dtype=np.int64) for r in results] or [np.empty(0, np.int64)]
    )
    # What the clients should have got: each client's series, each publish of them.
    per_series_publishes = published / max(1, sum(len(g) for g in groups))
    expected = round(connected * shape.series_per_client * per_series_publishes)
    return {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "shape": asdict(shape),
        "clients_connected": connected,
        "clients_failed": failed,
        "published_levels": published,
        "events_expected": expected,
        "events_received": len(latencies),
        "gateway_ms": _percentiles_ms(latencies),
        "direct_redis_ms": _percentiles_ms(np.asarray(direct_samples, dtype=np.int64)),
        "gateway_cpu_pct": round(100 * cpu / wall, 1),
        "gateway_rss_mb": rss_mb,
        "gateway_peak_rss_mb": peak_mb,
        "load_cpu_pct": round(100 * sum(r.cpu_s for r in results) / wall, 1),
        "errors": sorted({e for r in results for e in r.errors}),
    }


def print_table(report: dict[str, Any]) -> None:
    shape = report["shape"]
    table = Table(
        title=f"streamer bench gateway: {report['clients_connected']} SSE clients x "
        f"{shape['series_per_client']} series at {shape['rate']:g} updates/s, "
        f"{shape['seconds']:g} s"
    )
    table.add_column("measurement")
    table.add_column("value", justify="right")
    g, d = report["gateway_ms"], report["direct_redis_ms"]
    table.add_row("latency via the gateway p50 / p99 / p99.9 (ms)",
                  f"{g['p50']} / {g['p99']} / {g['p999']}")  # fmt: skip
    table.add_row("latency reading Redis directly p50 / p99 / p99.9 (ms)",
                  f"{d['p50']} / {d['p99']} / {d['p999']}")  # fmt: skip
    table.add_row("events received / expected",
                  f"{report['events_received']:,} / {report['events_expected']:,}")  # fmt: skip
    table.add_row("gateway CPU (% of one core)", f"{report['gateway_cpu_pct']}")
    table.add_row("gateway RSS / peak (MB)",
                  f"{report['gateway_rss_mb']} / {report['gateway_peak_rss_mb']}")  # fmt: skip
    table.add_row("load generator CPU (% of one core)", f"{report['load_cpu_pct']}")
    if report["errors"]:
        table.add_row("client errors", ", ".join(report["errors"]))
    Console(file=sys.stdout).print(table)
