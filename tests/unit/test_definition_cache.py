"""Index definitions are read from a cache when no index file changed (large universes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import streamer.config as config
from streamer.config import load_settings
from streamer.errors import ConfigError


def _universe(directory: Path, indices: int) -> Path:
    (directory / "indices").mkdir(parents=True)
    for k in range(indices):
        (directory / "indices" / f"IX{k}.toml").write_text(
            f'id = "IX{k}"\nmethod = "cap"\nbase_value = 1000.0\nconstituents = "IX{k}.csv"\n'
        )
        (directory / "indices" / f"IX{k}.csv").write_text(
            # One seed price per symbol across indices (load_settings checks it)
            f"symbol,shares,iwf,price\nS{k},1e9,0.5,{10.0 + k}\nS{k + 1},2e9,1.0,{11.0 + k}\n"
        )
    path = directory / "service.toml"
    path.write_text('indices = ["indices/*.toml"]\n')
    return path


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(config, "DEFINITION_CACHE_MIN_FILES", 2)
    return {"XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_second_load_comes_from_the_cache_and_equals_the_first(
    tmp_path: Path, cache_home: dict[str, str]
) -> None:
    path = _universe(tmp_path / "u", 5)
    first = load_settings(path, cache_home)
    assert list((tmp_path / "cache" / "streamer").glob("indices-*.msgpack"))
    # Garbage of the same size, modification time and inode: only the cache can answer.
    csv = tmp_path / "u" / "indices" / "IX1.csv"
    stat = csv.stat()
    with csv.open("r+b") as f:
        f.write(b"#" * stat.st_size)
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load_settings(path, cache_home)
    assert second.indices == first.indices


def test_an_edited_csv_is_read_again(tmp_path: Path, cache_home: dict[str, str]) -> None:
    path = _universe(tmp_path / "u", 4)
    load_settings(path, cache_home)
    csv = tmp_path / "u" / "indices" / "IX2.csv"
    csv.write_text("symbol,shares,iwf,price\nS2,1e9,0.5,12.0\nNEW,3e9,1.0,30.0\n")
    stat = csv.stat()
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    settings = load_settings(path, cache_home)
    by_id = {d.id: d for d in settings.indices}
    assert [c.symbol for c in by_id["IX2"].constituents] == ["S2", "NEW"]
    # An index made invalid is reported, not served from the cache.
    csv.write_text("symbol,shares,iwf,price\nS2,-1,0.5,10.0\n")
    with pytest.raises(ConfigError, match="shares"):
        load_settings(path, cache_home)


def test_an_unreadable_cache_is_ignored(tmp_path: Path, cache_home: dict[str, str]) -> None:
    path = _universe(tmp_path / "u", 3)
    first = load_settings(path, cache_home)
    for cached in (tmp_path / "cache" / "streamer").glob("*.msgpack"):
        cached.write_bytes(b"not msgpack")
    assert load_settings(path, cache_home).indices == first.indices


def test_a_universe_failing_the_cross_index_checks_is_not_cached_as_checked(
    tmp_path: Path, cache_home: dict[str, str]
) -> None:
    path = _universe(tmp_path / "u", 4)
    # S2 is in IX1 and IX2: a second, different seed price for it.
    (tmp_path / "u" / "indices" / "IX2.csv").write_text(
        "symbol,shares,iwf,price\nS2,1e9,0.5,99.0\nS3,2e9,1.0,13.0\n"
    )
    for _ in range(2):  # the second load finds every file as the first left it
        with pytest.raises(ConfigError, match=r"constituents\[S2\]\.price"):
            load_settings(path, cache_home)


def test_an_unchanged_cached_universe_skips_the_cross_index_checks_an_edit_runs_them(
    tmp_path: Path, cache_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _universe(tmp_path / "u", 4)
    first = load_settings(path, cache_home)

    def refuse(definitions: object) -> None:
        raise ConfigError("checked again")

    monkeypatch.setattr(config, "check_definitions", refuse)
    assert load_settings(path, cache_home).indices == first.indices  # as checked when cached
    csv = tmp_path / "u" / "indices" / "IX3.csv"
    stat = csv.stat()
    csv.write_text("symbol,shares,iwf,price\nS3,1e9,0.5,13.0\nS4,2e9,1.0,14.0\n")
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ConfigError, match="checked again"):
        load_settings(path, cache_home)
