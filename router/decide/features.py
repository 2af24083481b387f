"""Model features derived from an application, for one row and for a batch.

Both paths compute the same numbers with the same operations, bit for bit, so a scorer
sees identical inputs live and in replay. (The reference decider, :mod:`router.reference`,
states them once more on its own, as it does every rule.)

A model declares the features it reads (``feature_names_``, in its order): the 13 of
:data:`FEATURES` (the default), and any of :data:`EXTRA_FEATURES` — inputs the default
set leaves out, such as the highest APR the applicant accepts, which carries risk the
bureau fields do not (an applicant who accepts a high price is a riskier one). A
:class:`FeatureSet` computes a model's own vector, row or batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from router.core.columns import AppColumns

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

#: Features a model may read beyond :data:`FEATURES`: name -> what it is.
EXTRA_FEATURES: dict[str, str] = {
    "max_apr": "the highest APR the applicant accepts (a fraction)",
}

#: Every feature name a model may declare.
ALL_FEATURES: tuple[str, ...] = FEATURES + tuple(EXTRA_FEATURES)


def check_features(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, or :class:`~router.core.errors.ModelError` naming those the
    router does not compute (and the ones it does)."""
    from router.core.errors import ModelError

    unknown = [n for n in names if n not in ALL_FEATURES]
    if unknown or not names:
        raise ModelError(
            f"model features {unknown or '(none)'} are not computed by the router "
            f"(known: {', '.join(ALL_FEATURES)})"
        )
    if len(set(names)) != len(names):
        raise ModelError(f"model features {list(names)} name a feature twice")
    return tuple(names)


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


# Each extra feature for one row and for a batch (the same arithmetic, bit for bit).
_EXTRA_ROW = {"max_apr": lambda r: float(r.max_apr)}
_EXTRA_BATCH = {"max_apr": lambda cols: np.asarray(cols.max_apr, dtype=np.float64)}


class FeatureSet:
    """One model's features (``names``, in its order), for a row or a batch: the default
    :data:`FEATURES` as they are, others picked from them and :data:`EXTRA_FEATURES`."""

    def __init__(self, names: Sequence[str]):
        self.names = check_features(names)
        self.default = self.names == FEATURES
        # Per feature: its column in the default vector, or -1 (an extra one).
        self._index = [FEATURES.index(n) if n in FEATURES else -1 for n in self.names]

    def row(self, r: Any, base: list[float] | None = None) -> list[float]:
        """The model's vector for one row (``base``: :func:`features_row` of it, if
        already computed)."""
        if base is None:
            base = features_row(r)
        if self.default:
            return base
        return [base[i] if i >= 0 else _EXTRA_ROW[n](r) for n, i in zip(self.names, self._index)]

    def batch(self, cols: AppColumns, base: np.ndarray | None = None) -> np.ndarray:
        """The model's matrix for a batch (``base``: :func:`features_batch` of it)."""
        if base is None:
            base = features_batch(cols)
        if self.default:
            return base
        out = np.empty((len(cols), len(self.names)), dtype=np.float64)
        for j, (n, i) in enumerate(zip(self.names, self._index)):
            out[:, j] = base[:, i] if i >= 0 else _EXTRA_BATCH[n](cols)
        return out


def __getattr__(name: str) -> Any:
    # ``features_one`` moved to the reference decider (which restates the features on its
    # own); old imports keep working with a warning.
    if name == "features_one":
        import warnings

        from router.reference import features_one

        warnings.warn(
            "router.decide.features.features_one moved to router.reference.features_one",
            DeprecationWarning,
            stacklevel=2,
        )
        return features_one
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
