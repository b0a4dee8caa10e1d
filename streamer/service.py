"""The live service: one asyncio.TaskGroup owns every loop.

    mqtt        broker connection -> RawInbox (reconnects with jittered backoff)
    ingest      RawInbox -> decode -> TickQueue -> engine.apply -> Outbox, per micro-batch
    publish     Outbox -> one Redis script call per cycle, pipelined (every change, or a timer)
    advance     engine.advance(now) so due actions apply without ticks; gauges, metric flush
    recompute   full recompute of the index sums; exports the largest drift
    http        /metrics, /healthz, /readyz on [metrics].listen

SIGINT/SIGTERM: stop intake, apply what was received, publish every level once, disconnect,
return within the shutdown deadline.  A second signal abandons the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamer.config import RedisSettings, Settings, redact_url
from streamer.endpoints import parse_listen_address
from streamer.engine import BatchResult, Engine
from streamer.errors import StreamerError
from streamer.ingest import (
    CONFLATED,
    MessageRouter,
    MqttIngest,
    RawInbox,
    ThrottledLog,
    TickQueue,
)
from streamer.metrics import Metrics
from streamer.publish import Outbox, PublishLoop, RedisPublisher
from streamer.wire import Tick

log = logging.getLogger("streamer.service")

SHUTDOWN_DEADLINE_S = 4.0
ADVANCE_INTERVAL_S = 0.1
GAUGE_REFRESH_S = 1.0
# Feed delay is a distribution: past this many ticks per batch it is estimated from a sample.
FEED_DELAY_SAMPLE = 64


def redis_client(settings: RedisSettings) -> aioredis.Redis:
    """A client that fails fast (the publish loop owns retries) and takes the password from
    the environment when one is set there."""
    client = aioredis.Redis.from_url(
        settings.url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )
    if settings.password:
        client.connection_pool.connection_kwargs["password"] = settings.password
    return client


class Service:
    """Wires ingestion, the engine, publishing and metrics for one config."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], int] = time.time_ns,
        handle_signals: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.handle_signals = handle_signals
        self.metrics = Metrics(registry)
        self.metrics.queue_depth.set_function(lambda: len(self.queue) + len(self.inbox))
        self.engine = Engine(settings.indices, settings.quality, clock=clock)
        self.inbox = RawInbox(settings.mqtt.max_payload_bytes, clock)
        self._bad_input = ThrottledLog(logging.getLogger("streamer.input"))
        self.router = MessageRouter(self._bad_input)
        self.queue = TickQueue(settings.ingest.queue_max)
        self.outbox = Outbox()
        self.mqtt = MqttIngest(settings.mqtt, self.inbox, self.metrics)
        self.redis = redis_client(settings.redis)
        self.publisher = RedisPublisher(
            self.redis, settings.redis.prefix, settings.redis.history_maxlen, clock
        )
        self.publish_loop = PublishLoop(
            self.publisher,
            self.engine.levels,
            self.outbox,
            self.metrics,
            interval_ms=settings.publish.interval_ms,
            clock=clock,
        )
        self.batch_max = settings.ingest.batch_max
        self.ticks_applied = 0
        self._stop: asyncio.Event | None = None
        self._abandon = False
        self.http_port: int | None = None
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the service to shut down (idempotent; a second call abandons the drain)."""
        if self._stop is None:
            return
        if self._stop.is_set():
            self._abandon = True
        self._stop.set()

    async def run(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        server = await self._start_http()
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
        settings = self.settings
        log.info(
            "service started",
            extra={
                "fields": {
                    "indices": len(settings.indices),
                    "series": len(self.engine.series_ids),
                    "mqtt": redact_url(settings.mqtt.url),
                    "redis": redact_url(settings.redis.url),
                    "metrics": f"{settings.metrics.listen.rsplit(':', 1)[0]}:{self.http_port}",
                    "interval_ms": settings.publish.interval_ms,
                }
            },
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {
                    name: group.create_task(coro, name=name)
                    for name, coro in self._loops(server).items()
                }
                self.started.set()
                await self._stop.wait()
                await self._shutdown(tasks)
        finally:
            if self.handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            server.close()
            with contextlib.suppress(Exception):
                await self.publisher.close()
                await self.redis.aclose()
        log.info("service stopped", extra={"fields": {"ticks_applied": self.ticks_applied}})

    def _loops(self, server: asyncio.Server) -> dict[str, Coroutine[Any, Any, None]]:
        return {
            "mqtt": self.mqtt.run(),
            "ingest": self._ingest_loop(),
            "publish": self.publish_loop.run(),
            "advance": self._advance_loop(),
            "recompute": self._recompute_loop(),
            "http": server.serve_forever(),
        }

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_DEADLINE_S
        log.info("service stopping")

        async def finish(name: str, budget: float) -> None:
            task = tasks[name]
            task.cancel()
            remaining = min(budget, deadline - asyncio.get_running_loop().time())
            await asyncio.wait([task], timeout=max(remaining, 0.01))

        await finish("mqtt", 1.5)  # stop intake: unsubscribe and disconnect cleanly
        await finish("ingest", 0.5)
        if not self._abandon:
            while len(self.inbox) or len(self.queue):
                self.step()
        await finish("publish", 0.5)
        if not self._abandon:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(remaining, 0.1)):
                    if not self.publish_loop.connected:
                        await self.redis.ping()
                    # Final figures from exact sums: they do not depend on batching.
                    self.engine.recompute()
                    published = await self.publish_loop.cycle(everything=True)
            except Exception as exc:  # the shutdown goes on whatever failed
                published = False
                log.warning("final publish failed", extra={"fields": {"error": str(exc)}})
            if published:
                log.info("final levels published")
        for task in tasks.values():
            task.cancel()

    # ------------------------------------------------------------------ ingest

    async def _ingest_loop(self) -> None:
        while True:
            if len(self.queue):
                await asyncio.sleep(0)  # let the reader and the publisher in between batches
            else:
                await self.inbox.wait()
            self.step()

    def step(self) -> BatchResult | None:
        """One micro-batch: everything received so far (ticks up to ``batch_max``)."""
        raw = self.inbox.take()
        inbound = self.router.decode(raw)
        rejected = inbound.rejected
        rejected.update(self.inbox.take_rejected())
        if inbound.ticks:
            self.queue.extend(inbound.ticks, inbound.tick_receipts)
        ticks, receipts = self.queue.take(self.batch_max)
        conflated = self.queue.take_conflated()
        if conflated:
            self.metrics.count_outcomes({(CONFLATED, "queue_full"): conflated})
            self._bad_input.warning(
                CONFLATED,
                "tick queue full, conflated to the latest price per symbol",
                dropped=conflated,
            )
        if rejected:
            self.metrics.count_outcomes({("rejected", r): n for r, n in rejected.items()})
        if not (ticks or inbound.fx or inbound.actions or inbound.references):
            return None
        # Receipts are in arrival order: the last is the newest.
        received_ns = receipts[-1] if receipts else (inbound.newest_receipt_ns or self.clock())
        result = self.engine.apply(
            ticks=ticks,
            fx=inbound.fx,
            actions=inbound.actions,
            references=inbound.references,
            received_ns=received_ns,
        )
        if ticks:
            self.ticks_applied += len(ticks)
            self.metrics.batch_size_samples.add([len(ticks)])
            self._observe_feed_delay(ticks, receipts)
        self._handle_result(result, receipts)
        return result

    def _handle_result(self, result: BatchResult, receipts: list[int]) -> None:
        self.metrics.count_outcomes(result.outcomes)
        for series, bps in result.deviations.items():
            self.metrics.reference_deviation_bps.labels(series).set(bps)
        for action_id, reason in result.rejected_actions:
            level = logging.INFO if reason == "duplicate" else logging.WARNING
            log.log(
                level, "action not applied", extra={"fields": {"id": action_id, "reason": reason}}
            )
        for record in result.audit:
            log.info(
                "action applied",
                extra={
                    "fields": {
                        "id": record.action_id,
                        "action": record.action,
                        "index": record.index,
                        "symbol": record.symbol,
                        "divisor_before": record.divisor_before,
                        "divisor_after": record.divisor_after,
                    }
                },
            )
        if result.changed or result.audit:
            self.outbox.add(result.changed, result.audit, receipts if result.changed else ())

    def _observe_feed_delay(self, ticks: list[Tick], receipts: list[int]) -> None:
        stride = max(1, len(ticks) // FEED_DELAY_SAMPLE)
        delays = [
            (r - t.ts) / 1e9
            for t, r in zip(ticks[::stride], receipts[::stride], strict=True)
            if t.ts
        ]
        self.metrics.feed_delay_samples.add(delays, weight=float(stride))

    # ------------------------------------------------------------------ timers

    async def _advance_loop(self) -> None:
        next_gauges = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(ADVANCE_INTERVAL_S)
            if self.engine.pending_actions:
                self._handle_result(self.engine.advance(self.clock()), [])
            if loop.time() >= next_gauges:
                next_gauges = loop.time() + GAUGE_REFRESH_S
                self._refresh_gauges()
                self.metrics.flush()

    def _refresh_gauges(self) -> None:
        # On a timer rather than per publish cycle: Prometheus scrapes every few seconds, and
        # staleness grows without ticks (when nothing is published).
        for series, published in self.publish_loop.last_published.items():
            if math.isfinite(published):
                self.metrics.index_level.labels(series).set(published)
        for level in self.engine.levels():
            self.metrics.stale_constituents.labels(level.series).set(level.stale)
            self.metrics.constituents.labels(level.series).set(level.constituents)
        for series in self.engine.series_ids:
            bps = self.engine.deviation_bps(series)
            if bps is not None:
                self.metrics.reference_deviation_bps.labels(series).set(bps)

    async def _recompute_loop(self) -> None:
        interval = self.settings.ingest.recompute_interval_s
        while True:
            await asyncio.sleep(interval)
            drift = self.engine.recompute()
            self.metrics.sum_drift_ratio.set(self.engine.max_drift)
            # Publish the exact levels of the series the recompute corrected.
            self._handle_result(self.engine.advance(self.clock()), [])
            if drift > 1e-9:
                log.warning("index sums drifted", extra={"fields": {"drift_ratio": drift}})

    # ------------------------------------------------------------------ http

    def readiness(self) -> list[str]:
        """Why the service is not ready (empty when it is)."""
        problems = []
        if not self.mqtt.connected.is_set():
            problems.append("broker not connected")
        if not self.publish_loop.connected:
            problems.append("redis not connected")
        missing = [s for s in self.engine.series_ids if self.engine.level_of(s) is None]
        if missing:
            problems.append("no level yet: " + ",".join(missing[:10]))
        return problems

    async def _start_http(self) -> asyncio.Server:
        # Validated at load: an explicit host (brackets stripped from IPv6) and a port.
        address = parse_listen_address(self.settings.metrics.listen)
        try:
            server = await asyncio.start_server(self._http, address.host, address.port)
        except OSError as exc:
            raise StreamerError(
                f"metrics.listen {self.settings.metrics.listen}: {exc.strerror or exc}"
            ) from None
        self.http_port = int(server.sockets[0].getsockname()[1])
        return server

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
            status, content_type, body = self._route(method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"method not allowed\n"
        if path == "/metrics":
            self.metrics.flush()
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/healthz":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            problems = self.readiness()
            if problems:
                return "503 Service Unavailable", text, ("; ".join(problems) + "\n").encode()
            return "200 OK", text, b"ready\n"
        return "404 Not Found", text, b"not found\n"


def run_service(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM on uvloop where available; returns the exit code."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        pass

    async def main() -> None:
        service = Service(settings)
        # The universe, the engine's arrays and the imported modules live as long as the
        # process: out of the collector's way, a collection only walks what is young.
        gc.collect()
        gc.freeze()
        await service.run()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(main())
        except* StreamerError as group:
            raise group.exceptions[0] from None
    return 0
