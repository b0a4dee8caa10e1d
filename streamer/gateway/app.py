"""The aiohttp application: REST, Server-Sent Events, WebSocket, the page, health and metrics.

Every handler answers bad input with a 4xx and a one-line JSON ``{"error": ...}``; nothing a
client sends can raise out of a handler.  Stream handlers hand their socket to a
:class:`~streamer.gateway.client.ClientStream` and only translate its events to the wire.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import WSMsgType, web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamer.config import GatewaySettings
from streamer.gateway.client import ClientStream, ClientTooSlowError, Event, Send, decode_event_id
from streamer.gateway.feed import RedisFeed, RedisUnavailableError
from streamer.gateway.hub import Hub
from streamer.gateway.metrics import GatewayMetrics
from streamer.gateway.openapi import openapi_document

log = logging.getLogger("streamer.gateway")

SERIES_ID = re.compile(r"[A-Za-z0-9._-]{1,72}")
MAX_STREAM_SERIES = 10_000
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
HISTORY_DEFAULT_SPAN_MS = 3_600_000
BARS_DEFAULT_SPAN_MS = 86_400_000
# Told to EventSource: reconnect after this long.
SSE_RETRY_MS = 2000
# Paths anyone may read: the page and its files carry no data, and Prometheus and probes
# scrape without tokens (bind the gateway accordingly).
PUBLIC_PATHS = ("/", "/healthz", "/metrics", "/openapi.json")
PUBLIC_PREFIXES = ("/static/",)

_json = msgspec.json.Encoder()


@dataclass
class Gateway:
    """What the handlers share."""

    settings: GatewaySettings
    hub: Hub
    feed: RedisFeed
    metrics: GatewayMetrics
    tokens: tuple[str, ...]
    streams: set[asyncio.Task[Any]]


GATEWAY = web.AppKey("gateway", Gateway)


class BadRequestError(Exception):
    """A query parameter or path that cannot be served; the message says why."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def static_dir() -> Path:
    return Path(str(resources.files("streamer.gateway") / "static"))


