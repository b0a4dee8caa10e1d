"""streamer.keys: today's names on a single Redis, one hash slot per shard on a cluster."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from streamer.keys import STATE_PARTS, KeyLayout

SERIES = ["US500", "US500.TR", "US500.NTR", "DEMO30"]


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_single_instance_without_a_shard_gives_todays_names() -> None:
    keys = KeyLayout("streamer")
    assert keys.index("DEMO30.TR") == "streamer:index:DEMO30.TR"
    assert keys.history("US500") == "streamer:history:US500"
    assert keys.closes("US500") == "streamer:closes:US500"
    assert keys.actions() == "streamer:actions"
    assert keys.actions_written() == "streamer:actions:written"
    assert keys.levels_channel() == "streamer:levels"
    assert [keys.state(p) for p in ("structure", "market", "meta", "revision")] == [
        "streamer:state:structure",
        "streamer:state:market",
        "streamer:state:meta",
        "streamer:state:revision",
    ]
    assert STATE_PARTS == ("structure", "market", "meta", "revision")
    # New names, beside today's.
    assert keys.bars("US500") == "streamer:bars:1m:US500"
    assert keys.lease() == "streamer:lease"
    assert keys.directory() == "streamer:series"
    assert keys.series_channel("US500") == "streamer:levels:US500"
    assert keys.hash_tag is None
    assert keys.output_base == keys.shard_base == "streamer"


def test_a_shard_on_a_single_instance_keeps_the_outputs_and_owns_its_state_and_lease() -> None:
    plain, sharded = KeyLayout("streamer"), KeyLayout("streamer", shard="us500")
    for series in SERIES:
        assert sharded.index(series) == plain.index(series)
        assert sharded.history(series) == plain.history(series)
        assert sharded.closes(series) == plain.closes(series)
    assert sharded.actions() == plain.actions()
    assert sharded.levels_channel() == plain.levels_channel()
    assert sharded.directory() == plain.directory()
    assert sharded.state("market") == "streamer:shard:us500:state:market"
    assert sharded.lease() == "streamer:shard:us500:lease"
    other = KeyLayout("streamer", shard="global")
    assert not set(sharded.state_keys()) & set(other.state_keys())
    assert sharded.lease() != other.lease() != plain.lease()


@pytest.mark.parametrize("shard", ["shard-a", "us500", "global", None])
def test_in_cluster_mode_every_key_of_one_shards_cycle_is_in_one_slot(shard: str | None) -> None:
    keys = KeyLayout("streamer", shard=shard, cluster=True)
    cycle = keys.cycle_keys(SERIES)
    assert len(cycle) == len(set(cycle)) == 8 + 4 * len(SERIES)
    assert {slot(k) for k in cycle} == {slot(keys.lease())}
    tag = "streamer" if shard is None else f"streamer:{shard}"
    assert keys.hash_tag == tag
    assert all(k.startswith(f"{{{tag}}}:") for k in cycle)


def test_cluster_names() -> None:
    keys = KeyLayout("streamer", shard="shard-a", cluster=True)
    assert keys.index("US500") == "{streamer:shard-a}:index:US500"
    assert keys.history("US500.TR") == "{streamer:shard-a}:history:US500.TR"
    assert keys.closes("US500") == "{streamer:shard-a}:closes:US500"
    assert keys.bars("US500") == "{streamer:shard-a}:bars:1m:US500"
    assert keys.actions() == "{streamer:shard-a}:actions"
    assert keys.actions_written() == "{streamer:shard-a}:actions:written"
    assert keys.state("revision") == "{streamer:shard-a}:state:revision"
    assert keys.lease() == "{streamer:shard-a}:lease"
    assert keys.output_base == keys.shard_base == "{streamer:shard-a}"
    # Not part of any cycle, the same for every shard and mode.
    assert keys.directory() == "streamer:series"
    assert keys.levels_channel() == "streamer:levels"
    assert keys.series_channel("US500") == "streamer:levels:US500"
    assert KeyLayout("streamer", cluster=True).index("X") == "{streamer}:index:X"


def test_shards_spread_over_slots() -> None:
    names = [f"shard-{n}" for n in range(20)]
    slots = {slot(KeyLayout("streamer", shard=name, cluster=True).lease()) for name in names}
    assert len(slots) == len(names)


def test_the_directory_entry_names_each_series_keys() -> None:
    keys = KeyLayout("streamer", shard="shard-a", cluster=True)
    entry = keys.directory_entry("US500")
    assert entry == {
        "shard": "shard-a",
        "index": "{streamer:shard-a}:index:US500",
        "history": "{streamer:shard-a}:history:US500",
        "closes": "{streamer:shard-a}:closes:US500",
        "bars": "{streamer:shard-a}:bars:1m:US500",
        "actions": "{streamer:shard-a}:actions",
        "channel": "streamer:levels",
        "series_channel": "streamer:levels:US500",
    }
    assert KeyLayout("streamer").directory_entry("US500")["index"] == "streamer:index:US500"
    assert KeyLayout("streamer").directory_entry("US500")["shard"] == ""


def test_invalid_names_are_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        KeyLayout("")
    with pytest.raises(ValueError, match="prefix"):
        KeyLayout("has space")
    with pytest.raises(ValueError, match="braces"):
        KeyLayout("{streamer}", shard="a", cluster=True)
    assert KeyLayout("{streamer}").index("X") == "{streamer}:index:X"  # allowed today
    for shard in ("", "a:b", "a{b}", "a b", "x" * 73):
        with pytest.raises(ValueError, match="shard"):
            KeyLayout("streamer", shard=shard)
    keys = KeyLayout("streamer", shard="a", cluster=True)
    for series in ("", "A:B", "A}B", "A B"):
        with pytest.raises(ValueError, match="series"):
            keys.index(series)
    with pytest.raises(ValueError, match="state part"):
        keys.state("other")


_names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789._-", min_size=1, max_size=72)
_prefixes = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=20,
).filter(lambda p: "{" not in p and "}" not in p and p.isprintable() and not p.isspace())


@given(prefix=_prefixes, shard=_names, series=st.lists(_names, min_size=1, max_size=5))
def test_any_valid_names_keep_a_shards_cycle_in_one_slot(
    prefix: str, shard: str, series: list[str]
) -> None:
    keys = KeyLayout(prefix, shard=shard, cluster=True)
    assert len({slot(k) for k in keys.cycle_keys(series)}) == 1
    # A fund's hash, history and NAV stream are in the shard's slot too.
    assert len({slot(k) for k in keys.cycle_keys(series, funds=series)}) == 1
    single = KeyLayout(prefix)
    assert single.index(series[0]) == f"{prefix}:index:{series[0]}"
