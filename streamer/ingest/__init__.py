"""MQTT intake: raw messages -> decoded, bounded micro-batches for the engine.

The hot path is per burst, not per message:

* :mod:`.transport` keeps the broker session and frames QoS 0 PUBLISH packets itself;
* :class:`RawInbox` collects ``(topic, payload, receipt_ns, ack)``; the pipeline swaps the
  whole list out at once;
* :class:`MessageRouter` routes by topic and decodes a whole burst at once;
* :class:`TickQueue` is the bounded queue in front of the engine.
"""

from streamer.ingest.inbox import (
    CONFLATED,
    INBOX_FULL,
    MALFORMED,
    OVERSIZE,
    UNKNOWN_TOPIC,
    RawInbox,
)
from streamer.ingest.queue import TickQueue
from streamer.ingest.router import Inbound, MessageRouter

__all__ = [
    "CONFLATED",
    "INBOX_FULL",
    "MALFORMED",
    "OVERSIZE",
    "UNKNOWN_TOPIC",
    "Inbound",
    "MessageRouter",
    "RawInbox",
    "TickQueue",
]
