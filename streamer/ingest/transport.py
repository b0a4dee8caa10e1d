"""The broker connection: aiomqtt for the session, a framing shim for the bulk of the data.

This is the one module that knows aiomqtt's and paho's insides (``aiomqtt.Client._client``,
paho's ``_sock``); every reach is a ``getattr`` with a fallback, so a future version that
renames them degrades to aiomqtt's public message iterator instead of breaking.

- :class:`PublishSplitter` sits under paho as its socket and frames QoS 0 PUBLISH packets
  itself (paho costs ~35 us of Python per message); everything else goes to paho.
- QoS 1 messages are acknowledged by hand (paho's ``manual_ack``): a control message only
  once its action is durable, so a crash before that gets it redelivered.
- CONNACK's session-present flag tells whether the broker kept our persistent session; when it
  did not, QoS 1 messages sent while we were away may be lost, which is said loudly.
- A refused login, a refused subscription and a session taken over by another client with our
  client id each get one clear log line, a metric and a slower retry.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiomqtt

from streamer.backoff import Backoff
from streamer.config import MqttSettings
from streamer.endpoints import MqttEndpoint, parse_mqtt_url
from streamer.ingest.inbox import OVERSIZE, UNKNOWN_TOPIC, RawInbox, tag_ack, untag_ack
from streamer.metrics import Metrics
from streamer.mqtt.codec import KEEPALIVE_S, frame_packets

log = logging.getLogger("streamer.mqtt")

_RECV_CHUNK = 256 * 1024
# At most this much is read per readable event, so that a flood never starves the loop.
_READ_BUDGET = 4 * 1024 * 1024
MQTT_V311 = 4  # paho's protocol number for MQTT 3.1.1
# CONNACK return codes that no retry will fix by itself: MQTT 3.1.1's, and the MQTT 5 codes
# paho 2 reports them as.
_AUTH_FAILURES = {
    4: "bad user name or password",
    134: "bad user name or password",
    5: "not authorized",
    135: "not authorized",
}
# A connection lost within this long of being made, while the broker takes the next one at
# once, is a sign that another client uses our client id: each takes the session from the
# other (the broker disconnects the older connection).
_TAKEOVER_WINDOW_S = 10.0
_TAKEOVER_STRIKES = 3
_AUTH_BACKOFF_CAP_S = 30.0


def broker_address(settings: MqttSettings) -> MqttEndpoint:
    """Host, port, credentials and TLS; a password from the environment wins over the URL."""
    return parse_mqtt_url(settings.url, settings.password)


class PublishSplitter:
    """A socket shim under paho: QoS 0 PUBLISH packets go straight to the inbox.

    paho spends ~35 us of Python per received message (3-5 ``recv`` calls, packet decoding,
    an ``MQTTMessage`` and an ``MQTTMessageInfo``, a debug log call, topic matching); this shim
    reads the socket in large chunks, frames MQTT 3.1.1 packets itself (``mqtt.codec``), and
    hands every complete QoS 0 PUBLISH to the inbox.  Every other packet (CONNACK, SUBACK,
    PINGRESP, QoS 1/2 PUBLISH) is passed through, byte for byte, to paho, which keeps owning
    the protocol.  QoS 1/2 messages of one read therefore reach the inbox after its QoS 0
    ones; actions carry their own effective time, so that reordering within one read is
    harmless.

    The shim never pauses for the consumer (see ``ingest.inbox``), but it reads at most
    ``_READ_BUDGET`` per readable event and then yields, so the event loop stays responsive
    under a flood.  ``pending()`` reports the pass-through bytes, so aiomqtt's reader keeps
    calling ``loop_read`` until none is left.
    """

    def __init__(self, sock: Any, inbox: RawInbox, split: bool = True) -> None:
        self._sock = sock
        self._inbox = inbox
        self._split = split
        self._inner_pending: Callable[[], int] | None = getattr(sock, "pending", None)
        self._unframed = bytearray()
        self._to_paho = bytearray()
        self._budget = _READ_BUDGET

    def recv(self, size: int) -> bytes:
        while not self._to_paho:
            if self._budget <= 0 and not (self._inner_pending and self._inner_pending()):
                # Enough for one turn: let the loop run; the socket is still readable, so
                # the next turn comes back here.
                self._budget = _READ_BUDGET
                raise BlockingIOError
            data: bytes = self._sock.recv(_RECV_CHUNK)
            if not data:
                return data  # EOF: paho sees the connection lost
            self._budget -= len(data)
            if self._split:
                self._frame(data)
            else:
                self._to_paho += data
            if not self._to_paho and len(data) < _RECV_CHUNK and not self.pending():
                # Most likely all there was: leave the next read to the next readable event
                # rather than spend a system call to hear EAGAIN.
                self._budget = _READ_BUDGET
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


def _paho(client: aiomqtt.Client) -> Any:
    """aiomqtt's paho client, or None if this aiomqtt keeps it elsewhere."""
    paho = getattr(client, "_client", None)
    return paho if paho is not None and hasattr(paho, "on_message") else None


