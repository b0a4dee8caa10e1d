"""What waits between the pipeline and the publisher: changed series, audit and close
records, tick receipts and QoS 1 packet ids waiting for a durable checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamer.engine import AuditRecord
from streamer.engine.funds import NavRecord
from streamer.engine.results import CloseRecord

log = logging.getLogger("streamer.publish")

# What a cycle writes once by close time: an index series' official close (P:closes:S) or a
# fund's official NAV (P:navs:F).
OfficialRecord = CloseRecord | NavRecord

DurableAck = int  # a packet id tagged with its connection (see ingest.inbox)

# Audit and close records are kept across a Redis outage (unlike levels, which are simply
# republished); past this many the oldest are dropped and logged.
MAX_PENDING_AUDIT = 10_000
# Latency samples waiting for the next acknowledgement (one per tick receipt).
MAX_PENDING_RECEIPTS = 200_000


@dataclass(slots=True)
class Outbox:
    """What changed since the last publish cycle, and what waits for a durable checkpoint."""

    dirty: set[str] = field(default_factory=set)
    audit: list[AuditRecord] = field(default_factory=list)
    closes: list[OfficialRecord] = field(default_factory=list)
    receipts: list[int] = field(default_factory=list)
    durable_acks: list[DurableAck] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    funds: set[str] = field(default_factory=set)  # funds whose figures changed

    def add(
        self,
        changed: Iterable[str],
        audit: Sequence[AuditRecord] = (),
        receipts: Sequence[int] = (),
        closes: Sequence[OfficialRecord] = (),
        funds: Iterable[str] = (),
    ) -> None:
        before = len(self.dirty) + len(self.audit) + len(self.closes) + len(self.funds)
        self.dirty.update(changed)
        self.funds.update(funds)
        if audit:
            self.audit.extend(audit)
            _bound(self.audit, "audit records")
        if closes:
            self.closes.extend(closes)
            _bound(self.closes, "close records")
        if receipts and len(self.receipts) < MAX_PENDING_RECEIPTS:
            self.receipts.extend(receipts)
        if len(self.dirty) + len(self.audit) + len(self.closes) + len(self.funds) > before:
            self.event.set()

    def await_durable(self, acks: Iterable[DurableAck]) -> None:
        """Packet ids to acknowledge once a checkpoint taken after now is durable."""
        before = len(self.durable_acks)
        self.durable_acks.extend(acks)
        if len(self.durable_acks) > before:
            self.event.set()

    def take(self) -> tuple[set[str], list[AuditRecord], list[OfficialRecord], list[int]]:
        taken = (self.dirty, self.audit, self.closes, self.receipts)
        self.dirty, self.audit, self.closes, self.receipts = set(), [], [], []
        self.event.clear()
        return taken

    def take_funds(self) -> set[str]:
        funds, self.funds = self.funds, set()
        return funds

    def take_durable_acks(self) -> list[DurableAck]:
        acks, self.durable_acks = self.durable_acks, []
        return acks

    def drop_levels(self) -> None:
        """A standby's cycle: the changed series and their latency samples go (the leader
        publishes them); audit and close records stay, for the day it leads (written once
        by id whoever writes them first), the oldest past a bound."""
        self.dirty, self.receipts, self.funds = set(), [], set()
        for records in (self.audit, self.closes):
            if len(records) > MAX_PENDING_AUDIT:
                del records[: len(records) - MAX_PENDING_AUDIT]
        self.event.clear()

    def restore(
        self,
        audit: list[AuditRecord],
        closes: list[OfficialRecord],
        acks: list[DurableAck],
    ) -> None:
        """Put back what a failed cycle was carrying, ahead of newer entries."""
        self.audit[:0] = audit
        self.closes[:0] = closes
        self.durable_acks[:0] = acks


def _bound(records: list[Any], what: str) -> None:
    if len(records) > MAX_PENDING_AUDIT:
        dropped = len(records) - MAX_PENDING_AUDIT
        del records[:dropped]
        log.error(f"{what} dropped", extra={"fields": {"count": dropped}})
