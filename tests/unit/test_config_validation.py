"""Config validation through the command line, and environment overrides.

Each bad config is written into its own directory and checked with
``streamer check-config --config PATH``: exit code 2, exactly one line on stderr naming the
file and the field, never a traceback.  One case of each kind of error runs the installed
console script in a subprocess (all of them concurrently, in one module-scoped fixture); the
variations run the same entry point, ``streamer.cli.main``, in-process, because every
subprocess pays ~0.5 s of interpreter and numpy start-up.  Errors caused by ``STREAMER_*``
variables name the variable instead of the file; ``streamer run`` reports a bad config the same
way as ``check-config``, before connecting to anything.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamer import cli
from streamer.config import (
    ControlSettings,
    SessionSettings,
    StateSettings,
    load_settings,
    validate_calendar_name,
)
from streamer.errors import ConfigError

STREAMER = Path(sys.executable).with_name("streamer")

SERVICE_TOML = """
    indices = ["indices/*.toml"]

    [mqtt]
    url = "mqtt://127.0.0.1:1883"
    client_id = "check-config-test"

    [redis]
    url = "redis://127.0.0.1:6379/0"
    prefix = "test"

    [quality]
    max_move_pct = 10.0
    stale_after_s = 60
"""

PX_TOML = """
    id = "PX"
    name = "Two price-weighted"
    method = "price"
    currency = "USD"
    divisor = 0.5
    constituents = [
      { symbol = "AAA", price = 100.0 },
      { symbol = "BBB", price = 50.0 },
    ]
"""

CAP_TOML = """
    id = "CAP"
    name = "Two cap-weighted"
    method = "cap"
    currency = "USD"
    base_value = 1000.0
    variants = ["price", "total", "net"]
    constituents = "cap.csv"
"""

CAP_CSV = """
    symbol,shares,iwf,awf,currency,withholding
    AAA,1000000,1.0,1.0,USD,0.15
    DDD,2000000,0.5,1.0,EUR,0.30