def install_fast_path(client: aiomqtt.Client, inbox: RawInbox) -> bool:
    """Route a connected aiomqtt client's messages to ``inbox`` (see :class:`PublishSplitter`).

    Returns False (and the caller uses aiomqtt's public iterator) if paho is out of reach.
    """
    paho = _paho(client)
    if paho is None:
        return False
    paho.on_message = inbox.on_message
    # Anything aiomqtt queued before we took over (there should be nothing): to the inbox.
    queued = getattr(client, "_queue", None)
    while queued is not None and not queued.empty():
        message = queued.get_nowait()
        ack = tag_ack(inbox.generation, message.mid) if message.qos else 0
        inbox.put(str(message.topic), _payload_bytes(message.payload), ack=ack)
    sock = getattr(paho, "_sock", None)
    if isinstance(sock, socket.socket):  # includes ssl.SSLSocket
        # The framing is MQTT 3.1.1's; a v5 PUBLISH carries properties.
        split = getattr(paho, "_protocol", None) == MQTT_V311
        paho._sock = PublishSplitter(sock, inbox, split)  # noqa: SLF001 - the shim's seat
    return True


class MqttIngest:
    """Keeps a subscribed broker connection feeding ``inbox``; reconnects with backoff."""

    def __init__(
        self,
        settings: MqttSettings,
        inbox: RawInbox,
        metrics: Metrics,
        backoff: Backoff | None = None,
        *,
        expect_session: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``expect_session``: the broker should still hold our persistent session (this
        service ran before under this client id), so a missing one means lost messages."""
        self._settings = settings
        self._address = broker_address(settings)
        self._inbox = inbox
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self._clock = clock
        self.connected = asyncio.Event()
        self.connections = 0
        self.expect_session = expect_session
        self.problem = ""  # why the broker is not usable now (for /readyz), "" when it is
        self.generation = 0  # bumped per connection: packet ids belong to one connection
        self._paho: Any = None
        self._session_present: bool | None = None
        self._short_lived: list[float] = []  # times of connections lost soon after made
        self._takeover_backoff = Backoff(base_s=5.0, cap_s=60.0)
        self._manual_ack = False
        # The topic filters wanted (set_topics), and those subscribed on the live connection.
        self.topics: list[str] = list(settings.topics)
        self._subscribed: set[str] = set()
        self._retired: set[str] = set()  # subscribed by an earlier run's session, not wanted
        self._client_now: aiomqtt.Client | None = None
        self._updating: asyncio.Task[None] | None = None
        # Called when the broker had lost the session we expected (messages may be missing).
        self.on_session_lost: Callable[[], None] | None = None

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
            keepalive=KEEPALIVE_S,
            timeout=5,
            tls_context=ssl.create_default_context() if address.tls else None,
            logger=logging.getLogger("streamer.mqtt.client"),
        )

    def _watch_connack(self, client: aiomqtt.Client) -> None:
        """Before the connection is made: record CONNACK's session-present flag (aiomqtt
        does not pass it on), turn on manual acknowledgements, and deliver messages to the
        inbox from the first one.  A broker sends the messages it queued for our session
        right after CONNACK, often in the same read: had they gone to aiomqtt's own queue
        (which the fast path never reads), they would be lost."""
        paho = _paho(client)
        self._session_present = None
        self._manual_ack = False
        if paho is None:
            return
        paho.on_message = self._inbox.on_message
        if hasattr(paho, "manual_ack_set"):
            paho.manual_ack_set(True)
            self._manual_ack = True
        on_connect = paho.on_connect

        def connected(*args: Any) -> None:
            flags = args[2] if len(args) > 2 else None
            self._session_present = bool(getattr(flags, "session_present", False))
            on_connect(*args)

        paho.on_connect = connected

    def ack(self, acks: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages (tagged packet ids, see ``ingest.inbox``).  Those of an
        older connection are left alone: the broker redelivers them instead."""
        paho = self._paho
        if paho is None or not self._manual_ack:
            return
        for ack in acks:
            generation, packet_id = untag_ack(ack)
            if generation == self.generation:
                paho.ack(packet_id, 1)

    async def run(self) -> None:
        where = self._address.display
        while True:
            made_at = None
            try:
                client = self._client()
                self._watch_connack(client)
                # Before connecting: the broker redelivers what our session holds right after
                # CONNACK, and those packet ids belong to this connection.
                self.generation += 1
                self._inbox.generation = self.generation
                self._paho = _paho(client)
                async with client:
                    made_at = self._clock()
                    fast = install_fast_path(client, self._inbox)
                    self._client_now = client
                    refused = await self._subscribe(client)
                    self.connections += 1
                    if self.connections > 1:
                        self._metrics.mqtt_reconnects.inc()
                    self._check_session()
                    self._backoff.reset()
                    self.problem = f"broker refused subscriptions: {refused}" if refused else ""
                    self.connected.set()
                    log.info(
                        "mqtt connected",
                        extra={
                            "fields": {
                                "broker": where,
                                "topics": _summary(self.topics),
                                "fast_path": fast,
                                "session_present": self._session_present,
                            }
                        },
                    )
                    async for message in client.messages:
                        # Only reached when the fast path could not be installed.
                        self._inbox.put(
                            str(message.topic),
                            _payload_bytes(message.payload),
                            ack=tag_ack(self.generation, message.mid) if message.qos else 0,
                        )
            except aiomqtt.MqttError as exc:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self._paho = None
                delay = self._after_failure(exc, was_connected, made_at)
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                self._paho = None
                self._client_now = None
                self._subscribed = set()

    def set_topics(self, topics: Sequence[str], retired: Iterable[str] = ()) -> None:
        """The topic filters to subscribe to from now on (and ``retired``: filters an earlier
        run may have left in our persistent session, to unsubscribe).  Applied on the live
        connection at once, and on every connection after."""
        self.topics = list(dict.fromkeys(topics))
        self._retired = set(retired) - set(self.topics)
        client = self._client_now
        if client is not None and (self._updating is None or self._updating.done()):
            self._updating = asyncio.ensure_future(self._update(client))

    async def _update(self, client: aiomqtt.Client) -> None:
        try:
            while client is self._client_now:
                wanted = set(self.topics)
                add = [t for t in self.topics if t not in self._subscribed]
                drop = sorted((self._subscribed - wanted) | (self._retired & self._subscribed))
                if not add and not drop:
                    return
                if drop:
                    await _in_chunks(client.unsubscribe, drop)
                    self._subscribed -= set(drop)
                if add:
                    refused = await self._subscribe_topics(client, add)
                    if refused:
                        self.problem = f"broker refused subscriptions: {','.join(refused)}"
                log.info(
                    "mqtt subscriptions changed",
                    extra={"fields": {"added": _summary(add), "removed": _summary(drop)}},
                )
        except aiomqtt.MqttError as exc:  # the connection is going: the next one subscribes
            log.warning("mqtt subscription change failed", extra={"fields": {"error": str(exc)}})

    async def _subscribe(self, client: aiomqtt.Client) -> str:
        """Subscribe to every topic (and drop retired ones); returns the ones the broker
        refused (comma-separated)."""
        if self._retired:
            # Harmless when not subscribed: UNSUBSCRIBE of an unknown filter is not an error.
            await _in_chunks(client.unsubscribe, sorted(self._retired))
        refused = await self._subscribe_topics(client, self.topics)
        return ",".join(refused)

    async def _subscribe_topics(self, client: aiomqtt.Client, topics: Sequence[str]) -> list[str]:
        """One SUBSCRIBE per chunk of topics (a shard may have thousands of symbols)."""
        refused = []
        for lo in range(0, len(topics), SUBSCRIBE_CHUNK):
            chunk = list(topics[lo : lo + SUBSCRIBE_CHUNK])
            granted = await client.subscribe([(topic, 1) for topic in chunk])
            codes = list(granted) if isinstance(granted, list | tuple) else [granted]
            if len(codes) != len(chunk):
                codes = codes[:1] * len(chunk)
            for topic, code in zip(chunk, codes, strict=True):
                if _is_failure(code):
                    refused.append(topic)
                else:
                    self._subscribed.add(topic)
        if refused:
            log.error(
                "mqtt subscription refused by the broker: check its ACL for this user",
                extra={"fields": {"topics": _summary(refused), "user": self._address.username}},
            )
        return refused

    def _check_session(self) -> None:
        if self._session_present is None:
            return
        if not self._session_present and (self.expect_session or self.connections > 1):
            self._metrics.mqtt_session_lost.inc()
            log.error(
                "mqtt broker lost our persistent session: QoS 1 messages sent while we were "
                "away may be lost; compare P:actions with what operators sent, and resend "
                "missing actions (ids make a resend safe)",
                extra={"fields": {"client_id": self._settings.client_id}},
            )
            if self.on_session_lost is not None:
                self.on_session_lost()
        self.expect_session = True

    def _after_failure(
        self, exc: aiomqtt.MqttError, was_connected: bool, made_at: float | None
    ) -> float:
        """Log one line for what went wrong and say how long to wait before trying again."""
        where = self._address.display
        rc = getattr(exc, "rc", None)
        code = getattr(rc, "value", rc)
        if not was_connected and isinstance(code, int) and code in _AUTH_FAILURES:
            self.problem = f"mqtt login refused: {_AUTH_FAILURES[code]}"
            delay = min(_AUTH_BACKOFF_CAP_S, max(self._backoff.next(), 5.0))
            log.error(
                "mqtt login refused by the broker: check the user in [mqtt].url and the "
                "password (STREAMER_MQTT_PASSWORD or STREAMER_MQTT_PASSWORD_FILE)",
                extra={
                    "fields": {
                        "broker": where,
                        "reason": _AUTH_FAILURES[code],
                        "retry_in_s": round(delay, 1),
                    }
                },
            )
            return delay
        now = self._clock()
        if was_connected and made_at is not None:
            if now - made_at < _TAKEOVER_WINDOW_S:
                self._short_lived = [t for t in self._short_lived if now - t < 60.0] + [now]
            else:  # a connection that lasted: whatever it was is over
                self._short_lived.clear()
                self._takeover_backoff.reset()
        if len(self._short_lived) >= _TAKEOVER_STRIKES:
            delay = self._takeover_backoff.next()
            self.problem = "another client may be using our client id"
            if len(self._short_lived) == _TAKEOVER_STRIKES:
                self._metrics.mqtt_takeovers.inc()
                log.error(
                    "mqtt connection keeps being closed right after it is made: another "
                    "client is probably using our client id and taking the session over; "
                    "give every instance its own [mqtt].client_id (STREAMER_MQTT_CLIENT_ID)",
                    extra={
                        "fields": {
                            "client_id": self._settings.client_id,
                            "retry_in_s": round(delay, 1),
                        }
                    },
                )
            return delay
        delay = self._backoff.next()
        self.problem = "broker not connected"
        log.warning(
            "mqtt disconnected" if was_connected else "mqtt connect failed",
            extra={"fields": {"broker": where, "error": str(exc), "retry_in_s": round(delay, 3)}},
        )
        return delay


def _is_failure(code: Any) -> bool:
    """A SUBACK return code meaning refused (0x80), whatever form paho gives it in."""
    is_failure = getattr(code, "is_failure", None)
    if isinstance(is_failure, bool):
        return is_failure
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


SUBSCRIBE_CHUNK = 500  # topic filters per SUBSCRIBE / UNSUBSCRIBE packet


async def _in_chunks(call: Callable[[list[str]], Awaitable[object]], topics: Sequence[str]) -> None:
    for lo in range(0, len(topics), SUBSCRIBE_CHUNK):
        await call(list(topics[lo : lo + SUBSCRIBE_CHUNK]))


def _summary(topics: Sequence[str], shown: int = 8) -> str:
    """Topic filters for a log line: the first few and how many more."""
    head = ",".join(topics[:shown])
    return head if len(topics) <= shown else f"{head},... ({len(topics)} in all)"
