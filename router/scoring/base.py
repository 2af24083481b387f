"""The scorer contract.

A scorer turns features (see :mod:`router.decide.features`) into a probability of default.
Like scikit-learn estimators the contract is duck-typed: anything with ``pd_one`` and
``pd_batch`` and a ``feature_names_`` tuple is a scorer. Learned state ends in ``_``.
One conformance test (``tests/scoring/test_scorer_conformance.py``) runs over every implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from router.decide.features import FEATURES


@runtime_checkable
class Scorer(Protocol):
    """Returns PD for one feature row and for a batch; both must agree to 1e-9."""

    feature_names_: tuple[str, ...]

    def pd_one(self, x: Sequence[float]) -> float:
        """PD of one row given as a sequence of floats in ``feature_names_`` order."""
        ...

    def pd_batch(self, X: np.ndarray) -> np.ndarray:
        """PD of every row of an (n × features) float64 matrix."""
        ...


def sigmoid(z: float) -> float:
    """Numerically safe logistic function for one value (same branches as :func:`sigmoid_v`)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def sigmoid_v(z: np.ndarray) -> np.ndarray:
    """Vectorised :func:`sigmoid`."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def model_features(est: Any, feature_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The features a fitted estimator reads, in order: ``feature_names`` if given, else
    the columns it was fitted on (``feature_names_in_``, a DataFrame's), else the default
    :data:`~router.decide.features.FEATURES`."""
    if feature_names is not None:
        return tuple(feature_names)
    return tuple(str(n) for n in getattr(est, "feature_names_in_", FEATURES))
