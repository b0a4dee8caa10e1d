"""Parameter checks shared by the action handlers."""

from __future__ import annotations

import math


def positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0.0


def bad_params(
    shares: float | None, iwf: float | None, awf: float | None, withholding: float | None = None
) -> str | None:
    """The reason code of the first invalid parameter, or None."""
    if shares is not None and not positive(shares):
        return "bad_shares"
    if iwf is not None and not (math.isfinite(iwf) and 0.0 < iwf <= 1.0):
        return "bad_iwf"
    if awf is not None and not positive(awf):
        return "bad_awf"
    if withholding is not None and not (math.isfinite(withholding) and 0.0 <= withholding < 1.0):
        return "bad_withholding"
    return None
