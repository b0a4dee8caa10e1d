"""Where received messages wait for the pipeline: one list, swapped out per step.

The reader never pauses for the consumer: under overload the backlog must come off the
socket and out of the broker (where it cannot be conflated) into the pipeline, which decodes
it in C and hands the engine whole batches (the engine keeps only each symbol's newest
price).  Memory is still bounded: past ``max_bytes`` the oldest messages that need no
acknowledgement are dropped (counted as conflated: a newer tick supersedes them), so only a
flood the pipeline cannot even decode ever loses data.  Oversized payloads are counted and
dropped here, before any decoding.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from streamer.mqtt.codec import RawMessage

# Pre-engine rejection reasons, alongside the engine's own in streamer_ticks_total.
MALFORMED = "malformed"
OVERSIZE = "oversize"
UNKNOWN_TOPIC = "unknown_topic"
# Dropped by the overflow policy: an older message, superseded by newer ones.
CONFLATED = "conflated"
INBOX_FULL = "inbox_full"


def tag_ack(generation: int, packet_id: int) -> int:
    """A packet id with the connection it came on: an id is only acknowledged on that one
    (after a reconnect the broker redelivers instead)."""
    return (generation << 16) | packet_id


def untag_ack(ack: int) -> tuple[int, int]:
    """(connection generation, packet id) of a tagged ack."""
    return ack >> 16, ack & 0xFFFF


class RawInbox:
    """Raw ``(topic, payload, receipt_ns, ack)`` messages for the pipeline; ``ack`` is 0 for
    QoS 0, else the tagged packet id (see :func:`tag_ack`).

    Filled from aiomqtt's socket reader (on the event loop thread), so it may touch the event
    directly.
    """

    def __init__(
        self,
        max_payload_bytes: int,
        clock: Callable[[], int] = time.time_ns,
        *,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_bytes = max_bytes
        self.clock = clock
        self._messages: list[RawMessage] = []
        self._bytes = 0
        self._event = asyncio.Event()
        self.rejected: Counter[str] = Counter()
        self.dropped = 0  # shed by the memory bound since the last take_dropped()
        self.refused_acks: list[int] = []  # packet ids of messages refused before decoding
        self.received = 0
        self.generation = 0  # of the broker connection filling it (set by the transport)

    def on_message(self, client: Any, userdata: Any, message: Any) -> None:
        """paho ``on_message`` (callback API v2): messages paho decoded (QoS 1 and 2, and
        everything when the fast path is off).  Its packet id is kept for the ack."""
        payload: bytes = message.payload
        ack = tag_ack(self.generation, message.mid) if message.qos else 0
        try:
            topic: str = message.topic
        except UnicodeDecodeError:
            self.rejected[UNKNOWN_TOPIC] += 1
            self._nothing_to_do(ack)
            return
        if len(payload) > self.max_payload_bytes:
            self.rejected[OVERSIZE] += 1
            self._nothing_to_do(ack)
            return
        self.extend([(topic, payload, self.clock(), ack)])

    def _nothing_to_do(self, ack: int) -> None:
        # A message refused before the pipeline still needs its acknowledgement.
        if ack:
            self.refused_acks.append(ack)

    def extend(self, messages: list[RawMessage]) -> None:
        """Add messages framed elsewhere (already size-checked)."""
        was_empty = not self._messages
        self._messages.extend(messages)
        self._bytes += sum(len(m[1]) for m in messages)
        if self._bytes > self.max_bytes:
            self._shed()
        if was_empty:
            self._event.set()

    def put(self, topic: str, payload: bytes, receipt_ns: int | None = None, ack: int = 0) -> None:
        """Add a message directly (tests, replay), with the same size check."""
        if len(payload) > self.max_payload_bytes:
            self.rejected[OVERSIZE] += 1
            self._nothing_to_do(ack)
            return
        receipt = self.clock() if receipt_ns is None else receipt_ns
        self.extend([(topic, payload, receipt, ack)])

    def _shed(self) -> None:
        """Drop the oldest messages that need no acknowledgement until half the bound is left
        (control messages and anything acknowledged later are always kept)."""
        target = self.max_bytes // 2
        kept: list[RawMessage] = []
        size = self._bytes
        for message in self._messages:
            if size > target and not message[3] and not message[0].startswith("control/"):
                size -= len(message[1])
                self.dropped += 1
                continue
            kept.append(message)
        self._messages = kept
        self._bytes = size

    def __len__(self) -> int:
        return len(self._messages)

    async def wait(self) -> None:
        """Until at least one message is waiting."""
        if not self._messages:
            self._event.clear()
            await self._event.wait()

    def take(self, limit: int | None = None) -> list[RawMessage]:
        """The oldest waiting messages (at most ``limit``), oldest first."""
        if limit is None or len(self._messages) <= limit:
            messages, self._messages = self._messages, []
            self._bytes = 0
            self._event.clear()
        else:
            messages = self._messages[:limit]
            del self._messages[:limit]
            self._bytes -= sum(len(m[1]) for m in messages)
        self.received += len(messages)
        return messages

    def take_rejected(self) -> Counter[str]:
        """Messages refused before decoding since the last call, by reason."""
        rejected, self.rejected = self.rejected, Counter()
        return rejected

    def take_dropped(self) -> int:
        """Messages shed by the memory bound since the last call."""
        dropped, self.dropped = self.dropped, 0
        return dropped

    def take_refused_acks(self) -> list[int]:
        acks, self.refused_acks = self.refused_acks, []
        return acks
