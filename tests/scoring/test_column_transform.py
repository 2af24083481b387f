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


def test_an_uncompilable_pipeline_is_scored_as_it_is_text_columns_too(frame):
    """A quantile transform does not compile: the pipeline is called as it is, on the
    columns it reads — numbers as numbers, its text column as the flags of the categories
    its encoder learned, turned back into text — with the pipeline's own PDs; a category
    it never saw, or none, reaches it as missing (its imputer fills it)."""
    X, y = frame
    est = make_pipeline(
        ColumnTransformer([
            ("q", QuantileTransformer(n_quantiles=50), NUM),
            ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                  OneHotEncoder(handle_unknown="ignore")), ["product"]),
        ]),
        LogisticRegression(max_iter=2000),
    ).fit(X, y)  # fmt: skip
    scorer = scorer_from_estimator(est)
    assert isinstance(scorer, SklearnScorer)
    # (the columns the transformer drops are not asked for)
    numbers = tuple(c for c in X.columns if c in NUM)  # (in the frame's order)
    assert scorer.feature_names_ == (*numbers, "product=auto", "product=card", "product=cash")
    cols = _cols_with(X)
    mat = FeatureSet(scorer.feature_names_).batch(cols)
    np.testing.assert_allclose(scorer.pd_batch(mat), est.predict_proba(X)[:, 1], rtol=0, atol=1e-12)
    check_scorer(scorer, mat[:200])  # (a row at a time costs ms here: 200 rows)
    product = cols.extra["product"].copy()
    product[:10], product[10:20] = "boat", None
    cols.extra["product"] = product
    missing = X.assign(product=np.where(np.arange(len(X)) < 20, np.nan, X["product"]))
    got = scorer.pd_batch(FeatureSet(scorer.feature_names_).batch(cols))
    np.testing.assert_allclose(got, est.predict_proba(missing)[:, 1], rtol=0, atol=1e-12)


def test_an_uncompilable_pipeline_decides_alike_one_by_one_and_in_batch(frame, tmp_path):
    X, y = frame
    est = make_pipeline(
        ColumnTransformer([
            ("q", QuantileTransformer(n_quantiles=50), NUM),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["product"]),
        ]),
        LogisticRegression(max_iter=2000),
    ).fit(X, y)  # fmt: skip
    scorer = scorer_from_estimator(est)
    assert isinstance(scorer, SklearnScorer)
    lines = write_traffic(tmp_path / "t.jsonl", 200, seed=45).read_bytes().splitlines()
    score, product = _own(len(lines), 45)
    apps = [
        msgspec.structs.replace(
            decode_application(line), features={"bank_score": float(sc), "product": str(pr)}
        )
        for line, sc, pr in zip(lines, score, product)
    ]
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    scorers = {name: scorer for name in s.scorers}
    one = Router(s, quota_store_from_url("memory://"), scorers=scorers)
    many = Router(s, quota_store_from_url("memory://"), scorers=scorers)
    # The same decisions; the PDs to rounding only (scikit-learn's own arithmetic on
    # one row and on many differs in the last bits; the compiled scorers' does not).
    got, batch = [one.decide(a) for a in apps], many.decide_batch(apps)
    assert [(type(d), getattr(d, "partner_id", None)) for d in got] == [
        (type(d), getattr(d, "partner_id", None)) for d in batch
    ]
    np.testing.assert_allclose([d.pd for d in got], [d.pd for d in batch], rtol=1e-12)


def test_a_numeric_frame_without_a_column_transformer_is_scored_by_name(frame):
    X, y = frame
    numeric = X.drop(columns=["product"])
    est = make_pipeline(QuantileTransformer(n_quantiles=50), LogisticRegression(max_iter=2000))
    est.fit(numeric, y)
    scorer = scorer_from_estimator(est)
    assert isinstance(scorer, SklearnScorer) and scorer.feature_names_ == tuple(numeric.columns)
    np.testing.assert_allclose(
        scorer.pd_batch(numeric.to_numpy()), est.predict_proba(numeric)[:, 1]
    )


def test_a_pipeline_saved_with_skops_loads_as_an_sklearn_scorer_compiled(frame, tmp_path):
    import skops.io as sio

    from router.scoring import load_scorer

    X, y = frame
    est, _ = _pipelines()["trees"]
    sio.dump(est.fit(X, y), tmp_path / "pipe.skops")
    scorer = load_scorer("sklearn", tmp_path / "pipe.skops")
    assert isinstance(scorer, TreeScorer) and "product=cash" in scorer.feature_names_
