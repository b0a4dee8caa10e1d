"""Config validation through the command line, and environment overrides.

Each bad config is written into its own directory and checked with
``streamer check-config --config PATH``: exit code 2, exactly one line on stderr naming the
file and the field, never a traceback.  One case of each kind of error runs the installed
console script in a subprocess (all of them concurrently, in one module-scoped fixture); the
variations run the same entry point, ``streamer.cli.main``, in-process, because every
subprocess pays ~0.5 s of interpreter and numpy start-up.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamer import cli
from streamer.config import load_settings
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


def write_config(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return directory / "service.toml"


def replaced(name: str, old: str, new: str) -> dict[str, str]:
    """The good config with one substitution in one file."""
    text = textwrap.dedent(GOOD_FILES[name])
    assert old in text, f"{old!r} not in {name}"
    return {**GOOD_FILES, name: text.replace(old, new, 1)}


def appended(name: str, extra: str) -> dict[str, str]:
    return {**GOOD_FILES, name: textwrap.dedent(GOOD_FILES[name]) + textwrap.dedent(extra)}


@dataclass(frozen=True)
class BadCase:
    files: dict[str, str]
    file: str  # the file the message must name (relative to the config directory)
    field: str  # text naming the field, as it must appear in the message


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


def start_check(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(STREAMER), "check-config", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str], directory: Path) -> Run:
    stdout, stderr = process.communicate(timeout=60)
    return Run(process.returncode, stdout, stderr, directory)


def run_in_process(config: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """``streamer check-config`` through the console script's entry point, in this process."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = cli.main(["check-config", "--config", str(config)])
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
    ("variable", "value", "field"),
    [
        ("STREAMER_PUBLISH_INTERVAL_MS", "-1", "`publish.interval_ms`"),
        ("STREAMER_QUALITY_MAX_MOVE_PCT", "lots", "`quality.max_move_pct`"),
        ("STREAMER_REDIS_URL", "http://nowhere", "`redis.url`"),
    ],
)
def test_a_bad_environment_value_names_the_field(
    good_config: Path, variable: str, value: str, field: str
) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(good_config, environ={variable: value})


def test_an_unreadable_password_file_is_a_config_error(good_config: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    with pytest.raises(ConfigError, match="STREAMER_REDIS_PASSWORD_FILE"):
        load_settings(good_config, environ={"STREAMER_REDIS_PASSWORD_FILE": str(missing)})
