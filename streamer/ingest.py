"""MQTT intake: raw messages -> decoded, bounded micro-batches for the engine.

The hot path is per burst, not per message:

* :class:`RawInbox` collects ``(topic, payload, receipt_ns)``; the consumer swaps the whole
  list out at once.  aiomqtt's own path builds an ``aiomqtt.Message``, an ``asyncio.Queue``
  entry and a consumer wake-up per message (12-17k msg/s on the reference machine).
* :class:`PublishSplitter` sits under paho as its socket: it reads large chunks, frames MQTT
  packets itself and drops every QoS 0 PUBLISH straight into the inbox, passing everything
  else to paho (which keeps owning connect, subscribe, keepalive and QoS 1/2); it also pauses
  reading while the inbox is full so that the event loop stays responsive.
* :class:`MessageRouter` routes by topic and decodes a whole burst at once; single-tick JSON
  payloads are joined into one JSON Lines buffer and decoded in one msgspec call.
* :class:`TickQueue` is the bounded queue in front of the engine: past ``queue_max`` it
  conflates to the latest tick per symbol.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import msgspec

from streamer.config import MqttSettings, redact_url
from streamer.endpoints import MqttEndpoint, parse_mqtt_url
from streamer.metrics import Metrics
from streamer.wire import DECODERS, Action, FxRate, MessageKind, ReferenceLevel, Tick

log = logging.getLogger("streamer.ingest")

# Pre-engine rejection reasons, alongside the engine's own in streamer_ticks_total.
MALFORMED = "malformed"
OVERSIZE = "oversize"
UNKNOWN_TOPIC = "unknown_topic"
# Ticks dropped by the queue's overflow policy (an older tick of a symbol with a newer one).
CONFLATED = "conflated"

RawMessage = tuple[str, bytes, int]  # topic, payload, receipt time (UTC ns)

_TOPIC_KINDS: dict[str, MessageKind] = {
    "ticks": "tick",
    "fx": "fx",
    "reference": "reference",
    "control": "control",
}
_SINGLE_TICK_LINES = msgspec.json.Decoder(Tick)
_RECV_CHUNK = 256 * 1024
MQTT_V311 = 4  # paho's protocol number for MQTT 3.1.1


class ThrottledLog:
    """Logs an event at most once per ``interval_s`` per key, reporting how many it skipped."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()

    def warning(self, key: str, event: str, **fields: Any) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._skipped[key] += 1
            return
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        if skipped:
            fields["suppressed"] = skipped
        self._logger.warning(event, extra={"fields": fields})


class RawInbox:
    """Where paho's ``on_message`` callback drops raw messages for the consumer.

    Runs inside aiomqtt's socket reader (on the event loop thread), so it may touch the event
    directly.  Oversized payloads are counted and dropped here, before any decoding.
    """

    def __init__(
        self,
        max_payload_bytes: int,
        clock: Callable[[], int] = time.time_ns,
        *,
        max_messages: int = 5_000,
        max_bytes: int = 1024 * 1024,
    ) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.clock = clock
        self._messages: list[RawMessage] = []
        self._bytes = 0
        self._event = asyncio.Event()
        self.rejected: Counter[str] = Counter()
        self.received = 0

    def on_message(self, client: Any, userdata: Any, message: Any) -> None:
        """paho ``on_message`` (callback API v2)."""
        payload: bytes = message.payload
        if len(payload) > self.max_payload_bytes:
            self.rejected[OVERSIZE] += 1
            return
        try:
            topic: str = message.topic
        except UnicodeDecodeError:
            self.rejected[UNKNOWN_TOPIC] += 1
            return
        messages = self._messages
        messages.append((topic, payload, self.clock()))
        self._bytes += len(payload)
        if len(messages) == 1:
            self._event.set()

    def extend(self, messages: list[RawMessage]) -> None:
        """Add messages framed elsewhere (already size-checked)."""
        was_empty = not self._messages
        self._messages.extend(messages)
        self._bytes += sum(len(m[1]) for m in messages)
        if was_empty:
            self._event.set()

    def is_full(self) -> bool:
        """True when the reader should pause until the consumer has taken the messages."""
        return len(self._messages) >= self.max_messages or self._bytes >= self.max_bytes

    def put(self, topic: str, payload: bytes, receipt_ns: int | None = None) -> None:
        """Add a message directly (tests, replay), with the same size check."""
        if len(payload) > self.max_payload_bytes:
            self.rejected[OVERSIZE] += 1
            return
        self._messages.append((topic, payload, self.clock() if receipt_ns is None else receipt_ns))
        self._bytes += len(payload)
        self._event.set()

    def __len__(self) -> int:
        return len(self._messages)

    async def wait(self) -> None:
        """Until at least one message is waiting."""
        if not self._messages:
            self._event.clear()
            await self._event.wait()

    def take(self) -> list[RawMessage]:
        """Every waiting message, oldest first; the inbox starts over empty."""
        messages, self._messages = self._messages, []
        self._bytes = 0
        self._event.clear()
        self.received += len(messages)
        return messages

    def take_rejected(self) -> Counter[str]:
        rejected, self.rejected = self.rejected, Counter()
        return rejected


