"""The funds table of ``streamer watch``: seeded from the directory and the fund hashes as the
service writes them, then moved by a channel message."""

from __future__ import annotations

import redis
from rich.console import Console

from streamer.commands.watch import WatchTarget, snapshot
from streamer.engine.funds import FundLevel
from streamer.fund_config import Basket, FundDefinition, HoldingSpec
from streamer.fund_outputs import fund_directory, fund_record, parse_fund_messages
from streamer.keys import KeyLayout
from streamer.localservices import LocalRedis
from streamer.outputs import parse_levels_message
from streamer.tools.funds_view import FundsBoard, render_funds
from streamer.tools.levels_view import LevelsBoard

T = 1_764_000_000_000_000_000


def level(inav: float, listing: float) -> FundLevel:
    return FundLevel(
        fund="F1", inav=inav, listing=listing, premium_bps=(listing - inav) / inav * 1e4,
        td_bps=-1.5, nav_prev=100.0, index="IX.NTR", index_level=1000.0, stale=0,
        coverage=1.0, holdings=2, source_ts=T,
    )  # fmt: skip


def text_of(board: FundsBoard) -> str:
    console = Console(record=True, width=120)
    console.print(render_funds(board, T))
    return console.export_text()


def test_seeded_from_the_directory_then_moved_by_the_channel(redis_server: LocalRedis) -> None:
    keys = KeyLayout("p")
    definition = FundDefinition(
        id="F1", tracks="IX.NTR", listing="F1L",
        basket=Basket(holdings=(HoldingSpec(symbol="A", shares=1.0),)),
    )  # fmt: skip
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    for name, entry in fund_directory([definition], {}, keys).items():
        client.hset("p:series", name, entry)
    _, fields = fund_record(level(100.0, 100.2), 1, T)
    client.hset(keys.fund("F1"), mapping=dict(zip(fields[::2], fields[1::2], strict=True)))
    board = FundsBoard()
    board.seed(client, "p")
    shown = text_of(board)
    assert "F1" in shown and "IX.NTR" in shown and "100.0000" in shown and "+20.0" in shown
    # A channel message: a fund object, which index readers skip.
    moved, _ = fund_record(level(100.0, 99.9), 2, T)
    payload = b"[" + moved.message + b"]"
    assert parse_levels_message(payload) == []
    for fund in parse_fund_messages(payload):
        board.update(str(fund["fund"]), fund)
    assert "-10.0" in text_of(board)


def test_a_fund_in_the_directory_is_no_row_of_the_levels_board(redis_server: LocalRedis) -> None:
    keys = KeyLayout("p")
    definition = FundDefinition(
        id="F1", tracks="IX.NTR", listing="F1L",
        basket=Basket(holdings=(HoldingSpec(symbol="A", shares=1.0),)),
    )  # fmt: skip
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    for name, entry in fund_directory([definition], {}, keys).items():
        client.hset("p:series", name, entry)
    target = WatchTarget(url=redis_server.url, password=None, prefix="p")
    findings = snapshot(client, target, LevelsBoard((), (), 10))
    assert "F1" not in findings.series