"""

GOOD_FILES: dict[str, str] = {
    "service.toml": SERVICE_TOML,
    "indices/px.toml": PX_TOML,
    "indices/cap.toml": CAP_TOML,
    "indices/cap.csv": CAP_CSV,
}


# A file's text (dedented, written as UTF-8) or its exact bytes.
ConfigFiles = dict[str, str | bytes]


def write_config(directory: Path, files: Mapping[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip(), encoding="utf-8")
    return directory / "service.toml"


def replaced(name: str, old: str, new: str) -> ConfigFiles:
    """The good config with one substitution in one file."""
    text = textwrap.dedent(GOOD_FILES[name])
    assert old in text, f"{old!r} not in {name}"
    return {**GOOD_FILES, name: text.replace(old, new, 1)}


def appended(name: str, extra: str) -> ConfigFiles:
    return {**GOOD_FILES, name: textwrap.dedent(GOOD_FILES[name]) + textwrap.dedent(extra)}


def latin1(name: str, old: str, new: str) -> ConfigFiles:
    """The good config with one substitution in one file, that file saved as Latin-1."""
    text = str(replaced(name, old, new)[name])
    return {**GOOD_FILES, name: textwrap.dedent(text).lstrip().encode("latin-1")}


def service_setting(section: str, line: str) -> ConfigFiles:
    """The good config with ``line`` added to (or, for an existing key, replacing it in)
    ``[section]`` of service.toml."""
    text = textwrap.dedent(SERVICE_TOML)
    key = line.split("=", 1)[0].strip()
    lines = text.splitlines()
    if f"[{section}]" not in lines:
        lines += ["", f"[{section}]"]
    start = lines.index(f"[{section}]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    body = [ln for ln in lines[start:end] if ln.split("=", 1)[0].strip() != key]
    lines[start:end] = [*body, line]
    return {**GOOD_FILES, "service.toml": "\n".join(lines) + "\n"}


@dataclass(frozen=True)
class BadCase:
    files: ConfigFiles
    file: str  # the file the message must name (relative to the config directory)
    field: str  # text naming the field, as it must appear in the message
    problem: str = ""  # text the message must also contain, when it matters


BAD_CASES: dict[str, BadCase] = {
    "unknown_field_in_service": BadCase(
        replaced("service.toml", 'prefix = "test"', 'prefix = "test"\ncolour = "red"'),
        "service.toml",
        "`redis.colour`",
    ),
    "unknown_field_in_index": BadCase(
        appended("indices/px.toml", 'colour = "red"\n'), "indices/px.toml", "`colour`"
    ),
    "unknown_field_in_constituent": BadCase(
        replaced("indices/px.toml", 'symbol = "BBB"', 'symbol = "BBB", sharez = 5'),
        "indices/px.toml",
        "`constituents[1].sharez`",
    ),
    "unknown_csv_column": BadCase(
        replaced("indices/cap.csv", "withholding", "witholding"), "indices/cap.csv", "`witholding`"
    ),
    "missing_method": BadCase(
        replaced("indices/px.toml", 'method = "price"\n', ""), "indices/px.toml", "`method`"
    ),
    "missing_id": BadCase(
        replaced("indices/cap.toml", 'id = "CAP"\n', ""), "indices/cap.toml", "`id`"
    ),
    "missing_symbol": BadCase(
        replaced("indices/px.toml", '{ symbol = "BBB", price = 50.0 }', "{ price = 50.0 }"),
        "indices/px.toml",
        "`constituents[1].symbol`",
    ),
    "duplicate_symbol_inline": BadCase(
        replaced("indices/px.toml", 'symbol = "BBB"', 'symbol = "AAA"'),
        "indices/px.toml",
        "constituents[AAA]",
    ),
    "duplicate_symbol_csv": BadCase(
        replaced("indices/cap.csv", "DDD,", "AAA,"), "indices/cap.toml", "constituents[AAA]"
    ),
    "zero_shares_csv": BadCase(
        replaced("indices/cap.csv", "DDD,2000000,", "DDD,0,"),
        "indices/cap.toml",
        "`constituents[DDD].shares`",
    ),
    "negative_shares_inline": BadCase(
        replaced("indices/px.toml", 'symbol = "BBB"', 'symbol = "BBB", shares = -5.0'),
        "indices/px.toml",
        "`constituents[BBB].shares`",
    ),
    "zero_divisor": BadCase(
        replaced("indices/px.toml", "divisor = 0.5", "divisor = 0.0"),
        "indices/px.toml",
        "`divisor`",
    ),
    "negative_divisor": BadCase(
        replaced("indices/px.toml", "divisor = 0.5", "divisor = -0.5"),
        "indices/px.toml",
        "`divisor`",
    ),
    "divisor_and_base_value": BadCase(
        replaced("indices/px.toml", "divisor = 0.5", "divisor = 0.5\nbase_value = 100.0"),
        "indices/px.toml",
        "`divisor`",
    ),
    "zero_base_value": BadCase(
        replaced("indices/cap.toml", "base_value = 1000.0", "base_value = 0.0"),
        "indices/cap.toml",
        "`base_value`",
    ),
    "iwf_zero": BadCase(
        replaced("indices/cap.csv", "DDD,2000000,0.5,", "DDD,2000000,0,"),
        "indices/cap.toml",
        "`constituents[DDD].iwf`",
    ),
    "iwf_above_one": BadCase(
        replaced("indices/cap.csv", "DDD,2000000,0.5,", "DDD,2000000,1.5,"),
        "indices/cap.toml",
        "`constituents[DDD].iwf`",
    ),
    "unknown_method": BadCase(
        replaced("indices/px.toml", 'method = "price"', 'method = "median"'),
        "indices/px.toml",
        "`method`",
    ),
    "unknown_index_currency": BadCase(
        replaced("indices/px.toml", 'currency = "USD"', 'currency = "XYZ"'),
        "indices/px.toml",
        "`currency`",
    ),
    "unknown_constituent_currency": BadCase(
        replaced("indices/cap.csv", ",EUR,", ",EURO,"),
        "indices/cap.toml",
        "`constituents[DDD].currency`",
    ),
    # Across indices (checked at load, so before any connection): one currency and one seed
    # price per symbol.
    "symbol_in_two_currencies": BadCase(
        replaced("indices/cap.csv", "AAA,1000000,1.0,1.0,USD", "AAA,1000000,1.0,1.0,EUR"),
        "indices/px.toml",
        "`constituents[AAA].currency`",
    ),
    "symbol_with_two_seed_prices": BadCase(
        {
            **GOOD_FILES,
            "indices/px2.toml": PX_TOML.replace('"PX"', '"PX2"').replace("100.0", "101.0"),
        },
        "indices/px2.toml",
        "`constituents[AAA].price`",
    ),
    "unknown_variant": BadCase(
        replaced("indices/cap.toml", '"net"]', '"gross"]'), "indices/cap.toml", "variants"
    ),
    "missing_csv": BadCase(
        replaced("indices/cap.toml", '"cap.csv"', '"nope.csv"'), "indices/nope.csv", "constituents"
    ),
    "bad_csv_number": BadCase(
        replaced("indices/cap.csv", "DDD,2000000,", "DDD,lots,"), "indices/cap.csv", "`shares`"
    ),
    "password_in_toml": BadCase(
        replaced("service.toml", 'prefix = "test"', 'prefix = "test"\npassword = "hunter2"'),
        "service.toml",
        "`redis.password`",
    ),
    "bad_mqtt_url": BadCase(
        replaced("service.toml", "mqtt://127.0.0.1:1883", "http://127.0.0.1:1883"),
        "service.toml",
        "`mqtt.url`",
    ),
    "invalid_toml": BadCase(
        replaced("indices/px.toml", "divisor = 0.5", "divisor = = 0.5"), "indices/px.toml", "TOML"
    ),
    "no_index_matches": BadCase(
        replaced("service.toml", '"indices/*.toml"', '"elsewhere/*.toml"'),
        "service.toml",
        "`indices`",
    ),
    # --- files that cannot be read as text, or are not files
    "service_toml_not_utf8": BadCase(
        latin1("service.toml", 'prefix = "test"', 'prefix = "tést"'),
        "service.toml",
        "line 9",
        "not UTF-8",
    ),
    "index_toml_not_utf8": BadCase(
        latin1("indices/px.toml", "Two price-weighted", "Deux pondérés par le prix"),
        "indices/px.toml",
        "line 2",
        "not UTF-8",
    ),
    "csv_not_utf8": BadCase(
        latin1("indices/cap.csv", "DDD,", "DÉD,"), "indices/cap.csv", "line 3", "not UTF-8"
    ),
    "constituents_is_a_directory": BadCase(
        {
            **replaced("indices/cap.toml", '"cap.csv"', '"somedir"'),
            "indices/somedir/cap.csv": CAP_CSV,
        },
        "indices/somedir",
        "constituents",
        "is a directory",
    ),
    "constituents_is_the_index_directory": BadCase(
        replaced("indices/cap.toml", '"cap.csv"', '""'), "indices", "constituents", "directory"
    ),
    # --- URLs: parsed at load, not when the service first connects
    "mqtt_port_out_of_range": BadCase(
        replaced("service.toml", "mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:99999"),
        "service.toml",
        "`mqtt.url`",
        "port 99999 is out of range 1..65535",
    ),
    "mqtt_port_zero": BadCase(
        replaced("service.toml", "mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:0"),
        "service.toml",
        "`mqtt.url`",
        "out of range",
    ),
    "mqtt_without_host": BadCase(
        replaced("service.toml", "mqtt://127.0.0.1:1883", "mqtt://:1883"),
        "service.toml",
        "`mqtt.url`",
        "no host",
    ),
    "mqtt_with_path": BadCase(
        replaced("service.toml", "mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883/ticks"),
        "service.toml",
        "`mqtt.url`",
        "no path",
    ),
    "redis_port_not_a_number": BadCase(
        replaced("service.toml", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:abc/0"),
        "service.toml",
        "`redis.url`",
        "port is not a number",
    ),
    "redis_db_not_a_number": BadCase(
        replaced("service.toml", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/zero"),
        "service.toml",
        "`redis.url`",
        "database number",
    ),
    "redis_db_negative": BadCase(
        replaced("service.toml", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/-1"),
        "service.toml",
        "`redis.url`",
        "integer >= 0",
    ),
    "redis_wrong_scheme": BadCase(
        replaced("service.toml", "redis://127.0.0.1:6379/0", "http://127.0.0.1:6379/0"),
        "service.toml",
        "`redis.url`",
        "redis://",
    ),
    "redis_unsupported_query": BadCase(
        replaced("service.toml", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0?ttl=5"),
        "service.toml",
        "`redis.url`",
        "unsupported query parameter 'ttl'",
    ),
    "redis_unencoded_slash_in_password": BadCase(
        replaced("service.toml", "redis://127.0.0.1:6379/0", "redis://desk:hunter2/x@cache/0"),
        "service.toml",
        "`redis.url`",
        "percent-encode",
    ),
    # --- MQTT client id and topic filters
    "client_id_empty": BadCase(
        replaced("service.toml", '"check-config-test"', '""'), "service.toml", "`mqtt.client_id`"
    ),
    "client_id_too_long": BadCase(
        replaced("service.toml", '"check-config-test"', f'"{"x" * 129}"'),
        "service.toml",
        "`mqtt.client_id`",
        "1..128",
    ),
    "client_id_with_space": BadCase(
        replaced("service.toml", '"check-config-test"', '"check config"'),
        "service.toml",
        "`mqtt.client_id`",
        "whitespace",
    ),
    "client_id_with_control_character": BadCase(
        replaced("service.toml", '"check-config-test"', '"check\\u001bconfig"'),
        "service.toml",
        "`mqtt.client_id`",
        "control",
    ),
    **{
        f"topic_{name}": BadCase(
            service_setting("mqtt", f"topics = [{topic}]"),
            "service.toml",
            "`mqtt.topics`",
            problem,
        )
        for name, topic, problem in (
            ("hash_not_last", '"ticks/#/x"', "`#`"),
            ("plus_not_alone", '"ticks/+x"', "`+`"),
            ("hash_not_alone", '"ticks/x#"', "`#`"),
            ("empty", '""', "empty"),
            ("nul", '"ticks/\\u0000"', "control character"),
            ("none", "", "at least one"),
            ("twice", '"ticks/#", "ticks/#"', "twice"),
        )
    },
    # --- numbers out of range
    **{
        f"recompute_interval_{name}": BadCase(
            service_setting("ingest", f"recompute_interval_s = {value}"),
            "service.toml",
            "`ingest.recompute_interval_s`",
            f"got {shown}",
        )
        for name, value, shown in (
            ("zero", "0", "0.0"),
            ("negative", "-1", "-1.0"),
            ("nan", "nan", "nan"),
            ("inf", "inf", "inf"),
            ("tiny", "1e-9", "1e-09"),
        )
    },
    **{
        f"{section}_{key}_{value}": BadCase(
            service_setting(section, f"{key} = {value}"),
            "service.toml",
            f"`{section}.{key}`",
        )
        for section, key, value in (
            ("mqtt", "max_payload_bytes", "0"),
            ("mqtt", "max_payload_bytes", "268435456"),
            ("redis", "actions_maxlen", "0"),
            ("publish", "interval_ms", "86400000"),
            ("quality", "stale_after_s", "inf"),
            ("quality", "max_move_pct", "nan"),
            ("quality", "max_future_s", "0"),
            ("quality", "seq_reset_after_s", "-1"),
            ("ingest", "queue_max", "0"),
            ("ingest", "batch_max", "-5"),
            ("session", "close_delay_s", "-1"),
            ("session", "close_delay_s", "nan"),
            ("state", "checkpoint_interval_s", "0"),
            ("control", "max_pending", "0"),
            ("control", "id_retention_days", "inf"),
        )
    },
    "max_pending_not_an_integer": BadCase(
        service_setting("control", "max_pending = 10.5"), "service.toml", "`control.max_pending`"
    ),
    # --- [gateway] (streamer gateway)
    "gateway_listen_without_host": BadCase(
        service_setting("gateway", 'listen = ":8080"'), "service.toml", "`gateway.listen`"
    ),
    "gateway_redis_url_scheme": BadCase(
        service_setting("gateway", 'redis_url = "http://redis:6379"'),
        "service.toml",
        "`gateway.redis_url`",
    ),
    "gateway_password_in_toml": BadCase(
        service_setting("gateway", 'password = "hunter2"'),
        "service.toml",
        "`gateway.password`",
        "STREAMER_GATEWAY_PASSWORD",
    ),
    "gateway_origin_with_path": BadCase(
        service_setting("gateway", 'cors_origins = ["https://desk.example/app"]'),
        "service.toml",
        "`gateway.cors_origins`",
        "without a path",
    ),
    "gateway_default_rate_above_max": BadCase(
        service_setting("gateway", "default_rate = 50.0"),
        "service.toml",
        "`gateway.default_rate`",
        "<= 20",
    ),
    "gateway_max_rate_zero": BadCase(
        service_setting("gateway", "max_rate = 0"), "service.toml", "`gateway.max_rate`"
    ),
    "gateway_max_clients_zero": BadCase(
        service_setting("gateway", "max_clients = 0"), "service.toml", "`gateway.max_clients`"
    ),
    "gateway_unknown_field": BadCase(
        service_setting("gateway", "tokens = ['a']"), "service.toml", "`gateway.tokens`"
    ),
    # --- the metrics listener binds every interface only when told to
    "listen_without_host": BadCase(
        service_setting("metrics", 'listen = ":9108"'),
        "service.toml",
        "`metrics.listen`",
        "0.0.0.0:9108",
    ),
    "listen_port_out_of_range": BadCase(
        service_setting("metrics", 'listen = "127.0.0.1:65536"'),
        "service.toml",
        "`metrics.listen`",
        "out of range",
    ),
    "listen_ipv6_without_brackets": BadCase(
        service_setting("metrics", 'listen = "::1:9108"'),
        "service.toml",
        "`metrics.listen`",
        "[::1]:9108",
    ),
    "listen_without_port": BadCase(
        service_setting("metrics", 'listen = "127.0.0.1"'), "service.toml", "`metrics.listen`"
    ),
    "redis_prefix_with_newline": BadCase(
        replaced("service.toml", 'prefix = "test"', 'prefix = "te\\nst"'),
        "service.toml",
        "`redis.prefix`",
    ),
    # --- the new sections
    "unknown_calendar": BadCase(
        service_setting("session", 'calendar = "nyse"'), "service.toml", "`session.calendar`"
    ),
    "unknown_outside_session": BadCase(
        service_setting("session", 'outside_session = "ignore"'),
        "service.toml",
        "`session.outside_session`",
        "'accept', 'reject'",
    ),
    "unknown_session_clock": BadCase(
        service_setting("session", 'clock = "sundial"'),
        "service.toml",
        "`session.clock`",
        "'data', 'wall'",
    ),
    "unknown_session_field": BadCase(
        service_setting("session", "opens = 9"), "service.toml", "`session.opens`"
    ),
    "unknown_state_store": BadCase(
        service_setting("state", 'store = "disk"'), "service.toml", "`state.store`"
    ),
    "state_directory_missing": BadCase(
        service_setting("state", 'store = "directory"'),
        "service.toml",
        "`state.directory`",
        "needs a non-empty state.directory",
    ),
    "state_directory_is_a_file": BadCase(
        {
            **service_setting("state", 'store = "directory"\ndirectory = "indices/px.toml"'),
        },
        "service.toml",
        "`state.directory`",
        "not a directory",
    ),
    "index_calendar_unknown": BadCase(
        appended("indices/px.toml", 'calendar = "New York"\n'),
        "indices/px.toml",
        "`calendar`",
    ),
    # --- text that would forge or garble log lines
    "index_id_with_trailing_newline": BadCase(
        replaced("indices/px.toml", 'id = "PX"', 'id = "PX\\n"'), "indices/px.toml", "`id`"
    ),
    "index_name_with_newline": BadCase(
        replaced("indices/px.toml", 'name = "Two', 'name = "Fake\\nTwo'),
        "indices/px.toml",
        "`name`",
    ),
    "symbol_with_space": BadCase(
        replaced("indices/px.toml", 'symbol = "BBB"', 'symbol = "BB B"'),
        "indices/px.toml",
        "`constituents.symbol`",
        "whitespace",
    ),
    "symbol_with_newline": BadCase(
        replaced("indices/px.toml", 'symbol = "BBB"', 'symbol = "BBB\\nlevel=1"'),
        "indices/px.toml",
        "`constituents.symbol`",
    ),
    "symbol_with_escape_sequence": BadCase(
        replaced("indices/cap.csv", "DDD,", "D\x1b[2KD,"),
        "indices/cap.toml",
        "`constituents.symbol`",
        "control",
    ),
    "symbol_too_long": BadCase(
        replaced("indices/cap.csv", "DDD,", "D" * 65 + ","),
        "indices/cap.toml",
        "`constituents.symbol`",
        "1..64",
    ),
    "symbol_empty_inline": BadCase(
        replaced("indices/px.toml", 'symbol = "BBB"', 'symbol = ""'),
        "indices/px.toml",
        "`constituents.symbol`",
    ),
}


# One case of each kind of error runs in a real subprocess.
SUBPROCESS_CASES = (
    "unknown_field_in_index",
    "missing_method",
    "duplicate_symbol_csv",
    "zero_shares_csv",
    "zero_divisor",
    "iwf_above_one",
    "unknown_method",
    "unknown_index_currency",
    "missing_csv",
    "bad_csv_number",
)


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs read os.environ: no STREAMER_* variable of the caller's leaks in."""
    for name in list(os.environ):
        if name.startswith("STREAMER_"):
            monkeypatch.delenv(name)


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    directory: Path


