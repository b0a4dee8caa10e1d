"""The funds table of ``streamer watch``: iNAV, listing, premium and intraday TD per fund."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import redis
from rich.table import Table
from rich.text import Text

from streamer.fund_outputs import FUND_KIND


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


class FundsBoard:
    """The latest published figures of each fund, from its hash and the live channel."""

    def __init__(self) -> None:
        self.funds: dict[str, dict[str, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self.funds)

    def update(self, fund: str, fields: Mapping[str, Any]) -> None:
        if fields:
            self.funds[fund] = dict(fields)

    def seed(self, client: redis.Redis, prefix: str) -> None:
        """Every fund the directory lists (kind fund), from its hash."""
        entries = client.hgetall(f"{prefix}:series")
        keys: dict[str, str] = {}
        for name, value in entries.items():
            try:
                entry = msgspec.json.decode(value)
            except msgspec.DecodeError:
                continue
            if isinstance(entry, dict) and entry.get("kind") == FUND_KIND:
                fund = name.decode() if isinstance(name, bytes) else str(name)
                keys[fund] = str(entry.get("keys", {}).get("fund", f"{prefix}:fund:{fund}"))
        if not keys:
            return
        pipe = client.pipeline(transaction=False)
        for key in keys.values():
            pipe.hgetall(key)
        for fund, fields in zip(keys, pipe.execute(), strict=True):
            self.update(fund, fields)


def _signed(value: float, fmt: str) -> Text:
    if math.isnan(value):
        return Text("-", style="dim")
    style = "green" if value > 0 else "red" if value < 0 else ""
    return Text(format(value, fmt), style=style)


def render_funds(board: FundsBoard, now_ns: int | None = None) -> Table:
    now_ns = time.time_ns() if now_ns is None else now_ns
    table = Table(title="funds", title_justify="left", expand=False, pad_edge=False)
    for name, justify in (
        ("fund", "left"),
        ("tracks", "left"),
        ("iNAV", "right"),
        ("listing", "right"),
        ("premium bps", "right"),
        ("TD bps", "right"),
        ("coverage", "right"),
        ("age", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for fund in sorted(board.funds):
        fields = board.funds[fund]
        inav, listing = _number(fields.get("inav")), _number(fields.get("listing"))
        coverage = _number(fields.get("coverage"))
        ts = _number(fields.get("ts"))
        age = (now_ns - ts) / 1e9 if math.isfinite(ts) else math.nan
        table.add_row(
            fund,
            str(fields.get("tracks", "")),
            "-" if math.isnan(inav) else f"{inav:,.4f}",
            "-" if math.isnan(listing) else f"{listing:,.2f}",
            _signed(_number(fields.get("premium_bps")), "+.1f"),
            _signed(_number(fields.get("td_bps")), "+.2f"),
            "-" if math.isnan(coverage) else f"{coverage:.0%}",
            "-" if math.isnan(age) else f"{age:.0f}s",
        )
    return table