@dataclass(slots=True)
class Inbound:
    """One decoded burst: ticks with their receipt times, the other kinds, rejections."""

    ticks: list[Tick] = field(default_factory=list)
    tick_receipts: list[int] = field(default_factory=list)
    fx: list[FxRate] = field(default_factory=list)
    references: list[ReferenceLevel] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    newest_receipt_ns: int = 0


class MessageRouter:
    """Routes raw messages by topic and decodes them with the typed decoders built once."""

    def __init__(self, bad_input_log: ThrottledLog | None = None) -> None:
        self._kinds: dict[str, MessageKind | None] = {}
        self._log = bad_input_log or ThrottledLog(log)

    def kind(self, topic: str) -> MessageKind | None:
        kind = self._kinds.get(topic, "")
        if kind == "":
            kind = _TOPIC_KINDS.get(topic.split("/", 1)[0])
            if len(self._kinds) > 100_000:  # topics per symbol are many but bounded
                self._kinds.clear()
            self._kinds[topic] = kind
        return kind  # type: ignore[return-value]

    def decode(self, messages: list[RawMessage], into: Inbound | None = None) -> Inbound:
        out = into if into is not None else Inbound()
        tick_payloads: list[bytes] = []
        tick_receipts: list[int] = []
        others: list[tuple[MessageKind, str, bytes]] = []
        kind_of = self.kind
        for topic, payload, receipt in messages:
            kind = kind_of(topic)
            if kind == "tick":
                tick_payloads.append(payload)
                tick_receipts.append(receipt)
            elif kind is None:
                out.rejected[UNKNOWN_TOPIC] += 1
                self._log.warning(UNKNOWN_TOPIC, "message on an unknown topic", topic=topic)
            else:
                others.append((kind, topic, payload))
        if messages:
            out.newest_receipt_ns = max(out.newest_receipt_ns, messages[-1][2])
        if tick_payloads:
            self._decode_ticks(tick_payloads, tick_receipts, out)
        for kind, topic, payload in others:
            decoded = DECODERS[kind].decode(payload)
            if decoded.malformed:
                self._reject_malformed(out, decoded.malformed, topic, decoded.error)
            if kind == "control":
                out.actions.extend(decoded.messages)
            elif kind == "fx":
                out.fx.extend(decoded.messages)
            else:
                out.references.extend(decoded.messages)
        return out

    def _decode_ticks(self, payloads: list[bytes], receipts: list[int], out: Inbound) -> None:
        # Fast path: every payload one JSON object on one line -> one JSON Lines decode.
        # The newline check makes the line count equal the payload count, so every decoded
        # tick maps back to its own message (and a payload smuggling two objects fails).
        if all(p[:1] == b"{" and b"\n" not in p for p in payloads):
            try:
                ticks = _SINGLE_TICK_LINES.decode_lines(b"\n".join(payloads))
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass
            else:
                if len(ticks) == len(payloads):
                    out.ticks.extend(ticks)
                    out.tick_receipts.extend(receipts)
                    return
        decoder = DECODERS["tick"]
        for payload, receipt in zip(payloads, receipts, strict=True):
            decoded = decoder.decode(payload)
            if decoded.malformed:
                self._reject_malformed(out, decoded.malformed, "ticks", decoded.error)
            if decoded.messages:
                out.ticks.extend(decoded.messages)
                out.tick_receipts.extend([receipt] * len(decoded.messages))

    def _reject_malformed(self, out: Inbound, count: int, topic: str, error: str) -> None:
        out.rejected[MALFORMED] += count
        self._log.warning(MALFORMED, "malformed payload dropped", topic=topic, error=error[:200])


