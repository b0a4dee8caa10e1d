"""One step from raw messages to changed series: decode -> engine -> outbox, with no I/O.

The live service, ``streamer calc`` and a restore all run messages through
:meth:`Pipeline.step` (kdb+ tick replays its log through the same ``upd`` it runs live), so
an offline run computes exactly what the service published.  What a step did comes back as
a :class:`Step`: the engine's result, what was refused before the engine, and which QoS 1
packet ids to acknowledge now and which only once the step's actions are durable.

The market clock: with ``clock = "wall"`` it is each batch's receipt time; with ``"data"`` it
follows the newest accepted tick (a replayed day opens, closes and goes stale as it did), and
a far-future stamp cannot move it since such a tick is refused against its receipt time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from streamer.engine import BatchResult, Engine
from streamer.ingest import Inbound, MessageRouter, TickQueue
from streamer.logs import ThrottledLog
from streamer.mqtt.codec import RawMessage
from streamer.publish import Outbox
from streamer.wire import Tick

ClockMode = Literal["wall", "data"]


@dataclass(slots=True)
class Step:
    """What one pipeline step did."""

    result: BatchResult | None = None  # None: nothing reached the engine
    rejected: Counter[str] = field(default_factory=Counter)  # refused before the engine
    conflated: int = 0  # ticks the queue dropped for a newer one of the same symbol
    ticks: list[Tick] = field(default_factory=list)  # applied, with their receipt times
    receipts: list[int] = field(default_factory=list)
    acks_now: list[int] = field(default_factory=list)  # packet ids to acknowledge now
    acks_durable: list[int] = field(default_factory=list)  # ... once the step is durable


class Pipeline:
    """Decodes, queues and applies messages to the engine; adds what changed to the outbox."""

    def __init__(
        self,
        engine: Engine,
        outbox: Outbox,
        *,
        queue_max: int = 200_000,
        batch_max: int = 20_000,
        clock: ClockMode = "wall",
        bad_input_log: ThrottledLog | None = None,
        market_now: int = 0,
    ) -> None:
        self.engine = engine
        self.outbox = outbox
        self.router = MessageRouter(bad_input_log)
        self.queue = TickQueue(queue_max)
        self.batch_max = batch_max
        self.clock = clock
        # The market time of the last step (data clock: the newest accepted tick; 0 before
        # any data).
        self.market_now = market_now
        self.ticks_applied = 0

    def __len__(self) -> int:
        """Ticks decoded and waiting for the engine."""
        return len(self.queue)

    def step(self, raw: list[RawMessage], wall_ns: int) -> Step:
        """Apply ``raw`` (and up to ``batch_max`` queued ticks), received by ``wall_ns``."""
        step = Step()
        inbound = self.router.decode(raw)
        step.rejected = inbound.rejected
        step.acks_now = inbound.acks
        # A QoS 1 tick, rate or reference level is acknowledged once the state it went into
        # is durable, so that a crash before then gets it redelivered: nothing a QoS 1 feed
        # sent is lost (QoS 0 ticks since the last checkpoint may be, by design).
        step.acks_durable = inbound.durable_acks
        if inbound.ticks:
            self.queue.extend(inbound.ticks, inbound.tick_receipts)
        ticks, receipts = self.queue.take(self.batch_max)
        step.conflated = self.queue.take_conflated()
        if not (ticks or inbound.fx or inbound.actions or inbound.references):
            return step
        # Receipts are in arrival order: the last is the newest.
        received = receipts[-1] if receipts else (inbound.newest_receipt_ns or wall_ns)
        now = self._market_time(received, ticks, inbound)
        result = self.engine.apply(
            ticks=ticks,
            fx=inbound.fx,
            actions=inbound.actions,
            references=inbound.references,
            now=now,
            received_ns=received,
        )
        if self.clock == "data" and result.newest_ts > self.market_now:
            self.market_now = result.newest_ts
        step.result = result
        step.ticks, step.receipts = ticks, receipts
        self.ticks_applied += len(ticks)
        self._sort_acks(inbound, result, step)
        self._to_outbox(result, receipts)
        return step

    def advance(self, wall_ns: int) -> BatchResult:
        """Fire what is due now (actions, closes) and republish series whose staleness
        moved: on a timer, so that time passes even when no message comes."""
        now = wall_ns if self.clock == "wall" else self.market_now
        if now <= 0:
            return BatchResult()
        if self.clock == "wall":
            self.market_now = max(self.market_now, now)
        result = self.engine.advance(now)
        self._to_outbox(result, [])
        return result

    def recompute(self) -> float:
        """Replace the incremental sums by exact ones; the corrected series are republished
        by the next advance."""
        return self.engine.recompute()

    def _market_time(self, received: int, ticks: list[Tick], inbound: Inbound) -> int:
        if self.clock == "wall":
            self.market_now = max(self.market_now, received)
            return received
        if self.market_now <= 0:
            # The first data of a replay: start where it starts, not at the epoch.
            stamps = [t.ts for t in ticks if t.ts is not None and t.ts <= received]
            stamps += [r.ts for r in inbound.fx if r.ts is not None and r.ts <= received]
            stamps += [a.effective for a in inbound.actions if a.effective is not None]
            if stamps:
                self.market_now = min(stamps)
        return self.market_now if self.market_now > 0 else received

    def _sort_acks(self, inbound: Inbound, result: BatchResult, step: Step) -> None:
        """A message that brought an accepted action is acknowledged once that is durable;
        every other one now (a redelivered duplicate, a refused action: nothing to keep)."""
        if not inbound.actions:
            return
        accepted = set(result.accepted_actions)
        durable = {
            ack
            for action, ack in zip(inbound.actions, inbound.action_acks, strict=True)
            if ack and action.id in accepted
        }
        step.acks_durable.extend(durable)
        step.acks_now.extend({ack for ack in inbound.action_acks if ack and ack not in durable})

    def _to_outbox(self, result: BatchResult, receipts: list[int]) -> None:
        if result.changed or result.audit or result.closes or result.navs or result.funds_changed:
            self.outbox.add(
                result.changed,
                result.audit,
                receipts if result.changed else (),
                [*result.closes, *result.navs] if result.navs else result.closes,
                funds=result.funds_changed,
            )
