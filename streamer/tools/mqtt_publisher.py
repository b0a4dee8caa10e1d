"""A lean MQTT 3.1.1 publisher (QoS 0 only) that writes many PUBLISH packets per system call.

Why not paho-mqtt: its threaded loop wakes a socket pair and issues one ``send`` per message,
which tops out near 21,000 messages/s on a laptop core (26,000 without the thread), below the
rates the service must be driven at to find its limits.  A QoS 0 publisher needs four packet
types (CONNECT, CONNACK, PUBLISH, DISCONNECT, plus PINGREQ for keepalive), so building the
packets ourselves and handing the kernel one buffer per burst reaches >200,000 messages/s
and leaves the CPU to the system under test.  It speaks plain TCP or TLS (``mqtts://``) and
authenticates with user/password like the service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from streamer.config import Settings, redact_url
from streamer.endpoints import parse_mqtt_url
from streamer.errors import EndpointError, StreamerError
from streamer.mqtt.codec import DISCONNECT, PINGREQ, connect_packet, publish_packet

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5.0
_KEEPALIVE_S = 60
_WRITE_CHUNK_BYTES = 256 * 1024
_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class BrokerError(StreamerError):
    """The broker cannot be reached, refused us, or went away."""


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where and as whom to connect; the password never appears in ``repr``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, password: str | None = None) -> BrokerEndpoint:
        """Parse ``mqtt[s]://[user[:password]@]host[:port]``; ``password`` fills a missing one."""
        try:
            parsed = parse_mqtt_url(url)
        except EndpointError as exc:
            raise BrokerError(f"broker url {redact_url(url)}: {exc}") from None
        return cls(
            host=parsed.host,
            port=parsed.port,
            tls=parsed.tls,
            username=parsed.username,
            password=parsed.password if parsed.password is not None else password,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerEndpoint:
        """The service's broker (``[mqtt].url``, env overrides and password already applied)."""
        return cls.from_url(settings.mqtt.url, settings.mqtt.password)

    @classmethod
    def from_environment(cls, url: str | None) -> BrokerEndpoint:
        """``url`` (else ``STREAMER_MQTT_URL``, else loopback) and ``STREAMER_MQTT_PASSWORD``."""
        url = url or os.environ.get("STREAMER_MQTT_URL") or "mqtt://127.0.0.1:1883"
        password = os.environ.get("STREAMER_MQTT_PASSWORD")
        password_file = os.environ.get("STREAMER_MQTT_PASSWORD_FILE")
        if password is None and password_file:
            try:
                password = Path(password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                problem = f"cannot read STREAMER_MQTT_PASSWORD_FILE: {exc.strerror}"
                raise BrokerError(problem) from None
        return cls.from_url(url, password)


@dataclass
class PublisherStats:
    messages: int = 0
    bytes: int = 0
    dropped: int = 0  # messages lost to a broken connection (QoS 0: not retried)
    reconnects: int = 0


class MqttPublisher:
    """Connects once, then publishes bursts of QoS 0 messages with one write each.

    With ``reconnect=True`` a lost connection is re-established with jittered exponential
    backoff (the burst that failed is counted as dropped); otherwise it raises BrokerError.
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        client_id: str | None = None,
        *,
        reconnect: bool = False,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id or f"streamer-pub-{os.getpid()}-{random.randrange(1 << 30):x}"
        self.reconnect = reconnect
        self.stats = PublisherStats()
        self._should_stop = should_stop
        self._sock: socket.socket | None = None
        self._last_write = 0.0

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> MqttPublisher:
        self._sock = self._open()
        return self

    def _open(self) -> socket.socket:
        ep = self.endpoint
        try:
            raw = socket.create_connection((ep.host, ep.port), timeout=_CONNECT_TIMEOUT_S)
        except OSError as exc:
            problem = f"cannot connect to broker {ep.display}: {exc.strerror or exc}"
            raise BrokerError(problem) from None
        sock: socket.socket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ep.tls:
                sock = ssl.create_default_context().wrap_socket(raw, server_hostname=ep.host)
            sock.sendall(
                connect_packet(self.client_id, ep.username, ep.password, keepalive_s=_KEEPALIVE_S)
            )
            answer = _recv_exactly(sock, 4)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise BrokerError(f"broker {ep.display} handshake failed: {exc}") from None
        if answer[0] != 0x20:
            sock.close()
            raise BrokerError(f"broker {ep.display} answered CONNECT with packet {answer[0]:#x}")
        if answer[3] != 0:
            sock.close()
            reason = _CONNACK_REASONS.get(answer[3], f"code {answer[3]}")
            raise BrokerError(f"broker {ep.display} refused the connection: {reason}")
        sock.settimeout(None)
        self._last_write = time.monotonic()
        return sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(DISCONNECT)
            sock.close()

    def __enter__(self) -> MqttPublisher:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publishing ------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> None:
        self.publish_packets([publish_packet(topic.encode(), payload)])

    def publish_many(self, messages: Iterable[tuple[bytes, bytes]]) -> None:
        """Publish (topic bytes, payload) pairs in order."""
        self.publish_packets([publish_packet(topic, payload) for topic, payload in messages])

    def publish_packets(self, packets: list[bytes]) -> None:
        """Write ready-made PUBLISH packets (see ``publish_packet``), as few writes as possible."""
        if not packets:
            return
        data = b"".join(packets)
        while True:
            if self._sock is None:
                self._sock = self._open()
            try:
                view = memoryview(data)
                for start in range(0, len(data), _WRITE_CHUNK_BYTES):
                    self._sock.sendall(view[start : start + _WRITE_CHUNK_BYTES])
            except OSError as exc:
                self._lost(exc, len(packets))
                if self._should_stop():
                    return
                self._reopen_with_backoff()
                return
            self.stats.messages += len(packets)
            self.stats.bytes += len(data)
            self._last_write = time.monotonic()
            return

    def keepalive(self) -> None:
        """Call while idle: pings before the broker's keepalive expires, notices a closed link."""
        sock = self._sock
        if sock is None:
            return
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable and not sock.recv(4096):
                raise ConnectionResetError("broker closed the connection")
            if time.monotonic() - self._last_write > _KEEPALIVE_S / 2:
                sock.sendall(PINGREQ)
                self._last_write = time.monotonic()
        except OSError as exc:
            self._lost(exc, 0)
            self._reopen_with_backoff()

    def sleep(self, seconds: float) -> None:
        """Sleep, keeping the connection alive."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._should_stop():
            time.sleep(min(left, 1.0))
            self.keepalive()

    def _lost(self, exc: OSError, messages: int) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.stats.dropped += messages
        if not self.reconnect:
            raise BrokerError(f"lost the broker {self.endpoint.display}: {exc}") from None
        log.warning(
            "lost the broker, reconnecting",
            extra={"fields": {"broker": self.endpoint.display, "error": str(exc)}},
        )

    def _reopen_with_backoff(self) -> None:
        delay = 0.1
        while not self._should_stop():
            try:
                self._sock = self._open()
            except BrokerError as exc:
                log.warning("broker unavailable", extra={"fields": {"error": str(exc)}})
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)
                continue
            self.stats.reconnects += 1
            fields = {"broker": self.endpoint.display, "reconnects": self.stats.reconnects}
            log.info("reconnected to the broker", extra={"fields": fields})
            return


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("broker closed the connection during CONNECT")
        data += chunk
    return data
