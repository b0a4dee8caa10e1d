"""The simulated market: GBM properties, the universe from a config, tick payloads."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from streamer.config import load_settings
from streamer.mqtt.codec import encode_remaining_length
from streamer.tools.feed import (
    TRADING_SECONDS_PER_YEAR,
    FeedUniverse,
    GbmMarket,
    round_to_tick,
    starting_fx_rate,
)
from streamer.tools.pacing import Pacer
from streamer.tools.tick_encoding import TickEncoder
from streamer.wire import DECODERS, Tick
from tests.conftest import write_service_config

SYMBOLS = tuple(f"S{i:03d}" for i in range(50))


def market(seed: int = 1, n: int = 50) -> GbmMarket:
    universe = FeedUniverse(SYMBOLS[:n], np.linspace(10.0, 500.0, n))
    return GbmMarket(universe, seed=seed)


def test_opening_prints_every_symbol_at_its_starting_price() -> None:
    m = market()
    chunk = m.opening()
    assert chunk.symbol_ids.tolist() == list(range(50))
    np.testing.assert_allclose(chunk.prices, round_to_tick(np.linspace(10.0, 500.0, 50)))
    assert chunk.seqs.tolist() == [1] * 50


def test_prices_are_positive_and_on_the_tick_grid() -> None:
    m = market()
    chunk = m.step(m.random_symbols(20_000), np.linspace(0.0, 3_600.0 * 6.5, 20_000))
    assert (chunk.prices >= 0.01).all()
    cents = chunk.prices * 100
    np.testing.assert_allclose(cents, np.round(cents), atol=1e-6)


def test_sequence_numbers_increase_per_symbol_across_chunks() -> None:
    m = market(n=5)
    seen: dict[int, list[int]] = {}
    for k in range(3):
        ids = m.random_symbols(200)
        chunk = m.step(ids, np.linspace(k * 10.0, k * 10.0 + 9.0, 200))
        for sid, seq in zip(chunk.symbol_ids.tolist(), chunk.seqs.tolist(), strict=True):
            seen.setdefault(sid, []).append(seq)
    for seqs in seen.values():
        assert seqs == list(range(1, len(seqs) + 1))


def test_repeated_symbols_in_a_chunk_chain_their_moves() -> None:
    """With beta 1 and no own noise a stock follows the market exactly, however often it
    ticks in a chunk: its log price is the start plus the market's move minus the Ito drift."""
    m = market(seed=5, n=2)
    m.beta[:] = 1.0
    m.idio_vol[:] = 0.0
    start = m.log_price.copy()
    ids = np.array([0, 1, 0, 0, 1], dtype=np.int64)
    times = np.array([1.0, 2.0, 3.0, 4.0, 5.0]) * 3_600.0
    m.step(ids, times)
    drift = 0.5 * m.market_vol**2 * times[-1] / TRADING_SECONDS_PER_YEAR
    assert m.log_price[1] == pytest.approx(start[1] + m.market - drift, abs=1e-12)
    assert m.seq.tolist() == [3, 2]


def test_stocks_are_correlated_through_the_market_factor() -> None:
    m = market(seed=3)
    last = m.log_price.copy()
    returns = []
    for hour in range(1, 300):
        m.step(np.arange(50, dtype=np.int64), np.full(50, hour * 3600.0))
        returns.append(m.log_price - last)
        last = m.log_price.copy()
    corr = np.corrcoef(np.array(returns).T)
    mean_pairwise = (corr.sum() - 50) / (50 * 49)
    assert 0.15 < mean_pairwise < 0.7


def test_same_seed_same_feed() -> None:
    a, b = market(seed=11), market(seed=11)
    ids_a, ids_b = a.random_symbols(100), b.random_symbols(100)
    times = np.linspace(0, 100, 100)
    assert (a.step(ids_a, times).prices == b.step(ids_b, times).prices).all()