class TickQueue:
    """Decoded ticks waiting for the engine; bounded by conflating to the latest per symbol."""

    def __init__(self, max_ticks: int) -> None:
        self.max_ticks = max_ticks
        self._ticks: list[Tick] = []
        self._receipts: list[int] = []
        self.conflated = 0

    def __len__(self) -> int:
        return len(self._ticks)

    def extend(self, ticks: list[Tick], receipts: list[int]) -> None:
        self._ticks.extend(ticks)
        self._receipts.extend(receipts)
        if len(self._ticks) > self.max_ticks:
            self._conflate()

    def _conflate(self) -> None:
        # Order is kept among the survivors: the last tick of each symbol, where it stood.
        last: dict[str, int] = {}
        for i, tick in enumerate(self._ticks):
            last[tick.symbol] = i
        keep = sorted(last.values())
        self.conflated += len(self._ticks) - len(keep)
        self._ticks = [self._ticks[i] for i in keep]
        self._receipts = [self._receipts[i] for i in keep]

    def take(self, limit: int) -> tuple[list[Tick], list[int]]:
        """Up to ``limit`` of the oldest ticks and their receipt times."""
        if len(self._ticks) <= limit:
            ticks, receipts = self._ticks, self._receipts
            self._ticks, self._receipts = [], []
            return ticks, receipts
        ticks, receipts = self._ticks[:limit], self._receipts[:limit]
        del self._ticks[:limit]
        del self._receipts[:limit]
        return ticks, receipts

    def take_conflated(self) -> int:
        n, self.conflated = self.conflated, 0
        return n


class PublishSplitter:
    """A socket shim under paho: QoS 0 PUBLISH packets go straight to the inbox.

    paho spends ~35 us of Python per received message (3-5 ``recv`` calls, packet decoding,
    an ``MQTTMessage`` and an ``MQTTMessageInfo``, a debug log call, topic matching); this shim
    reads the socket in large chunks, frames MQTT 3.1.1 packets itself (a fixed header and
    a length), and hands every complete QoS 0 PUBLISH to the inbox as ``(topic, payload,
    receipt_ns)``.  Every other packet (CONNACK, SUBACK, PINGRESP, QoS 1/2 PUBLISH with
    their acknowledgements) is passed through, byte for byte, to paho, which keeps owning
    the protocol.  QoS 1/2 messages of one read therefore reach the inbox after its QoS 0
    ones; actions carry their own effective time, so that reordering within one read is
    harmless.

    ``pending()`` reports the pass-through bytes, so aiomqtt's reader keeps calling
    ``loop_read`` until none is left; partial packets wait here for the rest of their bytes,
    which arrive through the socket, so the event loop is woken for them as usual.
    """

    def __init__(self, sock: Any, inbox: RawInbox, split: bool = True) -> None:
        self._sock = sock
        self._inbox = inbox
        self._split = split
        self._inner_pending: Callable[[], int] | None = getattr(sock, "pending", None)
        self._unframed = bytearray()
        self._to_paho = bytearray()

    def recv(self, size: int) -> bytes:
        while not self._to_paho:
            # Back-pressure: with the consumer behind, leave the bytes in the kernel (and the
            # broker) and let the event loop run.  Only when nothing is buffered in user space
            # by TLS, so the socket becoming readable again is what resumes us.
            if self._inbox.is_full() and not (self._inner_pending and self._inner_pending()):
                raise BlockingIOError
            data: bytes = self._sock.recv(_RECV_CHUNK)
            if not data:
                return data  # EOF: paho sees the connection lost
            if self._split:
                self._frame(data)
            else:
                self._to_paho += data
            if not self._to_paho and len(data) < _RECV_CHUNK and not self.pending():
                # Most likely all there was: leave the next read to the next readable event
                # rather than spend a system call to hear EAGAIN.
                raise BlockingIOError
        chunk = bytes(self._to_paho[:size])
        del self._to_paho[:size]
        return chunk

    def _frame(self, data: bytes) -> None:
        self._unframed += data
        inbox = self._inbox
        framed = frame_packets(self._unframed, inbox.max_payload_bytes, inbox.clock())
        self._to_paho += framed.passthrough
        if framed.oversize:
            inbox.rejected[OVERSIZE] += framed.oversize
        if framed.bad_topics:
            inbox.rejected[UNKNOWN_TOPIC] += framed.bad_topics
        if framed.messages:
            inbox.extend(framed.messages)

    def pending(self) -> int:
        inner = self._inner_pending
        return len(self._to_paho) + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@dataclass(slots=True)
class Framed:
    """What :func:`frame_packets` took from a buffer."""

    messages: list[RawMessage]  # QoS 0 PUBLISH packets as (topic, payload, receipt)
    passthrough: bytearray  # every other complete packet, byte for byte
    oversize: int  # PUBLISH packets with a payload over the limit, dropped
    bad_topics: int  # PUBLISH packets whose topic is not UTF-8, dropped


