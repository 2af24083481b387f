"""Single-row scoring and single-application decision time, each next to a baseline.

Baselines, measured in the same run: scikit-learn's ``predict_proba`` on one row for the
same fitted models, for the linear model the same maths written in plain numpy (a dot
product and a logistic on a one-row array, what a hand-written scorer would do), and for
the trees ONNX Runtime on one thread, one row and a batch of 2,000. Reports
medians of 7 repeats (µs per call).

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
    out["speedup_linear"] = out["linear_sklearn_predict_proba_us"] / out["linear_pd_one_us"]
    out["speedup_linear_vs_numpy"] = out["linear_numpy_us"] / out["linear_pd_one_us"]
    out["speedup_trees"] = out["trees_sklearn_predict_proba_us"] / out["trees_pd_one_us"]
    out["speedup_trees_vs_onnx_one"] = out["trees_onnx_pd_one_us"] / out["trees_pd_one_us"]
    return out


if __name__ == "__main__":
    res = main()
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "decide.json").write_text(json.dumps(res, indent=1) + "\n")
    for k, v in res.items():
        print(f"{k:40s} {v:10.2f}")
