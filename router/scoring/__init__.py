"""Pluggable risk scorers: the :class:`Scorer` protocol and its implementations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from router.core.errors import ModelError
from router.scoring.base import Scorer, sigmoid, sigmoid_v
from router.scoring.linear import LinearScorer
from router.scoring.sklearn_adapter import SklearnScorer, load_skops, scorer_from_estimator
from router.scoring.tree_kernel import TreeScorer
from router.scoring.trees import OnnxTreeScorer

__all__ = [
    "Scorer",
    "LinearScorer",
    "OnnxTreeScorer",
    "TreeScorer",
    "SklearnScorer",
    "load_scorer",
    "register_scorer",
    "scorer_kinds",
    "scorer_from_estimator",
    "sigmoid",
    "sigmoid_v",
]


#: Scorer kinds a strategy's ``[scorers.NAME] kind`` may name: kind -> loader of a file.
_KINDS: dict[str, Callable[[Path], Scorer]] = {}


def register_scorer(kind: str, load: Callable[[Path], Scorer]) -> None:
    """Add a scorer kind: ``load(path)`` returns a :class:`Scorer` (check it with
    :func:`router.testing.check_scorer`). A strategy then names it as
    ``[scorers.NAME] kind = "…"``."""
    _KINDS[kind] = load


def scorer_kinds() -> list[str]:
    """The registered scorer kinds."""
    return list(_KINDS)


def load_scorer(kind: str, path: str | Path, base_dir: str | Path = ".") -> Scorer:
    """Load a scorer of a registered ``kind`` from ``path`` (relative to ``base_dir``)."""
    load = _KINDS.get(kind)
    if load is None:
        raise ModelError(f"unknown scorer kind {kind!r} (known: {', '.join(_KINDS)})")
    return load(Path(base_dir) / path)


register_scorer("logistic_json", LinearScorer.from_file)
register_scorer("trees_json", TreeScorer.from_file)
register_scorer("sklearn", lambda path: scorer_from_estimator(load_skops(path)))
