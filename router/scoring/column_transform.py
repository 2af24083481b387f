"""A fitted scikit-learn ``ColumnTransformer`` read as router features, so a pipeline over
named columns — ``ColumnTransformer(one-hot, scaled, imputed, passed through) → logistic
regression or gradient-boosted trees`` — compiles to the router's own scorecard or trees.

Each output column of the transformer becomes one feature (router/decide/features.py):

- ``passthrough`` (and ``SimpleImputer``, whose fill never happens: a numeric feature is
  required, so no row reaches the model without it) — the column itself;
- ``StandardScaler`` — the column, with the affine map (x − mean) / scale folded into the
  model: into a scorecard's coefficients, or into a tree's split thresholds (a split
  ``(x − m) / s <= t`` is the split ``x <= t·s + m`` for s > 0);
- ``OneHotEncoder`` over a text column — one flag ``column=category`` per category it
  learned (less the dropped one, with ``drop``); a category it never saw is all zeros, as
  with ``handle_unknown="ignore"``;
- ``drop`` — nothing; a ``Pipeline`` of the above — their composition.

Anything else (other transformers, ``add_indicator``, numeric categories, infrequent
categories) is a :class:`~router.core.errors.ModelError` naming it; such a pipeline is
scored as it is (:class:`~router.scoring.sklearn_adapter.SklearnScorer`), its text columns
read as the flags of the categories its encoders learned (:func:`input_columns`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from router.core.errors import ModelError


@dataclass
class Columns:
    """The transformer's output columns as features, each with its affine map
    (output = (input − shift) / scale; shift 0 and scale 1 where there is none)."""

    names: list[str]
    shift: np.ndarray
    scale: np.ndarray


def read_column_transformer(ct: Any) -> Columns:
    """The features a fitted ``ColumnTransformer``'s output columns are, in its order."""
    names: list[str] = []
    shift: list[float] = []
    scale: list[float] = []
    inputs = list(getattr(ct, "feature_names_in_", []))
    if not inputs:
        raise ModelError("the ColumnTransformer was not fitted on named columns (a DataFrame)")
    for label, step, cols in ct.transformers_:
        columns = column_names(cols, inputs, label)
        if isinstance(step, str) and step == "drop" or not columns:
            continue
        n, sh, sc = _step_features(step, columns, label)
        names += n
        shift += sh
        scale += sc
    return Columns(names, np.asarray(shift, dtype=np.float64), np.asarray(scale, dtype=np.float64))


def column_names(cols: Any, inputs: list[str], label: str) -> list[str]:
    """The input column names a ``ColumnTransformer`` step selects."""
    if isinstance(cols, str):
        return [cols]
    out = []
    for c in np.atleast_1d(np.asarray(cols)).tolist():
        if isinstance(c, bool):
            raise ModelError(f"ColumnTransformer step {label!r}: columns as a mask")
        out.append(inputs[c] if isinstance(c, int) else str(c))
    return out


def input_columns(ct: Any) -> dict[str, list[str] | None]:
    """The input columns a fitted ``ColumnTransformer`` reads (the ones it drops are
    left out), each with the text categories an encoder of its step learned
    (``OneHotEncoder`` or ``OrdinalEncoder``, alone or in a ``Pipeline``), or None for a
    column read as a number."""
    inputs = [str(c) for c in getattr(ct, "feature_names_in_", [])]
    out: dict[str, list[str] | None] = {}
    for label, step, cols in ct.transformers_:
        if isinstance(step, str) and step == "drop":
            continue
        categories = _encoder_categories(step)
        for j, col in enumerate(column_names(cols, inputs, label)):
            text = categories[j] if categories is not None else None
            if out.get(col) is None:  # (read as text by any step: text)
                out[col] = text
    return out


def _encoder_categories(step: Any) -> list[list[str]] | None:
    steps = [s for _, s in step.steps] if type(step).__name__ == "Pipeline" else [step]
    for s in steps:
        if type(s).__name__ in ("OneHotEncoder", "OrdinalEncoder"):
            cats = s.categories_
            if all(c.dtype == object for c in cats):
                return [[v for v in c.tolist() if isinstance(v, str)] for c in cats]
    return None


