"""One stream client: a conflating slot per series, and the writer that drains it.

The hub never writes to a socket: it only puts the newest update of a series into the
client's slot (replacing an unsent older one) and sets the client's wake event, which costs
the same whether the client reads fast, slowly or not at all.  So a slow client holds at most
one update per series it follows (memory bounded by the series count, never by time) and
never delays the others.  The client's own writer task sends what is in the slots, at most
``rate`` updates a second per series (newest value only), and gives up on a client whose
socket has not taken a write within ``write_timeout_s``: it cannot keep up, and the data for
it would otherwise pile up in the kernel and in aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from streamer.gateway.metrics import GatewayMetrics
from streamer.gateway.records import LevelUpdate

# An SSE id (and a WebSocket event's "id") names every followed series' seq; past this many
# series it is left out (a reconnect then gets the full snapshot, which is what it needs
# anyway: the newest value of each series).
MAX_ID_SERIES = 500
# The rate limit is a token bucket per series holding up to this many sends: over any window
# of T seconds a series gets at most rate * T + BURST updates.  A bucket of one (the next send
# not before the last one plus 1/rate) would drift: a feed publishing at exactly max_rate
# arrives a hair early half of the time, each send would wait for that hair, and the waits
# would add up until a whole period was lost.
BURST = 2.0

State = str  # "live" | "disconnected"


class Event(msgspec.Struct, gc=False):
    """What a transport writes: ``kind`` is "level", "status" or "heartbeat"; ``data`` is
    the JSON object; ``lag_s`` (levels) is publish to now."""

    kind: str
    data: bytes
    lag_s: float = 0.0


class ClientTooSlowError(Exception):
    """The client's socket did not accept a write within the write timeout."""


Send = Callable[[Sequence[Event], str | None], Awaitable[None]]

# Slot keys that cannot be series ids ([A-Za-z0-9._-]).
_STATUS_SLOT = "\x00status"
_HEARTBEAT_SLOT = "\x00heartbeat"
_encoder = msgspec.json.Encoder()


def encode_event_id(seqs: dict[str, int]) -> str | None:
    """``US500:123,US500.TR:77``: the seq of every series the client has been sent."""
    if not seqs or len(seqs) > MAX_ID_SERIES:
        return None
    return ",".join(f"{series}:{seq}" for series, seq in seqs.items())


def decode_event_id(text: str | None) -> dict[str, int]:
    """The seqs in a ``Last-Event-ID``; what does not parse is ignored (its series then get
    the snapshot, which is always correct for state)."""
    seqs: dict[str, int] = {}
    if not text or len(text) > 100_000:
        return seqs
    for part in text.split(","):
        series, colon, seq = part.rpartition(":")
        if colon and series and seq.isdigit() and len(seq) < 20:
            seqs[series] = int(seq)
    return seqs


class ClientStream:
    """The state of one SSE or WebSocket client (see the module)."""

    def __init__(
        self,
        series: Sequence[str],
        rate: float,
        transport: str,
        metrics: GatewayMetrics,
    ) -> None:
        self.series = tuple(series)
        self.transport = transport
        self._rate = rate
        self._metrics = metrics
        self._slots: dict[str, LevelUpdate | State] = {}
        self._wake = asyncio.Event()
        self._buckets: dict[str, tuple[float, float]] = {}  # series -> (tokens, loop time)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.sent_seq: dict[str, int] = {}
        # For check(): when the write in progress began (loop time), when the last one ended.
        self.writing_since: float | None = None
        self.last_write = time.monotonic()  # the loop clock, on asyncio and uvloop alike
        self.too_slow = False
        self.abort: Callable[[], None] | None = None  # closes the client's connection

    @property
    def pending(self) -> int:
        """Updates waiting in the slots (at most one per series, plus a status)."""
        return len(self._slots)

    def offer(self, update: LevelUpdate) -> None:
        """The newest level of one of the client's series (called by the hub)."""
        if update.series in self._slots:
            self._metrics.pending_conflated += 1
        self._slots[update.series] = update
        self._wake.set()

    def offer_state(self, state: State) -> None:
        self._slots[_STATUS_SLOT] = state
        self._wake.set()

    async def run(self, send: Send) -> None:
        """Send until the client goes away (an error from ``send``) or is found too slow by
        :meth:`check` (ClientTooSlowError)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            events = self._due_events(loop.time())
            if not events:
                continue
            self.writing_since = loop.time()
            try:
                await send(events, encode_event_id(self.sent_seq))
            except Exception as exc:
                if self.too_slow:
                    raise ClientTooSlowError from exc
                raise
            finally:
                self.writing_since = None
                self.last_write = loop.time()
            lags = [e.lag_s for e in events if e.kind == "level"]
            self._metrics.observe_sent(self.transport, lags)

    def check(self, now: float, heartbeat_s: float, write_timeout_s: float, state: State) -> None:
        """Called about every second for every client (one timer for all clients, instead of
        two timeouts per write): abort a write that has taken longer than ``write_timeout_s``
        (the client does not read), or queue a heartbeat after ``heartbeat_s`` of silence."""
        if self.writing_since is not None:
            if now - self.writing_since > write_timeout_s and not self.too_slow:
                self.too_slow = True
                if self.abort is not None:
                    self.abort()  # the pending write fails; run() says why
        elif now - self.last_write >= heartbeat_s and _HEARTBEAT_SLOT not in self._slots:
            self._slots[_HEARTBEAT_SLOT] = state
            self._wake.set()

    def _due_events(self, now: float) -> list[Event]:
        """Take what may be sent now out of the slots; wake up later for the rest."""
        events: list[Event] = []
        wall_ns = time.time_ns()
        later = float("inf")
        for key in list(self._slots):
            item = self._slots[key]
            if isinstance(item, str):
                del self._slots[key]
                if key == _HEARTBEAT_SLOT:
                    heartbeat = {"ts_ms": wall_ns // 1_000_000, "state": item}
                    events.append(Event("heartbeat", _encoder.encode(heartbeat)))
                else:
                    events.append(Event("status", _encoder.encode({"state": item})))
                continue
            tokens, at = self._buckets.get(key, (BURST, now))
            tokens = min(BURST, tokens + (now - at) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                later = min(later, now + (1.0 - tokens) / self._rate)
                continue
            del self._slots[key]
            self._buckets[key] = (tokens - 1.0, now)
            self.sent_seq[key] = item.seq
            events.append(Event("level", item.raw, (wall_ns - item.ts) / 1e9))
        if later < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = later
            self._timer = asyncio.get_running_loop().call_at(later, self._timer_fired)
        return events

    def _timer_fired(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._wake.set()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