def build_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[_errors, _cors, _auth])
    app[GATEWAY] = gateway
    clients = gateway.hub.clients
    gateway.metrics.pending.set_function(lambda: sum(c.pending for c in clients))
    gateway.metrics.pending_max.set_function(lambda: max((c.pending for c in clients), default=0))
    app.router.add_get("/", page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/api/v1/info", info)
    app.router.add_get("/api/v1/series", series_list)
    app.router.add_get("/api/v1/series/{id}", series_one)
    app.router.add_get("/api/v1/series/{id}/history", history)
    app.router.add_get("/api/v1/series/{id}/bars", bars)
    app.router.add_get("/api/v1/stream", stream_sse)
    app.router.add_get("/api/v1/ws", stream_ws)
    app.router.add_static("/static/", static_dir(), name="static")
    return app


# -- middlewares ---------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    try:
        return await handler(request)
    except BadRequestError as exc:
        gateway.metrics.refused.labels(exc.reason).inc()
        return error_response(exc.status, str(exc))
    except RedisUnavailableError:
        gateway.metrics.refused.labels("redis_unavailable").inc()
        return error_response(503, "Redis is unavailable; retry shortly")
    except web.HTTPException as exc:
        if exc.status >= 400:
            gateway.metrics.refused.labels("not_found" if exc.status == 404 else "http").inc()
            return error_response(exc.status, exc.reason)
        raise


@web.middleware
async def _cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Cross-origin reads for the origins in ``[gateway] cors_origins`` (none by default)."""
    origins = request.app[GATEWAY].settings.cors_origins
    origin = request.headers.get("Origin")
    allowed = origin is not None and ("*" in origins or origin in origins)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if not allowed:
            return error_response(403, "origin not allowed")
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Last-Event-ID"
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        if allowed:
            # Stream handlers send their headers early: they set these before prepare().
            request["cors_origin"] = origin
        response = await handler(request)
    if allowed:
        _set_cors_headers(response, origin or "")
    return response


def _set_cors_headers(response: web.StreamResponse, origin: str) -> None:
    if response.prepared:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Optional bearer tokens: ``Authorization: Bearer T``, or ``?access_token=T`` for
    EventSource, which cannot set headers."""
    tokens = request.app[GATEWAY].tokens
    if not tokens or request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    presented = header[7:] if header[:7].lower() == "bearer " else ""
    presented = presented or request.query.get("access_token", "")
    # compare_digest against every token: the time taken says nothing about which matched.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented.encode(), token.encode())
    if not presented or not matched:
        request.app[GATEWAY].metrics.refused.labels("unauthorized").inc()
        response = error_response(401, "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="streamer"'
        return response
    return await handler(request)


# -- plain handlers ------------------------------------------------------------------------


async def page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(static_dir() / "index.html")


async def healthz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return web.json_response(
        {"status": "ok", "redis": gateway.hub.state, "clients": len(gateway.hub.clients)}
    )


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    gateway.metrics.flush()
    return web.Response(
        body=generate_latest(gateway.metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def info(request: web.Request) -> web.Response:
    s = request.app[GATEWAY].settings
    return web.json_response(
        {
            "stale_after_s": s.stale_after_s,
            "heartbeat_s": s.heartbeat_s,
            "default_rate": s.default_rate,
            "max_rate": s.max_rate,
        }
    )


def _series_item(gateway: Gateway, series: str) -> dict[str, Any]:
    latest = gateway.hub.latest.get(series)
    return {
        "id": series,
        "directory": gateway.hub.directory.get(series),
        "latest": msgspec.Raw(latest.raw) if latest is not None else None,
    }


def _json_body(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(value), status=status, content_type="application/json")


async def series_list(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    items = [_series_item(gateway, s) for s in gateway.hub.all_series()]
    return _json_body({"state": gateway.hub.state, "series": items})


def _known_series(request: web.Request) -> str:
    gateway = request.app[GATEWAY]
    series = request.match_info["id"]
    if not SERIES_ID.fullmatch(series) or not gateway.hub.known(series):
        raise BadRequestError(f"unknown series {series[:80]!r}", 404, "unknown_series")
    return series


async def series_one(request: web.Request) -> web.Response:
    return _json_body(_series_item(request.app[GATEWAY], _known_series(request)))


def _integer_param(request: web.Request, name: str, default: int, highest: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 16:
        raise BadRequestError(f"{name} must be a non-negative integer, got {text[:40]!r}")
    value = int(text)
    if value > highest:
        raise BadRequestError(f"{name} must be at most {highest}, got {value}")
    return value


def _time_range(request: web.Request, default_span_ms: int) -> tuple[int, int, int]:
    now_ms = time.time_ns() // 1_000_000
    to_ms = _integer_param(request, "to", now_ms, 10**15)
    from_ms = _integer_param(request, "from", max(0, to_ms - default_span_ms), 10**15)
    if from_ms > to_ms:
        raise BadRequestError(f"from ({from_ms}) is after to ({to_ms})")
    limit = _integer_param(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    if limit < 1:
        raise BadRequestError("limit must be at least 1")
    return from_ms, to_ms, limit


async def history(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    series = _known_series(request)
    from_ms, to_ms, limit = _time_range(request, HISTORY_DEFAULT_SPAN_MS)
    entries = await gateway.feed.history(series, from_ms, to_ms, limit)
    return _json_body({"series": series, "from": from_ms, "to": to_ms, "entries": entries})


async def bars(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    series = _known_series(request)
    from_ms, to_ms, limit = _time_range(request, BARS_DEFAULT_SPAN_MS)
    found = await gateway.feed.bars(series, from_ms, to_ms, limit)
    return _json_body({"series": series, "from": from_ms, "to": to_ms, "bars": found})


# -- streams -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRequest:
    series: tuple[str, ...]
    rate: float
    resume: dict[str, int]


def parse_stream_request(request: web.Request, last_event_id: str | None) -> StreamRequest:
    gateway = request.app[GATEWAY]
    text = request.query.get("series", "")
    if text:
        series = tuple(dict.fromkeys(s for s in text.split(",") if s))
        if len(series) > MAX_STREAM_SERIES:
            raise BadRequestError(f"at most {MAX_STREAM_SERIES} series per stream")
        unknown = [s for s in series if not SERIES_ID.fullmatch(s) or not gateway.hub.known(s)]
        if unknown:
            shown = ", ".join(repr(s[:80]) for s in unknown[:5])
            raise BadRequestError(f"unknown series: {shown}", 404, "unknown_series")
    else:
        series = tuple(gateway.hub.all_series())
    rate_text = request.query.get("max_rate")
    rate = gateway.settings.default_rate
    if rate_text:
        try:
            rate = float(rate_text)
        except ValueError:
            raise BadRequestError(f"max_rate must be a number, got {rate_text[:40]!r}") from None
        if not (math.isfinite(rate) and 0 < rate <= gateway.settings.max_rate):
            raise BadRequestError(f"max_rate must be in (0, {gateway.settings.max_rate:g}]")
    return StreamRequest(series, rate, decode_event_id(last_event_id))


def _admit(gateway: Gateway) -> None:
    if len(gateway.hub.clients) >= gateway.settings.max_clients:
        raise BadRequestError("too many stream clients; retry later", 503, "too_many_clients")


async def _serve_client(
    gateway: Gateway,
    request: web.Request,
    client: ClientStream,
    send: Send,
    resume: dict[str, int],
) -> None:
    """Run ``client``'s writer until it ends; always detach and count."""
    gateway.metrics.clients.labels(client.transport).inc()
    gateway.hub.attach(client, resume)
    task = asyncio.current_task()
    if task is not None:
        gateway.streams.add(task)
    if request.transport is not None:
        client.abort = request.transport.abort
    try:
        await client.run(send)
    except ClientTooSlowError:
        gateway.metrics.dropped.labels("write_timeout").inc()
        log.info("gateway: dropped a %s client that did not read for %.0f s",
                 client.transport, gateway.settings.write_timeout_s)  # fmt: skip
    except (ConnectionError, RuntimeError):
        pass  # the client went away (aiohttp raises ClientConnectionResetError, a
        # ConnectionResetError, or RuntimeError for a closed WebSocket)
    finally:
        if task is not None:
            gateway.streams.discard(task)
        gateway.hub.detach(client)
        gateway.metrics.clients.labels(client.transport).dec()


async def sweep_clients(gateway: Gateway) -> None:
    """One timer for every client: heartbeats and write timeouts (ClientStream.check)."""
    settings = gateway.settings
    period = min(1.0, settings.heartbeat_s / 2, settings.write_timeout_s / 2)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(period)
        now = loop.time()
        state = gateway.hub.state
        for client in list(gateway.hub.clients):
            client.check(now, settings.heartbeat_s, settings.write_timeout_s, state)


def _sse_frame(events: Sequence[Event], event_id: str | None) -> bytes:
    parts: list[bytes] = []
    for event in events:
        parts += (b"event: ", event.kind.encode(), b"\ndata: ", event.data, b"\n\n")
    if event_id is not None and parts:
        parts.insert(len(parts) - 1, b"\nid: " + event_id.encode())
    return b"".join(parts)


async def stream_sse(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    wanted = parse_stream_request(request, last_id)
    _admit(gateway)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies (nginx) must not buffer the stream
        }
    )
    origin = request.get("cors_origin")
    if origin:
        _set_cors_headers(response, origin)
    await response.prepare(request)
    await response.write(b"retry: %d\n\n" % SSE_RETRY_MS)
    client = ClientStream(wanted.series, wanted.rate, "sse", gateway.metrics)

    async def send(events: Sequence[Event], event_id: str | None) -> None:
        await response.write(_sse_frame(events, event_id))

    await _serve_client(gateway, request, client, send, wanted.resume)
    return response


def _ws_frame(event: Event, event_id: str | None) -> str:
    tail = f',"id":"{event_id}"' if event_id is not None else ""
    return '{"event":"' + event.kind + '","data":' + event.data.decode() + tail + "}"


async def stream_ws(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    wanted = parse_stream_request(request, request.query.get("last_event_id"))
    _admit(gateway)
    ws = web.WebSocketResponse(max_msg_size=65_536, autoping=True)
    origin = request.get("cors_origin")
    if origin:
        _set_cors_headers(ws, origin)
    await ws.prepare(request)
    client = ClientStream(wanted.series, wanted.rate, "websocket", gateway.metrics)

    async def send(events: Sequence[Event], event_id: str | None) -> None:
        last = len(events) - 1
        for n, event in enumerate(events):
            await ws.send_str(_ws_frame(event, event_id if n == last else None))

    async def read_until_closed() -> None:
        # Clients send nothing we act on; reading is how a close frame is noticed.
        async for message in ws:
            if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break

    writer = asyncio.create_task(_serve_client(gateway, request, client, send, wanted.resume))
    reader = asyncio.create_task(read_until_closed())
    try:
        await asyncio.wait((writer, reader), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (writer, reader):
            task.cancel()
        await asyncio.gather(writer, reader, return_exceptions=True)
        await ws.close()
    return ws
