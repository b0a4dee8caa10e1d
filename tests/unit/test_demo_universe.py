"""The demo universe under config/: loads, has the intended shape and levels, and is reproducible.

Weights and levels are recomputed here from the seed prices in the CSVs, independently of the
engine: ``w_i = p_i * fx_i * q_i / sum``, with ``q = shares * iwf * awf`` for cap and equal
indices and ``q = awf`` for price-weighted ones.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from streamer.config import IndexDefinition, Settings, load_settings

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
GENERATOR = CONFIG_DIR / "generate_universe.py"

# The FX rates the seed prices assume (USD per unit), as documented in global40.toml.
SEED_FX = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}

SECTOR_CODES = {
    "TECH",
    "HLTH",
    "FINL",
    "DISC",
    "COMM",
    "INDU",
    "STAP",
    "ENRG",
    "UTIL",
    "REIT",
    "MATL",
}


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(CONFIG_DIR / "streamer.toml", environ={})


@pytest.fixture(scope="module")
def indices(settings: Settings) -> dict[str, IndexDefinition]:
    return {d.id: d for d in settings.indices}


def seed_values(index: IndexDefinition) -> npt.NDArray[np.float64]:
    """Each constituent's contribution to sum(p * fx * q) at the seed prices."""
    values = []
    for c in index.constituents:
        assert c.price is not None, f"{index.id}: {c.symbol} has no seed price"
        q = c.awf if index.method == "price" else c.shares * c.iwf * c.awf
        values.append(c.price * SEED_FX[c.currency or index.currency] * q)
    return np.array(values)


def seed_weights(index: IndexDefinition) -> npt.NDArray[np.float64]:
    values = seed_values(index)
    weights: npt.NDArray[np.float64] = values / float(values.sum())
    return weights


def seed_level(index: IndexDefinition) -> float:
    assert index.divisor is not None, f"{index.id} has no fixed divisor"
    return float(seed_values(index).sum()) / index.divisor


def symbols(index: IndexDefinition) -> set[str]:
    return {c.symbol for c in index.constituents}


def test_service_config_uses_loopback_defaults(settings: Settings) -> None:
    assert settings.mqtt.url == "mqtt://127.0.0.1:1883"
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.metrics.listen == "127.0.0.1:9108"
    assert set(settings.mqtt.topics) == {"ticks/#", "fx/#", "control/#", "reference/#"}


def test_index_ids(indices: dict[str, IndexDefinition]) -> None:
    sectors = {f"US500.{code}" for code in SECTOR_CODES}
    assert set(indices) == {"DEMO30", "US500", "US500EW", "US500C", "GLOBAL40"} | sectors


def test_demo30_is_price_weighted_near_44000(indices: dict[str, IndexDefinition]) -> None:
    demo30 = indices["DEMO30"]
    assert demo30.method == "price"
    assert len(demo30.constituents) == 30
    assert set(demo30.variants) == {"price", "total", "net"}
    assert seed_level(demo30) == pytest.approx(44_000, rel=1e-3)


def test_us500_is_cap_weighted_near_6000(indices: dict[str, IndexDefinition]) -> None:
    us500 = indices["US500"]
    assert us500.method == "cap"
    assert len(us500.constituents) == 500
    assert set(us500.variants) == {"price", "total", "net"}
    assert seed_level(us500) == pytest.approx(6_000, rel=1e-3)
    for c in us500.constituents:
        assert 5e7 <= c.shares <= 2.5e10, c  # 15B for generated names; NVDA has 24.5B
        assert 0.0 < c.iwf <= 1.0, c
        assert c.price is not None
        assert 10.0 <= c.price <= 1000.0, c
    iwf = np.array([c.iwf for c in us500.constituents])
    assert np.mean(iwf >= 0.8) > 0.8
    withholding = {c.withholding for c in us500.constituents}
    assert withholding == {0.15, 0.30}


def test_dow_names_are_us500_members(indices: dict[str, IndexDefinition]) -> None:
    assert symbols(indices["DEMO30"]) <= symbols(indices["US500"])


