"""Restoring a stored state against a config: every reconciliation case and its outcome."""

from __future__ import annotations

import msgspec
import pytest

from streamer.config import IndexDefinition, QualitySettings
from streamer.engine import Engine, snapshot
from streamer.errors import StateError
from streamer.wire import AddConstituent, Split, Tick
from tests.unit.builders import REL, T0, at, index, member


def px() -> IndexDefinition:
    return index("PX", "price", member("A", 100.0), member("B", 50.0), divisor=1.0)


def cap() -> IndexDefinition:
    return index(
        "CAP", "cap", member("A", 100.0, shares=1e6), member("B", 50.0, shares=2e6), divisor=1e6
    )


def running(*definitions: IndexDefinition) -> Engine:
    """An engine that has lived: a split on A (the price-weighted divisor moves), ticks."""
    e = Engine(definitions, QualitySettings(max_move_pct=90.0), start_ns=T0)
    e.apply(actions=[Split(id="split-A", symbol="A", ratio=2.0, effective=at(1))], now=at(1))
    e.apply(ticks=[Tick("A", 51.0, at(2)), Tick("B", 49.0, at(2))], now=at(2))
    return e


def stored(e: Engine, *definitions: IndexDefinition) -> snapshot.Snapshot:
    taken = snapshot.take(e.state, definitions)
    return snapshot.decode_parts(
        snapshot.encode_part(taken.structure), snapshot.encode_part(taken.market)
    )


def resume(
    saved: snapshot.Snapshot, *definitions: IndexDefinition, reset: tuple[str, ...] = ()
) -> tuple[Engine, snapshot.Reconciliation]:
    state, report = snapshot.restore(saved, definitions, reset=reset, start_ns=at(3))
    return Engine(
        definitions, QualitySettings(max_move_pct=90.0), start_ns=at(3), state=state
    ), report


def test_an_unchanged_index_continues_exactly_where_it_stood() -> None:
    before = running(px(), cap())
    after, report = resume(stored(before, px(), cap()), px(), cap())
    assert report.kept == ["PX", "CAP"] and not report.fresh and not report.dropped
    # The split's divisor (not the config's 1.0) and the last prices come back.
    assert after.divisor[0] == pytest.approx(before.divisor[0], rel=REL)
    assert after.divisor[0] != 1.0
    assert after.series_levels() == pytest.approx(before.series_levels(), rel=REL)
    assert after.price_of("A") == 51.0
    # An action already applied is not applied again when redelivered.
    again = after.apply(actions=[Split(id="split-A", symbol="A", ratio=2.0)], now=at(4))
    assert again.rejected_actions == [("split-A", "duplicate")]


def test_an_index_added_to_the_config_starts_fresh_from_current_prices() -> None:
    before = running(px())
    added = index("NEW", "price", member("A"), member("B"), base_value=100.0)
    after, report = resume(stored(before, px()), px(), added)
    assert report.kept == ["PX"] and report.fresh == ["NEW"]
    # Established at the restored prices (A 51, B 49): base value 100.
    assert after.level_of("NEW") == pytest.approx(100.0, rel=REL)
    assert after.divisor[1] == pytest.approx((51 + 49) / 100.0, rel=REL)


def test_an_index_removed_from_the_config_is_dropped_and_reported() -> None:
    before = running(px(), cap())
    after, report = resume(stored(before, px(), cap()), px())
    assert report.kept == ["PX"] and report.dropped == ["CAP"]
    assert after.series_ids == ("PX",)


@pytest.mark.parametrize(
    ("changed", "difference"),
    [
        (index("PX", "cap", member("A", shares=1.0), member("B", shares=1.0), divisor=1.0),
         "method price -> cap"),
        (index("PX", "price", member("A"), member("B"), member("C", 10.0), divisor=1.0),
         "constituents +C"),
        (index("PX", "price", member("A"), divisor=1.0), "constituents -B"),
        (index("PX", "price", member("A"), member("B"), divisor=1.0, currency="EUR"),
         "currency USD -> EUR"),
        (index("PX", "price", member("A"), member("B"), divisor=2.0),
         "divisor, base value or constituent parameters"),
    ],
)  # fmt: skip
def test_a_changed_definition_refuses_to_start_naming_the_index_and_the_difference(
    changed: IndexDefinition, difference: str
) -> None:
    saved = stored(running(px()), px())
    with pytest.raises(StateError) as error:
        snapshot.restore(saved, [changed], start_ns=at(3))
    message = str(error.value)
    assert "index PX" in message and difference in message
    assert "\n" not in message and "--reset-index PX" in message


