"""Running the gateway: the Redis feed, the metrics timer and the HTTP server, until a signal.

SIGINT/SIGTERM stop accepting connections, end every stream (their writers are cancelled, so
shutdown never waits for a client that stays connected) and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from streamer.config import Settings
from streamer.endpoints import parse_listen_address, redact_url
from streamer.errors import ConfigError, StreamerError
from streamer.gateway.app import Gateway, build_app, sweep_clients
from streamer.gateway.feed import RedisFeed
from streamer.gateway.hub import Hub
from streamer.gateway.metrics import GatewayMetrics
from streamer.keys import key_layout

log = logging.getLogger("streamer.gateway")

METRICS_FLUSH_S = 1.0


def read_tokens(path: str) -> tuple[str, ...]:
    """The bearer tokens of ``[gateway] tokens_file``: one a line, ``#`` starts a comment."""
    if not path:
        return ()
    field = "field `gateway.tokens_file`"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {field}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {field}: not UTF-8 text") from None
    tokens = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not tokens:
        raise ConfigError(f"{path}: {field}: holds no token (leave tokens_file empty for none)")
    if any(not t.isprintable() or " " in t for t in tokens):
        raise ConfigError(f"{path}: {field}: a token must be one word of printable text")
    return tokens


def redis_source(settings: Settings) -> tuple[str, str | None]:
    """The URL and password the gateway reads Redis with: its own (the read-only consumer
    user) when given, else the service's."""
    if settings.gateway.redis_url:
        return settings.gateway.redis_url, settings.gateway.password
    return settings.redis.url, settings.redis.password


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when no event is given)."""
    tokens = read_tokens(settings.gateway.tokens_file)
    _allow_open_files(settings.gateway.max_clients + 256)
    url, password = redis_source(settings)
    hub = Hub()
    metrics = GatewayMetrics()
    feed = RedisFeed(
        url, password, key_layout(settings), hub, metrics, cluster=settings.redis.cluster
    )
    gateway = Gateway(settings.gateway, hub, feed, metrics, tokens, set())
    listen = parse_listen_address(settings.gateway.listen)
    runner = web.AppRunner(build_app(gateway), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await feed.close()
        raise StreamerError(
            f"gateway: cannot listen on {listen.display} ([gateway] listen): {exc.strerror or exc}"
        ) from None
    log.info(
        "gateway: serving http://%s/ from Redis %s (prefix %r)%s",
        listen.display,
        redact_url(url),
        settings.redis.prefix,
        f", {len(tokens)} bearer token(s)" if tokens else ", no authentication",
    )
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    feed_task = asyncio.create_task(feed.run(), name="gateway-feed")
    flush_task = asyncio.create_task(_flush_metrics(metrics), name="gateway-metrics")
    sweep_task = asyncio.create_task(sweep_clients(gateway), name="gateway-sweep")
    stopped = asyncio.create_task(stop.wait())
    loops = (feed_task, flush_task, sweep_task, stopped)
    try:
        done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopped:
                task.result()  # a loop that ended by itself failed: say so
    finally:
        log.info("gateway: stopping (%d stream clients)", len(hub.clients))
        for stream in list(gateway.streams):
            stream.cancel()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await runner.cleanup()
        await feed.close()


def _allow_open_files(wanted: int) -> None:
    """One socket per client: raise the soft open-file limit (often 1024) towards ``wanted``,
    as far as the hard limit lets an unprivileged process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warning("gateway: cannot raise the open-file limit to %d (max_clients)", target)


async def _flush_metrics(metrics: GatewayMetrics) -> None:
    while True:
        await asyncio.sleep(METRICS_FLUSH_S)
        metrics.flush()


def run_gateway(settings: Settings) -> int:
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings))
    return 0
