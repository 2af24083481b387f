"""Train a PD model on your own traffic: ``referral-router train``.

From a traffic file (any format replay reads, through a mapping) with a ``defaulted``
outcome, fit a scorecard (standardised logistic regression) or gradient-boosted trees on
the features you name, with an **out-of-time split**: rows in arrival order, the first
part trains, the last part (``holdout``) is held out and only evaluated. Then
**calibrate** on held-out folds of the training part (the model refitted on each fold's
complement predicts the fold; a Platt or isotonic map is fitted on those out-of-fold PDs
and the outcomes; the final model is fitted on the whole training part) — the same
method as scikit-learn's ``CalibratedClassifierCV(ensemble=False)``. Platt scaling is a
linear change of the model's logit and is folded into the model; an isotonic map is
stored beside it (router/scoring/pd_map.py). Either way the one-row path stays compiled.

The model file is the router's own JSON (``logistic_json`` or ``trees_json``), so a
strategy uses it as any shipped model; the model card (Markdown and JSON) holds the split,
the features, AUC, KS and Brier score on both parts, and the calibration table by PD band
on the held-out part with 95% intervals (router/replay/calibration.py).

Features (``features``): ``default`` (the 13 the router computes and ``max_apr``), any of
those by name, and the lender's own columns by name. An own column whose every value is a
number is a numeric feature; any other (or one written ``name:cat``) is categorical and
becomes one-hot flags ``name=value`` for its frequent categories (router/decide/features.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from router.core.errors import ModelError
from router.decide.features import ALL_FEATURES, APP_FEATURE, FeatureSet

MODELS = ("scorecard", "trees")
CALIBRATIONS = ("isotonic", "platt", "none")
#: A category becomes a one-hot flag if at least this share of training rows has it.
MIN_CATEGORY_SHARE = 0.005
MAX_CATEGORIES = 30


@dataclass
class Requested:
    """What ``--features`` asks for: router features, own numeric columns, own columns
    forced categorical."""

    router: list[str] = field(default_factory=list)
    own: list[str] = field(default_factory=list)
    categorical: set[str] = field(default_factory=set)


def parse_features(spec: Sequence[str]) -> Requested:
    """``default``, router feature names, own column names (``name:cat``: categorical)."""
    req = Requested()
    for raw in spec:
        name = raw.strip()
        if not name:
            continue
        if name == "default":
            req.router += [f for f in ALL_FEATURES if f not in req.router]
            continue
        if name.endswith(":cat"):
            name = name[:-4]
            req.categorical.add(name)
        if name in ALL_FEATURES:
            if name in req.categorical:
                raise ModelError(f"--features: {name} is computed by the router, not a category")
            req.router.append(name)
        elif APP_FEATURE.match(name) and "=" not in name:
            req.own.append(name)
        else:
            raise ModelError(
                f"--features: {raw!r} is neither a feature the router computes "
                f"({', '.join(ALL_FEATURES)}) nor a column name (lower case, after the mapping)"
            )
    if not req.router and not req.own:
        raise ModelError("--features: no features")
    return req


@dataclass
class TrainingData:
    """Rows with a known outcome, in arrival order: features, target, arrival time."""

    X: np.ndarray
    names: tuple[str, ...]
    y: np.ndarray
    event_ms: np.ndarray
    categories: dict[str, list[str]]
    dropped: dict[str, int]


def _own_column(values: np.ndarray, categorical: bool) -> tuple[np.ndarray, bool]:
    """An own column (text, None where empty) as numbers if every value is one."""
    if categorical:
        return values, False
    try:
        nums = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    except ValueError:
        return values, False
    return nums, True


def _frequent(values: np.ndarray, n_train: int) -> list[str]:
    """The categories of a column frequent enough to get a flag, commonest first."""
    cats, counts = np.unique(np.array([v for v in values if v is not None], dtype=str),
                             return_counts=True)  # fmt: skip
    order = np.argsort(-counts, kind="stable")
    least = max(1, math.ceil(MIN_CATEGORY_SHARE * n_train))
    return [str(cats[i]) for i in order[:MAX_CATEGORIES] if counts[i] >= least]


def training_data(batches: list[Any], req: Requested, holdout: float) -> TrainingData:
    """The feature matrix of every row with a known ``defaulted``, in arrival order."""
    from router.core.columns import AppColumns

    cols_list: list[AppColumns] = [b.cols for b in batches]
    y_all = np.concatenate([b.outcomes.get("defaulted", np.full(len(b.cols), -1)) for b in batches])
    t_all = np.concatenate([c.event_ms for c in cols_list])
    order = np.argsort(t_all, kind="stable")
    known = order[y_all[order] >= 0]
    dropped = {"no outcome": int(len(order) - len(known))}
    if len(known) < 100 or len(np.unique(y_all[known])) < 2:
        raise ModelError(
            f"too few rows with a known `defaulted` outcome to train on ({len(known):,}; both "
            "goods and bads are needed — map the file's target to `defaulted`)"
        )
    parts = [FeatureSet(req.router).batch(c) for c in cols_list] if req.router else []
    X = np.concatenate(parts)[known] if parts else np.empty((len(known), 0))
    names: list[str] = list(req.router)
    categories: dict[str, list[str]] = {}
    n_train = int(len(known) * (1 - holdout))
    keep = np.ones(len(known), dtype=bool)
    for name in req.own:
        raw = np.concatenate([c.extra[name] for c in cols_list])[known]
        col, numeric = _own_column(raw, name in req.categorical)
        if numeric:
            missing = ~np.isfinite(col)
            dropped[f"{name} empty"] = int((missing & keep).sum())
            keep &= ~missing
            X, names = np.column_stack([X, np.where(missing, 0.0, col)]), [*names, name]
            continue
        cats = categories[name] = _frequent(raw[:n_train], n_train)
        flags = [np.array([v == c for v in raw], dtype=np.float64) for c in cats]
        X = np.column_stack([X, *flags]) if flags else X
        names += [f"{name}={c}" for c in cats]
    rows = known[keep]
    return TrainingData(
        X[keep], tuple(names), (y_all[rows] == 1).astype(np.int64), t_all[rows], categories,
        dropped,
    )  # fmt: skip


def make_estimator(model: str, n_rows: int, seed: int) -> Any:
    """An unfitted scikit-learn estimator of the kind asked for."""
    if model == "scorecard":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    if model == "trees":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=100,
            learning_rate=0.1,
            max_leaf_nodes=15,
            min_samples_leaf=max(20, n_rows // 1000),
            l2_regularization=1.0,
            early_stopping=False,
            random_state=seed,
        )
    raise ModelError(f"unknown model {model!r} (known: {', '.join(MODELS)})")


def compile_model(est: Any, names: Sequence[str]) -> Any:
    """The router's scorer of a fitted estimator (a scorecard or compiled trees)."""
    from router.scoring import LinearScorer, TreeScorer

    if hasattr(est, "_predictors"):
        return TreeScorer.from_estimator(est, names)
    return LinearScorer.from_estimator(est, names)


