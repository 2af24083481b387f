"""Single-row scoring and single-application decision time, each next to a baseline.

Baselines, measured in the same run: scikit-learn's ``predict_proba`` on one row for the
same fitted models, for the linear model the same maths written in plain numpy (a dot
product and a logistic on a one-row array, what a hand-written scorer would do), and for
the trees ONNX Runtime on one thread, one row and a batch of 2,000. Reports
medians of 7 repeats (µs per call).

Own features (``own_*``): trees over the router's 14 features, an upstream bank score and
a one-hot product code, isotonic-calibrated (router/scoring/fit.py), one row: the
application's features built from its ``features`` map and scored, against the same
model as a scikit-learn pipeline (``ColumnTransformer`` with ``OneHotEncoder`` → the trees,
then the isotonic map) on a one-row DataFrame — what the model costs without the router's
compiled path; and a whole decision with it. The router's uncompiled fallback
(``own_fallback_*``: the pipeline through :class:`~router.scoring.SklearnScorer`, its text
column read back from the flags) against the pipeline's bare ``predict_proba`` on the same
one-row DataFrame.

    python bench/bench_decide.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.core.config import load_strategy  # noqa: E402
from router.core.messages import decode_application  # noqa: E402
from router.decide.engine import Router  # noqa: E402
from router.reference import features_of  # noqa: E402
from router.scoring import (  # noqa: E402
    LinearScorer,
    OnnxTreeScorer,
    load_skops,
    scorer_from_estimator,
)
from router.traffic import write_traffic  # noqa: E402


def per_call_us(fn, args_list, repeats=7):
    """Median over repeats of the mean µs per call across args_list."""
    results = []
    for _ in range(repeats):
        t = time.perf_counter()
        for a in args_list:
            fn(a)
        results.append((time.perf_counter() - t) / len(args_list) * 1e6)
    return statistics.median(results)


def main() -> dict:
    tmp = ROOT / "out" / "bench"
    traffic = write_traffic(tmp / "decide.jsonl", 2000, seed=99)
    apps = [decode_application(line) for line in traffic.read_bytes().splitlines()]
    import msgspec
    from sklearn.linear_model import LogisticRegression

    doc = msgspec.json.decode((ROOT / "models" / "pd_logit.json").read_bytes())
    # The shipped models' own features (the default 13 and max_apr).
    rows = [features_of(a, doc["features"]) for a in apps]
    mats = [np.array([r]) for r in rows]
    lr = LogisticRegression()
    lr.coef_ = np.array([doc["coefficients"]])
    lr.intercept_ = np.array([doc["intercept"]])
    lr.classes_ = np.array([0, 1])
    linear = LinearScorer.from_estimator(lr, doc["features"])
    hgb = load_skops(ROOT / "models" / "pd_hgb.skops")
    trees = scorer_from_estimator(hgb)  # compiled with numba (router/scoring/tree_kernel.py)
    onnx = OnnxTreeScorer.from_estimator(hgb)
    X = np.array(rows)
    warnings.filterwarnings("ignore", message="X does not have valid feature names")

    w, b = np.asarray(doc["coefficients"], dtype=np.float64), float(doc["intercept"])
    vecs = [np.asarray(r, dtype=np.float64) for r in rows]

    def numpy_linear(x: np.ndarray) -> float:
        return float(1.0 / (1.0 + np.exp(-(x @ w + b))))

    # The same PDs as the router's scorer (the baseline computes the same thing).
    assert max(abs(numpy_linear(v) - linear.pd_one(r)) for v, r in zip(vecs, rows)) < 1e-12
    out = {
        "linear_pd_one_us": per_call_us(linear.pd_one, rows),
        "linear_numpy_us": per_call_us(numpy_linear, vecs),
        "linear_sklearn_predict_proba_us": per_call_us(lr.predict_proba, mats[:300]),
        "trees_pd_one_us": per_call_us(trees.pd_one, rows),
        "trees_onnx_pd_one_us": per_call_us(onnx.pd_one, rows),
        "trees_sklearn_predict_proba_us": per_call_us(hgb.predict_proba, mats[:200], repeats=5),
        # A batch of 2,000 rows, per row: numba's walk against ONNX Runtime on one thread.
        "trees_batch_us_per_row": per_call_us(trees.pd_batch, [X]) / len(X),
        "trees_onnx_batch_us_per_row": per_call_us(onnx.pd_batch, [X]) / len(X),
    }
    strategy = load_strategy(ROOT / "configs" / "strategy.toml")

    def fresh_decide(apps_):
        router = Router(strategy)  # fresh store each repeat: no idempotent short-cuts
        t = time.perf_counter()
        for a in apps_:
            router.decide(a)
        return (time.perf_counter() - t) / len(apps_) * 1e6

    out["decide_one_us"] = statistics.median(fresh_decide(apps) for _ in range(5))

    def fresh_batch(apps_):
        router = Router(strategy)  # a fresh store: no idempotent short-cuts
        t = time.perf_counter()
        router.decide_batch(apps_)
        return (time.perf_counter() - t) / len(apps_) * 1e6

    fresh_batch(apps)  # warm: first-call costs (lazy imports, caches) are not a batch's
    out["decide_batch_2000_us_per_app"] = statistics.median(fresh_batch(apps) for _ in range(5))
    out |= own_features(apps, strategy)
    out["speedup_linear"] = out["linear_sklearn_predict_proba_us"] / out["linear_pd_one_us"]
    out["speedup_linear_vs_numpy"] = out["linear_numpy_us"] / out["linear_pd_one_us"]
    out["speedup_trees"] = out["trees_sklearn_predict_proba_us"] / out["trees_pd_one_us"]
    out["speedup_trees_vs_onnx_one"] = out["trees_onnx_pd_one_us"] / out["trees_pd_one_us"]
    return out


def own_features(apps: list, strategy) -> dict:
    """One-row cost of a model over own features (module docstring)."""
    import msgspec
    import pandas as pd
    import pyarrow as pa
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.isotonic import IsotonicRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from router.core.columns import from_arrow, row_from_application
    from router.core.identity import Hasher
    from router.decide.features import ALL_FEATURES, FeatureSet
    from router.scoring import TreeScorer, scorer_from_estimator
    from router.scoring.fit import calibrated
    from router.traffic import generate_batches

    products = np.array(["card", "cash", "auto"])
    table = pa.Table.from_batches(list(generate_batches(20_000, seed=5)))
    rng = np.random.default_rng(5)
    tp = table.column("true_pd").to_numpy()
    score = np.round(600 - 80 * np.log(tp / (1 - tp)) + rng.normal(0, 25, len(tp)))
    product = products[rng.integers(0, 3, len(tp))]
    y = table.column("defaulted").to_numpy(zero_copy_only=False).astype(int)
    cols = from_arrow(
        table.to_batches()[0] if table.num_rows <= 131_072 else table,
        Hasher(b"bench-own-features-0"),
    )
    base = pd.DataFrame(FeatureSet(ALL_FEATURES).batch(cols), columns=list(ALL_FEATURES))
    frame = base.assign(bank_score=score, product=product)
    names = (*ALL_FEATURES, "bank_score", *(f"product={p}" for p in products))
    onehot = np.column_stack([product == p for p in products]).astype(float)
    X = np.column_stack([base.to_numpy(), score, onehot])
    hgb = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=15, random_state=0)
    hgb.fit(X, y)
    raw = TreeScorer.from_estimator(hgb, names)
    scorer = calibrated(raw, "isotonic", raw.pd_batch(X), y)
    # The same model as a scikit-learn pipeline over named columns (the fallback).
    ct = ColumnTransformer(
        [("num", "passthrough", [*ALL_FEATURES, "bank_score"]),
         ("cat", OneHotEncoder(categories=[list(products)], handle_unknown="ignore"), ["product"])]
    )  # fmt: skip
    trees = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=15, random_state=0)
    pipe = make_pipeline(ct, trees).fit(frame, y)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4).fit(
        pipe.predict_proba(frame)[:, 1], y
    )
    own_apps = [
        msgspec.structs.replace(
            a, features={"bank_score": float(score[i]), "product": str(product[i])}
        )
        for i, a in enumerate(apps)
    ]
    hasher = Hasher(b"bench-own-features-0")
    rows = [row_from_application(a, hasher) for a in own_apps]
    fs = FeatureSet(names)
    own_frame = pd.DataFrame(
        [fs_row[: len(ALL_FEATURES)] for fs_row in (FeatureSet(ALL_FEATURES).row(r) for r in rows)],
        columns=list(ALL_FEATURES),
    ).assign(bank_score=score[: len(rows)], product=product[: len(rows)])
    frames = [own_frame.iloc[[i]] for i in range(300)]

    def ours(r):
        return scorer.pd_one(fs.row(r))

    def fallback(f):
        return iso.predict(pipe.predict_proba(f)[:, 1])[0]

    # Both compute the same PDs (the same trees and map), one row from the router's path.
    gap = max(abs(ours(r) - fallback(f)) for r, f in zip(rows[:300], frames))
    assert gap < 1e-9, gap
    scorers = {name: scorer for name in strategy.scorers}

    def fresh_decide(apps_):
        router = Router(strategy, scorers=scorers)
        t = time.perf_counter()
        for a in apps_:
            router.decide(a)
        return (time.perf_counter() - t) / len(apps_) * 1e6

    # The router's uncompiled fallback (an uncompilable pipeline takes this path): the
    # same pipeline called through SklearnScorer — the product read back from its flags
    # into a one-row DataFrame — against the pipeline's bare predict_proba on that frame.
    sk = scorer_from_estimator(pipe, compile=False)
    sk_fs = FeatureSet(sk.feature_names_)

    def via_fallback(r):
        return sk.pd_one(sk_fs.row(r))

    def bare(f):
        return pipe.predict_proba(f)[0, 1]

    gap = max(abs(via_fallback(r) - bare(f)) for r, f in zip(rows[:300], frames))
    assert gap < 1e-9, gap
    out = {
        "own_fallback_one_row_us": per_call_us(via_fallback, rows[:300], repeats=5),
        "own_bare_predict_proba_one_row_us": per_call_us(bare, frames, repeats=5),
        "own_features_row_and_pd_one_us": per_call_us(ours, rows),
        "own_sklearn_pipeline_one_row_us": per_call_us(fallback, frames, repeats=5),
        "own_decide_one_us": statistics.median(fresh_decide(own_apps) for _ in range(5)),
    }
    out["fallback_vs_bare_predict_proba"] = (
        out["own_fallback_one_row_us"] / out["own_bare_predict_proba_one_row_us"]
    )
    out["speedup_own_vs_pipeline"] = (
        out["own_sklearn_pipeline_one_row_us"] / out["own_features_row_and_pd_one_us"]
    )
    return out


if __name__ == "__main__":
    res = main()
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "decide.json").write_text(json.dumps(res, indent=1) + "\n")
    for k, v in res.items():
        print(f"{k:40s} {v:10.2f}")