def test_universe_from_config_has_seed_prices_and_the_fx_pairs_it_needs(tmp_path: Path) -> None:
    (tmp_path / "indices").mkdir()
    indices = {
        "g.toml": """
            id = "G3"
            method = "cap"
            currency = "USD"
            base_value = 1000.0
            constituents = [
              { symbol = "AAA", shares = 10.0, price = 12.5 },
              { symbol = "EEE", shares = 10.0, currency = "EUR", price = 40.0 },
              { symbol = "GGG", shares = 10.0, currency = "GBP" },
            ]
        """,
        "p.toml": """
            id = "P1"
            method = "price"
            divisor = 1.0
            constituents = [{ symbol = "AAA" }, { symbol = "ZZZ" }]
        """,
    }
    cfg = write_service_config(tmp_path, "mqtt://127.0.0.1:1", "redis://127.0.0.1:1/0", indices)
    universe = FeedUniverse.from_settings(load_settings(cfg.path))
    prices = dict(zip(universe.symbols, universe.start_prices.tolist(), strict=True))
    assert prices == {"AAA": 12.5, "EEE": 40.0, "GGG": 100.0, "ZZZ": 100.0}
    assert universe.fx_pairs == ("EURUSD", "GBPUSD")
    assert universe.fx_start.tolist() == [1.08, 1.27]


def test_fx_rates_move_and_keep_their_quoting_precision() -> None:
    universe = FeedUniverse(
        ("A",),
        np.array([1.0]),
        ("EURUSD", "USDJPY"),
        np.array([starting_fx_rate("EURUSD"), starting_fx_rate("USDJPY")]),
    )
    m = GbmMarket(universe, seed=2)
    rates = m.fx_step(3_600.0 * 100)
    assert rates[0] != 1.08 and abs(rates[0] / 1.08 - 1) < 0.1
    assert rates[0] == round(rates[0], 5) and rates[1] == round(rates[1], 3)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_batch_payloads_decode_with_the_service_decoder(fmt: str) -> None:
    m = market()
    encoder = TickEncoder(SYMBOLS)
    chunk = m.step(m.random_symbols(1_000), np.linspace(0, 10, 1_000))
    payload = encoder.batch_payload(chunk.symbol_ids, chunk.prices, chunk.seqs, 123, fmt)  # type: ignore[arg-type]
    decoded = DECODERS["tick"].decode(payload)
    assert decoded.malformed == 0
    assert decoded.messages == [
        Tick(SYMBOLS[i], p, 123, q)
        for i, p, q in zip(
            chunk.symbol_ids.tolist(), chunk.prices.tolist(), chunk.seqs.tolist(), strict=True
        )
    ]


def _parse_publish(packet: bytes) -> tuple[str, bytes]:
    assert packet[0] == 0x30
    length, shift, pos = 0, 0, 1
    while True:
        byte = packet[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    assert len(packet) - pos == length
    topic_len = int.from_bytes(packet[pos : pos + 2], "big")
    topic = packet[pos + 2 : pos + 2 + topic_len].decode()
    return topic, packet[pos + 2 + topic_len :]


def test_single_packets_are_mqtt_publish_on_the_symbol_topic() -> None:
    encoder = TickEncoder(("AAPL", "BRK.B"))
    packets = encoder.single_packets(
        np.array([1, 0]), np.array([412.5, 189.25]), np.array([7, 8]), 99, "json"
    )
    parsed = [_parse_publish(p) for p in packets]
    assert parsed[0][0] == "ticks/BRK.B"
    assert msgspec.json.decode(parsed[0][1], type=Tick) == Tick("BRK.B", 412.5, 99, 7)
    assert parsed[1][0] == "ticks/AAPL"


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_encoding(length: int, encoded: bytes) -> None:
    assert encode_remaining_length(length) == encoded


def test_pacer_releases_at_the_rate_and_caps_the_backlog() -> None:
    now = [0.0]
    pacer = Pacer(1_000.0, max_lag_s=0.5, clock=lambda: now[0])
    assert pacer.due() == 0
    now[0] = 0.010
    assert pacer.due() == 10
    pacer.release(10)
    now[0] = 0.0105
    assert pacer.due() == 0
    assert pacer.seconds_until_next() == pytest.approx(0.0005)
    now[0] = 5.0  # stalled for seconds: at most half a second of catch-up
    assert pacer.due() == 500
    assert pacer.skipped == 5_000 - 10 - 500
