"""Service settings and index definitions: frozen, validated at load, errors name file and field.

Loading order: TOML file -> environment overrides (``STREAMER_<SECTION>_<KEY>``) -> typed,
frozen msgspec Structs -> semantic validation.  Loading is total: every bad input, whether a
file that is missing, not UTF-8 or not TOML, a value out of range or a malformed URL, raises
ConfigError with one line naming the file (or the environment variable that set the value),
the field and the problem.  Secrets (passwords) are only read from the URL, the environment
or a file named by ``STREAMER_<SECTION>_PASSWORD_FILE``; they are never part of ``repr``
output or of an error message.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import itertools
import math
import operator
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import msgspec.inspect
import msgspec.structs
import numpy as np

from streamer.endpoints import parse_listen_address, parse_mqtt_url, parse_redis_url
from streamer.endpoints import redact_url as redact_url  # re-exported: callers log URLs with it
from streamer.errors import ConfigError, EndpointError
from streamer.topics import tick_topic

if TYPE_CHECKING:
    from streamer.fund_config import FundDefinition

Method = Literal["price", "cap", "equal"]
Variant = Literal["price", "total", "net"]
OutsideSession = Literal["reject", "accept"]
SessionClock = Literal["wall", "data"]
StateStore = Literal["redis", "directory", "none"]

# Used with fullmatch: re.match with "$" would also accept a trailing newline.
INDEX_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
VARIANT_SUFFIX: dict[str, str] = {"price": "", "total": ".TR", "net": ".NTR"}

ALWAYS_OPEN_CALENDAR = "24/7"

MAX_SYMBOL_LENGTH = 64
MAX_CLIENT_ID_LENGTH = 128
# MQTT strings (topic filters) carry a 16-bit length; a PUBLISH packet's remaining length
# field stops at 268,435,455 bytes, so no payload can be larger.
MQTT_MAX_STRING_BYTES = 65_535
MQTT_MAX_PACKET_BYTES = 268_435_455
# actions_maxlen goes to Redis as XADD MAXLEN, a signed 64-bit integer.
REDIS_MAX_INTEGER = 2**63 - 1
# Durations become int64 nanoseconds in the engine (which ends after 292 years); a century
# is far beyond any sane setting and well inside that.
MAX_DURATION_S = 100 * 365 * 86_400.0
MAX_DURATION_DAYS = 100 * 365.0
# A fixed publish timer slower than an hour is a typo (seconds given as milliseconds, ...).
MAX_PUBLISH_INTERVAL_MS = 3_600_000
# Each full recompute walks every constituent of every index; more often than every 10 ms
# it would take the engine's core away from the ticks.
MIN_RECOMPUTE_INTERVAL_S = 0.01

# ISO 4217 codes a desk is likely to meet; an index or constituent in any other code is a typo.
KNOWN_CURRENCIES = frozenset(
    (
        "USD",
        "EUR",
        "GBP",
        "JPY",
        "CHF",
        "CAD",
        "AUD",
        "NZD",
        "SEK",
        "NOK",
        "DKK",
        "HKD",
        "SGD",
        "CNY",
        "CNH",
        "KRW",
        "TWD",
        "INR",
        "BRL",
        "MXN",
        "ZAR",
        "PLN",
        "CZK",
        "HUF",
        "TRY",
        "ILS",
        "SAR",
        "AED",
        "RUB",
        "THB",
        "MYR",
        "IDR",
        "PHP",
        "CLP",
        "COP",
        "PEN",
        "ARS",
    )
)


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class MqttSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "streamer-1"
    topics: tuple[str, ...] = ("ticks/#", "fx/#", "control/#", "reference/#")
    # "all": the topics as listed; "constituents": a tick wildcard among them (ticks/#,
    # ticks/+) becomes one ticks/<symbol> per constituent, following add and delete, so a
    # shard receives only its own symbols' ticks (other ticks/... topics stay as listed).
    tick_topics: Literal["all", "constituents"] = "all"
    max_payload_bytes: int = 1_048_576
    password: str | None = None  # only from the environment or a file, never from TOML

    def __repr__(self) -> str:
        return f"MqttSettings(url={redact_url(self.url)!r}, client_id={self.client_id!r})"


class RedisSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "streamer"
    # A Redis Cluster (url: any node): keys carry the shard's hash tag (streamer.keys).
    cluster: bool = False
    # Entries kept in the audit stream P:actions (XADD MAXLEN ~).
    actions_maxlen: int = 100_000
    password: str | None = None

    def __repr__(self) -> str:
        return f"RedisSettings(url={redact_url(self.url)!r}, prefix={self.prefix!r})"


class MetricsSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    listen: str = "127.0.0.1:9108"
    # Series with per-series gauges (glob patterns over series ids; [] for none).
    series: tuple[str, ...] = ("*",)


class PublishSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # 0: every change (conflated per micro-batch); > 0: every series on a fixed timer.
    interval_ms: int = 0
    # Per series, at most one publish per this many ms: the newest level always goes out
    # within it (what dashboards and desks want, and what keeps Redis's work per second
    # independent of how often each series moves).
    min_interval_ms: int = 0
    # Per series, at most one raw history entry per this many ms (0: every publish).
    history_interval_ms: int = 1000
    # Raw history and minute bars are trimmed by time (XADD MINID): this much is kept.
    history_retention_s: float = 86_400.0
    bars_retention_s: float = 172_800.0
    # The memory all history streams may take together (an estimate from their entry sizes):
    # with many series the effective history interval grows and bar retention shrinks so that
    # the total stays within it, whatever the series count.
    history_memory_mb: float = 1024.0


class QualitySettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_move_pct: float = 10.0
    stale_after_s: float = 60.0
    # A tick or FX rate stamped more than this after its receipt is rejected (future_ts).
    max_future_s: float = 5.0
    # A lower seq on a tick stamped at least this long after the symbol's last tick comes
    # from a restarted feed: accepted (and logged) rather than rejected as out of order.
    seq_reset_after_s: float = 30.0


class IngestSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Bound of ticks waiting for the engine; beyond it the queue conflates to the last price.
    queue_max: int = 200_000
    # Largest micro-batch handed to the engine in one call.
    batch_max: int = 20_000
    # Sums are recomputed from scratch this often to bound floating-point drift.
    recompute_interval_s: float = 10.0


class SessionSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # An exchange_calendars name (e.g. "XNYS") or "24/7"; an index may name its own.
    calendar: str = ALWAYS_OPEN_CALENDAR
    # The official close is taken this long after the scheduled one, so that ticks stamped
    # before the close but arriving just after it still count.
    close_delay_s: float = 5.0
    outside_session: OutsideSession = "reject"
    # "data": the market clock follows the newest data, so a replay of a recorded day opens
    # and closes its sessions as the day did.
    clock: SessionClock = "wall"


class StateSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    store: StateStore = "redis"
    # Required when store = "directory"; after loading always absolute (a relative path is
    # taken relative to the config file).
    directory: str = ""
    checkpoint_interval_s: float = 5.0


class ControlSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Future-dated actions waiting at once; beyond it new ones are refused.
    max_pending: int = 10_000
    # Applied action ids are remembered this long, so a redelivered action is applied once.
    id_retention_days: float = 30.0


class ShardSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # This process's shard: a name for the set of indices its config holds ("" for none).
    # Its checkpoint and writer lease are its own (streamer.keys); outputs keep their names.
    name: str = ""
    # The writer lease (with the Redis state store): one replica of the shard publishes, the
    # others stand by and take over within about this long; 0 turns the lease off.
    lease_ttl_s: float = 5.0


class GatewaySettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``streamer gateway``: the HTTP/SSE/WebSocket front of the published levels (it only
    reads Redis)."""

    listen: str = "127.0.0.1:8080"
    # Redis as the gateway reads it: "" is [redis].url; give the read-only consumer user here
    # (redis://streamer-reader@host:6379/0) with its password in STREAMER_GATEWAY_PASSWORD or
    # STREAMER_GATEWAY_PASSWORD_FILE, so a gateway can never write what desks read.
    redis_url: str = ""
    password: str | None = None  # only from the environment or a file, never from TOML
    # Bearer tokens, one a line ("#" comments), relative to this file; "" admits everyone.
    # A file, not a TOML list: tokens are secrets and the config is not.
    tokens_file: str = ""
    # Origins whose pages may call the API from a browser ("*" for any); [] sends no CORS
    # headers (the gateway's own page is same-origin and needs none).
    cors_origins: tuple[str, ...] = ()
    # Concurrent stream clients (SSE and WebSocket together); more are refused with 503.
    max_clients: int = 2000
    # Updates per second per series a stream sends when the client names no max_rate, and
    # the most it may ask for.
    default_rate: float = 4.0
    max_rate: float = 20.0
    # A client whose socket takes longer than this to accept a write is disconnected: it
    # cannot keep up, and its unsent data must not grow without bound.
    write_timeout_s: float = 5.0
    # A heartbeat event this often on every stream, so a page can tell a quiet market from a
    # dead connection.
    heartbeat_s: float = 5.0
    # The page marks a series stale when its level is older than this.
    stale_after_s: float = 30.0

    def __repr__(self) -> str:
        return f"GatewaySettings(listen={self.listen!r}, redis_url={redact_url(self.redis_url)!r})"


class ConstituentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Positional construction (in this field order) is what lets a CSV of 400,000 memberships
    # become constituents a column at a time: keywords cost four times as much per row.
    symbol: str
    shares: float = 1.0
    iwf: float = 1.0
    awf: float = 1.0
    currency: str | None = None  # None: the index currency
    withholding: float = 0.0
    price: float | None = None  # seed price (e.g. previous close) used until the first tick


class IndexDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    name: str = ""
    method: Method
    currency: str = "USD"
    divisor: float | None = None
    base_value: float | None = None
    variants: tuple[Variant, ...] = ("price",)
    calendar: str | None = None  # None: the service's [session].calendar
    constituents: tuple[ConstituentSpec, ...] = ()
    source: str = ""  # file the definition came from, for error messages

    def series_ids(self) -> list[str]:
        """Published ids, one per variant: ``ID``, ``ID.TR``, ``ID.NTR``."""
        return [self.id + VARIANT_SUFFIX[v] for v in self.variants]


class _IndexFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    name: str = ""
    method: Method
    currency: str = "USD"
    divisor: float | None = None
    base_value: float | None = None
    variants: tuple[Variant, ...] = ("price",)
    calendar: str | None = None
    constituents: str | list[ConstituentSpec]


class _SettingsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    publish: PublishSettings = msgspec.field(default_factory=PublishSettings)
    quality: QualitySettings = msgspec.field(default_factory=QualitySettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    session: SessionSettings = msgspec.field(default_factory=SessionSettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)
    control: ControlSettings = msgspec.field(default_factory=ControlSettings)
    shard: ShardSettings = msgspec.field(default_factory=ShardSettings)
    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    indices: tuple[str, ...] = ("indices/*.toml",)
    funds: tuple[str, ...] = ()  # fund definition globs (streamer.fund_config)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    mqtt: MqttSettings
    redis: RedisSettings
    metrics: MetricsSettings
    publish: PublishSettings
    quality: QualitySettings
    ingest: IngestSettings
    session: SessionSettings
    state: StateSettings
    control: ControlSettings
    shard: ShardSettings
    gateway: GatewaySettings
    indices: tuple[IndexDefinition, ...]
    path: str
    funds: tuple[FundDefinition, ...] = ()


# Section name -> its Struct; each can be overridden from STREAMER_<SECTION>_<KEY>.
_SECTIONS: dict[str, type[_Section]] = {
    "mqtt": MqttSettings,
    "redis": RedisSettings,
    "metrics": MetricsSettings,
    "publish": PublishSettings,
    "quality": QualitySettings,
    "ingest": IngestSettings,
    "session": SessionSettings,
    "state": StateSettings,
    "control": ControlSettings,
    "shard": ShardSettings,
    "gateway": GatewaySettings,
}
_INDICES_VARIABLE = "STREAMER_INDICES"


# The definitions last checked, by identity: a tuple of frozen definitions cannot change, and
# the service's engine is built from the tuple load_settings checked (a second pass over the
# memberships cost 0.2-0.5 s at 400,000).
_last_checked: list[tuple[IndexDefinition, ...]] = []


def check_definitions(definitions: Sequence[IndexDefinition]) -> None:
    """Cross-index checks of a universe: one currency and one seed price per symbol."""
    if isinstance(definitions, tuple) and _last_checked and _last_checked[0] is definitions:
        return
    # The common case in one pass: each symbol with one currency and one seed price, exactly.
    # At the first difference the loop below finds (and names) the problem.
    currency_of: dict[str, str] = {}
    seed_of: dict[str, float] = {}
    for d in definitions:
        default = d.currency
        for c in d.constituents:
            code = c.currency or default
            price = c.price
            if currency_of.setdefault(c.symbol, code) != code or (
                price is not None and seed_of.setdefault(c.symbol, price) != price
            ):
                _name_the_conflict(definitions)
                break
    if isinstance(definitions, tuple):
        _last_checked[:] = [definitions]


def _name_the_conflict(definitions: Sequence[IndexDefinition]) -> None:
    """Raises for the first symbol with two currencies or two seed prices (prices equal to
    12 digits are one)."""
    currency: dict[str, tuple[str, str]] = {}
    seed: dict[str, tuple[float, str]] = {}
    for d in definitions:
        where = d.source or d.id
        for c in d.constituents:
            code = c.currency or d.currency
            known = currency.setdefault(c.symbol, (code, where))
            if known[0] != code:
                raise ConfigError(
                    f"{where}: field `constituents[{c.symbol}].currency`: "
                    f"{code} here but {known[0]} in another index"
                )
            if c.price is not None:
                first = seed.setdefault(c.symbol, (c.price, where))
                if not math.isclose(first[0], c.price, rel_tol=1e-12):
                    raise ConfigError(
                        f"{where}: field `constituents[{c.symbol}].price`: "
                        f"{c.price} here but {first[0]} in {first[1]}"
                    )


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate the service config and every index it names."""
    environ = os.environ if environ is None else environ
    cfg_path = Path(path)
    raw = _parse_toml(cfg_path)
    source = _SettingsSource(cfg_path, _apply_env_overrides(raw, environ, cfg_path))
    redis_section = raw.get("redis")
    if isinstance(redis_section, dict) and "history_maxlen" in redis_section:
        raise source.error(
            "redis.history_maxlen",
            "no longer used: history is trimmed by time ([publish] history_retention_s, "
            "bars_retention_s, history_memory_mb); the audit stream's cap is "
            "[redis] actions_maxlen",
        )
    try:
        parsed = msgspec.convert(raw, _SettingsFile, str_keys=True)
    except msgspec.ValidationError as exc:
        raise source.conversion_error(exc) from None
    _validate_settings(parsed, source)
    files: list[Path] = []
    for pattern in parsed.indices:
        matched = sorted(glob.glob(str(cfg_path.parent / pattern)))
        if not matched:
            raise source.error("indices", f"no file matches {pattern!r}")
        files.extend(Path(m) for m in matched)
    loaded = _load_indices(list(dict.fromkeys(files)), _definition_cache_path(cfg_path, environ))
    definitions = loaded.definitions
    if parsed.mqtt.tick_topics == "constituents":
        for definition in definitions:
            for spec in definition.constituents:
                if tick_topic(spec.symbol) is None:
                    raise ConfigError(
                        f"{definition.source}: constituent {spec.symbol!r}: with [mqtt] "
                        'tick_topics = "constituents" a symbol is a topic level: no +, #'
                    )
    seen: dict[str, str] = {}
    for definition in definitions:
        for series in definition.series_ids():
            if series in seen:
                raise ConfigError(
                    f"{definition.source}: field `id`: index {series!r} "
                    f"is also defined in {seen[series]}"
                )
            seen[series] = definition.source
    indices = tuple(definitions)
    if loaded.checked_before:
        _last_checked[:] = [indices]
    else:
        check_definitions(indices)
    loaded.save()  # only now: a cache holds a universe that passed the checks
    funds = _load_funds(parsed.funds, cfg_path, source, definitions)
    if parsed.mqtt.tick_topics == "constituents":
        for fund in funds:
            for symbol in (fund.listing, *(h.symbol for h in fund.basket.holdings)):
                if tick_topic(symbol) is None:
                    raise ConfigError(
                        f"{fund.source}: symbol {symbol!r}: with [mqtt] tick_topics = "
                        '"constituents" a symbol is a topic level: no +, #'
                    )
    return Settings(
        mqtt=parsed.mqtt,
        redis=parsed.redis,
        metrics=parsed.metrics,
        publish=parsed.publish,
        quality=parsed.quality,
        ingest=parsed.ingest,
        session=parsed.session,
        state=_resolve_state_directory(parsed.state, source),
        control=parsed.control,
        shard=parsed.shard,
        gateway=_resolve_tokens_file(parsed.gateway, source),
        indices=indices,
        path=str(cfg_path),
        funds=funds,
    )


def _load_funds(
    patterns: tuple[str, ...],
    cfg_path: Path,
    source: _SettingsSource,
    indices: list[IndexDefinition],
) -> tuple[FundDefinition, ...]:
    # streamer.fund_config builds on this module's loaders, so it is imported here.
    from streamer.fund_config import check_funds, load_fund

    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(cfg_path.parent / pattern)))
        if not matched:
            raise source.error("funds", f"no file matches {pattern!r}")
        files.extend(Path(m) for m in matched)
    funds = tuple(load_fund(f) for f in dict.fromkeys(files))
    check_funds(funds, indices)
    return funds


# A universe of many index files is read from one cache file when none of them changed: at
# 10,000 indices, reading and parsing 20,000 TOML and CSV files took seconds of every start.
# Smaller universes load fast enough without it (and leave no cache files behind).
DEFINITION_CACHE_MIN_FILES = 500


class _CachedIndex(msgspec.Struct, frozen=True, array_like=True):
    path: str
    stamp: tuple[int, int, int]  # (mtime_ns, size, inode) of the TOML file
    csv_path: str  # "" when the constituents are inline
    csv_stamp: tuple[int, int, int]
    definition: IndexDefinition


class _DefinitionCache(msgspec.Struct, frozen=True, array_like=True):
    loader: str  # the loading code's identity: another version ignores the cache
    entries: list[_CachedIndex]


def _stamp(path: Path | str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def _loader_identity() -> str:
    from streamer import __version__

    return f"{__version__}:{Path(__file__).stat().st_mtime_ns}"


def _definition_cache_path(cfg_path: Path, environ: Mapping[str, str]) -> Path:
    import hashlib

    root = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(cfg_path.resolve()).encode()).hexdigest()[:16]
    return root / "streamer" / f"indices-{digest}.msgpack"


@dataclass
class _LoadedIndices:
    definitions: list[IndexDefinition]
    # Every file as the cache has it: the same universe as when the cache was written, which
    # was after it passed the cross-index checks (at 10,000 indices, 0.1 s of a restart).
    checked_before: bool
    save: Callable[[], None]  # writes the cache, if anything changed


def _load_indices(files: list[Path], cache_path: Path) -> _LoadedIndices:
    """Every index file loaded, each from the cache when it and its CSV are unchanged (same
    modification time, size and inode, the test of `make` and of Python's bytecode cache).
    ``save`` rewrites the cache when any was not; a cache that cannot be read or written is
    ignored."""
    if len(files) < DEFINITION_CACHE_MIN_FILES:
        return _LoadedIndices([load_index(f) for f in files], False, lambda: None)
    loader = _loader_identity()
    cached: dict[str, _CachedIndex] = {}
    try:
        stored = msgspec.msgpack.decode(cache_path.read_bytes(), type=_DefinitionCache)
        if stored.loader == loader:
            cached = {e.path: e for e in stored.entries}
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        pass
    entries: list[_CachedIndex] = []
    changed = len(cached) != len(files)
    for f in files:
        entry = cached.get(str(f))
        try:
            fresh = (
                entry is not None
                and _stamp(f) == entry.stamp
                and (not entry.csv_path or _stamp(entry.csv_path) == entry.csv_stamp)
            )
        except OSError:
            fresh = False
        if entry is None or not fresh:
            changed = True
            try:  # stamped before reading: a change while we read shows next time
                stamp = _stamp(f)
            except OSError:
                stamp = (0, 0, 0)
            definition, csv_name, csv_stamp = _load_index_file(f)
            entry = _CachedIndex(str(f), stamp, str(csv_name or ""), csv_stamp, definition)
        entries.append(entry)

    def save() -> None:
        if not changed:
            return
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            partial = cache_path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(msgspec.msgpack.encode(_DefinitionCache(loader, entries)))
            os.replace(partial, cache_path)
        except OSError:
            pass

    return _LoadedIndices([e.definition for e in entries], not changed, save)


def load_index(path: Path) -> IndexDefinition:
    """Load one index definition (TOML) and its constituents (inline or a CSV beside it)."""
    return _load_index_file(path)[0]


def _load_index_file(path: Path) -> tuple[IndexDefinition, Path | None, tuple[int, int, int]]:
    """The definition, its CSV file (None: inline constituents) and the CSV's stamp as it
    was before it was read ((0, 0, 0) when there is none)."""
    raw = _parse_toml(path)
    try:
        parsed = msgspec.convert(raw, _IndexFile, str_keys=True)
    except msgspec.ValidationError as exc:
        field, problem = _explain(exc, _IndexFile)
        where = f"field `{field}`: " if field else ""
        raise ConfigError(f"{path}: {where}{problem}") from None
    csv_path: Path | None = None
    csv_stamp = (0, 0, 0)
    if isinstance(parsed.constituents, str):
        csv_path = path.parent / parsed.constituents
        with contextlib.suppress(OSError):  # reading it says what is wrong
            csv_stamp = _stamp(csv_path)
        constituents = _read_constituents_csv(csv_path)
    else:
        constituents = tuple(parsed.constituents)
    definition = IndexDefinition(
        id=parsed.id,
        name=parsed.name,
        method=parsed.method,
        currency=parsed.currency,
        divisor=parsed.divisor,
        base_value=parsed.base_value,
        variants=parsed.variants,
        calendar=parsed.calendar,
        constituents=constituents,
        source=str(path),
    )
    validate_index(definition)
    return definition, csv_path, csv_stamp


def definition_failure(source: str, definition_id: str) -> Callable[[str, str], ConfigError]:
    """The error of a definition's field: one line naming the file (or the id) and field."""

    def fail(field: str, problem: str) -> ConfigError:
        return ConfigError(f"{source or repr(definition_id)}: field `{field}`: {problem}")

    return fail


def check_identity(
    definition_id: str, name: str, currency: str, fail: Callable[[str, str], ConfigError]
) -> None:
    """What every definition (index or fund) checks the same way: its id, name, currency."""
    if not INDEX_ID_PATTERN.fullmatch(definition_id):
        raise fail("id", f"{definition_id!r} must match [A-Za-z0-9._-]{{1,64}}")
    if not name.isprintable():
        raise fail("name", f"must be one line of printable text, got {name!r}")
    _check_currency(currency, lambda p: fail("currency", p))


def validate_index(d: IndexDefinition) -> None:
    """Semantic checks msgspec's types cannot express; raises ConfigError naming the field."""

    fail = definition_failure(d.source, d.id)
    check_identity(d.id, d.name, d.currency, fail)
    if d.calendar is not None:
        calendar_problem = validate_calendar_name(d.calendar)
        if calendar_problem:
            raise fail("calendar", calendar_problem)
    if (d.divisor is None) == (d.base_value is None):
        raise fail("divisor", "give exactly one of `divisor` and `base_value`")
    if d.divisor is not None and not _positive(d.divisor):
        raise fail("divisor", f"must be a positive number, got {d.divisor}")
    if d.base_value is not None and not _positive(d.base_value):
        raise fail("base_value", f"must be a positive number, got {d.base_value}")
    if d.method == "equal" and d.base_value is None:
        raise fail(
            "base_value",
            "an equal-weighted index sets its weights at the first prices, "
            "so it needs `base_value`, not `divisor`",
        )
    if not d.variants or len(set(d.variants)) != len(d.variants):
        raise fail("variants", "must list each of price/total/net at most once, at least one")
    if not d.constituents:
        raise fail("constituents", "an index needs at least one constituent")
    if _constituents_plainly_valid(d.constituents):
        return
    # Something is wrong: find the first problem, constituent by constituent.
    symbols: set[str] = set()
    for c in d.constituents:
        # The symbol is checked first: it goes into the field name of every later message.
        symbol_problem = validate_symbol(c.symbol)
        if symbol_problem:
            raise fail("constituents.symbol", symbol_problem)
        where = f"constituents[{c.symbol}]"
        if c.symbol in symbols:
            raise fail(where, f"duplicate symbol {c.symbol!r}")
        symbols.add(c.symbol)
        if not _positive(c.shares):
            raise fail(f"{where}.shares", f"must be positive, got {c.shares}")
        if not (math.isfinite(c.iwf) and 0.0 < c.iwf <= 1.0):
            raise fail(f"{where}.iwf", f"must be in (0, 1], got {c.iwf}")
        if not _positive(c.awf):
            raise fail(f"{where}.awf", f"must be positive, got {c.awf}")
        if not (math.isfinite(c.withholding) and 0.0 <= c.withholding < 1.0):
            raise fail(f"{where}.withholding", f"must be in [0, 1), got {c.withholding}")
        if c.price is not None and not _positive(c.price):
            raise fail(f"{where}.price", f"must be positive, got {c.price}")
        if c.currency is not None:
            _check_currency(c.currency, lambda p, w=where: fail(f"{w}.currency", p))


def _constituents_plainly_valid(constituents: Sequence[ConstituentSpec]) -> bool:
    """True when every constituent passes every check of :func:`validate_index`, checked a
    column at a time (the checks one by one cost ~10 us per constituent: at 400,000
    memberships, seconds of start-up).  False means look closer, not necessarily invalid."""
    symbols = list(map(_SYMBOL, constituents))
    joined = "".join(symbols)
    if (
        len(set(symbols)) != len(symbols)
        or _has_space_or_control(joined)
        or min(map(len, symbols)) < 1
        or max(map(len, symbols)) > MAX_SYMBOL_LENGTH
    ):
        return False
    if not set(map(_CURRENCY, constituents)) - {None} <= KNOWN_CURRENCIES:
        return False
    # One matrix, one pair of bounds per column (NaN fails every comparison); a missing price
    # becomes NaN, so the prices out of bounds must be exactly the missing ones.
    numbers = np.array(list(map(_NUMBERS, constituents)), dtype=np.float64)
    inside = (numbers >= _NUMBERS_LOWEST) & (numbers < _NUMBERS_ABOVE)
    if not inside[:, :-1].all():
        return False
    missing_prices = list(map(_PRICE, constituents)).count(None)
    return int(np.count_nonzero(~inside[:, -1])) == missing_prices


# A constituent's fields, read with one C call per constituent.
_SYMBOL = operator.attrgetter("symbol")
_CURRENCY = operator.attrgetter("currency")
_PRICE = operator.attrgetter("price")
_NUMBERS = operator.attrgetter("shares", "iwf", "awf", "withholding", "price")
# validate_index's ranges as lowest <= x < above: shares, awf and price finite and positive,
# iwf in (0, 1], withholding in [0, 1).
_SMALLEST = np.nextafter(0.0, 1.0)
_NUMBERS_LOWEST = np.array([_SMALLEST, _SMALLEST, _SMALLEST, 0.0, _SMALLEST])
_NUMBERS_ABOVE = np.array([np.inf, np.nextafter(1.0, 2.0), np.inf, 1.0, np.inf])


def validate_symbol(symbol: str) -> str | None:
    """Why ``symbol`` cannot be a constituent symbol, or None.

    1..64 printable characters without whitespace: symbols go into log lines, metric labels
    and Redis keys, where a newline or an escape sequence would forge or garble them.
    """
    if not 1 <= len(symbol) <= MAX_SYMBOL_LENGTH:
        return f"symbol {symbol!r} must have 1..{MAX_SYMBOL_LENGTH} characters"
    if _has_space_or_control(symbol):
        return f"symbol {symbol!r} must not contain whitespace or control characters"
    return None


def validate_calendar_name(name: str) -> str | None:
    """Why ``name`` is not a trading calendar, or None: "24/7" or an exchange_calendars name.

    "24/7" needs no library; any other name is looked up in exchange_calendars (imported only
    then: it brings pandas, a third of a second).
    """
    if name == ALWAYS_OPEN_CALENDAR:
        return None
    if not (name.isprintable() and 0 < len(name) <= 64):
        return (
            f"unknown calendar {name!r} (expected {ALWAYS_OPEN_CALENDAR!r} or an "
            "exchange_calendars name such as 'XNYS' or 'XLON')"
        )
    from streamer.calendars import validate_calendar_name as known_to_exchange_calendars

    return known_to_exchange_calendars(name)


def validate_topic_filter(topic: str) -> str | None:
    """Why ``topic`` is not an MQTT 3.1.1 topic filter (section 4.7), or None.

    A broker disconnects a client that subscribes to an invalid filter, and the service would
    reconnect and subscribe again forever.
    """
    if not topic:
        return "a topic filter must not be empty"
    if not topic.isprintable():  # includes NUL, which MQTT forbids in every string
        return f"topic filter {topic!r} contains a control character"
    if len(topic.encode("utf-8")) > MQTT_MAX_STRING_BYTES:
        return f"a topic filter has at most {MQTT_MAX_STRING_BYTES} bytes"
    levels = topic.split("/")
    for position, level in enumerate(levels):
        if "#" in level and (level != "#" or position != len(levels) - 1):
            return f"topic filter {topic!r}: `#` must be the whole last level (e.g. ticks/#)"
        if "+" in level and level != "+":
            return f"topic filter {topic!r}: `+` must be a whole level (e.g. ticks/+/trade)"
    return None


def _check_currency(code: str, fail: Any) -> None:
    if code not in KNOWN_CURRENCIES:
        raise fail(f"unknown currency {code!r} (expected an ISO 4217 code such as USD)")


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0.0


def _has_space_or_control(text: str) -> bool:
    # Every whitespace character but " " is also non-printable in Python's sense, so this is
    # ``any(ch.isspace() or not ch.isprintable() for ch in text)`` in two C-level scans.
    return not text.isprintable() or " " in text


@dataclass(frozen=True)
class _SettingsSource:
    """Where the service settings came from: the file, and the variables that overrode it."""

    path: Path
    variables: Mapping[str, str]  # field ("redis.url", "indices") -> variable that set it

    def error(self, field: str, problem: str) -> ConfigError:
        variable = self.variables.get(field)
        if variable is not None:
            return ConfigError(f"{variable}: {problem}")
        return ConfigError(f"{self.path}: field `{field}`: {problem}")

    def conversion_error(self, exc: msgspec.ValidationError) -> ConfigError:
        field, problem = _explain(exc, _SettingsFile)
        return self.error(field, problem) if field else ConfigError(f"{self.path}: {problem}")


def _validate_settings(s: _SettingsFile, source: _SettingsSource) -> None:
    def check(field: str, problem: str | None) -> None:
        if problem is not None:
            raise source.error(field, problem)

    def check_endpoint(field: str, parse: Callable[[str], object], text: str) -> None:
        try:
            parse(text)
        except EndpointError as exc:
            raise source.error(field, str(exc)) from None

    check_endpoint("mqtt.url", parse_mqtt_url, s.mqtt.url)
    check("mqtt.client_id", _client_id_problem(s.mqtt.client_id))
    if s.shard.name and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", s.shard.name):
        raise source.error("shard.name", f"must match [A-Za-z0-9._-]{{1,64}}: {s.shard.name!r}")
    check("shard.lease_ttl_s", _number_problem(s.shard.lease_ttl_s, at_least=0.0))
    if 0 < s.shard.lease_ttl_s < 0.5:
        raise source.error("shard.lease_ttl_s", "must be 0 (no lease) or at least 0.5 s")
    if s.redis.cluster and ("{" in s.redis.prefix or "}" in s.redis.prefix):
        raise source.error("redis.prefix", "must not contain braces on a Redis Cluster")
    if not s.mqtt.topics:
        raise source.error("mqtt.topics", "subscribe to at least one topic")
    for topic in s.mqtt.topics:
        check("mqtt.topics", validate_topic_filter(topic))
    if len(set(s.mqtt.topics)) != len(s.mqtt.topics):
        raise source.error("mqtt.topics", "lists a topic filter twice")
    check(
        "mqtt.max_payload_bytes",
        _integer_problem(s.mqtt.max_payload_bytes, 1, MQTT_MAX_PACKET_BYTES),
    )
    check_endpoint("redis.url", parse_redis_url, s.redis.url)
    if not s.redis.prefix:
        raise source.error("redis.prefix", "must not be empty")
    if _has_space_or_control(s.redis.prefix):
        raise source.error(
            "redis.prefix", f"must not contain whitespace or control characters: {s.redis.prefix!r}"
        )
    check("redis.actions_maxlen", _integer_problem(s.redis.actions_maxlen, 1, REDIS_MAX_INTEGER))
    check_endpoint("metrics.listen", parse_listen_address, s.metrics.listen)
    for pattern in s.metrics.series:
        if not pattern or _has_space_or_control(pattern):
            raise source.error(
                "metrics.series", f"a glob over series ids, without spaces: {pattern!r}"
            )
    check(
        "publish.interval_ms",
        _integer_problem(s.publish.interval_ms, 0, MAX_PUBLISH_INTERVAL_MS),
    )
    check(
        "publish.min_interval_ms",
        _integer_problem(s.publish.min_interval_ms, 0, MAX_PUBLISH_INTERVAL_MS),
    )
    check(
        "publish.history_interval_ms",
        _integer_problem(s.publish.history_interval_ms, 0, MAX_PUBLISH_INTERVAL_MS),
    )
    check("publish.history_retention_s", _duration_problem(s.publish.history_retention_s))
    check("publish.bars_retention_s", _duration_problem(s.publish.bars_retention_s))
    check("publish.history_memory_mb", _number_problem(s.publish.history_memory_mb, above=0.0))
    check("quality.max_move_pct", _number_problem(s.quality.max_move_pct, above=0.0))
    check("quality.stale_after_s", _duration_problem(s.quality.stale_after_s))
    check("quality.max_future_s", _duration_problem(s.quality.max_future_s))
    check("quality.seq_reset_after_s", _duration_problem(s.quality.seq_reset_after_s))
    check("ingest.queue_max", _integer_problem(s.ingest.queue_max, 1))
    check("ingest.batch_max", _integer_problem(s.ingest.batch_max, 1))
    check(
        "ingest.recompute_interval_s",
        _duration_problem(s.ingest.recompute_interval_s, at_least=MIN_RECOMPUTE_INTERVAL_S),
    )
    check("session.calendar", validate_calendar_name(s.session.calendar))
    check("session.close_delay_s", _duration_problem(s.session.close_delay_s, at_least=0.0))
    if s.state.store == "directory" and not s.state.directory:
        # Blame the store setting when the environment chose it and the directory was left out.
        blamed = "state.store" if "state.store" in source.variables else "state.directory"
        raise source.error(blamed, 'store = "directory" needs a non-empty state.directory')
    if not s.state.directory.isprintable():
        raise source.error("state.directory", f"contains control characters: {s.state.directory!r}")
    check("state.checkpoint_interval_s", _duration_problem(s.state.checkpoint_interval_s))
    check("control.max_pending", _integer_problem(s.control.max_pending, 1))
    check(
        "control.id_retention_days",
        _number_problem(
            s.control.id_retention_days, above=0.0, at_most=MAX_DURATION_DAYS, unit=" days"
        ),
    )
    _validate_gateway(s.gateway, check, check_endpoint)
    if not s.indices:
        raise source.error("indices", "name at least one index definition glob")
    for pattern in s.indices:
        if not pattern or not pattern.isprintable():
            raise source.error("indices", f"{pattern!r} is not a file name pattern")


# What a browser sends as Origin: scheme, host (or [IPv6]) and an optional port.
_ORIGIN = re.compile(r"https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# A stream faster than this per series is no dashboard: it is a feed, and Redis is there.
MAX_GATEWAY_RATE = 1000.0


def _validate_gateway(
    g: GatewaySettings,
    check: Callable[[str, str | None], None],
    check_endpoint: Callable[[str, Callable[[str], object], str], None],
) -> None:
    check_endpoint("gateway.listen", parse_listen_address, g.listen)
    if g.redis_url:
        check_endpoint("gateway.redis_url", parse_redis_url, g.redis_url)
    check("gateway.tokens_file", None if g.tokens_file.isprintable() else "control characters")
    for origin in g.cors_origins:
        check("gateway.cors_origins", _origin_problem(origin))
    check("gateway.max_clients", _integer_problem(g.max_clients, 1, 1_000_000))
    check("gateway.max_rate", _number_problem(g.max_rate, above=0.0, at_most=MAX_GATEWAY_RATE))
    check(
        "gateway.default_rate",
        _number_problem(g.default_rate, above=0.0, at_most=g.max_rate)
        if math.isfinite(g.max_rate)
        else None,
    )
    check("gateway.write_timeout_s", _duration_problem(g.write_timeout_s))
    check("gateway.heartbeat_s", _duration_problem(g.heartbeat_s, at_least=0.1))
    check("gateway.stale_after_s", _duration_problem(g.stale_after_s))


def _origin_problem(origin: str) -> str | None:
    """Why ``origin`` is not a CORS origin (``*`` or scheme://host[:port], no path)."""
    if origin == "*" or _ORIGIN.fullmatch(origin):
        return None
    return f'{origin!r} is not an origin: "*" or scheme://host[:port], without a path'


def _resolve_tokens_file(gateway: GatewaySettings, source: _SettingsSource) -> GatewaySettings:
    """The gateway settings with ``tokens_file`` absolute (relative to the config file)."""
    if not gateway.tokens_file:
        return gateway
    path = (source.path.parent / gateway.tokens_file).resolve()
    return msgspec.structs.replace(gateway, tokens_file=str(path))


def _resolve_state_directory(state: StateSettings, source: _SettingsSource) -> StateSettings:
    """The state settings with ``directory`` made absolute (relative to the config file)."""
    if not state.directory:
        return state
    directory = (source.path.parent / state.directory).resolve()
    if directory.exists() and not directory.is_dir():
        raise source.error("state.directory", f"{directory} exists and is not a directory")
    return msgspec.structs.replace(state, directory=str(directory))


def _client_id_problem(client_id: str) -> str | None:
    if not 1 <= len(client_id) <= MAX_CLIENT_ID_LENGTH:
        return f"must have 1..{MAX_CLIENT_ID_LENGTH} characters, got {len(client_id)}"
    if _has_space_or_control(client_id):
        return f"must not contain whitespace or control characters: {client_id!r}"
    return None


def _integer_problem(value: int, lowest: int, highest: int | None = None) -> str | None:
    if value >= lowest and (highest is None or value <= highest):
        return None
    if highest is None:
        return f"must be an integer >= {lowest}, got {value}"
    return f"must be an integer in {lowest}..{highest}, got {value}"


def _number_problem(
    value: float,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    unit: str = "",
) -> str | None:
    inside = (
        math.isfinite(value)
        and (above is None or value > above)
        and (at_least is None or value >= at_least)
        and (at_most is None or value <= at_most)
    )
    if inside:
        return None
    bounds = [
        f"{relation} {_plain_number(bound)}"
        for relation, bound in ((">", above), (">=", at_least), ("<=", at_most))
        if bound is not None
    ]
    return f"must be a finite number {' and '.join(bounds)}{unit}, got {value!r}"


def _duration_problem(seconds: float, *, at_least: float | None = None) -> str | None:
    """A duration in seconds: > 0 (or >= at_least), finite, at most a century."""
    above = 0.0 if at_least is None else None
    return _number_problem(
        seconds, above=above, at_least=at_least, at_most=MAX_DURATION_S, unit=" seconds"
    )


def _plain_number(x: float) -> str:
    """3153600000 rather than 3.1536e+09, 0.01 rather than 0.010000."""
    return str(int(x)) if x.is_integer() else repr(x)


def _read_text(path: Path, kind: str, *, encoding: str = "utf-8-sig") -> str:
    """The whole file as text; every way of failing becomes a ConfigError naming the file.

    ``utf-8-sig`` also accepts the byte-order mark that spreadsheet exports put first.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {kind} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a {kind}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {kind}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the name
        raise ConfigError(f"{str(path)!r}: not a usable file name") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            f"save the {kind} as UTF-8"
        ) from None


def _parse_toml(path: Path) -> dict[str, Any]:
    text = _read_text(path, "TOML file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


_CSV_COLUMNS = ("symbol", "shares", "iwf", "awf", "currency", "withholding", "price")


def _read_constituents_csv(path: Path) -> tuple[ConstituentSpec, ...]:
    text = _read_text(path, "constituents CSV file")
    lines: list[str] | None = None
    if '"' not in text:
        # No quoting: the csv module's rows are the lines split at commas.
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        rows = [line.split(",") for line in lines[:1]]  # the header; the rest only if needed
    else:
        try:
            rows = [r for r in csv.reader(text.splitlines()) if r and not r[0].startswith("#")]
        except csv.Error as exc:
            raise ConfigError(f"{path}: malformed CSV: {exc}") from None
    if not rows:
        raise ConfigError(f"{path}: no constituents")
    header = [h.strip().lower() for h in rows[0]]
    if header[0] != "symbol":
        raise ConfigError(f"{path}: line 1: the header must start with `symbol`, got {rows[0]!r}")
    for h in header:
        if h not in _CSV_COLUMNS:
            raise ConfigError(
                f"{path}: line 1: unknown column `{h if h.isprintable() else repr(h)}` "
                f"(known: {', '.join(_CSV_COLUMNS)})"
            )
    if lines is not None:
        cells = _cells_of_lines(lines[1:], len(header))
    else:
        cells = _cells_of_rows(rows[1:], len(header))
    fast = _plain_constituents(header, cells) if cells is not None else None
    if fast is not None:
        return fast
    if lines is not None:
        rows = [line.split(",") for line in lines]
    out: list[ConstituentSpec] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) > len(header):
            raise ConfigError(f"{path}: line {lineno}: {len(row)} fields, header has {len(header)}")
        record: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=False):
            cell = cell.strip()
            if cell == "":
                continue
            if name in ("symbol", "currency"):
                record[name] = cell
            else:
                try:
                    record[name] = float(cell)
                except ValueError:
                    raise ConfigError(
                        f"{path}: line {lineno}: field `{name}`: {cell!r} is not a number"
                    ) from None
        try:
            out.append(msgspec.convert(record, ConstituentSpec))
        except msgspec.ValidationError as exc:
            field, problem = _explain(exc, ConstituentSpec)
            where = f"field `{field}`: " if field else ""
            raise ConfigError(f"{path}: line {lineno}: {where}{problem}") from None
    return tuple(out)


def _cells_of_lines(lines: list[str], width: int) -> list[list[str]] | None:
    """The columns' cells of unquoted lines, or None unless every line has ``width`` cells.
    One split of the joined lines and a slice per column: split line by line, the lists
    of 400,000 rows took longer than all the rest."""
    if not lines or set(map(str.count, lines, itertools.repeat(","))) != {width - 1}:
        return None
    cells = ",".join(lines).split(",")
    return [cells[k::width] for k in range(width)]


def _cells_of_rows(rows: list[list[str]], width: int) -> list[list[str]] | None:
    """The columns' cells of parsed (quoted) rows, or None unless every row has ``width``."""
    if not rows or any(len(row) != width for row in rows):
        return None
    return [list(column) for column in zip(*rows, strict=True)]


# ConstituentSpec's fields in order, each with its default (the symbol has none: the header
# always starts with it).
_CONSTITUENT_FIELDS = tuple((f.name, f.default) for f in msgspec.structs.fields(ConstituentSpec))


def _plain_constituents(
    header: list[str], cells: list[list[str]]
) -> tuple[ConstituentSpec, ...] | None:
    """The constituents of columns that need no checking cell by cell (no empty cell, every
    number a plain float), converted a column at a time; None when a row needs the careful
    path (which then names the line and field at fault).  Converting row by row cost ~8 us
    per constituent: seconds at 400,000 memberships."""
    if len(set(header)) != len(header):
        return None
    columns: dict[str, list[Any]] = {}
    try:
        for name, column_cells in zip(header, cells, strict=True):
            if name in ("symbol", "currency"):
                column: list[Any] = list(map(str.strip, column_cells))
                if not all(column):
                    return None
            else:
                column = list(map(float, column_cells))  # float() itself ignores blanks
            columns[name] = column
    except ValueError:  # an empty cell or not a number
        return None
    n = len(cells[0])
    in_field_order = [
        columns[name] if name in columns else itertools.repeat(default, n)
        for name, default in _CONSTITUENT_FIELDS
    ]
    return tuple(map(ConstituentSpec, *in_field_order))


def _apply_env_overrides(
    raw: dict[str, Any], environ: Mapping[str, str], path: Path
) -> dict[str, str]:
    """Overlay ``STREAMER_<SECTION>_<KEY>`` variables (and ``..._PASSWORD_FILE``) onto the TOML.

    Returns the variable behind each field it set, so that errors name the variable.
    """
    variables: dict[str, str] = {}
    for section, section_type in _SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: field `{section}`: must be a table")
        if "password" in table:
            raise ConfigError(
                f"{path}: field `{section}.password`: passwords are read only from the "
                f"environment (STREAMER_{section.upper()}_PASSWORD) or a file, "
                "never from the config"
            )
        fields = {f.name: f.type for f in _struct_fields(section_type)}
        prefix = f"STREAMER_{section.upper()}_"
        for name in sorted(environ):  # sorted: which of two conflicting variables is named
            if not name.startswith(prefix):
                continue
            value = environ[name]
            key = name[len(prefix) :].lower()
            if "password" in fields and key in ("password", "password_file"):
                field = f"{section}.password"
                if field in variables:
                    raise ConfigError(f"{name}: set either {variables[field]} or {name}, not both")
                table["password"] = (
                    _read_password_file(name, value) if key == "password_file" else value
                )
                variables[field] = name
            elif key in fields:
                table[key] = _env_value(name, value, fields[key])
                variables[f"{section}.{key}"] = name
            elif _KUBERNETES_SERVICE_LINK.fullmatch(key):
                # Injected by Kubernetes for a Service named e.g. "streamer-redis"; not ours.
                continue
            else:
                known = ", ".join(f"{prefix}{k.upper()}" for k in fields if k != "password")
                raise ConfigError(f"{name}: unknown setting (known in [{section}]: {known})")
        if table:
            raw[section] = table
    env_indices = environ.get(_INDICES_VARIABLE)
    if env_indices:
        raw["indices"] = [p.strip() for p in env_indices.split(",") if p.strip()]
        variables["indices"] = _INDICES_VARIABLE
    return variables


# Service links: <NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT[_<port>], <NAME>_PORT[_<n>_TCP...]
# for every Service in the namespace; a Service "streamer-redis-primary" gives keys such as
# "primary_service_host" under [redis].  Known setting names are matched before this.
_KUBERNETES_SERVICE_LINK = re.compile(
    r"(?:[a-z0-9_]+_)?(?:service_host|service_port(?:_.*)?|port(?:_\d+_(?:tcp|udp|sctp).*)?)"
)
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*")


def _struct_fields(struct_type: type[msgspec.Struct]) -> tuple[msgspec.inspect.Field, ...]:
    info = msgspec.inspect.type_info(struct_type)
    assert isinstance(info, msgspec.inspect.StructType)
    return info.fields


def _read_password_file(variable: str, file_name: str) -> str:
    try:
        return Path(file_name).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read password file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{variable}: the password file is not UTF-8 text") from None
    except ValueError:  # a NUL in the name
        raise ConfigError(f"{variable}: not a usable file name") from None


def _env_value(variable: str, text: str, kind: msgspec.inspect.Type) -> Any:
    """An environment variable's text as the field's type; the message names the variable."""
    shown = _shown(text)
    if isinstance(kind, msgspec.inspect.IntType):
        if not _INTEGER_TEXT.fullmatch(text.strip()):
            raise ConfigError(f"{variable}: expected an integer, got {shown}")
        return int(text)
    if isinstance(kind, msgspec.inspect.FloatType):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{variable}: expected a number, got {shown}") from None
    if isinstance(kind, msgspec.inspect.LiteralType):
        if text not in kind.values:
            expected = ", ".join(repr(v) for v in kind.values)
            raise ConfigError(f"{variable}: expected one of {expected}, got {shown}")
        return text
    if isinstance(kind, msgspec.inspect.VarTupleType):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message: control characters escaped, at most ``limit`` long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _explain(exc: msgspec.ValidationError, root: type) -> tuple[str | None, str]:
    """msgspec says 'Object missing required field `x` - at `$.a[0]`'; say it field-first.

    Returns the field's dotted path (None for the whole document) and the problem.
    """
    message = str(exc)
    match = re.match(r"^(.*?)(?: - at `\$(.*)`)?$", message)
    problem, where = (match.group(1), match.group(2)) if match else (message, None)
    field = re.search(r"field `([^`]+)`", problem)
    location = (where or "").lstrip(".")
    if field and "unknown field" in problem:
        name = f"{location}.{field.group(1)}" if location else field.group(1)
        return name, "unknown field"
    if field and "missing required field" in problem:
        name = f"{location}.{field.group(1)}" if location else field.group(1)
        return name, "required field is missing"
    if problem.startswith("Invalid enum value") and location:
        allowed = _literal_values(root, location)
        if allowed:
            problem += f" (expected one of {', '.join(repr(v) for v in allowed)})"
    return (location or None), problem


def _literal_values(root: type, location: str) -> tuple[Any, ...]:
    """The values a Literal field at ``location`` (e.g. ``variants[2]``) accepts, if any."""
    kind: msgspec.inspect.Type = msgspec.inspect.type_info(root)
    for step in re.sub(r"\[\d+\]", "", location).split("."):
        kind = _element_type(kind)
        if not isinstance(kind, msgspec.inspect.StructType):
            return ()
        kind = next((f.type for f in kind.fields if f.name == step), msgspec.inspect.AnyType())
    kind = _element_type(kind)
    return kind.values if isinstance(kind, msgspec.inspect.LiteralType) else ()


def _element_type(kind: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """What a container or optional type holds: a step along a path into nested values."""
    while True:
        if isinstance(kind, msgspec.inspect.UnionType):
            inner = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
            containers = [t for t in inner if not isinstance(t, msgspec.inspect.StrType)]
            kind = (containers or inner)[0]
        elif isinstance(kind, msgspec.inspect.VarTupleType | msgspec.inspect.ListType):
            kind = kind.item_type
        else:
            return kind


# The loaders above, for the fund definitions (streamer.fund_config).
check_currency_code = _check_currency
explain_validation_error = _explain
parse_toml_file = _parse_toml
read_text_file = _read_text
