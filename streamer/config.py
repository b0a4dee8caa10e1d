"""Service settings and index definitions: frozen, validated at load, errors name file and field.

Loading order: TOML file -> environment overrides (``STREAMER_<SECTION>_<KEY>``) -> typed,
frozen msgspec Structs -> semantic validation.  Secrets (passwords) are only read from the
URL, the environment or a file named by ``STREAMER_<SECTION>_PASSWORD_FILE``; they are
never part of ``repr`` output.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from streamer.errors import ConfigError

Method = Literal["price", "cap", "equal"]
Variant = Literal["price", "total", "net"]

INDEX_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
VARIANT_SUFFIX: dict[str, str] = {"price": "", "total": ".TR", "net": ".NTR"}

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
    max_payload_bytes: int = 1_048_576
    password: str | None = None  # only from the environment or a file, never from TOML

    def __repr__(self) -> str:
        return f"MqttSettings(url={redact_url(self.url)!r}, client_id={self.client_id!r})"


class RedisSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "streamer"
    history_maxlen: int = 100_000
    password: str | None = None

    def __repr__(self) -> str:
        return f"RedisSettings(url={redact_url(self.url)!r}, prefix={self.prefix!r})"


class MetricsSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    listen: str = "127.0.0.1:9108"


class PublishSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    interval_ms: int = 0


class QualitySettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_move_pct: float = 10.0
    stale_after_s: float = 60.0


class IngestSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Bound of ticks waiting for the engine; beyond it the queue conflates to the last price.
    queue_max: int = 200_000
    # Largest micro-batch handed to the engine in one call.
    batch_max: int = 20_000
    # Sums are recomputed from scratch this often to bound floating-point drift.
    recompute_interval_s: float = 10.0


class ConstituentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
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
    constituents: str | list[ConstituentSpec]


class _SettingsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    publish: PublishSettings = msgspec.field(default_factory=PublishSettings)
    quality: QualitySettings = msgspec.field(default_factory=QualitySettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    indices: tuple[str, ...] = ("indices/*.toml",)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    mqtt: MqttSettings
    redis: RedisSettings
    metrics: MetricsSettings
    publish: PublishSettings
    quality: QualitySettings
    ingest: IngestSettings
    indices: tuple[IndexDefinition, ...]
    path: str


_SECTIONS = ("mqtt", "redis", "metrics", "publish", "quality", "ingest")


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe to log."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate the service config and every index it names."""
    environ = os.environ if environ is None else environ
    cfg_path = Path(path)
    raw = _read_toml(cfg_path)
    _apply_env_overrides(raw, environ, cfg_path)
    try:
        parsed = msgspec.convert(raw, _SettingsFile, str_keys=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{cfg_path}: {_describe(exc)}") from None
    _validate_settings(parsed, cfg_path)
    files: list[Path] = []
    for pattern in parsed.indices:
        matched = sorted(glob.glob(str(cfg_path.parent / pattern)))
        if not matched:
            raise ConfigError(f"{cfg_path}: field `indices`: no file matches {pattern!r}")
        files.extend(Path(m) for m in matched)
    definitions = [load_index(f) for f in dict.fromkeys(files)]
    seen: dict[str, str] = {}
    for definition in definitions:
        for series in definition.series_ids():
            if series in seen:
                raise ConfigError(
                    f"{definition.source}: field `id`: index {series!r} "
                    f"is also defined in {seen[series]}"
                )
            seen[series] = definition.source
    return Settings(
        mqtt=parsed.mqtt,
        redis=parsed.redis,
        metrics=parsed.metrics,
        publish=parsed.publish,
        quality=parsed.quality,
        ingest=parsed.ingest,
        indices=tuple(definitions),
        path=str(cfg_path),
    )


def load_index(path: Path) -> IndexDefinition:
    """Load one index definition (TOML) and its constituents (inline or a CSV beside it)."""
    raw = _read_toml(path)
    try:
        parsed = msgspec.convert(raw, _IndexFile, str_keys=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None
    if isinstance(parsed.constituents, str):
        constituents = _read_constituents_csv(path.parent / parsed.constituents)
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
        constituents=constituents,
        source=str(path),
    )
    validate_index(definition)
    return definition


def validate_index(d: IndexDefinition) -> None:
    """Semantic checks msgspec's types cannot express; raises ConfigError naming the field."""

    def fail(field: str, problem: str) -> ConfigError:
        return ConfigError(f"{d.source or d.id}: field `{field}`: {problem}")

    if not INDEX_ID_PATTERN.match(d.id):
        raise fail("id", f"{d.id!r} must match [A-Za-z0-9._-]{{1,64}}")
    _check_currency(d.currency, lambda p: fail("currency", p))
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
    symbols: set[str] = set()
    for c in d.constituents:
        where = f"constituents[{c.symbol}]"
        if not c.symbol or len(c.symbol) > 64:
            raise fail("constituents.symbol", f"invalid symbol {c.symbol!r}")
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


def _check_currency(code: str, fail: Any) -> None:
    if code not in KNOWN_CURRENCIES:
        raise fail(f"unknown currency {code!r} (expected an ISO 4217 code such as USD)")


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0.0


def _validate_settings(s: _SettingsFile, path: Path) -> None:
    def fail(field: str, problem: str) -> ConfigError:
        return ConfigError(f"{path}: field `{field}`: {problem}")

    if not re.match(r"^mqtts?://", s.mqtt.url):
        raise fail(
            "mqtt.url", f"must start with mqtt:// or mqtts://, got {redact_url(s.mqtt.url)!r}"
        )
    if not re.match(r"^rediss?://", s.redis.url):
        raise fail(
            "redis.url", f"must start with redis:// or rediss://, got {redact_url(s.redis.url)!r}"
        )
    if not s.mqtt.topics:
        raise fail("mqtt.topics", "subscribe to at least one topic")
    if s.mqtt.max_payload_bytes <= 0:
        raise fail("mqtt.max_payload_bytes", "must be positive")
    if not s.redis.prefix:
        raise fail("redis.prefix", "must not be empty")
    if s.redis.history_maxlen <= 0:
        raise fail("redis.history_maxlen", "must be positive")
    if not re.match(r"^[^:\s]*:\d{1,5}$", s.metrics.listen):
        raise fail("metrics.listen", f"must be HOST:PORT, got {s.metrics.listen!r}")
    if s.publish.interval_ms < 0:
        raise fail("publish.interval_ms", "must be >= 0")
    if not (math.isfinite(s.quality.max_move_pct) and s.quality.max_move_pct > 0):
        raise fail("quality.max_move_pct", "must be a positive number")
    if not (math.isfinite(s.quality.stale_after_s) and s.quality.stale_after_s > 0):
        raise fail("quality.stale_after_s", "must be a positive number")
    if s.ingest.queue_max <= 0 or s.ingest.batch_max <= 0:
        raise fail("ingest", "queue_max and batch_max must be positive")
    if not s.indices:
        raise fail("indices", "name at least one index definition glob")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


_CSV_COLUMNS = ("symbol", "shares", "iwf", "awf", "currency", "withholding", "price")


def _read_constituents_csv(path: Path) -> tuple[ConstituentSpec, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: constituents file not found") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and not r[0].startswith("#")]
    if not rows:
        raise ConfigError(f"{path}: no constituents")
    header = [h.strip().lower() for h in rows[0]]
    if header[0] != "symbol":
        raise ConfigError(f"{path}: line 1: the header must start with `symbol`, got {rows[0]!r}")
    for h in header:
        if h not in _CSV_COLUMNS:
            raise ConfigError(
                f"{path}: line 1: unknown column `{h}` (known: {', '.join(_CSV_COLUMNS)})"
            )
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
            raise ConfigError(f"{path}: line {lineno}: {_describe(exc)}") from None
    return tuple(out)


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str], path: Path) -> None:
    """Overlay ``STREAMER_<SECTION>_<KEY>`` variables (and ``..._PASSWORD_FILE``) onto the TOML."""
    for section in _SECTIONS:
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: field `{section}`: must be a table")
        if "password" in table:
            raise ConfigError(
                f"{path}: field `{section}.password`: passwords are read only from the "
                f"environment (STREAMER_{section.upper()}_PASSWORD) or a file, "
                "never from the config"
            )
        prefix = f"STREAMER_{section.upper()}_"
        for name, value in environ.items():
            if not name.startswith(prefix):
                continue
            key = name[len(prefix) :].lower()
            if _KUBERNETES_SERVICE_LINK.match(key):
                # Injected by Kubernetes for a Service named e.g. "streamer-redis"; not ours.
                continue
            if key == "password_file":
                try:
                    table["password"] = Path(value).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(
                        f"{name}: cannot read password file: {exc.strerror}"
                    ) from None
            elif key == "topics":
                table[key] = [t.strip() for t in value.split(",") if t.strip()]
            else:
                table[key] = _coerce_env(value)
        if table:
            raw[section] = table
    env_indices = environ.get("STREAMER_INDICES")
    if env_indices:
        raw["indices"] = [p.strip() for p in env_indices.split(",") if p.strip()]


_KUBERNETES_SERVICE_LINK = re.compile(
    r"^(service_host|service_port(_.*)?|port(_\d+_(tcp|udp|sctp).*)?)$"
)


def _coerce_env(value: str) -> Any:
    # Environment values are strings; TOML's scalar syntax gives them their natural type.
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _describe(exc: msgspec.ValidationError) -> str:
    """msgspec says 'Object missing required field `x` - at `$.a[0]`'; say it field-first."""
    message = str(exc)
    match = re.match(r"^(.*?)(?: - at `\$(.*)`)?$", message)
    problem, where = (match.group(1), match.group(2)) if match else (message, None)
    field = re.search(r"field `([^`]+)`", problem)
    location = (where or "").lstrip(".")
    if field and "unknown field" in problem:
        name = f"{location}.{field.group(1)}" if location else field.group(1)
        return f"field `{name}`: unknown field"
    if field and "missing required field" in problem:
        name = f"{location}.{field.group(1)}" if location else field.group(1)
        return f"field `{name}`: required field is missing"
    if location:
        return f"field `{location}`: {problem}"
    return problem
