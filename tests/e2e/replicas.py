"""Replicas of a shard as subprocesses, and the check every failover test makes of what they
published: seqs strictly increasing, every level one `streamer calc` computes over the log."""

from __future__ import annotations

import bisect
import itertools
import json
import math
import signal
from pathlib import Path
from typing import Any

from tests.conftest import ServiceConfig, write_service_config
from tests.e2e.logged_feed import Stream, calc_levels
from tests.integration.harness import ServiceProcess, Store, http_get, metric, scrape, wait_for

SETTLE_TIMEOUT_S = 15.0


class Replica:
    """One replica of a shard: its own config directory (log, MQTT client id and so its own
    persistent broker session), the same Redis, prefix and indices as its siblings."""

    def __init__(
        self,
        directory: Path,
        mqtt_url: str,
        redis_url: str,
        indices: dict[str, str],
        shard: str,
        lease_ttl_s: float,
        **sections: dict[str, Any],
    ) -> None:
        directory.mkdir(parents=True)
        self.name = directory.name
        self.config: ServiceConfig = write_service_config(
            directory,
            mqtt_url,
            redis_url,
            indices,
            shard={"name": shard, "lease_ttl_s": lease_ttl_s},
            **sections,
        )
        self.process: ServiceProcess | None = None

    def start(self) -> None:
        self.process = ServiceProcess(self.config.path, self.config.metrics_url)
        self.process.wait_connected()

    @property
    def service(self) -> ServiceProcess:
        assert self.process is not None
        return self.process

    def role(self) -> str:
        """``leader``, ``standby``, or "" when not ready (or not running)."""
        if self.process is None:
            return ""
        status, body = http_get(self.config.metrics_url + "/readyz")
        return body.strip().removeprefix("ready: ") if status == 200 else ""

    def wait_role(self, role: str, timeout: float) -> None:
        wait_for(lambda: self.role() == role, timeout, 0.05, f"replica {self.name}: {role}")

    def refusals(self) -> float:
        return metric(scrape(self.config.metrics_url), "streamer_lease_refusals_total")

    def stop(self) -> None:
        if self.process is not None:
            assert self.process.terminate(timeout=15) == 0, self.process.logs()[-3000:]
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.process.send_signal(signal.SIGKILL)
            self.process.process.wait(10)
            self.process.kill()
            self.process = None

    def discard(self) -> None:
        """Whatever state it is in (SIGSTOPped included): gone."""
        if self.process is not None:
            self.process.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process = None


def series_keys(store: Store, prefix: str, series: str) -> dict[str, str]:
    """The series' key names, from the directory (``P:series``) the service writes."""
    entry = store.hget(f"{prefix}:series", series)
    assert entry, f"{series} is not in the directory {prefix}:series"
    keys: dict[str, str] = json.loads(entry)["keys"]
    return keys


def settle(store: Store, config: ServiceConfig, stream: Stream, series: str) -> None:
    """Until a new batch is published (``series``' latest level carries its timestamp)."""
    stream.batch()
    sent = stream.last_ts
    index = series_keys(store, config.prefix, series)["index"]
    wait_for(
        lambda: int(store.hget(index, "source_ts") or "0") >= sent,
        SETTLE_TIMEOUT_S,
        what=f"the last batch published in {series}",
    )


def check_published(
    store: Store,
    config: ServiceConfig,
    log: Path,
    series_ids: tuple[str, ...],
    since_ms: int = 0,
) -> dict[str, list[tuple[int, dict[str, str]]]]:
    """Every series' history (entry time in ms, fields): seqs strictly increasing (one writer
    at a time, each going on from the last), every level from ``since_ms`` on one calc went
    through, the latest level calc's last, each action in the audit once per index."""
    expected = calc_levels(config, log)
    published = {}
    for series in series_ids:
        keys = series_keys(store, config.prefix, series)
        entries = [
            (int(entry_id.split("-")[0]), fields)
            for entry_id, fields in store.xrange(keys["history"])
        ]
        seqs = [int(fields["seq"]) for _, fields in entries]
        assert all(a < b for a, b in itertools.pairwise(seqs)), (series, seqs)
        known = sorted(expected[series])
        for at_ms, fields in entries:
            if at_ms < since_ms:
                continue
            level = float(fields["level"])
            k = bisect.bisect_left(known, level * (1 - 1e-9))
            assert k < len(known) and math.isclose(known[k], level, rel_tol=1e-9), (
                f"{series}: published {level} (seq {fields['seq']}) at {at_ms} ms; calc never "
                f"had it; logs in {config.path.parent}"
            )
        final = float(store.hget(keys["index"], "level") or "nan")
        assert math.isclose(final, expected[series][-1], rel_tol=1e-9), series
        published[series] = entries
        audit = [f"{f['id']}|{f['index']}" for _, f in store.xrange(keys["actions"])]
        assert len(audit) == len(set(audit)), audit  # every action recorded once per index
    return published
