"""Redis output: publish cycles as MULTI/EXEC transactions, and the loop that decides when.

Per published series ``S`` (prefix ``P``) a cycle writes ``HSET P:index:S`` (the fields that
moved, or all), ``PUBLISH P:levels:S`` (its JSON message) while that channel has a
subscriber, and ``XADD P:history:S`` when the series' history is due, all made a column at a
time by :mod:`~streamer.publish.level_writes`; per transaction one ``PUBLISH P:levels``
carries every series of it as a JSON array;
minute bars go to ``P:bars:1m:S`` when their minute is over; and the cycle's audit records
(``P:actions``, written once per action and index), official closes (``P:closes:S``) and,
when one is due, the engine's checkpoint (``P:state:*``) go in its first transaction.  The
schema of every record is ``streamer.outputs``.

Why plain commands in MULTI rather than one Lua script: Redis spent 7.1 us per series on the
script (the Lua layer and its MessagePack unpacking more than the commands), against 2.8 us
for the same writes as plain commands (10,000 series, measured with a subscriber attached);
the all-series channel batched per transaction costs Redis one PUBLISH instead of one per
series.  A transaction holds at most 600 series (about 2 ms of Redis), so a cycle of 10,000
series never blocks Redis for long; each is atomic, and the first one, with the checkpoint, is
applied before any level of the cycle.  A large checkpoint structure goes ahead of its cycle
in 512 KiB slices and is renamed into place by the checkpoint script.

:class:`Outbox` sits between the pipeline and the publisher: it collects which series changed,
the audit and close records, the receipt times of the ticks that fed them, and the QoS 1
packet ids waiting for a durable checkpoint.  It conflates by nature (a series changed ten
times since the last cycle is published once, at its latest level), so a slow or absent
Redis never slows ingestion down.

The modules: :mod:`~streamer.publish.outbox` (the Outbox), :mod:`~streamer.publish.policy`
(the per-series rate cap and the history policy), :mod:`~streamer.publish.level_writes` (a
cycle's level commands, in bulk, and the per-series state they need),
:mod:`~streamer.publish.writer` (the
RedisPublisher: transactions, scripts, the lease's Redis side, Redis Cluster routing) and
:mod:`~streamer.publish.loop` (the PublishLoop: when to publish, outages, the lease).
"""

from streamer.publish.loop import PublishLoop
from streamer.publish.outbox import MAX_PENDING_AUDIT, DurableAck, OfficialRecord, Outbox
from streamer.publish.policy import (
    BAR_ENTRY_BYTES,
    HISTORY_ENTRY_BYTES,
    HistoryPolicy,
    RateCap,
    history_policy,
)
from streamer.publish.writer import (
    ACK_TIMEOUT_S,
    CHUNK_COMMANDS,
    FencedError,
    PublishError,
    RedisPublisher,
    Sent,
)

__all__ = [
    "ACK_TIMEOUT_S",
    "BAR_ENTRY_BYTES",
    "CHUNK_COMMANDS",
    "HISTORY_ENTRY_BYTES",
    "MAX_PENDING_AUDIT",
    "DurableAck",
    "FencedError",
    "HistoryPolicy",
    "OfficialRecord",
    "Outbox",
    "PublishError",
    "PublishLoop",
    "RateCap",
    "RedisPublisher",
    "Sent",
    "history_policy",
]