def out_of_fold(model: str, X: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each training row's PD from a model fitted without its fold (contiguous folds in
    arrival order)."""
    from sklearn.model_selection import KFold

    p = np.empty(len(y))
    for fit_idx, pred_idx in KFold(n_splits=folds, shuffle=False).split(X):
        if len(np.unique(y[fit_idx])) < 2:
            raise ModelError("a calibration fold has only goods or only bads: use fewer --folds")
        est = make_estimator(model, len(fit_idx), seed).fit(X[fit_idx], y[fit_idx])
        p[pred_idx] = compile_model(est, _plain_names(X.shape[1])).pd_batch(X[pred_idx])
    return p


def _plain_names(n: int) -> tuple[str, ...]:
    return tuple(f"f{j}" for j in range(n))


def calibrated(scorer: Any, method: str, p_oof: np.ndarray, y: np.ndarray) -> Any:
    """``scorer`` calibrated on out-of-fold PDs: Platt folded into it, or an isotonic map."""
    from router.scoring import LinearScorer, TreeScorer
    from router.scoring.pd_map import PdMap

    if method == "none":
        return scorer
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4).fit(p_oof, y)
        cal = PdMap.from_isotonic(iso)
        if isinstance(scorer, LinearScorer):
            return LinearScorer(
                scorer.coef_.tolist(), scorer.intercept_, scorer.feature_names_, cal
            )
        return TreeScorer(scorer.nodes_, scorer.values_, scorer.roots_, scorer.baseline_,
                          scorer.feature_names_, cal)  # fmt: skip
    if method != "platt":
        raise ModelError(f"unknown calibration {method!r} (known: {', '.join(CALIBRATIONS)})")
    from sklearn.linear_model import LogisticRegression

    z = np.log(np.clip(p_oof, 1e-12, 1 - 1e-12) / np.clip(1 - p_oof, 1e-12, 1))
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(z.reshape(-1, 1), y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if isinstance(scorer, LinearScorer):  # logit' = a·logit + b
        coef = (a * scorer.coef_).tolist()
        return LinearScorer(coef, a * scorer.intercept_ + b, scorer.feature_names_)
    leaf = scorer.nodes_[:, 0] < 0
    values = np.where(leaf, a * scorer.values_, scorer.values_)
    return TreeScorer(scorer.nodes_, values, scorer.roots_, a * scorer.baseline_ + b,
                      scorer.feature_names_)  # fmt: skip


@dataclass
class TrainResult:
    """What :func:`train` wrote and measured."""

    model_path: Path
    card_json: Path
    card_md: Path
    card: dict[str, Any]
    strategy_path: Path


def train(
    traffic: str | Path,
    out_dir: str | Path,
    strategy: Any,
    *,
    features: Sequence[str] = ("default",),
    model: str = "trees",
    calibration: str = "isotonic",
    holdout: float = 0.3,
    folds: int = 5,
    mapping: Any = None,
    seed: int = 0,
) -> TrainResult:
    """Fit, calibrate and evaluate a PD model on ``traffic`` (the module docstring) and
    write ``model.json``, ``model_card.json``, ``model_card.md`` and ``strategy.toml``
    (``strategy`` scoring with the new model) into ``out_dir``. ``strategy`` also gives
    the partner book (consent values are checked against it)."""
    from router.core.identity import Hasher
    from router.ingest.reader import read_batches
    from router.scoring.card import write_card

    _check_train_options(model, calibration, holdout, folds, seed)
    req = parse_features(features)
    rejects: list[Any] = []
    batches = list(
        read_batches(
            traffic,
            Hasher.from_config(strategy.identity),
            partner_ids=[p.id for p in strategy.partners],
            mapping=mapping,
            on_rejects=rejects.extend,
            features={n: "text" for n in req.own},
        )
    )
    data = training_data(batches, req, holdout)
    cut = int(len(data.y) * (1 - holdout))
    Xtr, ytr = data.X[:cut], data.y[:cut]
    if len(np.unique(ytr)) < 2:
        raise ModelError("the training part has only goods or only bads")
    est = make_estimator(model, len(ytr), seed).fit(Xtr, ytr)
    scorer = compile_model(est, data.names)
    if calibration != "none":
        scorer = calibrated(scorer, calibration, out_of_fold(model, Xtr, ytr, folds, seed), ytr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.json"
    kind = "trees_json" if model == "trees" else "logistic_json"
    opts = {"model": model, "calibration": calibration, "folds": folds, "holdout": holdout}
    card = _card(traffic, (batches, rejects), data, (est, scorer, kind), model_path, opts)
    strategy_path = _strategy_using(strategy, kind, model_path, out / "strategy.toml")
    card["strategy_file"] = strategy_path.name
    card["strategy_snippet"] = (
        f'[scorers.trained]\nkind = "{kind}"\npath = "{model_path.name}"\n\n'
        '[primary]\nscorer = "trained"   # and [branch] scorer, if it should use it too\n'
    )
    summary = {k: card["holdout"][k] for k in ("auc", "ks", "brier")} | {
        "trained_on": f"{card['data']['traffic']} (first {1 - holdout:.0%} by arrival)"
    }
    scorer.to_file(model_path, metadata=summary)
    js, md = write_card(out, card)
    return TrainResult(model_path, js, md, card, strategy_path)


def _strategy_using(strategy: Any, kind: str, model_path: Path, path: Path) -> Path:
    """``strategy`` with the trained model as scorer ``trained`` of its primary policy and
    branch, written to ``path`` (ready to replay)."""
    from router.replay.tune import strategy_data, write_strategy

    raw = strategy_data(strategy)
    raw["scorers"]["trained"] = {"kind": kind, "path": str(model_path.resolve())}
    raw["primary"]["scorer"] = "trained"
    if raw.get("branch"):
        raw["branch"]["scorer"] = "trained"
    return write_strategy(raw, path)


def _check_train_options(
    model: str, calibration: str, holdout: float, folds: int, seed: int
) -> None:
    """:func:`train`'s options, checked before the traffic is read."""
    if not 0.05 <= holdout <= 0.9:
        raise ModelError(f"--holdout must be between 0.05 and 0.9 (value: {holdout})")
    if not 2 <= folds <= 20:
        raise ModelError(f"--folds must be between 2 and 20 (value: {folds})")
    if calibration not in CALIBRATIONS:
        raise ModelError(f"unknown calibration {calibration!r} (known: {', '.join(CALIBRATIONS)})")
    make_estimator(model, 0, seed)  # (an unknown model fails before the file is read)


