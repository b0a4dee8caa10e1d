"""Which topic filters the service subscribes to."""

from __future__ import annotations

from streamer.topics import receives_any_symbol, subscriptions, tick_topic

CONFIGURED = ("ticks/#", "fx/#", "control/#", "reference/#", "ticks/batch/us500")


def test_all_keeps_the_configured_topics() -> None:
    assert subscriptions(CONFIGURED, "all", ["AAA"]) == (list(CONFIGURED), [])


def test_constituents_replace_the_tick_wildcard_with_one_topic_per_symbol() -> None:
    topics, unusable = subscriptions(CONFIGURED, "constituents", ["BBB", "AAA", "BRK/B", "X+Y"])
    assert topics == [
        "fx/#", "control/#", "reference/#", "ticks/batch/us500",
        "ticks/AAA", "ticks/BBB", "ticks/BRK/B",
    ]  # fmt: skip
    assert unusable == ["X+Y"]


def test_without_a_tick_wildcard_nothing_is_added() -> None:
    assert subscriptions(("fx/#", "ticks/batch/a"), "constituents", ["AAA"]) == (
        ["fx/#", "ticks/batch/a"],
        [],
    )


def test_a_symbol_is_a_topic_level_only_without_wildcards_or_nul() -> None:
    assert tick_topic("AAA") == "ticks/AAA"
    assert [tick_topic(s) for s in ("", "A#", "A+", "A\x00")] == [None, None, None, None]


def test_only_a_tick_wildcard_receives_any_symbol() -> None:
    assert receives_any_symbol(["ticks/#", "control/#"])
    assert receives_any_symbol(["ticks/+/x"])
    assert not receives_any_symbol(["ticks/AAA", "fx/#", "control/#", "reference/#"])
    assert not receives_any_symbol([])