def hermetic_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(extra)
    return env


def start_check(
    config: Path, env: dict[str, str], command: str = "check-config"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(STREAMER), command, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str], directory: Path) -> Run:
    stdout, stderr = process.communicate(timeout=60)
    return Run(process.returncode, stdout, stderr, directory)


def run_in_process(
    config: Path, capsys: pytest.CaptureFixture[str], command: str = "check-config"
) -> Run:
    """``streamer check-config`` (or ``command``) through the console script's entry point,
    in this process."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = cli.main([command, "--config", str(config)])
    finally:  # cli.main configures logging for a process; give pytest its handlers back
        root.handlers[:] = handlers
        root.setLevel(level)
    stdout, stderr = capsys.readouterr()
    return Run(code, stdout, stderr, config.parent)


@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """The installed ``streamer check-config`` over the SUBPROCESS_CASES, run concurrently."""
    started = {}
    for name in SUBPROCESS_CASES:
        directory = tmp_path_factory.mktemp(name)
        config = write_config(directory, BAD_CASES[name].files)
        started[name] = (start_check(config, hermetic_env()), directory)
    try:
        yield {name: finish(p, d) for name, (p, d) in started.items()}
    finally:
        for process, _ in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_config_exits_2_with_one_line_naming_file_and_field(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    name: str,
) -> None:
    case = BAD_CASES[name]
    if name in SUBPROCESS_CASES:
        run: Run = request.getfixturevalue("subprocess_runs")[name]
    else:
        run = run_in_process(write_config(tmp_path, case.files), capsys)

    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    [line] = lines
    assert str(run.directory / case.file) in line
    assert case.field in line
    assert case.problem in line
    assert run.stdout == ""
    assert "hunter2" not in line  # a refused password is not echoed


def test_good_config_exits_0_and_prints_a_summary(tmp_path: Path) -> None:
    config = write_config(tmp_path, GOOD_FILES)

    run = finish(start_check(config, hermetic_env()), tmp_path)

    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    px = next(line for line in run.stdout.splitlines() if line.split()[:1] == ["PX"])
    cap = next(line for line in run.stdout.splitlines() if line.split()[:1] == ["CAP"])
    for expected in ("price", "USD", "2 constituents", "divisor 0.5", "variants price"):
        assert expected in px
    for expected in ("cap", "USD", "2 constituents", "variants price,total,net"):
        assert expected in cap


def test_check_config_never_prints_a_password(tmp_path: Path) -> None:
    config = write_config(tmp_path, GOOD_FILES)
    env = hermetic_env(
        STREAMER_REDIS_URL="redis://desk:s3cret@127.0.0.1:6379/1",
        STREAMER_MQTT_PASSWORD="m0squ1tto",
    )

    run = finish(start_check(config, env), tmp_path)

    assert run.returncode == 0, run.stderr
    assert "redis://desk:***@127.0.0.1:6379/1" in run.stdout
    assert "s3cret" not in run.stdout + run.stderr
    assert "m0squ1tto" not in run.stdout + run.stderr


# --------------------------------------------------------------------------- environment


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, GOOD_FILES)


def test_without_environment_the_toml_values_hold(good_config: Path) -> None:
    settings = load_settings(good_config, environ={})

    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.redis.password is None
    assert [d.id for d in settings.indices] == ["CAP", "PX"]


def test_environment_overrides_every_section(good_config: Path, tmp_path: Path) -> None:
    alternative = tmp_path / "alt"
    alternative.mkdir()
    (alternative / "px.toml").write_text(textwrap.dedent(PX_TOML), encoding="utf-8")

    settings = load_settings(
        good_config,
        environ={
            "STREAMER_REDIS_URL": "rediss://cache.internal:6380/2",
            "STREAMER_REDIS_PREFIX": "prod",
            "STREAMER_MQTT_TOPICS": "ticks/#, fx/#",
            "STREAMER_METRICS_LISTEN": "0.0.0.0:9200",
            "STREAMER_PUBLISH_INTERVAL_MS": "250",
            "STREAMER_QUALITY_MAX_MOVE_PCT": "5",
            "STREAMER_QUALITY_STALE_AFTER_S": "30.5",
            "STREAMER_INDICES": "alt/*.toml",
            "UNRELATED": "ignored",
        },
    )

    assert settings.redis.url == "rediss://cache.internal:6380/2"
    assert settings.redis.prefix == "prod"
    assert settings.mqtt.topics == ("ticks/#", "fx/#")
    assert settings.mqtt.client_id == "check-config-test"  # untouched keys keep the TOML value
    assert settings.metrics.listen == "0.0.0.0:9200"
    assert settings.publish.interval_ms == 250
    assert settings.quality.max_move_pct == 5.0
    assert settings.quality.stale_after_s == 30.5
    assert [d.id for d in settings.indices] == ["PX"]


def test_passwords_come_from_the_environment_or_a_file(good_config: Path, tmp_path: Path) -> None:
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text("from-a-file\n", encoding="utf-8")

    settings = load_settings(
        good_config,
        environ={
            "STREAMER_REDIS_PASSWORD": "s3cret",
            "STREAMER_MQTT_PASSWORD_FILE": str(secret_file),
        },
    )

    assert settings.redis.password == "s3cret"
    assert settings.mqtt.password == "from-a-file"
    assert "s3cret" not in repr(settings.redis)
    assert "from-a-file" not in repr(settings.mqtt)


def test_a_url_password_is_redacted_in_repr(good_config: Path) -> None:
    settings = load_settings(
        good_config, environ={"STREAMER_MQTT_URL": "mqtts://feed:pa55@broker:8883"}
    )

    assert settings.mqtt.url == "mqtts://feed:pa55@broker:8883"
    assert "pa55" not in repr(settings.mqtt)


@pytest.mark.parametrize("section", ["mqtt", "redis"])
def test_a_password_in_the_toml_is_refused(tmp_path: Path, section: str) -> None:
    config = write_config(
        tmp_path, replaced("service.toml", f"[{section}]\n", f'[{section}]\npassword = "hunter2"\n')
    )

    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})

    message = str(raised.value)
    assert str(config) in message
    assert f"`{section}.password`" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("STREAMER_PUBLISH_INTERVAL_MS", "-1", "must be an integer in 0..3600000, got -1"),
        ("STREAMER_QUALITY_MAX_MOVE_PCT", "lots", "expected a number, got 'lots'"),
        ("STREAMER_REDIS_URL", "http://nowhere", "must start with redis:// or rediss://"),
    ],
)
def test_a_bad_environment_value_names_the_variable_not_the_file(
    good_config: Path, variable: str, value: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(good_config, environ={variable: value})

    message = str(raised.value)
    assert message.startswith(f"{variable}: ")
    assert problem in message
    assert str(good_config) not in message


def test_an_unreadable_password_file_is_a_config_error(good_config: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    with pytest.raises(ConfigError, match="STREAMER_REDIS_PASSWORD_FILE"):
        load_settings(good_config, environ={"STREAMER_REDIS_PASSWORD_FILE": str(missing)})


# --------------------------------------------------------------------------- strict loading


@dataclass(frozen=True)
class EnvCase:
    environment: dict[str, str]
    start: str  # the line after "streamer: config error: " starts with this
    problem: str = ""  # and contains this


ENV_CASES: dict[str, EnvCase] = {
    "integer_not_a_number": EnvCase(
        {"STREAMER_MQTT_MAX_PAYLOAD_BYTES": "abc"},
        "STREAMER_MQTT_MAX_PAYLOAD_BYTES: expected an integer, got 'abc'",
    ),
    "number_not_a_number": EnvCase(
        {"STREAMER_QUALITY_MAX_FUTURE_S": "soon"},
        "STREAMER_QUALITY_MAX_FUTURE_S: expected a number, got 'soon'",
    ),
    "unknown_key": EnvCase(
        {"STREAMER_MQTT_FOO": "1"}, "STREAMER_MQTT_FOO: unknown setting", "STREAMER_MQTT_URL"
    ),
    "unknown_key_in_a_new_section": EnvCase(
        {"STREAMER_STATE_PATH": "/var/lib/streamer"},
        "STREAMER_STATE_PATH: unknown setting",
        "STREAMER_STATE_DIRECTORY",
    ),
    "recompute_interval_zero": EnvCase(
        {"STREAMER_INGEST_RECOMPUTE_INTERVAL_S": "0"},
        "STREAMER_INGEST_RECOMPUTE_INTERVAL_S: must be a finite number",
        "got 0.0",
    ),
    "recompute_interval_nan": EnvCase(
        {"STREAMER_INGEST_RECOMPUTE_INTERVAL_S": "nan"},
        "STREAMER_INGEST_RECOMPUTE_INTERVAL_S: must be a finite number",
        "got nan",
    ),
    "mqtt_port_out_of_range": EnvCase(
        {"STREAMER_MQTT_URL": "mqtt://127.0.0.1:99999"},
        "STREAMER_MQTT_URL: port 99999 is out of range 1..65535",
    ),
    "redis_port_not_a_number": EnvCase(
        {"STREAMER_REDIS_URL": "redis://127.0.0.1:abc/0"},
        "STREAMER_REDIS_URL: the port is not a number",
    ),
    "bad_url_with_a_password": EnvCase(
        {"STREAMER_REDIS_URL": "http://desk:hunter2@127.0.0.1:6379/0"},
        "STREAMER_REDIS_URL: must start with redis://",
        "http://desk:***@127.0.0.1:6379/0",
    ),
    "topic_filter": EnvCase(
        {"STREAMER_MQTT_TOPICS": "ticks/#, ticks/+x"}, "STREAMER_MQTT_TOPICS: topic filter"
    ),
    "client_id": EnvCase(
        {"STREAMER_MQTT_CLIENT_ID": "two words"}, "STREAMER_MQTT_CLIENT_ID: must not contain"
    ),
    "listen_without_host": EnvCase(
        {"STREAMER_METRICS_LISTEN": ":9108"}, "STREAMER_METRICS_LISTEN: names no host"
    ),
    "session_clock": EnvCase(
        {"STREAMER_SESSION_CLOCK": "sundial"},
        "STREAMER_SESSION_CLOCK: expected one of 'data', 'wall', got 'sundial'",
    ),
    "calendar": EnvCase(
        {"STREAMER_SESSION_CALENDAR": "xnys"}, "STREAMER_SESSION_CALENDAR: unknown calendar"
    ),
    "directory_store_without_directory": EnvCase(
        {"STREAMER_STATE_STORE": "directory"}, "STREAMER_STATE_STORE: ", "state.directory"
    ),
    "max_pending": EnvCase(
        {"STREAMER_CONTROL_MAX_PENDING": "0"}, "STREAMER_CONTROL_MAX_PENDING: must be an integer"
    ),
    "indices": EnvCase(
        {"STREAMER_INDICES": "nowhere/*.toml"},
        "STREAMER_INDICES: no file matches 'nowhere/*.toml'",
    ),
    "password_twice": EnvCase(
        {"STREAMER_REDIS_PASSWORD": "hunter2", "STREAMER_REDIS_PASSWORD_FILE": "/run/pw"},
        "STREAMER_REDIS_PASSWORD_FILE: set either STREAMER_REDIS_PASSWORD or",
    ),
}


def check_one_error_line(run: Run, config: Path, start: str, problem: str = "") -> str:
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    [line] = lines
    assert line.startswith(f"streamer: config error: {start}"), line
    assert problem in line
    assert "hunter2" not in line
    return line


@pytest.mark.parametrize("name", list(ENV_CASES))
def test_an_error_from_the_environment_names_the_variable(
    good_config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    case = ENV_CASES[name]
    for variable, value in case.environment.items():
        monkeypatch.setenv(variable, value)

    run = run_in_process(good_config, capsys)

    line = check_one_error_line(run, good_config, case.start, case.problem)
    assert str(good_config) not in line


def test_the_console_script_names_the_variable(good_config: Path, tmp_path: Path) -> None:
    env = hermetic_env(STREAMER_MQTT_MAX_PAYLOAD_BYTES="abc")

    run = finish(start_check(good_config, env), tmp_path)

    assert run.returncode == 2
    assert run.stderr == (
        "streamer: config error: STREAMER_MQTT_MAX_PAYLOAD_BYTES: expected an integer, got 'abc'\n"
    )


def test_a_password_file_that_is_not_utf8_names_the_variable(
    good_config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_bytes("hunter2-é".encode("latin-1"))
    monkeypatch.setenv("STREAMER_REDIS_PASSWORD_FILE", str(secret))

    run = run_in_process(good_config, capsys)

    check_one_error_line(run, good_config, "STREAMER_REDIS_PASSWORD_FILE: ", "not UTF-8")


def test_kubernetes_service_links_are_ignored(good_config: Path) -> None:
    settings = load_settings(
        good_config,
        environ={
            "STREAMER_REDIS_SERVICE_HOST": "10.0.0.7",
            "STREAMER_REDIS_SERVICE_PORT": "6379",
            "STREAMER_REDIS_PORT": "tcp://10.0.0.7:6379",
            "STREAMER_REDIS_PORT_6379_TCP_ADDR": "10.0.0.7",
            "STREAMER_METRICS_SERVICE_PORT_METRICS": "9108",
            "STREAMER_MQTT_PRIMARY_SERVICE_HOST": "10.0.0.8",  # Service streamer-mqtt-primary
        },
    )

    assert settings.redis.url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "name",
    [
        "mqtt_port_out_of_range",
        "redis_port_not_a_number",
        "topic_plus_not_alone",
        "recompute_interval_zero",
        "listen_without_host",
        "csv_not_utf8",
        "constituents_is_a_directory",
        "symbol_with_newline",
    ],
)
def test_streamer_run_reports_a_bad_config_the_same_way(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    case = BAD_CASES[name]
    config = write_config(tmp_path, case.files)

    run = run_in_process(config, capsys, command="run")

    line = check_one_error_line(run, config, str(tmp_path / case.file))
    assert case.field in line
    assert case.problem in line


def test_streamer_run_console_script_exits_2_before_connecting(tmp_path: Path) -> None:
    case = BAD_CASES["topic_plus_not_alone"]
    config = write_config(tmp_path, case.files)

    run = finish(start_check(config, hermetic_env(), command="run"), tmp_path)

    check_one_error_line(run, config, str(config), case.problem)


@pytest.mark.parametrize(
    ("variable", "url", "shown", "secrets"),
    [
        (
            "STREAMER_REDIS_URL",
            "redis://127.0.0.1:6379/0?password=qu3ry",
            "redis://127.0.0.1:6379/0?password=***",
            ["qu3ry"],
        ),
        (
            "STREAMER_REDIS_URL",
            "redis://desk:p@ss:w0rd@127.0.0.1:6379/1",
            "redis://desk:***@127.0.0.1:6379/1",
            ["p@ss", "ss:w0rd", "w0rd"],
        ),
        (
            "STREAMER_MQTT_URL",
            "mqtts://feed:s3:cr@t@127.0.0.1:8883",
            "mqtts://feed:***@127.0.0.1:8883",
            ["s3:cr", "cr@t"],
        ),
    ],
)
def test_check_config_masks_query_and_awkward_passwords(
    good_config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    url: str,
    shown: str,
    secrets: list[str],
) -> None:
    monkeypatch.setenv(variable, url)

    run = run_in_process(good_config, capsys)

    assert run.returncode == 0, run.stderr
    assert shown in run.stdout
    for secret in secrets:
        assert secret not in run.stdout + run.stderr


def test_new_settings_have_their_defaults(good_config: Path) -> None:
    settings = load_settings(good_config, environ={})

    assert (settings.quality.max_future_s, settings.quality.seq_reset_after_s) == (5.0, 30.0)
    assert settings.session == SessionSettings(
        calendar="24/7", close_delay_s=5.0, outside_session="reject", clock="wall"
    )
    assert settings.state == StateSettings(store="redis", directory="", checkpoint_interval_s=5.0)
    assert settings.control == ControlSettings(max_pending=10_000, id_retention_days=30.0)
    assert all(d.calendar is None for d in settings.indices)


def test_new_settings_come_from_the_toml_and_the_environment(tmp_path: Path) -> None:
    files = {
        **GOOD_FILES,
        "service.toml": textwrap.dedent(SERVICE_TOML)
        + textwrap.dedent(
            """
            [quality]
            max_future_s = 2.5
            seq_reset_after_s = 60

            [session]
            calendar = "XNYS"
            close_delay_s = 0
            outside_session = "accept"

            [state]
            store = "directory"
            directory = "state"

            [control]
            max_pending = 5
            """
            # SERVICE_TOML ends in [quality]: the new keys join it rather than repeat the table.
        ).replace("[quality]\n", "", 1),
        "indices/px.toml": textwrap.dedent(PX_TOML) + 'calendar = "XLON"\n',
    }
    config = write_config(tmp_path, files)

    settings = load_settings(
        config,
        environ={
            "STREAMER_SESSION_CLOCK": "data",
            "STREAMER_STATE_CHECKPOINT_INTERVAL_S": "1.5",
            "STREAMER_CONTROL_ID_RETENTION_DAYS": "7",
        },
    )

    assert (settings.quality.max_future_s, settings.quality.seq_reset_after_s) == (2.5, 60.0)
    assert settings.session == SessionSettings(
        calendar="XNYS", close_delay_s=0.0, outside_session="accept", clock="data"
    )
    assert settings.state == StateSettings(
        store="directory", directory=str((tmp_path / "state").resolve()), checkpoint_interval_s=1.5
    )
    assert settings.control == ControlSettings(max_pending=5, id_retention_days=7.0)
    calendars = {d.id: d.calendar for d in settings.indices}
    assert calendars == {"PX": "XLON", "CAP": None}


def test_a_state_directory_from_the_environment_is_relative_to_the_config(
    good_config: Path,
) -> None:
    settings = load_settings(
        good_config,
        environ={"STREAMER_STATE_STORE": "directory", "STREAMER_STATE_DIRECTORY": "run/state"},
    )

    assert settings.state.directory == str((good_config.parent / "run/state").resolve())


@pytest.mark.parametrize("listen", ["0.0.0.0:9108", "[::]:9108", "[::1]:9108", "localhost:9108"])
def test_an_explicit_listen_host_is_accepted(good_config: Path, listen: str) -> None:
    settings = load_settings(good_config, environ={"STREAMER_METRICS_LISTEN": listen})

    assert settings.metrics.listen == listen


@pytest.mark.parametrize("calendar", ["24/7", "24/5", "XNYS", "XLON", "CMES", "XHKG", "IEPA"])
def test_exchange_calendars_names_pass(calendar: str) -> None:
    assert validate_calendar_name(calendar) is None


@pytest.mark.parametrize("calendar", ["", "xnys", "XN", "XNYSEE", "US:NYSE", "X:NYSE", "XNYS\n"])
def test_other_calendar_names_are_refused(calendar: str) -> None:
    problem = validate_calendar_name(calendar)

    assert problem is not None
    assert "\n" not in problem