def frame_packets(buf: bytearray, limit: int, receipt_ns: int) -> Framed:
    """Take every complete MQTT 3.1.1 packet off the front of ``buf`` (the rest stays for the
    next read): QoS 0 PUBLISH packets become messages, the others pass through untouched."""
    n = len(buf)
    pos = 0
    framed = Framed([], bytearray(), 0, 0)
    messages, passthrough = framed.messages, framed.passthrough
    view = memoryview(buf)
    try:
        while pos < n:
            header = buf[pos]
            # Remaining length: 1-4 bytes, 7 bits each, least significant first.
            i = pos + 1
            length = 0
            shift = 0
            complete = False
            while i < n and shift <= 21:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    complete = True
                    break
                shift += 7
            if not complete:
                if shift > 21:  # a fifth length byte is not MQTT: let the client report it
                    passthrough += view[pos:]
                    pos = n
                break  # otherwise the length itself is still incomplete
            end = i + length
            if end > n:
                break
            if header & 0xF6 == 0x30 and length >= 2:  # PUBLISH, QoS 0 (any DUP/RETAIN)
                topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
                if end - topic_end > limit:
                    framed.oversize += 1
                else:
                    try:
                        topic = str(view[i + 2 : topic_end], "utf-8")
                    except UnicodeDecodeError:
                        framed.bad_topics += 1
                    else:
                        messages.append((topic, bytes(view[topic_end:end]), receipt_ns))
            else:
                passthrough += view[pos:end]
            pos = end
    finally:
        view.release()
    del buf[:pos]
    return framed


def install_fast_path(client: aiomqtt.Client, inbox: RawInbox) -> bool:
    """Route a connected aiomqtt client's messages to ``inbox`` (see :class:`PublishSplitter`).

    Reaches into aiomqtt's paho client (``_client``) and paho's socket (``_sock``); if a
    future version changes those, returns False and the caller uses aiomqtt's public
    message iterator instead.
    """
    paho = getattr(client, "_client", None)
    if paho is None or not hasattr(paho, "on_message"):
        return False
    paho.on_message = inbox.on_message
    sock = getattr(paho, "_sock", None)
    if isinstance(sock, socket.socket):  # includes ssl.SSLSocket
        # The framing above is MQTT 3.1.1's; a v5 PUBLISH carries properties.
        split = getattr(paho, "_protocol", None) == MQTT_V311
        paho._sock = PublishSplitter(sock, inbox, split)
    return True


class Backoff:
    """Jittered exponential delays: base * 2^n capped at ``cap``, each scaled by U(0.5, 1)."""

    def __init__(
        self, base_s: float = 0.05, cap_s: float = 5.0, rng: random.Random | None = None
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.cap_s, self.base_s * 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 30)
        return delay * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._attempt = 0


def broker_address(settings: MqttSettings) -> MqttEndpoint:
    """Host, port, credentials and TLS from ``mqtt[s]://[user[:password]@]host[:port]``.

    A password from the environment (settings.password) wins over one in the URL.
    """
    return parse_mqtt_url(settings.url, settings.password)


class MqttIngest:
    """Keeps a subscribed broker connection feeding ``inbox``; reconnects with backoff."""

    def __init__(
        self,
        settings: MqttSettings,
        inbox: RawInbox,
        metrics: Metrics,
        backoff: Backoff | None = None,
    ) -> None:
        self._settings = settings
        self._address = broker_address(settings)
        self._inbox = inbox
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self.connected = asyncio.Event()
        self.connections = 0

    def _client(self) -> aiomqtt.Client:
        address = self._address
        return aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=self._settings.client_id,
            # A persistent session keeps QoS 1 control messages queued while we reconnect.
            clean_session=False,
            # Long enough for a PINGRESP queued behind a backlog the broker is still sending.
            keepalive=30,
            timeout=5,
            tls_context=ssl.create_default_context() if address.tls else None,
            logger=logging.getLogger("streamer.mqtt"),
        )

    async def run(self) -> None:
        where = redact_url(self._settings.url)
        while True:
            try:
                async with self._client() as client:
                    fast = install_fast_path(client, self._inbox)
                    for topic in self._settings.topics:
                        await client.subscribe(topic, qos=1)
                    self.connections += 1
                    if self.connections > 1:
                        self._metrics.mqtt_reconnects.inc()
                    self._backoff.reset()
                    self.connected.set()
                    log.info(
                        "mqtt connected",
                        extra={
                            "fields": {
                                "broker": where,
                                "topics": ",".join(self._settings.topics),
                                "fast_path": fast,
                            }
                        },
                    )
                    async for message in client.messages:
                        # Only reached when the fast path could not be installed.
                        self._inbox.put(str(message.topic), _payload_bytes(message.payload))
            except aiomqtt.MqttError as exc:
                was_connected = self.connected.is_set()
                self.connected.clear()
                delay = self._backoff.next()
                log.warning(
                    "mqtt disconnected" if was_connected else "mqtt connect failed",
                    extra={
                        "fields": {
                            "broker": where,
                            "error": str(exc),
                            "retry_in_s": round(delay, 3),
                        }
                    },
                )
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()
