"""Pluggable risk scorers: the :class:`Scorer` protocol and its implementations."""

from __future__ import annotations

from pathlib import Path

from router.scoring.base import Scorer, sigmoid, sigmoid_v
from router.scoring.linear import LinearScorer
from router.scoring.sklearn_adapter import SklearnScorer, load_skops, scorer_from_estimator
from router.scoring.trees import OnnxTreeScorer

__all__ = [
    "Scorer",
    "LinearScorer",
    "OnnxTreeScorer",
    "SklearnScorer",
    "load_scorer",
    "scorer_from_estimator",
    "sigmoid",
    "sigmoid_v",
]


def load_scorer(kind: str, path: str | Path, base_dir: str | Path = ".") -> Scorer:
    """Load a scorer of ``kind`` (``logistic_json`` or ``sklearn``) from ``path``."""
    full = Path(base_dir) / path
    if kind == "logistic_json":
        return LinearScorer.from_file(full)
    if kind == "sklearn":
        return scorer_from_estimator(load_skops(full))
    raise ValueError(f"unknown scorer kind {kind!r}")
