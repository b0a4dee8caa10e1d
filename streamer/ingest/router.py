"""Raw messages -> typed messages, a whole burst at a time.

Routing is by topic (the topic table is ``wire.TOPIC_KINDS``, declared once); the payload
carries the identity.  Single-tick JSON payloads of a burst are joined into one JSON Lines
buffer and decoded in one msgspec call; everything else goes through the total decoders of
``wire``, so any payload ends as messages or as a counted, throttled-logged rejection.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from streamer.ingest.inbox import MALFORMED, UNKNOWN_TOPIC
from streamer.logs import ThrottledLog
from streamer.mqtt.codec import RawMessage
from streamer.wire import (
    DECODE_ERRORS,
    DECODERS,
    Action,
    FxRate,
    MessageKind,
    ReferenceLevel,
    Tick,
    kind_of_topic,
)

log = logging.getLogger("streamer.ingest")

_SINGLE_TICK_LINES = msgspec.json.Decoder(Tick)
_MAX_TOPIC_CACHE = 100_000


@dataclass(slots=True)
class Inbound:
    """One decoded burst: ticks with their receipt times, the other kinds, rejections, and
    the packet ids to acknowledge: of messages carrying actions (per action), of messages
    whose content changes state (once that is durable), and of the rest (now)."""

    ticks: list[Tick] = field(default_factory=list)
    tick_receipts: list[int] = field(default_factory=list)
    fx: list[FxRate] = field(default_factory=list)
    references: list[ReferenceLevel] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    action_acks: list[int] = field(default_factory=list)  # per action: its message's packet id
    durable_acks: list[int] = field(default_factory=list)  # ticks, rates, references
    acks: list[int] = field(default_factory=list)  # nothing to keep (an unknown topic)
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
            kind = kind_of_topic(topic)
            if len(self._kinds) > _MAX_TOPIC_CACHE:  # topics per symbol are many but bounded
                self._kinds.clear()
            self._kinds[topic] = kind
        return kind  # type: ignore[return-value]

    def decode(self, messages: list[RawMessage], into: Inbound | None = None) -> Inbound:
        out = into if into is not None else Inbound()
        tick_payloads: list[bytes] = []
        tick_receipts: list[int] = []
        others: list[tuple[MessageKind, str, bytes, int, int]] = []
        kind_of = self.kind
        acks, durable = out.acks, out.durable_acks
        for topic, payload, receipt, ack in messages:
            kind = kind_of(topic)
            if kind == "tick":
                tick_payloads.append(payload)
                tick_receipts.append(receipt)
                if ack:
                    durable.append(ack)
            elif kind is None:
                out.rejected[UNKNOWN_TOPIC] += 1
                self._log.warning(UNKNOWN_TOPIC, "message on an unknown topic", topic=topic)
                if ack:
                    acks.append(ack)
            else:
                others.append((kind, topic, payload, receipt, ack))
        if messages:
            out.newest_receipt_ns = max(out.newest_receipt_ns, messages[-1][2])
        if tick_payloads:
            self._decode_ticks(tick_payloads, tick_receipts, out)
        for kind, topic, payload, receipt, ack in others:
            decoded = DECODERS[kind].decode(payload)
            if decoded.malformed:
                self._reject_malformed(out, decoded.malformed, topic, decoded.error)
            if kind == "control" and decoded.messages:
                for action in decoded.messages:
                    # An action without an effective time takes effect at its own receipt.
                    if action.effective is None:
                        action = msgspec.structs.replace(action, effective=receipt)
                    out.actions.append(action)
                    out.action_acks.append(ack)
                continue
            if ack:
                durable.append(ack)
            if kind == "fx":
                out.fx.extend(decoded.messages)
            elif kind == "reference":
                out.references.extend(decoded.messages)
        return out

    def _decode_ticks(self, payloads: list[bytes], receipts: list[int], out: Inbound) -> None:
        # Fast path: every payload one JSON object on one line -> one JSON Lines decode.
        # The newline check makes the line count equal the payload count, so every decoded
        # tick maps back to its own message (and a payload smuggling two objects fails).
        if all(p[:1] == b"{" and b"\n" not in p for p in payloads):
            try:
                ticks = _SINGLE_TICK_LINES.decode_lines(b"\n".join(payloads))
            except DECODE_ERRORS:
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
        self._log.warning(
            MALFORMED, "malformed payload dropped", count, topic=topic, error=error[:200]
        )
