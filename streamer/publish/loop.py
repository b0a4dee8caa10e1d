"""The publish loop: decides when to publish and what, holds or takes the writer lease, and
rides out Redis outages.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import hiredis
import numpy as np

from streamer.backoff import Backoff, reraise_if_cancelled
from streamer.engine import AuditRecord, LevelColumns
from streamer.engine.funds import FundLevel
from streamer.fund_outputs import InavSchedule
from streamer.lease import ROLES, LeaseState, Role
from streamer.metrics import Metrics
from streamer.persistence.checkpoint import Blobs, Checkpoints
from streamer.publish.outbox import DurableAck, OfficialRecord, Outbox
from streamer.publish.policy import RateCap
from streamer.publish.writer import (
    ACK_TIMEOUT_S,
    CHECKPOINT_WRITTEN,
    FencedError,
    PublishError,
    RedisPublisher,
    Sent,
)
from streamer.redis_pipe import PipeError, Reply, ReplyError

log = logging.getLogger("streamer.publish")

FundLevelSource = Callable[[Iterable[str] | None], list[FundLevel]]

# With nothing to publish, Redis is pinged this often to notice a restart.
IDLE_PROBE_S = 1.0
# Publish cycles written and not yet acknowledged, at most.  Two keep Redis busy while the
# next cycle is built; more would only queue in Redis while changes could be conflating here.
PIPELINE_DEPTH = 2

# While Redis is unreachable or refuses writes, a reminder is logged this often.
REMINDER_S = 60.0

RedisState = Literal["connected", "unreachable", "refusing_writes"]
REDIS_STATES: tuple[RedisState, ...] = ("connected", "unreachable", "refusing_writes")


LevelSource = Callable[[Iterable[str] | None], LevelColumns]
DirectorySource = Callable[[], dict[str, bytes]]


@dataclass(slots=True)
class InFlight:
    """A cycle written to Redis and not yet acknowledged."""

    sent: Sent
    levels: LevelColumns
    audit: list[AuditRecord]
    closes: list[OfficialRecord]
    receipts: list[int]
    checkpoint: Blobs | None
    durable_acks: list[DurableAck]

    @property
    def done(self) -> bool:
        return self.sent.acks[-1].done()


class PublishLoop:
    """Decides when to publish and what, and rides out Redis outages.

    ``interval_ms == 0``: every series that changed, once per micro-batch (and at most once
    per ``min_interval_ms`` each).  A cycle is written as soon as it is ready, up to
    PIPELINE_DEPTH unacknowledged ones (Redis applies them in order); beyond that, changes
    accumulate in the outbox and go out together (conflated).  ``interval_ms > 0``: every
    series with a level on a fixed timer, as official indices disseminate.

    Redis is in one of three states, each change logged once (and a reminder a minute while
    it lasts): connected; unreachable (connection refused or lost: probe with backoff, then
    publish every series' latest level once, no backlog replay); refusing writes (an error
    reply, e.g. OOM or READONLY: retry with backoff, never in a hot loop).  Audit and close
    records and packet ids awaiting durability of failed cycles are kept.
    """

    def __init__(
        self,
        publisher: RedisPublisher,
        levels: LevelSource,
        outbox: Outbox,
        metrics: Metrics,
        *,
        interval_ms: int = 0,
        min_interval_ms: int = 0,
        clock: Callable[[], int] = time.time_ns,
        backoff: Backoff | None = None,
        checkpoints: Checkpoints | None = None,
        on_durable: Callable[[list[DurableAck]], None] | None = None,
        directory: DirectorySource | None = None,
        lease: LeaseState | None = None,
        fund_levels: FundLevelSource | None = None,
        inav_intervals_ms: dict[str, int] | None = None,
    ) -> None:
        self.publisher = publisher
        self._fund_levels = fund_levels
        self.inav = InavSchedule(inav_intervals_ms or {})
        self._levels = levels
        self.lease = lease  # None: the only writer, no lease
        self.outbox = outbox
        self._metrics = metrics
        self.interval_s = interval_ms / 1000.0
        self.cap = RateCap(min_interval_ms * 1_000_000)
        self._clock = clock
        self._backoff = backoff or Backoff(base_s=0.05, cap_s=2.0)
        self._refusal_backoff = Backoff(base_s=0.1, cap_s=5.0)
        self.checkpoints = checkpoints or Checkpoints()
        self._on_durable = on_durable or (lambda acks: None)
        self._directory = directory
        self._directory_due = directory is not None
        self._directory_pruned = False
        self.connected = False
        self.state: RedisState = "unreachable"
        self.problem = "redis not connected yet"
        self._state_since = self._reminded = time.monotonic()
        self._retry_at = 0.0  # after a refusal: no cycle before this (loop time)
        self.cycles = 0
        self._resync = True  # the first cycle publishes everything known
        self._in_flight: deque[InFlight] = deque()
        self._set_state("unreachable", "not connected yet", quiet=True)
        self.role: Role = "leader" if lease is None else "standby"
        self._show_role()

    def directory_changed(self) -> None:
        """The directory of series changed (members added or deleted): write it again."""
        if self._directory is not None:
            self._directory_due = True
            self.outbox.event.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if not self.connected or not self.publisher.is_open:
                # A lost connection means Redis may have restarted (and lost every key):
                # reconnecting always republishes everything.
                await self._reconnect()
                await self.cycle(everything=True)  # the latest levels, no backlog
                continue
            if self._retry_at > loop.time():
                await asyncio.sleep(self._retry_at - loop.time())
                await self.cycle(everything=True)
                continue
            if self.interval_s > 0:
                next_at += self.interval_s
                delay = next_at - loop.time()
                if delay < 0:  # fell behind (e.g. an outage): skip missed ticks, keep the phase
                    next_at += math.ceil(-delay / self.interval_s) * self.interval_s
                    delay = next_at - loop.time()
                await asyncio.sleep(delay)
                await self.cycle(everything=True)
                continue
            if len(self._in_flight) >= PIPELINE_DEPTH:
                await self._await_oldest()
                continue
            wait = IDLE_PROBE_S
            due = self.cap.next_due_ns()
            if due is not None:  # a capped series goes out when its interval has passed
                wait = min(wait, max(0.0, (due - self._clock()) / 1e9))
            inav_due = self.inav.next_due_ns()
            if inav_due is not None:  # a fund's iNAV timer
                wait = min(wait, max(0.0, (inav_due - self._clock()) / 1e9))
            try:
                if not self.outbox.event.is_set():  # often already set: skip the timer setup
                    async with asyncio.timeout(wait):
                        await self.outbox.event.wait()
            except TimeoutError:
                if self._in_flight:
                    if wait >= IDLE_PROBE_S:
                        await self._await_oldest()  # still unanswered after a second
                    continue
                if not await self._start_cycle() and wait >= IDLE_PROBE_S:
                    await self._probe()  # a checkpoint may have been due meanwhile
                continue
            if self.connected:
                await self._start_cycle()

    async def cycle(self, everything: bool = False, force_checkpoint: bool = False) -> bool:
        """Publish what is due now and wait until Redis has acknowledged it (and every cycle
        before it); False when Redis failed (the loop then reconnects or backs off)."""
        await self._start_cycle(everything, force_checkpoint=force_checkpoint)
        while self._in_flight and self.connected:
            await self._await_oldest()
        return self.connected and self.state == "connected" and self.role == "leader"

    async def _start_cycle(self, everything: bool = False, force_checkpoint: bool = False) -> bool:
        """Build and send one cycle; False when there was nothing to send."""
        if self.role == "standby":
            self._stand_by()
            return False
        if not self.publisher.sequences_loaded:
            await self._load_sequences()
        if not self.publisher.is_open and not (everything or self._resync):
            # Lost since the last cycle (Redis may have restarted): reconnect, then resync.
            self._failed([], [], [], PublishError("connection lost"))
            return True
        dirty, audit, closes, receipts = self.outbox.take()
        acks = self.outbox.take_durable_acks()
        everything = everything or self._resync
        now = self._clock()
        if not everything:
            dirty = self.cap.due(dirty, now)
        # The levels and the checkpoint are read at the same moment: a checkpoint is never
        # older than a level it goes out with.
        levels = self._levels(None if everything else dirty)
        if everything:
            self.cap.published_all(levels.series, now)
        funds = self._due_funds(everything, now)
        checkpoint = self.checkpoints.take(force=force_checkpoint or bool(acks) or bool(audit))
        directory = None
        # The directory when it changed, and after a resync (Redis may have lost it); not on
        # every timer cycle of interval mode.
        if self._directory is not None and (self._directory_due or self._resync):
            directory = self._directory()
            self._directory_due = False
        if (
            not levels
            and not funds
            and not audit
            and not closes
            and checkpoint is None
            and directory is None
        ):
            if acks:
                self.outbox.durable_acks[:0] = acks  # nothing made them durable yet
            return False
        try:
            if checkpoint is not None and not self.checkpoints.inline:
                await self.checkpoints.write(checkpoint)
                self.checkpoints.committed(checkpoint)
                self._on_durable(acks)
                acks, checkpoint = [], None
            sent = await self.publisher.send(levels, audit, closes, checkpoint, directory, funds)
        except asyncio.CancelledError:
            # Stopped mid-cycle (shutdown): the final cycle must still write these records.
            self.outbox.restore(audit, closes, acks)
            raise
        except FencedError as exc:
            self._lost_lease(str(exc))
            self._stand_by(acks)
            return True
        except PublishError as exc:
            self._directory_due = directory is not None or self._directory_due
            self._failed(audit, closes, acks, exc)
            return True
        except OSError as exc:  # the directory store could not write
            self._checkpoint_failed(exc)
            self.outbox.restore(audit, closes, acks)
            self._resync = True
            return True
        self._resync = False
        cycle = InFlight(sent, levels, audit, closes, receipts, checkpoint, acks)
        self._in_flight.append(cycle)
        sent.acks[-1].add_done_callback(self._settle)
        return True

    def _due_funds(self, everything: bool, now: int) -> list[FundLevel]:
        """The funds whose iNAV goes out in this cycle (see InavSchedule)."""
        changed = self.outbox.take_funds()
        if self._fund_levels is None:
            return []
        due = self.inav.due(changed, now, everything)
        return self._fund_levels(due) if due else []

    def _settle(self, _: object = None) -> None:
        """Account for every acknowledged cycle, oldest first (acks arrive in order)."""
        in_flight = self._in_flight
        while in_flight and in_flight[0].done:
            cycle = in_flight.popleft()
            errors = [_failure(ack) for ack in cycle.sent.acks]
            error = next((e for e in errors if e is not None), None)
            if isinstance(error, ReplyError):
                # Refused (its first transaction at least); the connection stands.
                self._refused(cycle, error)
                continue
            if error is not None:
                # The pipe fails all its cycles at once: these are every one still in flight.
                failed = [cycle, *in_flight]
                in_flight.clear()
                for other in failed:  # retrieve every failure: none is left unobserved
                    for ack in other.sent.acks:
                        _failure(ack)
                self._failed(
                    [r for c in failed for r in c.audit],
                    [r for c in failed for r in c.closes],
                    [a for c in failed for a in c.durable_acks],
                    error,
                )
                return
            self._acknowledged(cycle, [ack.result() for ack in cycle.sent.acks])

    def _acknowledged(self, cycle: InFlight, replies: list[Reply]) -> None:
        if self.lease is not None and any(r.value is None for r in replies[cycle.sent.first :]):
            # An EXEC refused: the lease changed between our WATCH and it.
            self._lost_lease("a transaction was refused: the writer lease changed")
            self._stand_by(cycle.durable_acks)
            return
        self.connected = True
        self._set_state("connected", "")
        self._refusal_backoff.reset()
        self.cycles += 1
        for reply in replies:
            self._count_exec_errors(reply.value)
        if cycle.checkpoint is not None:
            results = replies[cycle.sent.first].value
            state_at = cycle.sent.state_at
            written = (
                isinstance(results, list)
                and 0 <= state_at < len(results)
                and results[state_at] == CHECKPOINT_WRITTEN
            )
            if written:
                self.checkpoints.committed(cycle.checkpoint)
                self._on_durable(cycle.durable_acks)
            else:  # its structure never made it (or a script was missing): send both again
                self.outbox.await_durable(cycle.durable_acks)
        ack_ns = replies[-1].received_ns
        receipts = cycle.receipts
        if len(receipts) > 64:
            # The ticks of one batched message share its receipt time: one sample per message.
            stamps, counts = np.unique(
                np.fromiter(receipts, np.int64, len(receipts)), return_counts=True
            )
            self._metrics.tick_to_publish_samples.add_counted((ack_ns - stamps) / 1e9, counts)
        elif receipts:
            self._metrics.tick_to_publish_samples.add([(ack_ns - r) / 1e9 for r in receipts])

    def _count_exec_errors(self, results: Any) -> None:
        """A command failing inside a transaction (a key of another type written by someone
        else, a script Redis lost) does not fail the others: count it and say so."""
        if not isinstance(results, list):
            return
        errors = [r for r in results if isinstance(r, hiredis.ReplyError)]
        if errors:
            self.publisher.exec_errors += len(errors)
            self._metrics.redis_errors.inc(len(errors))
            log.warning(
                "redis refused commands inside a publish transaction",
                extra={"fields": {"count": len(errors), "first": str(errors[0])[:200]}},
            )
            if any(str(e).startswith("NOSCRIPT") for e in errors):
                self.publisher.abort("script not loaded")  # reconnect: scripts are reloaded

    def _refused(self, cycle: InFlight, error: ReplyError) -> None:
        """Redis refused a cycle (out of memory, a read-only replica, ...): keep what it
        carried, publish everything again once it accepts, and wait before trying."""
        self._metrics.redis_errors.inc()
        self.outbox.restore(cycle.audit, cycle.closes, cycle.durable_acks)
        self._resync = True
        reason = str(error).split("\n", 1)[0][:200]
        delay = self._refusal_backoff.next()
        self._retry_at = asyncio.get_running_loop().time() + delay
        self._set_state("refusing_writes", reason)
        self.outbox.event.set()

    def _failed(
        self,
        audit: list[AuditRecord],
        closes: list[OfficialRecord],
        acks: list[DurableAck],
        error: BaseException,
    ) -> None:
        self._metrics.redis_errors.inc()
        self.outbox.restore(audit, closes, acks)
        # Levels are not queued: the next successful cycle republishes every series.
        self._resync = True
        self.connected = False
        self._set_state("unreachable", str(error)[:200])
        self.outbox.event.set()  # wake the loop: it reconnects

    def _checkpoint_failed(self, error: OSError) -> None:
        self._metrics.checkpoint_errors.inc()
        log.error(
            "checkpoint could not be written",
            extra={"fields": {"error": str(error), "store": "directory"}},
        )

    def _set_state(self, state: RedisState, reason: str, quiet: bool = False) -> None:
        """Log each change of state once, and a reminder while a bad state lasts."""
        now = time.monotonic()
        for name in REDIS_STATES:
            self._metrics.redis_state.labels(name).set(1.0 if name == state else 0.0)
        if state == "connected":
            self.problem = ""
        elif state == "refusing_writes":
            self.problem = f"redis refuses writes: {reason}"
        else:
            self.problem = f"redis not connected: {reason}" if reason else "redis not connected"
        if state == self.state:
            if state != "connected" and now - self._reminded >= REMINDER_S:
                self._reminded = now
                log.warning(
                    "redis still " + state.replace("_", " "),
                    extra={"fields": {"since_s": round(now - self._state_since), "reason": reason}},
                )
            return
        previous, self.state = self.state, state
        self._state_since = self._reminded = now
        if quiet:
            return
        if state == "connected":
            log.info("redis connected", extra={"fields": {"after": previous}})
        elif state == "refusing_writes":
            log.error("redis refuses writes", extra={"fields": {"reason": reason}})
        else:
            log.warning("redis unreachable", extra={"fields": {"reason": reason}})

    async def _await_oldest(self) -> None:
        """Wait for the oldest cycle's acknowledgement; give up on Redis past the timeout."""
        oldest = self._in_flight[0].sent.acks[-1]
        done, _ = await asyncio.wait([oldest], timeout=ACK_TIMEOUT_S)
        if not done:
            self.publisher.abort(f"no reply within {ACK_TIMEOUT_S} s")
        await asyncio.sleep(0)  # the acknowledgement callbacks run before we go on
        self._settle()

    async def _probe(self) -> None:
        # Without changes nothing is written, so a Redis restart (which loses every key) would
        # go unnoticed until the next tick; an idle ping notices it and triggers a resync.
        try:
            if not self.publisher.is_open:
                raise PublishError("connection lost")
            await self.publisher.ping()
        except PublishError as exc:
            self._metrics.redis_errors.inc()
            self.connected = False
            self._set_state("unreachable", str(exc)[:200])

    async def _reconnect(self) -> None:
        while True:
            try:
                await self.publisher.ping()
                if self.role == "leader" and not self.publisher.sequences_loaded:
                    await self.publisher.load_sequences(self._all_series(), self._all_funds())
                if (
                    self.role == "leader"
                    and self._directory is not None
                    and not self._directory_pruned
                ):
                    # Once per run: series a previous config had are no longer listed.
                    pruned = await self.publisher.prune_directory(self._directory())
                    self._directory_pruned = True
                    if pruned:
                        log.info("directory: series no longer configured removed",
                                 extra={"fields": {"count": pruned}})  # fmt: skip
            except PublishError as exc:
                reraise_if_cancelled()
                self._metrics.redis_errors.inc()
                self._set_state("unreachable", str(exc)[:200])
                await asyncio.sleep(self._backoff.next())
                continue
            self._backoff.reset()
            self.connected = True
            self._set_state("connected", "")  # Redis answered; a refusal shows on the cycle
            self._resync = True
            # Ticks that waited out the outage would report its length, not the pipeline's
            # latency; the outage itself shows in streamer_redis_errors_total.
            self.outbox.receipts.clear()
            return

    # ------------------------------------------------------------------ the writer lease

    async def run_lease(self) -> None:
        """Acquire, renew and lose the writer lease (a task beside :meth:`run`)."""
        lease = self.lease
        if lease is None:
            return
        while True:
            now = time.monotonic_ns()
            if lease.value and now >= lease.valid_until:
                self._lost_lease("not renewed in time", refused=False)
            if not lease.due(now):
                await asyncio.sleep((lease.next_attempt - now) / 1e9)
                continue
            try:
                await self._lease_step(lease)
            except PublishError as exc:
                reraise_if_cancelled()
                # Redis unreachable: the publish loop reports it; try again soon, and the
                # lease, if ours, is kept only until its local deadline.
                lease.next_attempt = time.monotonic_ns() + lease.ttl_ns // 10
                log.debug("lease request failed", extra={"fields": {"error": str(exc)[:200]}})

    async def _lease_step(self, lease: LeaseState) -> None:
        ttl_ms = lease.ttl_ns // 1_000_000
        sent_at = time.monotonic_ns()
        if lease.value:
            if await self.publisher.renew_lease(lease.value, ttl_ms):
                lease.renewed(sent_at)
            else:
                self._lost_lease("taken by another replica")
            return
        epoch, value, remaining_ms = await self.publisher.acquire_lease(lease.holder, ttl_ms)
        if not epoch:
            lease.refused(value.decode(errors="replace"), remaining_ms * 1_000_000, sent_at)
            return
        lease.acquired(value, epoch, sent_at)
        self.publisher.fence = value
        self.outbox.event.set()  # audit and close records kept while standing by go out
        # Continue where the last leader left off: its seqs, every series and the directory
        # once, a checkpoint with the structure (its revision numbers are not ours).
        self.publisher.sequences_loaded = False
        self._resync = True
        self._directory_due = self._directory is not None
        self._directory_pruned = False
        self.checkpoints.forget_durable()
        self.role = "leader"
        self._show_role()
        self._metrics.lease_acquired.inc()
        log.info("writer lease acquired: publishing", extra={"fields": {"epoch": epoch}})
        self.outbox.event.set()

    def _lost_lease(self, reason: str, refused: bool = True) -> None:
        """Stand by from now on; ``refused``: Redis refused a write or renewal (counted)."""
        lease = self.lease
        if lease is None or self.role == "standby":
            return
        lease.lost()  # publisher.fence stays: any stray write is refused by Redis
        self.role = "standby"
        self._show_role()
        if refused:
            self._metrics.lease_refusals.inc()
        log.warning("writer lease lost: standing by", extra={"fields": {"reason": reason}})

    def _stand_by(self, acks: Iterable[DurableAck] = ()) -> None:
        """A standby keeps computing and writes nothing: what would be published is dropped
        (the leader publishes it), and QoS 1 messages are acknowledged at once (the leader's
        own session holds them until its checkpoint does)."""
        self.outbox.drop_levels()
        self._on_durable([*acks, *self.outbox.take_durable_acks()])
        for cycle in self._in_flight:
            self._on_durable(cycle.durable_acks)
        self._in_flight.clear()

    def _show_role(self) -> None:
        for role in ROLES:
            self._metrics.role.labels(role).set(1.0 if role == self.role else 0.0)

    async def _load_sequences(self) -> None:
        try:
            await self.publisher.load_sequences(self._all_series(), self._all_funds())
        except PublishError as exc:
            self._failed([], [], [], exc)

    async def release_lease(self) -> None:
        """At a clean shutdown, after the final cycle: a standby takes over at once."""
        lease = self.lease
        if lease is None or not lease.value:
            return
        value = lease.value
        self._lost_lease("released at shutdown", refused=False)
        await self.publisher.release_lease(value)

    def _all_funds(self) -> list[str]:
        return [] if self._fund_levels is None else [f.fund for f in self._fund_levels(None)]

    def _all_series(self) -> list[str]:
        return self._levels(None).series


def _failure(ack: asyncio.Future[Reply]) -> BaseException | None:
    """The exception an acknowledgement failed with (retrieved, so never left unobserved)."""
    if not ack.done():
        return None
    if ack.cancelled():
        return PipeError("cancelled")
    return ack.exception()