def test_a_changed_definition_starts_afresh_when_the_operator_resets_it() -> None:
    changed = index("PX", "price", member("A", 100.0), member("C", 10.0), divisor=1.0)
    after, report = resume(stored(running(px()), px()), changed, reset=("PX",))
    assert report.reset == ["PX"] and report.fresh == ["PX"]
    assert after.divisor[0] == 1.0  # the config's, not the split's
    assert after.level_of("PX") == pytest.approx(51.0 + 10.0)


def test_an_unknown_format_version_is_refused() -> None:
    saved = stored(running(px()), px())
    future = snapshot.Snapshot(
        msgspec.structs.replace(saved.structure, format=snapshot.FORMAT_VERSION + 1),
        saved.market,
    )
    with pytest.raises(StateError, match="format"):
        snapshot.restore(future, [px()], start_ns=at(3))


def test_parts_of_different_revisions_are_refused_rather_than_mixed() -> None:
    saved = stored(running(px()), px())
    mixed = snapshot.Snapshot(
        saved.structure, msgspec.structs.replace(saved.market, revision=saved.market.revision + 1)
    )
    with pytest.raises(StateError, match="inconsistent"):
        snapshot.restore(mixed, [px()], start_ns=at(3))


def test_damaged_bytes_are_refused_with_one_line() -> None:
    with pytest.raises(StateError, match="cannot be read"):
        snapshot.decode_parts(b"\xc1garbage", b"\x00")


def test_a_symbol_whose_currency_changed_is_refused() -> None:
    saved = stored(running(px()), px())
    other = index("EUR1", "price", member("A", currency="EUR"), base_value=100.0)
    with pytest.raises(StateError, match="symbol A: currency USD"):
        snapshot.restore(saved, [px(), other], start_ns=at(3))


def test_pending_actions_and_added_members_survive() -> None:
    e = running(px())
    add = AddConstituent(id="add-C", index="PX", symbol="C", price=10.0, effective=at(1))
    e.apply(actions=[add], now=at(2))  # effective already: applied
    later = Split(id="split-B", symbol="B", ratio=2.0, effective=at(100))
    e.apply(actions=[later], now=at(2))  # pending
    after, _ = resume(stored(e, px()), px())
    assert set(after.constituents("PX")) == {"A", "B", "C"}
    assert after.pending_actions == 1
    assert after.series_levels() == pytest.approx(e.series_levels(), rel=REL)
    [record] = after.advance(at(100)).audit
    assert record.action_id == "split-B"


def test_seed_prices_of_added_indices_price_new_and_unpriced_stored_symbols() -> None:
    # C is stored but never priced (PXC is waiting for it); N is new and in two added indices.
    waiting = index("PXC", "price", member("A", 100.0), member("C"), divisor=1.0)
    before = running(px(), waiting)
    assert before.level_of("PXC") is None
    added = (
        index("N1", "price", member("N", 7.0), member("B", 50.0), divisor=1.0),
        index("N2", "price", member("N", 7.0), member("C", 3.0), divisor=1.0),
    )
    seeded_waiting = index("PXC", "price", member("A", 100.0), member("C", 3.0), divisor=1.0)
    after, report = resume(stored(before, px(), waiting), px(), seeded_waiting, *added)
    assert report.kept == ["PX", "PXC"] and report.fresh == ["N1", "N2"]
    assert after.price_of("N") == 7.0
    assert after.price_of("C") == 3.0  # the config's seed, as the stored state had none
    assert after.price_of("A") == 51.0  # a stored price is not replaced by a seed
    assert after.series_without_level() == []
    assert after.level_of("N2") == pytest.approx(7.0 + 3.0, rel=REL)
