"""Which topics the service subscribes to: as configured, or each constituent's own.

With ``[mqtt] tick_topics = "constituents"`` a tick wildcard of the configured topics
(``ticks/#``, ``ticks/+``) becomes one ``ticks/<symbol>`` filter per constituent of the
service's indices: a shard then receives only its own symbols' ticks (the broker routes
them), so a tick for a symbol no index holds is a real ``unknown_symbol`` again.  Producers
publish each symbol's ticks on ``ticks/<symbol>``; batches a producer can split by shard go on
topics the shard lists itself (``ticks/batch/<shard>``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

TICK_WILDCARDS = frozenset({"ticks/#", "ticks/+"})
# MQTT forbids these inside a topic filter level (wildcards), and NUL anywhere.
_NOT_IN_A_LEVEL = ("+", "#", "\x00")


def tick_topic(symbol: str) -> str | None:
    """The topic of a symbol's ticks, or None when the symbol cannot be one exactly."""
    if not symbol or any(ch in symbol for ch in _NOT_IN_A_LEVEL):
        return None
    return f"ticks/{symbol}"


def subscriptions(
    configured: Sequence[str], mode: str, symbols: Iterable[str]
) -> tuple[list[str], list[str]]:
    """The topic filters to subscribe to, and the symbols that cannot have one."""
    if mode != "constituents":
        return list(configured), []
    topics = [t for t in configured if t not in TICK_WILDCARDS]
    if len(topics) == len(configured):  # no tick wildcard to replace
        return topics, []
    unusable = []
    for symbol in sorted(set(symbols)):
        topic = tick_topic(symbol)
        if topic is None:
            unusable.append(symbol)
        elif topic not in topics:
            topics.append(topic)
    return topics, unusable


def receives_any_symbol(topics: Iterable[str]) -> bool:
    """Whether these filters take ticks of symbols the service may not hold (a wildcard in a
    ``ticks/`` filter): its ``unknown_symbol`` rejections are then expected, not a fault."""
    return any(t.startswith("ticks/") and ("+" in t or "#" in t) for t in topics)
