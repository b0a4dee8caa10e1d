"""A lightweight Redis subscriber that timestamps every ``P:levels`` message on receipt.

Used by the end-to-end benchmark to measure tick-to-publish latency as a desk sees it: the
receipt time of a published level minus the ``source_ts`` it carries (the producer's time of
the newest tick in it).  At thousands of level messages per second redis-py's pub/sub loop
would cost a good part of a core on the machine under test, so this reads the socket in bulk
and parses RESP with hiredis (about a microsecond per message), and leaves decoding the JSON
to the end.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import unquote, urlsplit

import hiredis
import msgspec
import numpy as np
import numpy.typing as npt


class _LevelStamp(msgspec.Struct):
    index: str
    source_ts: int | None = None
    ts: int | None = None


# P:levels carries an array of levels per publish transaction; P:levels:<id> one level.
_decode_stamps = msgspec.json.Decoder(list[_LevelStamp] | _LevelStamp).decode


def _command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        raw = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class LevelsTap:
    """Subscribes in a background thread; ``latencies_ns`` after ``stop``."""

    def __init__(self, redis_url: str, channel: str, password: str | None = None) -> None:
        parts = urlsplit(redis_url)
        if parts.scheme != "redis":
            raise ValueError("the levels tap speaks plain redis:// (it runs on loopback)")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.password = unquote(parts.password) if parts.password else password
        self.channel = channel
        self._received: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="levels-tap", daemon=True)
        self.error: Exception | None = None

    def start(self, timeout_s: float = 5.0) -> LevelsTap:
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.error is not None:
            raise ConnectionError(f"could not subscribe to {self.channel}: {self.error}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=5.0)
            reader = hiredis.Reader()
            if self.password:
                sock.sendall(_command("AUTH", self.password))
            sock.sendall(_command("SUBSCRIBE", self.channel))
            sock.settimeout(0.1)
            with sock:
                while not self._stop.is_set():
                    try:
                        data = sock.recv(1 << 20)
                    except TimeoutError:
                        continue
                    received_ns = time.time_ns()
                    if not data:
                        return
                    reader.feed(data)
                    while (reply := reader.gets()) is not False:
                        self._handle(reply, received_ns)
        except Exception as exc:  # reported by start(), or read by the caller
            self.error = exc
            self._ready.set()

    def _handle(self, reply: object, received_ns: int) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind == b"message":
                self._received.append((received_ns, reply[2]))
            elif kind == b"subscribe":
                self._ready.set()
        elif isinstance(reply, hiredis.ReplyError):
            self.error = reply
            self._ready.set()

    @property
    def messages(self) -> int:
        """Channel messages received (on P:levels, each carries many levels)."""
        return len(self._received)

    def latencies_ns(self, since_ts: int = 0) -> npt.NDArray[np.int64]:
        """Receipt minus ``source_ts`` of every level whose newest tick is from ``since_ts`` on."""
        out: list[int] = []
        for received_ns, payload in self._received:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                decoded = _decode_stamps(payload)
                stamps = decoded if isinstance(decoded, list) else [decoded]
                out.extend(
                    received_ns - stamp.source_ts
                    for stamp in stamps
                    if stamp.source_ts is not None and stamp.source_ts >= since_ts
                )
        return np.array(out, dtype=np.int64)

    def clear(self) -> None:
        self._received.clear()
