"""The scorer contract.

A scorer turns features (see :mod:`router.decide.features`) into a probability of default.
Like scikit-learn estimators the contract is duck-typed: anything with ``pd_one`` and
``pd_batch`` and a ``feature_names_`` tuple is a scorer. Learned state ends in ``_``.
One conformance test (``tests/scoring/test_scorer_conformance.py``) runs over every implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


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
