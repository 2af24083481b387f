"""Eligibility filters (policies and partners) and partner ranking.

Filters are evaluated vectorised over a batch; ranking runs per application in the
sequential allocation step because the weighted rotation carries state from one
application to the next.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from router.columns import AppColumns
from router.config import Filters, Partner


def region_match(region: np.ndarray, prefixes: Sequence[str]) -> np.ndarray:
    """True where the region code starts with any of ``prefixes`` (all True if none given)."""
    if not prefixes:
        return np.ones(len(region), dtype=bool)
    ok = np.zeros(len(region), dtype=bool)
    for p in prefixes:
        ok |= np.char.startswith(region, p)
    return ok


def filter_mask(f: Filters, cols: AppColumns, pd: np.ndarray) -> np.ndarray:
    """Rows that pass every set bound of ``f``."""
    ok = np.ones(len(cols), dtype=bool)
    bounds = (
        (f.min_age, cols.age, np.greater_equal), (f.max_age, cols.age, np.less_equal),
        (f.max_pd, pd, np.less_equal),
        (f.min_score, cols.bureau_score, np.greater_equal),
        (f.max_score, cols.bureau_score, np.less_equal),
        (f.min_amount, cols.requested_amount, np.greater_equal),
        (f.max_amount, cols.requested_amount, np.less_equal),
        (f.min_term, cols.term_months, np.greater_equal),
        (f.max_term, cols.term_months, np.less_equal),
        (f.max_inquiries_3m, cols.inquiries_3m, np.less_equal),
        (f.max_open_loans, cols.open_loans, np.less_equal),
        (f.max_dti, cols.dti, np.less_equal),
        (f.max_worst_dpd, cols.worst_dpd_12m, np.less_equal),
    )
    for bound, values, passes in bounds:
        if bound is not None:
            ok &= passes(values, bound)
    if f.regions:
        ok &= region_match(cols.region, f.regions)
    if f.channels:
        ok &= np.isin(cols.channel, f.channels)
    return ok


def waterfall_order(partners: Sequence[Partner]) -> list[int]:
    """Partner indices by priority (lower first), ties in book order."""
    return sorted(range(len(partners)), key=lambda j: (partners[j].priority, j))


class SmoothWeightedRotation:
    """Nginx-style smooth weighted round robin, deterministic, restricted per call.

    Each call adds every eligible partner's weight to its current score, orders the
    eligible partners by score (ties by priority rank), and the caller reports which one
    was granted so its score drops by the eligible weights' total. Over many calls each
    partner's share converges to its weight share, without bursts.
    """

    def __init__(self, weights: Sequence[int], rank: Sequence[int]):
        self.weights = list(weights)
        self.rank = list(rank)
        self.current = [0] * len(weights)

    def order(self, eligible: Sequence[int]) -> list[int]:
        """Eligible partner indices in the order to try them."""
        cur, w = self.current, self.weights
        for j in eligible:
            cur[j] += w[j]
        return sorted(eligible, key=lambda j: (-cur[j], self.rank[j]))

    def granted(self, j: int, eligible: Sequence[int]) -> None:
        """Charge the partner that won this call."""
        self.current[j] -= sum(self.weights[k] for k in eligible)
