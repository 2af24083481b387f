"""A scikit-learn pipeline over named columns — ColumnTransformer (one-hot, scaled,
imputed, passed through) then logistic regression or trees — compiles to the router's own
scorer with the same PDs; with an upstream bank score and a one-hot product it decides
alike one by one and in batch; an uncompilable pipeline is scored as it is."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, QuantileTransformer, StandardScaler

from router.core.columns import from_arrow
from router.core.config import load_strategy
from router.core.identity import Hasher
from router.core.messages import decode_application
from router.decide.engine import Router
from router.decide.features import ALL_FEATURES, FeatureSet
from router.scoring import LinearScorer, SklearnScorer, TreeScorer, scorer_from_estimator
from router.store import quota_store_from_url
from router.testing import check_scorer
from router.traffic import generate_batches, write_traffic

ROOT = Path(__file__).resolve().parents[2]
PRODUCTS = np.array(["auto", "card", "cash"])
NUM = ["bureau_score", "dti", "log_income", "bank_score"]


def _own(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(600, 60, n)), PRODUCTS[rng.integers(0, 3, n)]


@pytest.fixture(scope="module")
def frame():
    batch = next(generate_batches(6000, seed=31))
    cols = from_arrow(batch, Hasher(b"column-transform-key"))
    base = pd.DataFrame(FeatureSet(ALL_FEATURES).batch(cols), columns=list(ALL_FEATURES))
    score, product = _own(len(base), 31)
    y = batch.column("defaulted").to_numpy(zero_copy_only=False).astype(int)
    # The bank score and the product carry risk of their own.
    y = np.where((product == "cash") & (score < 560), 1, y)
    return base.assign(bank_score=score, product=product), y


def _pipelines():
    linear = make_pipeline(
        ColumnTransformer([
            ("num", StandardScaler(), NUM),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["product"]),
            ("apr", "passthrough", ["max_apr"]),
        ]),
        LogisticRegression(max_iter=2000),
    )  # fmt: skip
    trees = make_pipeline(
        ColumnTransformer([
            ("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), NUM),
            ("cat", OneHotEncoder(drop="first"), ["product"]),
        ]),
        HistGradientBoostingClassifier(max_iter=30, random_state=0),
    )  # fmt: skip
    return {"linear": (linear, LinearScorer), "trees": (trees, TreeScorer)}


@pytest.mark.parametrize("kind", ["linear", "trees"])
def test_a_column_transformer_pipeline_compiles_to_the_same_pds(frame, kind):
    X, y = frame
    est, compiled = _pipelines()[kind]
    est.fit(X, y)
    scorer = scorer_from_estimator(est)
    assert isinstance(scorer, compiled)
    names = scorer.feature_names_
    assert "bank_score" in names and "product=cash" in names
    assert ("product=auto" in names) == (kind == "linear")  # (drop="first" drops auto)
    mat = FeatureSet(names).batch(_cols_with(X))
    np.testing.assert_allclose(scorer.pd_batch(mat), est.predict_proba(X)[:, 1], rtol=0,
                               atol=1e-9)  # fmt: skip
    check_scorer(scorer)  # one row equals a batch


def _cols_with(X: pd.DataFrame):
    """Columns carrying the frame's own features as application features."""
    cols = from_arrow(next(generate_batches(len(X), seed=31)), Hasher(b"column-transform-key"))
    cols.extra["bank_score"] = X["bank_score"].to_numpy(dtype=np.float64)
    cols.extra["product"] = X["product"].to_numpy(dtype=object)
    return cols


@pytest.mark.parametrize("kind", ["linear", "trees"])
def test_one_hot_and_an_upstream_score_decide_alike_one_by_one_and_in_batch(frame, kind, tmp_path):
    X, y = frame
    est, _ = _pipelines()[kind]
    scorer = scorer_from_estimator(est.fit(X, y))
    lines = write_traffic(tmp_path / "t.jsonl", 500, seed=44).read_bytes().splitlines()
    score, product = _own(len(lines), 44)
    apps = []
    for line, sc, pr in zip(lines, score, product):
        a = decode_application(line)
        apps.append(msgspec.structs.replace(a, features={"bank_score": float(sc),
                                                           "product": str(pr)}))  # fmt: skip
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    scorers = {name: scorer for name in s.scorers}
    one = Router(s, quota_store_from_url("memory://"), scorers=scorers)
    many = Router(s, quota_store_from_url("memory://"), scorers=scorers)
    got = [one.decide(a) for a in apps]
    assert got == many.decide_batch(apps)
    # The same PDs as the pipeline on the same inputs as a DataFrame.
    ref_cols = FeatureSet(ALL_FEATURES)
    from router.core.columns import row_from_application

    rows = [row_from_application(a, one.hasher) for a in apps]
    frame_ = pd.DataFrame([ref_cols.row(r) for r in rows], columns=list(ALL_FEATURES))
    frame_ = frame_.assign(bank_score=score, product=product)
    np.testing.assert_allclose([d.pd for d in got], est.predict_proba(frame_)[:, 1], rtol=0,
                               atol=1e-9)  # fmt: skip


def test_an_uncompilable_pipeline_is_scored_as_it_is(frame):
    X, y = frame
    est = make_pipeline(
        ColumnTransformer([("q", QuantileTransformer(n_quantiles=50), NUM)]),
        LogisticRegression(max_iter=2000),
    ).fit(X, y)
    scorer = scorer_from_estimator(est)
    assert isinstance(scorer, SklearnScorer) and scorer.feature_names_ == tuple(X.columns)
    numeric = X.drop(columns=["product"])
    est2 = make_pipeline(
        ColumnTransformer([("q", QuantileTransformer(n_quantiles=50), NUM)]),
        LogisticRegression(max_iter=2000),
    ).fit(numeric, y)
    s2 = scorer_from_estimator(est2)
    assert isinstance(s2, SklearnScorer)
    np.testing.assert_allclose(s2.pd_batch(numeric.to_numpy()), est2.predict_proba(numeric)[:, 1])


def test_a_pipeline_saved_with_skops_loads_as_an_sklearn_scorer_compiled(frame, tmp_path):
    import skops.io as sio

    from router.scoring import load_scorer

    X, y = frame
    est, _ = _pipelines()["trees"]
    sio.dump(est.fit(X, y), tmp_path / "pipe.skops")
    scorer = load_scorer("sklearn", tmp_path / "pipe.skops")
    assert isinstance(scorer, TreeScorer) and "product=cash" in scorer.feature_names_