def test_sectors_partition_us500(indices: dict[str, IndexDefinition]) -> None:
    us500 = {c.symbol: c for c in indices["US500"].constituents}
    sectors = [d for key, d in indices.items() if key.startswith("US500.")]
    assert len(sectors) == 11
    seen: set[str] = set()
    for sector in sectors:
        assert sector.method == "cap"
        members = symbols(sector)
        assert not members & seen, f"{sector.id} overlaps another sector"
        seen |= members
        for c in sector.constituents:
            assert c == us500[c.symbol], f"{sector.id}: {c.symbol} differs from US500"
        assert seed_level(sector) == pytest.approx(1_000, rel=1e-3)
    assert seen == set(us500)


def test_equal_weights_are_equal_at_seed_prices(indices: dict[str, IndexDefinition]) -> None:
    ew = indices["US500EW"]
    assert ew.method == "equal"
    assert ew.base_value == 1000.0
    assert symbols(ew) == symbols(indices["US500"])
    weights = seed_weights(ew)
    np.testing.assert_allclose(weights, 1.0 / len(weights), rtol=1e-6)


def test_capped_weights_stay_under_5pct(indices: dict[str, IndexDefinition]) -> None:
    capped = indices["US500C"]
    assert capped.method == "cap"
    assert symbols(capped) == symbols(indices["US500"])
    assert seed_weights(indices["US500"]).max() > 0.05, "capping would be vacuous"
    assert seed_weights(capped).max() <= 0.05 + 1e-9
    assert any(c.awf < 1.0 for c in capped.constituents)
    assert all(0.0 < c.awf <= 1.0 for c in capped.constituents)
    assert seed_level(capped) == pytest.approx(6_000, rel=1e-3)


def test_global40_mixes_currencies(indices: dict[str, IndexDefinition]) -> None:
    global40 = indices["GLOBAL40"]
    assert global40.currency == "USD"
    assert global40.base_value == 1000.0
    currencies = [c.currency for c in global40.constituents]
    assert currencies.count("USD") == 20
    assert currencies.count("EUR") == 10
    assert currencies.count("GBP") == 10
    weights = seed_weights(global40)
    non_us = sum(w for w, cur in zip(weights, currencies, strict=True) if cur != "USD")
    assert 0.05 < non_us < 0.5


def test_shared_symbols_have_one_seed_price(settings: Settings) -> None:
    prices: dict[str, float] = {}
    for index in settings.indices:
        for c in index.constituents:
            assert c.price is not None, f"{index.id}: {c.symbol} has no seed price"
            assert prices.setdefault(c.symbol, c.price) == c.price, c.symbol
    assert 500 <= len(prices) <= 600


def committed_files() -> dict[str, bytes]:
    paths = [
        CONFIG_DIR / "streamer.toml",
        *sorted((CONFIG_DIR / "indices").iterdir()),
        *sorted((CONFIG_DIR / "funds").iterdir()),
    ]
    return {str(p.relative_to(CONFIG_DIR)): p.read_bytes() for p in paths}


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path), "--quiet"],
        check=True,
        timeout=60,
    )
    generated = {
        str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
    }
    committed = committed_files()
    assert sorted(generated) == sorted(committed)
    for name, content in committed.items():
        assert generated[name] == content, f"{name} differs from the generator's output"


def test_demo_funds_replicate_and_sample_us500(settings: Settings) -> None:
    """The full-replication fund holds every US500 name, the sampled one its 100 largest;
    both are worth 600 per unit at the seed prices (cash takes the rounding)."""
    us500 = next(d for d in settings.indices if d.id == "US500")
    prices = {c.symbol: c.price for c in us500.constituents}
    funds = {f.id: f for f in settings.funds}
    assert sorted(funds) == ["US5FULL", "US5SAMP"]
    assert {h.symbol for h in funds["US5FULL"].basket.holdings} == set(prices)
    assert len(funds["US5SAMP"].basket.holdings) == 100
    for f in funds.values():
        assert f.tracks == "US500.NTR"
        basket = f.basket
        value = sum(h.shares * (prices[h.symbol] or 0.0) for h in basket.holdings)
        assert (value + basket.cash) / basket.units == pytest.approx(600.0, rel=1e-9)
    assert funds["US5FULL"].expense_ratio < funds["US5SAMP"].expense_ratio
