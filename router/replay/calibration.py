"""Expected against realised: does the model's PD come true on the traffic's outcomes?

For the applications whose outcome the traffic records (``defaulted``), by decision outcome
(keep, branch, refer, decline, all) and by PD band: how many, the expected bad rate (the
mean PD of those very rows), the realised one with its 95% Wilson interval, and the range
the realised rate would fall in 95% of the time if every PD were true (each row a
Bernoulli draw with its own PD: mean Σp/n, variance Σp(1−p)/n², normal approximation).
``consistent`` says whether the realised rate is inside that range — a model whose PDs
are too low on the loans a policy keeps fails it there even if it is right on average.

Losses the same way for the loans booked (keep and branch): expected Σ p·L against
realised Σ y·L, with L = LGD × EAD × amount, and the range Σ p·L ± 1.96·√Σ p(1−p)·L².
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from router.decide.outcomes import BRANCH, DECLINE, KEEP, REFER

#: PD band edges (the last band is closed above).
PD_BANDS = (0.0, 0.02, 0.04, 0.07, 0.10, 0.15, 0.25, 0.40, 1.0)
_OUTCOMES = {KEEP: "keep", BRANCH: "branch", REFER: "refer", DECLINE: "decline"}
Z95 = 1.959963984540054  # the 97.5% normal quantile
# Per group: rows with an outcome, defaults, Σp, Σp(1−p), Σp·L, Σp(1−p)·L², Σy·L
_FIELDS = 7


class Calibration:
    """Running sums by outcome and by PD band; :meth:`table` is the summary's section."""

    def __init__(self) -> None:
        self._by_kind = np.zeros((4, _FIELDS))
        self._by_band = np.zeros((len(PD_BANDS) - 1, _FIELDS))
        self._kept_by_band = np.zeros((len(PD_BANDS) - 1, _FIELDS))

    def add(
        self, kind: np.ndarray, pd: np.ndarray, amount: np.ndarray, defaulted, loss_rate: float
    ) -> None:
        """Account one batch: ``kind`` per row, its PD, amount (minor units), the traffic's
        ``defaulted`` column (None without one; -1 for an unknown outcome)."""
        if defaulted is None:
            return
        known = defaulted >= 0
        if not known.any():
            return
        k = kind[known].astype(np.int64)
        p = pd[known]
        y = (defaulted[known] == 1).astype(np.float64)
        loss = loss_rate * amount[known].astype(np.float64)
        cols = np.stack(
            [np.ones_like(p), y, p, p * (1 - p), p * loss, p * (1 - p) * loss**2, y * loss]
        )
        band = np.clip(np.searchsorted(PD_BANDS, p, side="right") - 1, 0, len(PD_BANDS) - 2)
        kept = k == KEEP
        band_kept, nb = band[kept], len(PD_BANDS) - 1
        for j in range(_FIELDS):
            self._by_kind[:, j] += np.bincount(k, weights=cols[j], minlength=4)
            self._by_band[:, j] += np.bincount(band, weights=cols[j], minlength=nb)
            self._kept_by_band[:, j] += np.bincount(band_kept, weights=cols[j][kept], minlength=nb)

    def table(self) -> dict[str, Any] | None:
        """The summary's ``calibration`` section, or None when no row had an outcome."""
        total = self._by_kind.sum(axis=0)
        if total[0] == 0:
            return None
        by_outcome = {_OUTCOMES[k]: _row(self._by_kind[k], k in (KEEP, BRANCH)) for k in _OUTCOMES}
        by_outcome["all"] = _row(total, False)
        return {
            "pd_bands": list(PD_BANDS),
            "by_outcome": by_outcome,
            "by_pd_band": _bands(self._by_band, losses=False),
            "kept_by_pd_band": _bands(self._kept_by_band, losses=True),
        }


def _bands(sums: np.ndarray, losses: bool) -> list[dict[str, Any]]:
    return [
        {"band": f"{PD_BANDS[b]:.0%}–{PD_BANDS[b + 1]:.0%}", **_row(sums[b], losses)}
        for b in range(len(sums))
        if sums[b][0]
    ]


def _row(s: np.ndarray, losses: bool) -> dict[str, Any]:
    n, d, p_sum, p_var, l_exp, l_var, l_real = (float(x) for x in s)
    if n == 0:
        return {"n": 0}
    expected, realised = p_sum / n, d / n
    half = Z95 * math.sqrt(p_var) / n
    out: dict[str, Any] = {
        "n": int(n),
        "defaulted": int(d),
        "expected_bad_rate": expected,
        "realised_bad_rate": realised,
        "realised_ci95": list(wilson(int(d), int(n))),
        "expected_range95": [max(expected - half, 0.0), min(expected + half, 1.0)],
        "consistent": abs(realised - expected) <= half,
    }
    if losses:
        lh = Z95 * math.sqrt(l_var)
        out |= {
            "expected_loss": int(round(l_exp)),
            "realised_loss": int(round(l_real)),
            "expected_loss_range95": [int(round(max(l_exp - lh, 0.0))), int(round(l_exp + lh))],
        }
    return out


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # (At 0 or n the bound is exactly 0 or 1; rounding would leave a trace.)
    return (0.0 if k == 0 else max(mid - half, 0.0), 1.0 if k == n else min(mid + half, 1.0))