def _card(
    traffic: str | Path,
    read: tuple[list, list],
    data: Any,
    fitted: tuple[Any, Any, str],
    model_path: Path,
    opts: dict[str, Any],
) -> dict[str, Any]:
    """The model card's facts: the data read (batches, rejected rows), the model fitted
    (estimator, compiled scorer, file kind), both parts' metrics, the options."""
    from router.replay.run import code_version, file_sha256
    from router.scoring.card import part_metrics

    (batches, rejects), (est, scorer, kind) = read, fitted
    cut = int(len(data.y) * (1 - opts["holdout"]))
    return {
        "model_file": model_path.name,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "data": {
            "traffic": str(traffic),
            "sha256": file_sha256(traffic),
            "rows_read": int(sum(len(b.cols) for b in batches)),
            "rows_rejected": len(rejects),
            "dropped": data.dropped,
            "holdout": opts["holdout"],
        },
        "model": opts["model"],
        "estimator": type(est[-1] if hasattr(est, "steps") else est).__name__,
        "scorer_kind": kind,
        "calibration": opts["calibration"],
        "folds": opts["folds"],
        "features": list(data.names),
        "categories": data.categories,
        "train": part_metrics(data.y[:cut], scorer.pd_batch(data.X[:cut]), data.event_ms[:cut]),
        "holdout": part_metrics(data.y[cut:], scorer.pd_batch(data.X[cut:]), data.event_ms[cut:]),
    }
