"""Eligibility filters (policies and partners) and partner ranking.

Filters are evaluated vectorised over a batch; ranking runs per application in the
sequential allocation step because the weighted rotation carries state from one
application to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router.core.columns import AppColumns, Coded, coded_column
from router.core.config import Filters, Partner
from router.core.rules import FILTER_BOUNDS

# (filter attribute, application column or "pd", passes-if comparison)


def isin_small(values: np.ndarray, options: Sequence[int]) -> np.ndarray:
    """``np.isin`` for a short list of options (a broadcast compare; np.isin sorts)."""
    out = np.zeros(len(values), dtype=bool)
    for o in options:
        out |= values == o
    return out


# (A loop over the few partner columns: numpy's reductions along a short row axis are
# several times slower on a batch.)


def rows_any(m: np.ndarray) -> np.ndarray:
    """Per row of an (applications × partners) bool matrix: is any column True?"""
    out = np.zeros(len(m), dtype=bool)
    for j in range(m.shape[1]):
        out |= m[:, j]
    return out


def partner_bits(m: np.ndarray) -> np.ndarray:
    """Per row of an (applications × partners) bool matrix: its True columns as the bits
    of an int64 (partner ``j`` is bit ``j``)."""
    out = np.zeros(len(m), dtype=np.int64)
    for j in range(m.shape[1]):
        out |= m[:, j] * np.int64(1 << j)
    return out


def region_match(region: Coded, prefixes: Sequence[str]) -> np.ndarray:
    """True where the region code starts with any of ``prefixes`` (all True if none
    given); ``region`` dictionary-encoded, so each distinct code is checked once."""
    if not prefixes:
        return np.ones(len(region.codes), dtype=bool)
    options = tuple(prefixes)
    ok = np.array([v.startswith(options) for v in region.values], dtype=bool)
    return ok[region.codes]


def filter_mask(f: Filters, cols: AppColumns, pd: np.ndarray) -> np.ndarray:
    """Rows that pass every set bound of ``f``."""
    ok = np.ones(len(cols), dtype=bool)
    for attr, column, passes in FILTER_BOUNDS:
        bound = getattr(f, attr)
        if bound is not None:
            ok &= passes(pd if column == "pd" else getattr(cols, column), bound)
    if f.regions:
        ok &= region_match(coded_column(cols, "region"), f.regions)
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


@dataclass(frozen=True)
class TermArrays:
    """Commercial terms over partners (one array element a partner)."""

    fee_per_referral: np.ndarray
    fee_per_accepted: np.ndarray
    fee_per_funded: np.ndarray
    rev_share: np.ndarray


@dataclass(frozen=True)
class PartnerArrays:
    """What :mod:`router.core.economics` reads from a partner, as arrays over partners."""

    apr_max: np.ndarray
    acceptance: np.ndarray
    acceptance_pd_slope: np.ndarray
    funded_rate: np.ndarray
    terms: TermArrays


class PartnerTable:
    """The partner book as arrays, so eligibility and value run once for all partners.

    ``econ`` has the attributes :mod:`router.core.economics` reads from a partner, each an
    array over partners: the economics functions broadcast (applications × partners).
    """

    def __init__(self, partners: Sequence[Partner]):
        self.ids = [p.id for p in partners]
        self.whitelisted = np.array([p.whitelisted for p in partners], dtype=bool)
        self.apr_min = np.array([p.apr_min for p in partners], dtype=np.float64)

        def arr(get) -> np.ndarray:
            return np.array([float(get(p)) for p in partners], dtype=np.float64)

        self.econ = PartnerArrays(
            apr_max=arr(lambda p: p.apr_max),
            acceptance=arr(lambda p: p.acceptance),
            acceptance_pd_slope=arr(lambda p: p.acceptance_pd_slope),
            funded_rate=arr(lambda p: p.funded_rate),
            terms=TermArrays(
                fee_per_referral=arr(lambda p: p.terms.fee_per_referral),
                fee_per_accepted=arr(lambda p: p.terms.fee_per_accepted),
                fee_per_funded=arr(lambda p: p.terms.fee_per_funded),
                rev_share=arr(lambda p: p.terms.rev_share),
            ),
        )
        self.bounds = []
        for attr, column, passes in FILTER_BOUNDS:
            values = [getattr(p.filters, attr) for p in partners]
            if any(v is not None for v in values):
                neutral = -np.inf if passes is np.greater_equal else np.inf
                self.bounds.append(
                    (
                        column,
                        passes,
                        np.array([neutral if v is None else v for v in values], dtype=np.float64),
                    )
                )
        self.regions = [(j, p.filters.regions) for j, p in enumerate(partners) if p.filters.regions]
        self.channels = [
            (j, p.filters.channels) for j, p in enumerate(partners) if p.filters.channels
        ]
        #: (consent text, channel) -> allowed-partner row; filled by assess.consent_matrix.
        self.consent_rows: dict[tuple[str, str], np.ndarray] = {}

    def filter_matrix(self, cols: AppColumns, pd: np.ndarray) -> np.ndarray:
        """(applications × partners) True where every partner filter passes."""
        ok = np.ones((len(cols), len(self.ids)), dtype=bool)
        for column, passes, bound in self.bounds:
            values = pd if column == "pd" else getattr(cols, column)
            ok &= passes(values[:, None], bound[None, :])
        for j, prefixes in self.regions:
            ok[:, j] &= region_match(coded_column(cols, "region"), prefixes)
        for j, channels in self.channels:
            ok[:, j] &= np.isin(cols.channel, channels)
        return ok
