"""The one divisor adjustment: every event that changes ``sum(p * q)`` with no market move.

Sums before and after the change are taken at the same prices, so

    divisor_new = divisor_old * S_after / S_before

keeps each level where it was.  An index not yet established, or not completely priced before
and after, keeps its divisor (its level is not defined across the change).
"""

from __future__ import annotations

import math

import numpy as np

from streamer.engine.arrays import F64, I64
from streamer.engine.results import AuditRecord

# A divisor ratio this close to 1 is rounding, not an event (e.g. a cap-weighted split).
DIVISOR_EPSILON = 1e-13


def continuous_divisors(
    divisor: F64, before: F64, after: F64, missing_before: I64, missing_after: I64
) -> F64:
    """The divisors that keep levels continuous across a change (per index)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = after / before
    adjustable = (
        ~np.isnan(divisor)
        & (missing_before == 0)
        & (missing_after == 0)
        & (before > 0)
        & (np.abs(ratio - 1.0) > DIVISOR_EPSILON)
    )
    result: F64 = np.where(adjustable, divisor * ratio, divisor)
    return result


def audit_records(
    action_id: str,
    action: str,
    index_ids: list[str],
    symbol: str,
    effective: int,
    divisor_before: F64,
    divisor_after: F64,
    before: F64,
    after: F64,
    missing_before: I64,
    missing_after: I64,
) -> list[AuditRecord]:
    """One record per index: divisors and levels before and after."""
    records = []
    for k, index_id in enumerate(index_ids):
        old, new = float(divisor_before[k]), float(divisor_after[k])
        records.append(
            AuditRecord(
                action_id=action_id,
                action=action,
                index=index_id,
                symbol=symbol,
                effective=effective,
                divisor_before=old,
                divisor_after=new,
                level_before=float(before[k]) / old if missing_before[k] == 0 else math.nan,
                level_after=float(after[k]) / new if missing_after[k] == 0 else math.nan,
            )
        )
    return records
