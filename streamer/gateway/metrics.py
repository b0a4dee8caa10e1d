"""The gateway's Prometheus metrics, on an injected registry.

Per-event counts and lag samples are kept in plain attributes and applied in bulk on a
one-second timer and before every scrape (like the service's ``streamer.metrics``): at tens
of thousands of events a second, one prometheus-client call per event would cost more than
sending the event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamer.metrics import HistogramBuffer

# Publish (the message's ts) to the write of the event on the client's socket: Redis's
# forwarding, our fan-out and the rate limit (up to 1/max_rate, 250 ms at 4 updates/s).
LAG_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

TRANSPORTS = ("sse", "websocket")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.clients = Gauge(
            "streamer_gateway_clients", "Stream clients connected.", ["transport"], registry=r
        )
        self.redis_messages = Counter(
            "streamer_gateway_redis_messages",
            "Messages received on the Redis levels channel.",
            registry=r,
        )
        self.bad_records = Counter(
            "streamer_gateway_bad_records",
            "Records read from Redis that could not be parsed (skipped), by where they were.",
            ["source"],
            registry=r,
        )
        self.fanout = Counter(
            "streamer_gateway_fanout_messages",
            "Level events written to stream clients.",
            ["transport"],
            registry=r,
        )
        self.conflated = Counter(
            "streamer_gateway_conflated",
            "Level updates replaced by a newer one of their series before a client was sent "
            "them (a slow client, or the client's max_rate).",
            registry=r,
        )
        self.dropped = Counter(
            "streamer_gateway_dropped_clients",
            "Stream clients disconnected by the gateway, by reason.",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            "streamer_gateway_refused_requests",
            "Requests refused, by reason (unauthorized, too_many_clients, bad_request, ...).",
            ["reason"],
            registry=r,
        )
        self.lag = Histogram(
            "streamer_gateway_lag_seconds",
            "From the level's publish time (its ts) to its write to a client.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.redis_connected = Gauge(
            "streamer_gateway_redis_connected",
            "1 while the gateway's Redis subscription is live.",
            registry=r,
        )
        self.redis_reconnects = Counter(
            "streamer_gateway_redis_reconnects",
            "Times the Redis subscription was lost and set up again.",
            registry=r,
        )
        # Read at scrape time from the clients' slots (Gauge.set_function): at most one per
        # followed series and client, whatever the client's speed.
        self.pending = Gauge(
            "streamer_gateway_pending_updates",
            "Updates waiting in the stream clients' conflating slots, all clients together.",
            registry=r,
        )
        self.pending_max = Gauge(
            "streamer_gateway_client_pending_max",
            "Updates waiting for the client that has the most waiting.",
            registry=r,
        )
        for transport in TRANSPORTS:
            self.clients.labels(transport)
            self.fanout.labels(transport)
        self._lag = HistogramBuffer(self.lag)
        self.pending_fanout = dict.fromkeys(TRANSPORTS, 0)
        self.pending_conflated = 0

    def observe_sent(self, transport: str, lags_s: list[float]) -> None:
        """Events written to one client (cheap: flushed later)."""
        self.pending_fanout[transport] += len(lags_s)
        self._lag.add(lags_s)

    def flush(self) -> None:
        for transport, count in self.pending_fanout.items():
            if count:
                self.fanout.labels(transport).inc(count)
                self.pending_fanout[transport] = 0
        if self.pending_conflated:
            self.conflated.inc(self.pending_conflated)
            self.pending_conflated = 0
        self._lag.flush()
