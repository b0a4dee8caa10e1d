"""The load of ``streamer bench gateway``: many SSE clients in one process (its own, so the
gateway under test never shares a core's time with them unknowingly).

Each client follows its group's series at the given max_rate and, once the measuring window
opens, records for every level event the wall clock at receipt minus the level's ``ts`` (its
publish time, ns): the delivery latency from the Redis publish to the client.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# How long a client may wait for its snapshot before the run counts it as failed to connect.
CONNECT_TIMEOUT_S = 30.0


@dataclass
class ClientLoad:
    url: str  # the gateway
    groups: list[list[str]]  # series of each group; client k follows group k % len(groups)
    clients: int
    first_client: int  # clients are numbered across processes, for the groups
    rate: float


@dataclass
class LoadResult:
    connected: int = 0
    failed: int = 0
    events: int = 0
    latencies_ns: bytes = b""  # int64 array
    cpu_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def _ts_of(line: bytes) -> int | None:
    """The ``"ts":`` integer of a level's data line, without decoding the whole object."""
    at = line.find(b'"ts":')
    if at < 0:
        return None
    end = line.find(b",", at)
    try:
        return int(line[at + 5 : end])
    except ValueError:
        return None


async def _client(
    session: Any,
    url: str,
    window: dict[str, bool],
    connected: asyncio.Event,
    samples: list[int],
    result: LoadResult,
) -> None:
    first = True
    try:
        async with session.get(url) as response:
            if response.status != 200:
                result.failed += 1
                result.errors.append(f"HTTP {response.status}")
                connected.set()
                return
            # Whole chunks, split here: a readline per line costs the load generator more
            # than the gateway spends sending it, and a slow reader would measure itself.
            tail = b""
            async for chunk in response.content.iter_any():
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                now = time.time_ns()
                for line in lines:
                    if not line.startswith(b"data: "):
                        continue
                    if first:
                        first = False
                        result.connected += 1
                        connected.set()
                    if window["open"] and b'"index"' in line:
                        ts = _ts_of(line)
                        if ts is not None:
                            samples.append(now - ts)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a benchmark client reports what broke, it does not stop all
        if first:
            result.failed += 1
            connected.set()
        result.errors.append(type(exc).__name__)


async def _run(load: ClientLoad, control: Any, report: Any) -> None:
    import aiohttp

    result = LoadResult()
    samples: list[int] = []
    window = {"open": False}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        ready = []
        for k in range(load.clients):
            group = load.groups[(load.first_client + k) % len(load.groups)]
            url = f"{load.url}/api/v1/stream?series={','.join(group)}&max_rate={load.rate:g}"
            event = asyncio.Event()
            ready.append(event)
            tasks.append(asyncio.create_task(_client(session, url, window, event, samples, result)))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.gather(*(e.wait() for e in ready))
        except TimeoutError:
            result.errors.append("clients did not all connect in time")
        report.put(("connected", result.connected, result.failed))
        loop = asyncio.get_running_loop()
        # The parent opens and closes the window; we poll its commands without blocking.
        command = await loop.run_in_executor(None, control.get)
        if command == "open":
            samples.clear()
            window["open"] = True
            cpu_start = time.process_time()
            command = await loop.run_in_executor(None, control.get)
            window["open"] = False
            result.cpu_s = time.process_time() - cpu_start
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result.events = len(samples)
    result.latencies_ns = np.asarray(samples, dtype=np.int64).tobytes()
    result.errors = sorted(set(result.errors))[:10]
    report.put(("result", result))


def client_process(load: ClientLoad, control: Any, report: Any) -> None:
    """Entry point of one load process (multiprocessing, spawn)."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(_run(load, control, report))
