"""Weighting methods: how an index's shares ``q`` follow from a constituent's parameters.

One strategy object per method replaces string switches wherever q is derived:

    cap    q = shares * IWF * AWF        (float-adjusted; AWF < 1 caps a constituent)
    price  q = AWF                       (the weighting factor, default 1; shares are ignored)
    equal  q = notional / (price * fx)   (set at the first complete prices and at rebalances)

``requote`` is what a parameter change or a share-count change (split, rights issue) does to
q.  An equal-weighted member keeps its value through a split only if q scales with the share
count, since its q is not derived from parameters.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from streamer.config import Method
from streamer.engine.arrays import F64


class Weighting(Protocol):
    method: Method
    # True when q is set from prices (equal weight) rather than derived from parameters.
    sets_weights_from_prices: bool

    def q(self, shares: F64, iwf: F64, awf: F64) -> F64:
        """Index shares of new members."""
        ...

    def requote(self, q: F64, shares: F64, iwf: F64, awf: F64, share_scale: float) -> F64:
        """Index shares after the parameters changed (shares already scaled by share_scale)."""
        ...


class CapWeighted:
    method: Method = "cap"
    sets_weights_from_prices = False

    def q(self, shares: F64, iwf: F64, awf: F64) -> F64:
        result: F64 = shares * iwf * awf
        return result

    def requote(self, q: F64, shares: F64, iwf: F64, awf: F64, share_scale: float) -> F64:
        return self.q(shares, iwf, awf)


class PriceWeighted:
    method: Method = "price"
    sets_weights_from_prices = False

    def q(self, shares: F64, iwf: F64, awf: F64) -> F64:
        return awf.astype(np.float64, copy=True)

    def requote(self, q: F64, shares: F64, iwf: F64, awf: F64, share_scale: float) -> F64:
        return self.q(shares, iwf, awf)


class EqualWeighted:
    method: Method = "equal"
    sets_weights_from_prices = True

    def q(self, shares: F64, iwf: F64, awf: F64) -> F64:
        # A placeholder that only marks the member as present: an equal-weighted index
        # publishes nothing before its weights are set at the first complete prices.
        return np.ones(len(shares))

    def requote(self, q: F64, shares: F64, iwf: F64, awf: F64, share_scale: float) -> F64:
        result: F64 = q * share_scale
        return result


WEIGHTINGS: dict[str, Weighting] = {
    "cap": CapWeighted(),
    "price": PriceWeighted(),
    "equal": EqualWeighted(),
}
