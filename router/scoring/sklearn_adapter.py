"""Adapter for any fitted scikit-learn classifier, with compiled fast paths.

:func:`scorer_from_estimator` returns a :class:`~router.scoring.linear.LinearScorer` for
linear models, a :class:`~router.scoring.tree_kernel.TreeScorer` (numba) for histogram
gradient boosting — also behind a ``ColumnTransformer`` over named columns (one-hot,
scaled, imputed, passed through: router/scoring/column_transform.py) — and otherwise a
:class:`SklearnScorer` that calls ``predict_proba`` (correct, but with scikit-learn's
per-call overhead: about 3 ms a row for such a pipeline, bench/bench_decide.py). Models
load from skops files with an explicit list of trusted types, never from pickle.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.core.errors import ModelError
from router.decide.features import check_features
from router.scoring.base import model_features


class SklearnScorer:
    """Calls ``predict_proba`` of any fitted binary classifier (the uncompiled fallback).

    A pipeline that starts with a ``ColumnTransformer`` over named columns gets them as a
    DataFrame: numbers as numbers, and a column its encoders read as text through the
    flags ``column=category`` of the categories they learned — an application whose
    value is none of them (or that has none) gives the column as missing (NaN), which the
    pipeline's imputer fills or its encoder ignores, as it would for a missing value. A
    column the transformer drops is given as missing.
    """

    def __init__(self, estimator: Any, feature_names: Sequence[str] | None = None):
        if not hasattr(estimator, "predict_proba"):
            raise ModelError(f"{type(estimator).__name__} has no predict_proba")
        self.estimator = estimator
        # Fitted on named columns, the estimator warns when given a bare array (which is
        # in its own column order here): that warning says nothing about these calls.
        self._named = hasattr(estimator, "feature_names_in_")
        steps = getattr(estimator, "steps", None) or [(None, None)]
        self._frame = self._named and type(steps[0][1]).__name__ == "ColumnTransformer"
        names = model_features(estimator, feature_names)
        #: (input column, its slice of the features, its categories or None), in order
        self._layout: list[tuple[str, slice, list[str] | None]] = []
        if self._frame and feature_names is None:
            names = self._read_layout(steps[0][1])
        self.feature_names_ = check_features(names)

    def _read_layout(self, ct: Any) -> tuple[str, ...]:
        from router.scoring.column_transform import input_columns

        read = input_columns(ct)
        names: list[str] = []
        for col in (str(c) for c in self.estimator.feature_names_in_):
            if col not in read:
                continue  # (dropped by the transformer: given as missing)
            cats = read[col]
            flags = [col] if cats is None else [f"{col}={c}" for c in cats]
            self._layout.append((col, slice(len(names), len(names) + len(flags)), cats))
            names += flags
        return tuple(names)

    def pd_one(self, x: Sequence[float]) -> float:
        """PD of one row."""
        return float(self._proba(np.array([x], dtype=np.float64))[0])

    def pd_batch(self, X: np.ndarray) -> np.ndarray:
        """PD of every row."""
        if len(X) == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(self._proba(X), dtype=np.float64)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        if not self._named:
            return self.estimator.predict_proba(X)[:, 1]
        if self._frame:  # (a ColumnTransformer selects its columns by name: a DataFrame)
            return self.estimator.predict_proba(self._data_frame(X))[:, 1]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            return self.estimator.predict_proba(X)[:, 1]

    def _data_frame(self, X: np.ndarray) -> Any:
        import pandas as pd

        if not self._layout:  # (features given by the strategy: in the fitted order)
            return pd.DataFrame(X, columns=self.feature_names_)
        data: dict[str, Any] = {}
        for col, part, cats in self._layout:
            if cats is None:
                data[col] = X[:, part.start]
                continue
            flags = X[:, part]
            text = np.array([*cats, np.nan], dtype=object)
            # (no flag set: none of the categories, or no value — missing)
            which = np.where(flags.any(axis=1), flags.argmax(axis=1), len(cats))
            data[col] = text[which]
        n = len(X)
        columns = [str(c) for c in self.estimator.feature_names_in_]
        return pd.DataFrame({c: data[c] if c in data else np.full(n, np.nan) for c in columns})


def scorer_from_estimator(
    est: Any, feature_names: Sequence[str] | None = None, *, compile: bool = True
):
    """The fastest faithful scorer for a fitted scikit-learn classifier."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from router.scoring.linear import LinearScorer
    from router.scoring.tree_kernel import TreeScorer

    given, feature_names = feature_names, model_features(est, feature_names)
    fitted = getattr(est, "n_features_in_", None)
    if fitted is not None and fitted != len(feature_names):
        raise ModelError(
            f"the model was fitted on {fitted} columns but is given {len(feature_names)} "
            f"feature names {list(feature_names)} (a strategy declares a model's features in "
            "[scorers.NAME] features)"
        )
    if compile and hasattr(est, "steps") and type(est.steps[0][1]).__name__ == "ColumnTransformer":
        from router.scoring.column_transform import compile_pipeline

        # Over named columns: one-hot flags, scaled and passed-through columns as router
        # features (router/scoring/column_transform.py); uncompilable, it is scored as it is.
        try:
            return compile_pipeline(est)
        except ModelError:
            return SklearnScorer(est, given)
    if compile:
        final = est.steps[-1][1] if hasattr(est, "steps") else est
        if isinstance(final, HistGradientBoostingClassifier) and not hasattr(est, "steps"):
            return TreeScorer.from_estimator(est, feature_names)
        if (
            hasattr(final, "coef_")
            and hasattr(final, "intercept_")
            and type(final).__name__ == "LogisticRegression"
        ):
            try:
                return LinearScorer.from_estimator(est, feature_names)
            except ModelError:  # (a step before it that does not fold: called as it is)
                pass
    return SklearnScorer(est, given)


_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.", "collections.", "scipy.")


def load_skops(path: str | Path) -> Any:
    """Load a skops file, accepting only scikit-learn / numpy types (no arbitrary code)."""
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises various errors for unreadable files
        raise ModelError(f"{path}: cannot read skops file: {exc}") from exc
    bad = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
    if bad:
        raise ModelError(f"{path}: refusing untrusted types {bad}")
    return sio.load(path, trusted=untrusted)
