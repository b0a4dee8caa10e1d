"""The live service: one asyncio.TaskGroup owns every loop.

    restore     before anything else: the stored state (or the config, the first time)
    mqtt        broker connection -> RawInbox (reconnects with jittered backoff)
    ingest      RawInbox -> Pipeline.step (decode, engine, outbox), per micro-batch
    publish     Outbox -> one Redis script call per cycle, pipelined, with checkpoints
    timers      due actions and closes, staleness, gauges, metric flush, full recompute
    http        /metrics, /healthz, /readyz on [metrics].listen

SIGINT/SIGTERM: stop intake, apply what was received, publish every level once with a final
checkpoint, disconnect, return within the shutdown deadline; a second signal abandons the
drain.  A task that fails ends the process (exit 1, one log line naming it); a watchdog
thread exits the process if stopping ever takes longer than the deadline, so no loop that
swallows its cancellation can hang it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from streamer.backoff import Backoff, reraise_if_cancelled
from streamer.config import Settings, redact_url
from streamer.endpoints import parse_listen_address, parse_redis_url
from streamer.engine import BatchResult, Engine, LevelColumns
from streamer.engine.funds import FundLevel
from streamer.engine.snapshot import Identity, identities, restore
from streamer.errors import StateError, StreamerError
from streamer.fund_metrics import render as render_fund_metrics
from streamer.fund_outputs import fund_directory
from streamer.ingest import CONFLATED, INBOX_FULL, RawInbox
from streamer.ingest.transport import MqttIngest
from streamer.keys import key_layout
from streamer.lease import LeaseState
from streamer.logs import ThrottledLog
from streamer.metrics import Metrics
from streamer.outputs import directory
from streamer.persistence.checkpoint import (
    Checkpointer,
    Checkpoints,
    InlineCheckpoints,
    WrittenCheckpoints,
)
from streamer.persistence.stores import READ_STATE_LUA, DirectoryStore, Stored, parse_redis_state
from streamer.pipeline import Pipeline, Step
from streamer.publish import Outbox, PublishLoop, RedisPublisher, history_policy
from streamer.redis_clients import SlotRouter, async_client
from streamer.series_metrics import SeriesMetrics
from streamer.sessions import session_rules
from streamer.topics import TICK_WILDCARDS, receives_any_symbol, subscriptions, tick_topic

log = logging.getLogger("streamer.service")
input_log = logging.getLogger("streamer.input")

SHUTDOWN_DEADLINE_S = 4.0
# The watchdog ends the process this long after a stop began, whatever is still running.
WATCHDOG_GRACE_S = 2.0
ADVANCE_INTERVAL_S = 0.1
GAUGE_REFRESH_S = 1.0
# /metrics pages are written in slices of this size, the event loop free between them.
HTTP_WRITE_SLICE = 64 * 1024
# At most this many raw messages are decoded per step, so one step never holds the loop long.
STEP_MESSAGES = 50_000
# Feed delay is a distribution: past this many ticks per batch it is estimated from a sample.
FEED_DELAY_SAMPLE = 64
# Seq resets are logged one line per symbol, up to this many per step.
MAX_RESET_LINES = 20
EXIT_FAILED = 1
# Actions that change which symbols an index or fund holds (the directory, the subscriptions).
MEMBERSHIP_ACTIONS = frozenset({"add", "delete", "rebalance", "basket"})
# Why an action a shard cannot apply is for another shard (all shards receive every action).
NOT_IN_SHARD = frozenset({"unknown_index", "unknown_symbol", "unknown_fund"})


class ServiceFailedError(StreamerError):
    """A task of the service failed; the message names it."""


class StandbyDivergedError(ServiceFailedError):
    """A standby missed messages the leader applied (its broker session was lost)."""


class Service:
    """Wires ingestion, the engine, publishing, checkpoints and metrics for one config."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], int] = time.time_ns,
        handle_signals: bool = True,
        freeze_heap: bool = False,
        reset_indices: Iterable[str] = (),
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.handle_signals = handle_signals
        self.freeze_heap = freeze_heap
        self.reset_indices = frozenset(reset_indices)
        self.metrics = Metrics(registry)
        self.sessions = session_rules(settings)
        # The engine and its pipeline are made by the restore (see `engine`): from the stored
        # state on a restart, from the config the first time.
        self._engine_in_use: Engine | None = None
        self._pipeline_in_use: Pipeline | None = None
        self._identities_once: list[Identity] | None = None
        self.series_metrics = SeriesMetrics(
            [sid for d in settings.indices for sid in d.series_ids()], settings.metrics.series
        )
        self.inbox = RawInbox(settings.mqtt.max_payload_bytes, clock)
        self._bad_input = ThrottledLog(input_log)
        self.outbox = Outbox()
        self.redis = async_client(settings.redis)
        endpoint = parse_redis_url(settings.redis.url, settings.redis.password)
        self.publisher = RedisPublisher(
            endpoint,
            key_layout(settings),
            settings.redis.actions_maxlen,
            clock,
            history_policy(settings.publish).for_series(
                sum(len(d.variants) for d in settings.indices) + len(settings.funds)
            ),
            router=SlotRouter(endpoint) if settings.redis.cluster else None,
        )
        state = settings.state
        self.directory = DirectoryStore(state.directory) if state.store == "directory" else None
        self.restored = False
        self._own_checkpoint = True
        self.restoring = True
        self.checkpoints: Checkpoints = Checkpoints()
        self.checkpointer: Checkpointer | None = None
        self.mqtt = MqttIngest(settings.mqtt, self.inbox, self.metrics)
        self.publish_loop = self._publish_loop()
        self.metrics.queue_depth.set_function(self._queue_depth)
        self._stop: asyncio.Event | None = None
        self._abandon = False
        self._failure: BaseException | None = None
        self._watchdog: threading.Timer | None = None
        self._newest_applied = 0  # ts of the newest tick applied (for the ingest lag)
        self.http_port: int | None = None
        self._fund_metrics_text = b""  # per-fund gauges as rendered last (streamer.fund_metrics)
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ construction

    @property
    def engine(self) -> Engine:
        """The engine in use.  The restore sets it; asked for before that (an in-process caller
        of a service not run), it is the config's.  Built once: at 10,000 indices an engine
        takes most of a second, and a restart used to build the config's only to replace it."""
        if self._engine_in_use is None:
            self._engine_in_use = self._engine()
        return self._engine_in_use

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline_in_use is None:
            self._pipeline_in_use = self._pipeline(0)
        return self._pipeline_in_use

    def _queue_depth(self) -> int:
        pipeline = self._pipeline_in_use  # none while restoring: nothing queued past the inbox
        return (len(pipeline) if pipeline is not None else 0) + len(self.inbox)

    def _identities(self) -> list[Identity]:
        """The definitions' identities, for the restore and the checkpoints: computed once
        (10,000 fingerprints take 0.1 s)."""
        if self._identities_once is None:
            self._identities_once = identities(self.settings.indices)
        return self._identities_once

    def _engine(self, **restored: Any) -> Engine:
        s = self.settings
        wall = s.session.clock == "wall"
        return Engine(
            s.indices,
            s.quality,
            sessions=self.sessions,
            start_ns=self.clock() if wall else 0,
            max_pending=s.control.max_pending,
            id_retention_ns=int(s.control.id_retention_days * 86_400e9),
            funds=s.funds,
            **restored,
        )

    def _pipeline(self, market_now: int) -> Pipeline:
        ingest = self.settings.ingest
        return Pipeline(
            self.engine,
            self.outbox,
            queue_max=ingest.queue_max,
            batch_max=ingest.batch_max,
            clock=self.settings.session.clock,
            bad_input_log=self._bad_input,
            market_now=market_now,
        )

    def _publish_loop(self) -> PublishLoop:
        return PublishLoop(
            self.publisher,
            self._levels,
            self.outbox,
            self.metrics,
            interval_ms=self.settings.publish.interval_ms,
            min_interval_ms=self.settings.publish.min_interval_ms,
            clock=self.clock,
            checkpoints=self.checkpoints,
            on_durable=self.mqtt_ack,
            directory=self._directory,
            lease=self._lease(),
            fund_levels=self._fund_levels if self.settings.funds else None,
            inav_intervals_ms={f.id: f.inav_interval_ms for f in self.settings.funds},
        )

    def _lease(self) -> LeaseState | None:
        """The shard's writer lease, held under this replica's MQTT client id (unique per
        replica: its broker session is its own); with the Redis state store only."""
        s = self.settings
        if s.shard.lease_ttl_s <= 0 or s.state.store != "redis":
            return None
        return LeaseState(holder=s.mqtt.client_id, ttl_ns=int(s.shard.lease_ttl_s * 1e9))

    def _directory(self) -> dict[str, bytes]:
        engine = self.engine
        entries = directory(
            engine.definitions,
            engine.member_counts(),
            engine.calendar_of,
            self.publisher.keys,
        )
        if self.settings.funds:
            entries.update(
                fund_directory(self.settings.funds, engine.fund_holdings(), self.publisher.keys)
            )
        return entries

    def _fund_levels(self, funds: Iterable[str] | None) -> list[FundLevel]:
        return self.engine.fund_levels(funds, now=self.market_time())

    def _levels(self, series: Iterable[str] | None) -> LevelColumns:
        return self.engine.level_columns(series, now=self.market_time())

    def market_time(self) -> int:
        """The market clock: the wall clock, or (data clock) the newest data."""
        if self.settings.session.clock == "wall":
            return self.clock()
        return self.pipeline.market_now

    def mqtt_ack(self, acks: list[int]) -> None:
        if acks:
            self.mqtt.ack(acks)

    # ------------------------------------------------------------------ restore

    async def _restore(self) -> None:
        """Continue from the stored state, reconciled with the config (see engine.snapshot);
        the first time, or with no store, start from the config."""
        state = self.settings.state
        if state.store == "none":
            log.warning(
                "no state store ([state] store = none): a restart starts again from the config"
            )
        else:
            stored = await self._read_stored()
            if stored is None:
                log.info("no stored state: starting from the config")
            else:
                self._continue_from(stored)
        self._wire()
        self.restoring = False

    def _continue_from(self, stored: Stored) -> None:
        s = self.settings
        wall = s.session.clock == "wall"
        start = self.clock() if wall else (stored.meta.market_now if stored.meta else 0)
        state, report = restore(
            stored.snapshot,
            s.indices,
            sessions=self.sessions,
            reset=self.reset_indices,
            start_ns=start,
            funds=s.funds,
            identities=self._identities(),
        )
        self._engine_in_use = self._engine(state=state)
        if not wall:
            self._engine_in_use.now = start
        self._pipeline_in_use = self._pipeline(start if not wall else 0)
        self.restored = True
        meta = stored.meta
        # Our broker session is expected back only if we wrote what we restored (or an older
        # checkpoint does not say who did).
        self._own_checkpoint = meta is None or meta.writer in ("", s.mqtt.client_id)
        log.info(
            "state restored",
            extra={
                "fields": {
                    "indices_kept": len(report.kept),
                    "indices_new": len(report.fresh),
                    "indices_reset": ",".join(report.reset),
                    "indices_dropped": len(report.dropped),
                    "pending_actions": self.engine.pending_actions,
                    "bytes": stored.size_bytes,
                    "age_s": round((self.clock() - meta.taken_ns) / 1e9, 1) if meta else None,
                }
            },
        )
        for index_id in report.dropped:
            log.warning(
                "index dropped: it is in the stored state but no longer in the config",
                extra={"fields": {"index": index_id}},
            )

    async def _read_stored(self) -> Stored | None:
        if self.directory is not None:
            return await asyncio.to_thread(self.directory.read)
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        keys = self.publisher.keys.state_keys()
        waiting_since: float | None = None
        while True:
            try:
                reply = await self.redis.eval(READ_STATE_LUA, 3, *keys[:3])
                return parse_redis_state(reply)
            except (RedisError, OSError) as exc:
                reraise_if_cancelled()
                self.metrics.redis_errors.inc()
                now = time.monotonic()
                if waiting_since is None or now - waiting_since > 60:
                    waiting_since = now
                    log.warning(
                        "waiting for redis to read the stored state (nothing is computed "
                        "before it is read, so no corporate action is ever undone)",
                        extra={"fields": {"error": str(exc)[:200]}},
                    )
                await asyncio.sleep(backoff.next())

    def _wire(self) -> None:
        """Checkpoints, the publish loop and the broker connection for the engine in use."""
        s = self.settings
        if s.state.store != "none":
            self.checkpointer = Checkpointer(
                self.engine.state,
                self._identities(),
                int(s.state.checkpoint_interval_s * 1e9),
                writer=s.mqtt.client_id,
            )
            if self.directory is not None:
                self.checkpoints = WrittenCheckpoints(
                    self.checkpointer,
                    lambda: self.pipeline.market_now,
                    self.directory.write,
                    self.clock,
                )
            else:
                self.checkpoints = InlineCheckpoints(
                    self.checkpointer, lambda: self.pipeline.market_now, self.clock
                )
        self.publish_loop = self._publish_loop()
        self.mqtt.expect_session = self.restored and self._own_checkpoint
        self.mqtt.on_session_lost = self._session_lost
        self._subscribe_constituents()

    def _subscribe_constituents(self) -> None:
        """With [mqtt] tick_topics = "constituents": one ticks/<symbol> per constituent
        (after a restore, and after each add, delete or rebalance); what the symbol book
        still knows but no index holds is unsubscribed (a persistent session keeps filters
        across runs)."""
        m = self.settings.mqtt
        if m.tick_topics != "constituents":
            self.metrics.tick_wildcard.set(receives_any_symbol(m.topics))
            return
        members = self.engine.member_symbols()
        topics, unusable = subscriptions(m.topics, m.tick_topics, members)
        retired = {t for s in self.engine.known_symbols() if s not in members
                   if (t := tick_topic(s)) is not None} | TICK_WILDCARDS  # fmt: skip
        for symbol in unusable:
            self._bad_input.warning(
                "subscription:symbol", "symbol cannot be a topic: its ticks are not received",
                symbol=symbol,
            )  # fmt: skip
        self.mqtt.set_topics(topics, retired)
        self.metrics.tick_wildcard.set(receives_any_symbol(topics))

    def _session_lost(self) -> None:
        """The broker lost our session: messages of the gap may be missing.  A leader goes on
        (what it publishes is the reference; the alert tells operators to check the actions),
        but a standby would lead later from a state the leader's is not: it exits, and its
        restart restores the leader's checkpoint."""
        if self.publish_loop.role != "standby":
            return
        log.error("standby lost its broker session: exiting to restore the leader's state")
        self._failure = self._failure or StandbyDivergedError(
            "standby lost its broker session; a restart restores the leader's checkpoint"
        )
        self.stop()

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the service to shut down (idempotent; a second call abandons the drain)."""
        if self._stop is None:
            return
        if self._stop.is_set():
            self._abandon = True
        self._stop.set()
        self._arm_watchdog(EXIT_FAILED if self._failure else 0)

    def _arm_watchdog(self, code: int) -> None:
        """Exit the process if stopping takes longer than the deadline (a loop that swallowed
        its cancellation, a blocked library call): a service that will not stop is worse
        than one that stops abruptly, and the checkpoints make that safe."""
        if self._watchdog is not None or not self.handle_signals:
            return

        def expire() -> None:
            log.error(
                "shutdown overran its deadline: exiting now",
                extra={"fields": {"deadline_s": SHUTDOWN_DEADLINE_S}},
            )
            logging.shutdown()
            os._exit(code)

        self._watchdog = threading.Timer(SHUTDOWN_DEADLINE_S + WATCHDOG_GRACE_S, expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _watch(self, task: asyncio.Task[None]) -> None:
        """A loop ended on its own: that is a failure (they run forever); stop everything."""
        if task.cancelled() or self._stop is None or self._stop.is_set():
            return
        error = task.exception()
        self._failure = error or ServiceFailedError(f"task {task.get_name()} ended")
        log.error(
            "service task failed: stopping",
            extra={"fields": {"task": task.get_name(), "error": repr(self._failure)[:300]}},
            exc_info=(type(error), error, error.__traceback__) if error else None,
        )
        self.stop()

    async def run(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        server = await self._start_http()
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
        settings = self.settings
        try:
            restoring = asyncio.create_task(self._restore(), name="restore")
            stop_wait = asyncio.create_task(self._stop.wait(), name="stop-wait")
            await asyncio.wait([restoring, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            if not restoring.done():  # stopped while waiting for the store
                restoring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await restoring
                return
            stop_wait.cancel()
            restoring.result()  # a StateError stops the start here
            if self.freeze_heap:
                # The universe, the engine's arrays and the imported modules live as long as
                # the process: out of the collector's way (after the restore, which builds the
                # engine), a collection only walks what is young.
                gc.collect()
                gc.freeze()
            log.info(
                "service started",
                extra={
                    "fields": {
                        "indices": len(settings.indices),
                        "series": len(self.engine.series_ids),
                        "mqtt": redact_url(settings.mqtt.url),
                        "redis": redact_url(settings.redis.url),
                        "metrics": f"{parse_listen_address(settings.metrics.listen).host}:"
                        f"{self.http_port}",
                        "interval_ms": settings.publish.interval_ms,
                        "calendar": settings.session.calendar,
                        "state": settings.state.store,
                        # The history policy in effect: the memory budget may have widened
                        # the configured interval and shortened the bars' retention.
                        "history_interval_ms": self.publisher.history.interval_ms,
                        "bars_retention_s": self.publisher.history.bars_retention_ms / 1000,
                        "series_metrics": self.series_metrics.count,
                    }
                },
            )
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = {
                        name: group.create_task(coro, name=name)
                        for name, coro in self._loops(server).items()
                    }
                    for task in tasks.values():
                        task.add_done_callback(self._watch)
                    self.started.set()
                    await self._stop.wait()
                    await self._shutdown(tasks)
            except ExceptionGroup as group:
                # A task failed: logged by _watch with its traceback; reported below in one
                # line (the exit code says it).
                self._failure = self._failure or group.exceptions[0]
        finally:
            if self.handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            server.close()
            with contextlib.suppress(Exception):
                await self.publisher.close()
                await self.redis.aclose()
        if self._failure is not None:
            raise ServiceFailedError(f"a service task failed: {self._failure!r}"[:300])
        pipeline = self._pipeline_in_use  # none when stopped while restoring
        applied = pipeline.ticks_applied if pipeline is not None else 0
        log.info("service stopped", extra={"fields": {"ticks_applied": applied}})

    def _loops(self, server: asyncio.Server) -> dict[str, Coroutine[Any, Any, None]]:
        loops = {
            "mqtt": self.mqtt.run(),
            "ingest": self._ingest_loop(),
            "publish": self.publish_loop.run(),
            "timers": self._timer_loop(),
            "http": server.serve_forever(),
        }
        if self.publish_loop.lease is not None:
            loops["lease"] = self.publish_loop.run_lease()
        return loops

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_DEADLINE_S
        log.info("service stopping")

        def remaining() -> float:
            return deadline - asyncio.get_running_loop().time()

        async def finish(name: str, budget: float) -> None:
            task = tasks[name]
            task.cancel()
            await asyncio.wait([task], timeout=max(min(budget, remaining()), 0.01))

        await finish("mqtt", 1.5)  # stop intake: unsubscribe and disconnect cleanly
        await finish("ingest", 0.5)
        await finish("timers", 0.2)
        if not self._abandon and self._failure is None:
            while (len(self.inbox) or len(self.pipeline)) and remaining() > 1.0:
                self.step()
        await finish("publish", 0.5)
        if "lease" in tasks:
            await finish("lease", 0.2)  # the lease stays ours for its TTL: the final cycle fits
        if not self._abandon and self._failure is None:
            try:
                async with asyncio.timeout(max(remaining(), 0.1)):
                    if not self.publish_loop.connected:
                        await self.redis.ping()
                    # Final figures from exact sums: they do not depend on batching.
                    self.pipeline.recompute()
                    self._handle(self.pipeline.advance(self.clock()))
                    self.checkpoints.closing = True
                    # The current minute's bars go out with the final cycle, as they stand
                    # (README: "written when the minute is over, and at shutdown"); the
                    # final republish of the same levels does not change them.
                    self.publish_loop.publisher.take_unfinished_bars()
                    published = await self.publish_loop.cycle(
                        everything=True, force_checkpoint=True
                    )
            except Exception as exc:  # the shutdown goes on whatever failed
                published = False
                log.warning("final publish failed", extra={"fields": {"error": str(exc)}})
            if published:
                log.info("final levels and checkpoint written")
            elif self.publish_loop.role == "standby":
                log.info("standby: nothing to write")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(max(remaining(), 0.1)):
                    await self.publish_loop.release_lease()  # a standby takes over at once
        for task in tasks.values():
            task.cancel()

    # ------------------------------------------------------------------ ingest

    async def _ingest_loop(self) -> None:
        while True:
            if len(self.pipeline) or len(self.inbox) > STEP_MESSAGES:
                await asyncio.sleep(0)  # let the reader and the publisher in between batches
            else:
                await self.inbox.wait()
            self.step()

    def step(self) -> Step:
        """One micro-batch: what was received so far (ticks up to ``batch_max``)."""
        raw = self.inbox.take(STEP_MESSAGES)
        step = self.pipeline.step(raw, self.clock())
        rejected = step.rejected
        rejected.update(self.inbox.take_rejected())
        dropped = self.inbox.take_dropped()
        self._ack_now(step.acks_now + self.inbox.take_refused_acks())
        if step.acks_durable:
            if self.checkpoints.enabled:
                self.outbox.await_durable(step.acks_durable)
            else:
                self.mqtt_ack(step.acks_durable)
        outcomes: Counter[tuple[str, str]] = Counter(
            {("rejected", r): n for r, n in rejected.items()}
        )
        if step.conflated:
            outcomes[CONFLATED, "queue_full"] += step.conflated
        if dropped:
            outcomes[CONFLATED, INBOX_FULL] += dropped
            self._bad_input.warning(
                INBOX_FULL, "inbox over its memory bound: oldest ticks dropped", dropped
            )
        if step.conflated:
            self._bad_input.warning(
                CONFLATED,
                "tick queue full, conflated to the latest price per symbol",
                step.conflated,
            )
        if outcomes:
            self.metrics.count_outcomes(outcomes)
        if step.result is not None:
            if step.ticks:
                self.metrics.batch_size_samples.add([len(step.ticks)])
                self._observe_feed_delay(step)
            self._handle(step.result, step)
        return step

    def _ack_now(self, acks: list[int]) -> None:
        if acks:
            self.mqtt.ack(acks)

    def _handle(self, result: BatchResult, step: Step | None = None) -> None:
        """Metrics and logs of one engine result (the outbox was filled by the pipeline)."""
        metrics = self.metrics
        metrics.count_outcomes(result.outcomes)
        if result.newest_ts > self._newest_applied:
            self._newest_applied = result.newest_ts
        for (outcome, reason), count in result.outcomes.items():
            if outcome != "accepted" and count:
                self._log_ticks(outcome, reason, count, step)
        self._count(metrics.references, "accepted", "ok", len(result.deviations))
        for series, reason in result.rejected_references:
            self._count(metrics.references, "rejected", reason)
            self._bad_input.warning(
                f"reference:{reason}", "reference level dropped", series=series, reason=reason
            )
        self._count(metrics.actions, "accepted", "ok", len(result.accepted_actions))
        sharded = bool(self.settings.shard.name)
        for action_id, reason in result.rejected_actions:
            if sharded and reason in NOT_IN_SHARD:
                # Every shard receives every action: one for another shard's index or symbol
                # is not an error here (its own shard applies it).
                self._count(metrics.actions, "ignored", "not_in_shard")
                log.debug("action for another shard", extra={"fields": {"id": action_id}})
                continue
            self._count(metrics.actions, "rejected", reason)
            self._bad_input.warning(
                f"action:{reason}", "action not applied", id=action_id, reason=reason
            )
        applied = set()
        for record in result.audit:
            if record.action_id not in applied:
                applied.add(record.action_id)
                self._count(metrics.actions, "applied", record.action)
            log.info(
                "action applied",
                extra={
                    "fields": {
                        "id": record.action_id,
                        "action": record.action,
                        "index": record.index,
                        "symbol": record.symbol,
                        "divisor_before": record.divisor_before,
                        "divisor_after": record.divisor_after,
                    }
                },
            )
        if any(record.action in MEMBERSHIP_ACTIONS for record in result.audit):
            self.publish_loop.directory_changed()
            self._subscribe_constituents()
        if result.seq_resets:
            metrics.seq_resets.inc(len(result.seq_resets))
            for symbol in result.seq_resets[:MAX_RESET_LINES]:
                input_log.warning(
                    "producer restarted its seq: accepted after a gap",
                    extra={"fields": {"symbol": symbol}},
                )
            if len(result.seq_resets) > MAX_RESET_LINES:
                input_log.warning(
                    "producer restarted its seq: more symbols",
                    extra={"fields": {"count": len(result.seq_resets) - MAX_RESET_LINES}},
                )
        if result.closes:
            sessions = sorted({c.session for c in result.closes})
            for close in result.closes:
                self.series_metrics.closed(close.series, close.close_ns / 1e9)
            log.info(
                "official close taken",
                extra={"fields": {"sessions": ",".join(sessions), "series": len(result.closes)}},
            )

    @staticmethod
    def _count(counter: Any, outcome: str, reason: str, n: int = 1) -> None:
        if n:
            counter.labels(outcome, reason).inc(n)

    def _log_ticks(self, outcome: str, reason: str, count: int, step: Step | None) -> None:
        key = f"{outcome}:{reason}"
        if not self._bad_input.allows(key):
            self._bad_input.warning(key, "ticks not accepted", count)
            return
        example = None
        if reason == "unknown_symbol" and step is not None:
            ids = self.engine.book.ids
            example = next((t.symbol for t in step.ticks if ids[t.symbol] < 0), None)
        self._bad_input.warning(
            key,
            "ticks not accepted",
            count,
            outcome=outcome,
            reason=reason,
            count=count,
            **({"example": example} if example else {}),
        )

    def _observe_feed_delay(self, step: Step) -> None:
        ticks, receipts = step.ticks, step.receipts
        stride = max(1, len(ticks) // FEED_DELAY_SAMPLE)
        delays = [
            (r - t.ts) / 1e9
            for t, r in zip(ticks[::stride], receipts[::stride], strict=True)
            if t.ts
        ]
        self.metrics.feed_delay_samples.add(delays, weight=float(stride))

    # ------------------------------------------------------------------ timers

    async def _timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_gauges = 0.0
        next_recompute = loop.time() + self.settings.ingest.recompute_interval_s
        while True:
            await asyncio.sleep(ADVANCE_INTERVAL_S)
            now = loop.time()
            if now >= next_recompute:
                next_recompute = now + self.settings.ingest.recompute_interval_s
                drift = self.pipeline.recompute()
                self.metrics.sum_drift_ratio.set(self.engine.max_drift)
                if drift > 1e-9:
                    log.warning("index sums drifted", extra={"fields": {"drift_ratio": drift}})
            # Due actions and closes, and series whose staleness moved (a dead feed shows).
            self._handle(self.pipeline.advance(self.clock()))
            if now >= next_gauges:
                next_gauges = now + GAUGE_REFRESH_S
                await self._refresh_gauges()
                self.metrics.flush()

    async def _refresh_gauges(self) -> None:
        # On a timer rather than per publish cycle: Prometheus scrapes every few seconds, and
        # staleness grows without ticks (when nothing is published).
        metrics = self.metrics
        await self.series_metrics.refresh(self.engine.series_table(now=self.market_time()))
        fund_table = self.engine.fund_table()
        if fund_table is not None:
            self._fund_metrics_text = render_fund_metrics(fund_table)
        wall = self.clock()
        if self.settings.session.clock == "wall" and self._newest_applied:
            metrics.ingest_lag.set(max(0.0, (wall - self._newest_applied) / 1e9))
        if self.checkpointer is not None and self.checkpointer.last_taken_ns:
            metrics.checkpoint_age.set((wall - self.checkpointer.last_taken_ns) / 1e9)
            metrics.checkpoint_bytes.set(self.checkpointer.last_bytes)

    # ------------------------------------------------------------------ http

    def readiness(self) -> list[str]:
        """Why the service is not ready (empty when it is)."""
        problems = []
        if self.restoring:
            problems.append("restoring the stored state")
        if not self.mqtt.connected.is_set():
            problems.append(self.mqtt.problem or "broker not connected")
        elif self.mqtt.problem:
            problems.append(self.mqtt.problem)
        if self.publish_loop.problem:
            problems.append(self.publish_loop.problem)
        checkpointer = self.checkpointer
        if checkpointer is not None and checkpointer.last_taken_ns:
            age = (self.clock() - checkpointer.last_taken_ns) / 1e9
            if age > 3 * self.settings.state.checkpoint_interval_s + 5:
                problems.append(f"last checkpoint {age:.0f} s ago")
        if self.restoring:
            return problems  # no engine to ask yet
        missing = self.engine.series_without_level()
        if missing:
            problems.append("no level yet: " + ",".join(missing[:10]))
        return problems

    async def _start_http(self) -> asyncio.Server:
        # Validated at load: an explicit host (brackets stripped from IPv6) and a port.
        address = parse_listen_address(self.settings.metrics.listen)
        try:
            server = await asyncio.start_server(self._http, address.host, address.port)
        except OSError as exc:
            raise StreamerError(
                f"metrics.listen {self.settings.metrics.listen}: {exc.strerror or exc}"
            ) from None
        self.http_port = int(server.sockets[0].getsockname()[1])
        return server

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
            status, content_type, body = self._route(method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {sum(map(len, body))}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head)
            if method != "HEAD":
                # A large page (2-4 MB at 10,000 series) goes out part by part, a slice at a
                # time, never joined, the event loop free between slices: one write copied
                # it whole while everything waited.
                for part in body:
                    view = memoryview(part)
                    for lo in range(0, len(view), HTTP_WRITE_SLICE):
                        writer.write(view[lo : lo + HTTP_WRITE_SLICE])
                        await writer.drain()
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, str, list[bytes]]:
        """(status, content type, the body in parts)."""
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, [b"method not allowed\n"]
        if path == "/metrics":
            self.metrics.flush()
            page = [
                generate_latest(self.metrics.registry),
                *self.series_metrics.parts(),
                self._fund_metrics_text,
            ]
            return "200 OK", CONTENT_TYPE_LATEST, page
        if path == "/healthz":
            return "200 OK", text, [b"ok\n"]
        if path == "/readyz":
            problems = self.readiness()
            if problems:
                return "503 Service Unavailable", text, [("; ".join(problems) + "\n").encode()]
            # Leader and standby are both healthy; the body says which.
            return "200 OK", text, [f"ready: {self.publish_loop.role}\n".encode()]
        return "404 Not Found", text, [b"not found\n"]


def run_service(settings: Settings, reset_indices: Iterable[str] = ()) -> int:
    """Run until SIGINT/SIGTERM on uvloop where available; returns the exit code."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        pass

    async def main() -> None:
        service = Service(settings, reset_indices=reset_indices, freeze_heap=True)
        await service.run()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(main())
        except* StateError as group:
            raise group.exceptions[0] from None
        except* StreamerError as group:
            raise group.exceptions[0] from None
    return 0