def _step_features(step: Any, columns: list[str], label: str) -> tuple[list, list, list]:
    """One step's output columns: names, shifts, scales."""
    kind = type(step).__name__
    n = len(columns)
    # (fitted, a ColumnTransformer holds "passthrough" as a FunctionTransformer of nothing)
    identity = kind == "FunctionTransformer" and getattr(step, "func", None) is None
    if isinstance(step, str) and step == "passthrough" or identity:
        return columns, [0.0] * n, [1.0] * n
    if kind == "Pipeline":
        names, shift, scale = columns, [0.0] * n, [1.0] * n
        for _, inner in step.steps:
            if type(inner).__name__ == "OneHotEncoder":
                if shift != [0.0] * n or scale != [1.0] * n:
                    raise ModelError(f"step {label!r}: one-hot after scaling")
                names, shift, scale = _one_hot(inner, names, label)
                continue
            _, sh, sc = _step_features(inner, names, label)
            # (x − a)/b then (y − c)/d is (x − (a + c·b)) / (b·d)
            shift = [a + c * b for a, b, c in zip(shift, scale, sh)]
            scale = [b * d for b, d in zip(scale, sc)]
        return names, shift, scale
    if kind == "SimpleImputer":
        if getattr(step, "add_indicator", False):
            raise ModelError(f"step {label!r}: SimpleImputer(add_indicator=True)")
        return columns, [0.0] * n, [1.0] * n
    if kind == "StandardScaler":
        means = np.zeros(n) if step.mean_ is None else step.mean_
        scales = np.ones(n) if step.scale_ is None else step.scale_
        return columns, [float(v) for v in means], [float(v) for v in scales]
    if kind == "OneHotEncoder":
        return _one_hot(step, columns, label)
    raise ModelError(
        f"ColumnTransformer step {label!r}: {kind} does not compile (passthrough, "
        "StandardScaler, SimpleImputer, OneHotEncoder and pipelines of them do)"
    )


def _one_hot(enc: Any, columns: list[str], label: str) -> tuple[list, list, list]:
    if getattr(enc, "_infrequent_enabled", False):
        raise ModelError(f"step {label!r}: OneHotEncoder with infrequent categories")
    drop = getattr(enc, "drop_idx_", None)
    names: list[str] = []
    for j, (col, cats) in enumerate(zip(columns, enc.categories_)):
        dropped = None if drop is None or drop[j] is None else int(drop[j])
        for k, cat in enumerate(cats.tolist()):
            if not isinstance(cat, str):
                raise ModelError(
                    f"step {label!r}: column {col!r} has a category {cat!r} that is not text"
                )
            if k != dropped:
                names.append(f"{col}={cat}")
    return names, [0.0] * len(names), [1.0] * len(names)


def _raw_thresholds(t: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """For each split ``(x − shift) / scale <= t``: the largest raw x that passes it, in
    floating point — so that ``x <= result`` holds exactly when the scaled split does
    (t·scale + shift alone can land a last bit off, and a threshold that sits on a data
    value, as binned trees' quantile edges can, would then send that value the other way).
    The scaled map is monotone in IEEE arithmetic, so the bound is exact."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = t * scale + shift
        for _ in range(64):  # (a few ulps at most; bounded for safety)
            over = (x - shift) / scale > t
            up = np.nextafter(x, np.inf)
            under = ~over & ((up - shift) / scale <= t)
            if not (over.any() or under.any()):
                break
            x = np.where(over, np.nextafter(x, -np.inf), np.where(under, up, x))
    return x


def compile_pipeline(est: Any) -> Any:
    """A scorecard or compiled trees for ``ColumnTransformer → [scaler →] model``, or
    :class:`ModelError` saying what does not compile."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    from router.scoring.linear import LinearScorer
    from router.scoring.tree_kernel import TreeScorer

    steps = est.steps
    cols = read_column_transformer(steps[0][1])
    rest = steps[1:]
    final = rest[-1][1]
    if isinstance(final, HistGradientBoostingClassifier):
        if len(rest) > 1:
            raise ModelError("only a ColumnTransformer may come before the trees")
        trees = TreeScorer.from_estimator(final, cols.names)
        inner = trees.nodes_[:, 0] >= 0
        f = trees.nodes_[inner, 0]
        values = trees.values_.copy()
        values[inner] = _raw_thresholds(values[inner], cols.shift[f], cols.scale[f])
        return TreeScorer(trees.nodes_, values, trees.roots_, trees.baseline_, cols.names)
    if type(final).__name__ == "LogisticRegression":
        lin = LinearScorer.from_estimator(Pipeline(rest), cols.names)
        coef = lin.coef_ / cols.scale
        intercept = lin.intercept_ - float(np.sum(lin.coef_ * cols.shift / cols.scale))
        return LinearScorer(coef.tolist(), intercept, cols.names)
    raise ModelError(f"{type(final).__name__} after a ColumnTransformer does not compile")
