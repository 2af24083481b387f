"""Pluggable risk scorers: the :class:`Scorer` protocol and its implementations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from router.core.errors import ModelError
from router.decide.features import check_features
from router.scoring.base import Scorer, sigmoid, sigmoid_v
from router.scoring.linear import LinearScorer
from router.scoring.sklearn_adapter import SklearnScorer, load_skops, scorer_from_estimator
from router.scoring.tree_kernel import TreeScorer
from router.scoring.trees import OnnxTreeScorer
from router.scoring.upstream import UpstreamScorer

__all__ = [
    "Scorer",
    "LinearScorer",
    "OnnxTreeScorer",
    "TreeScorer",
    "SklearnScorer",
    "UpstreamScorer",
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


def load_scorer(
    kind: str,
    path: str | Path,
    base_dir: str | Path = ".",
    features: Sequence[str] | None = None,
) -> Scorer:
    """Load a scorer of a registered ``kind`` from ``path`` (relative to ``base_dir``).

    ``features`` (a strategy's ``[scorers.NAME] features``): the features the model reads.
    A scikit-learn estimator fitted on a bare array gets them; any other model must name
    the same ones, in the same order (else :class:`ModelError` says what each side has).
    """
    load = _KINDS.get(kind)
    if load is None:
        raise ModelError(f"unknown scorer kind {kind!r} (known: {', '.join(_KINDS)})")
    if kind == "upstream":  # (no file: the PD is the application's own feature)
        return UpstreamScorer.from_features(features)
    if kind == "sklearn" and features is not None:
        return scorer_from_estimator(load_skops(Path(base_dir) / path), check_features(features))
    scorer = load(Path(base_dir) / path)
    if features is not None and tuple(scorer.feature_names_) != tuple(features):
        raise ModelError(
            f"{path}: the model reads {list(scorer.feature_names_)}, the strategy declares "
            f"{list(features)}"
        )
    return scorer


register_scorer("logistic_json", LinearScorer.from_file)
register_scorer("trees_json", TreeScorer.from_file)
register_scorer("sklearn", lambda path: scorer_from_estimator(load_skops(path)))
register_scorer("upstream", lambda path: UpstreamScorer())
