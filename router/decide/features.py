"""Model features derived from an application, for one row and for a batch.

Both paths compute the same numbers with the same operations (``math`` for one row,
numpy for a batch), so a scorer sees identical inputs live and in replay.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from router.core.columns import AppColumns
    from router.core.messages import Application

#: Feature order every model file must declare (checked at load).
FEATURES: tuple[str, ...] = (
    "age",
    "log_income",
    "bureau_score",
    "inquiries_3m",
    "open_loans",
    "dti",
    "dpd_months",
    "log_amount",
    "term_years",
    "amount_to_income",
    "ch_platform",
    "ch_api",
    "ch_h5",
)

_CHANNEL_FLAGS = ("platform", "api_aggregator", "h5_aggregator")


def _dpd_months(dpd: int) -> float:
    return min(dpd, 180) / 30.0


def features_one(app: Application) -> list[float]:
    """The feature vector of one application, as a list of floats in :data:`FEATURES` order."""
    income = app.monthly_income / 100.0
    amount = app.requested_amount / 100.0
    ch = app.channel
    return [
        float(app.age),
        math.log1p(income),
        app.bureau_score / 100.0,
        float(app.inquiries_3m),
        float(app.open_loans),
        float(app.dti),
        _dpd_months(app.worst_dpd_12m),
        math.log1p(amount),
        app.term_months / 12.0,
        amount / (income + 100.0),
        1.0 if ch == _CHANNEL_FLAGS[0] else 0.0,
        1.0 if ch == _CHANNEL_FLAGS[1] else 0.0,
        1.0 if ch == _CHANNEL_FLAGS[2] else 0.0,
    ]


def features_row(r: Any) -> list[float]:
    """:func:`features_batch` for one row of scalars (a :class:`~router.core.columns.Row`),
    bit-identical to it: arithmetic on Python floats is the same IEEE arithmetic, and the
    logarithms go through numpy's own ``log1p`` (``math.log1p`` may differ in the last bit,
    which could move a PD across a cut-off between live and replay)."""
    income = r.monthly_income / 100.0
    amount = r.requested_amount / 100.0
    ch = r.channel
    return [
        float(r.age),
        float(_log1p(income)),
        r.bureau_score / 100.0,
        float(r.inquiries_3m),
        float(r.open_loans),
        float(r.dti),
        min(r.worst_dpd_12m, 180) / 30.0,
        float(_log1p(amount)),
        r.term_months / 12.0,
        amount / (income + 100.0),
        1.0 if ch == _CHANNEL_FLAGS[0] else 0.0,
        1.0 if ch == _CHANNEL_FLAGS[1] else 0.0,
        1.0 if ch == _CHANNEL_FLAGS[2] else 0.0,
    ]


_log1p = np.log1p


def features_batch(cols: AppColumns) -> np.ndarray:
    """The feature matrix (n × len(FEATURES), float64, C order) of a column batch."""
    n = len(cols)
    out = np.empty((n, len(FEATURES)), dtype=np.float64)
    income = cols.monthly_income / 100.0
    amount = cols.requested_amount / 100.0
    out[:, 0] = cols.age
    out[:, 1] = np.log1p(income)
    out[:, 2] = cols.bureau_score / 100.0
    out[:, 3] = cols.inquiries_3m
    out[:, 4] = cols.open_loans
    out[:, 5] = cols.dti
    out[:, 6] = np.minimum(cols.worst_dpd_12m, 180) / 30.0
    out[:, 7] = np.log1p(amount)
    out[:, 8] = cols.term_months / 12.0
    out[:, 9] = amount / (income + 100.0)
    for j, name in enumerate(_CHANNEL_FLAGS):
        out[:, 10 + j] = cols.channel == name
    return out
