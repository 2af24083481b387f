"""A model reads the features it names: the default 13, or others the router computes
(``max_apr``), in its own order — one by one, in batch and in the reference decider alike."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from router.core.columns import from_arrow
from router.core.config import load_strategy
from router.core.errors import ModelError
from router.core.identity import Hasher
from router.decide.engine import Router
from router.decide.features import FEATURES, FeatureSet, features_batch, features_row
from router.reference import ReferenceDecider
from router.scoring import LinearScorer, TreeScorer, scorer_from_estimator
from router.store import quota_store_from_url
from router.testing import check_scorer
from router.traffic import generate_batches

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("max_apr", *FEATURES[:4], "dti", "amount_to_income")  # a subset, another order


@pytest.fixture(scope="module")
def frame():
    batch = next(generate_batches(4000, seed=5))
    cols = from_arrow(batch, Hasher(b"model-features-key-00"))
    X = pd.DataFrame(FeatureSet(NAMES).batch(cols), columns=list(NAMES))
    y = batch.column("defaulted").to_numpy(zero_copy_only=False).astype(int)
    return batch, cols, X, y


def test_a_feature_set_picks_and_adds_bit_for_bit(frame):
    batch, cols, _, _ = frame
    fs = FeatureSet(NAMES)
    X = fs.batch(cols)
    base = features_batch(cols)
    assert X.shape == (len(cols), len(NAMES))
    np.testing.assert_array_equal(X[:, 0], cols.max_apr)
    np.testing.assert_array_equal(X[:, 1:5], base[:, :4])
    from router.core.columns import row_of

    for i in range(0, len(cols), 97):  # the row path gives the batch's bits
        assert fs.row(row_of(cols, i)) == X[i].tolist()
    assert FeatureSet(FEATURES).row(row_of(cols, 3)) == features_row(row_of(cols, 3))


def test_unknown_or_repeated_features_are_refused_with_the_known_ones():
    # (a lower-case name is an application feature: tests/decide/test_app_features.py)
    with pytest.raises(ModelError, match=r"\['Income Band'\] are neither computed.*\(age"):
        FeatureSet(("age", "Income Band"))
    with pytest.raises(ModelError, match="twice"):
        FeatureSet(("age", "max_apr", "age"))


@pytest.mark.parametrize("kind", ["logistic", "hgb"])
def test_a_model_fitted_on_named_columns_reads_them(frame, kind):
    _, _, X, y = frame
    if kind == "logistic":
        est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    else:
        est = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    scorer = scorer_from_estimator(est)
    assert isinstance(scorer, LinearScorer if kind == "logistic" else TreeScorer)
    assert scorer.feature_names_ == NAMES
    with warnings.catch_warnings():  # (the reference is given a bare array, on purpose)
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        check_scorer(scorer, X.to_numpy(), reference=est)
    check_scorer(scorer)  # on features it computes itself, in the model's order
    # Uncompiled, it gets the same columns (and no warning about their names).
    plain = scorer_from_estimator(est, compile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(plain.pd_batch(X.to_numpy()), scorer.pd_batch(X.to_numpy()))


def test_decisions_with_max_apr_in_the_model_agree_everywhere(frame):
    batch, _, X, y = frame
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    scorer = scorer_from_estimator(est)
    s = load_strategy(ROOT / "configs" / "strategy.toml")  # (its partners: the traffic's)
    scorers = {name: scorer for name in s.scorers}
    from router.core.messages import decode_application
    from router.traffic import write_traffic

    apps = [decode_application(line) for line in _jsonl(write_traffic, 600)]
    one = Router(s, quota_store_from_url("memory://"), scorers=scorers)
    many = Router(s, quota_store_from_url("memory://"), scorers=scorers)
    ref = ReferenceDecider(s, scorers, one.hasher)
    got_one = [one.decide(a) for a in apps]
    assert got_one == many.decide_batch(apps)
    # The reference computes features with ``math`` (the last bit of a log may differ):
    # the same decisions, PDs equal to 1e-12.
    for have, want in zip(got_one, [ref.decide(a) for a in apps]):
        assert type(have) is type(want) and have.reasons == want.reasons, (have, want)
        assert getattr(have, "partner_id", None) == getattr(want, "partner_id", None)
        assert abs(have.pd - want.pd) < 1e-12
    # The model's max_apr weight moves PDs: the default-feature model would decide otherwise.
    assert len({type(d).__name__ for d in got_one}) > 2


def _jsonl(write_traffic, n):
    import tempfile

    p = write_traffic(Path(tempfile.mkdtemp()) / "t.jsonl", n, seed=17)
    return p.read_bytes().splitlines()


def test_a_strategy_declares_the_features_of_a_model_fitted_on_a_bare_array(frame, tmp_path):
    import skops.io as sio

    from router.core.config import load_strategy, strategy_from_dict
    from router.core.errors import ConfigError
    from router.decide.engine import Router as R

    _, cols, X, y = frame
    est = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X.to_numpy(), y)
    sio.dump(est, tmp_path / "bare.skops")
    shipped = load_strategy(ROOT / "configs" / "strategy.toml")
    d = {
        **__import__("msgspec").to_builtins(shipped),
        "scorers": {"m": {"kind": "sklearn", "path": str(tmp_path / "bare.skops")}},
    }
    d["primary"]["scorer"] = d["branch"]["scorer"] = "m"
    d.pop("base_dir", None)
    # Undeclared, a 7-input model is taken for the default 13: refused when built.
    with pytest.raises(ModelError):
        R(strategy_from_dict(d))
    d["scorers"]["m"]["features"] = list(NAMES)
    router = R(strategy_from_dict(d))
    assert router.scorers["m"].feature_names_ == NAMES
    # A model file that names its own features must name the declared ones.
    d["scorers"]["m"] = {
        "kind": "trees_json",
        "path": str(ROOT / "models" / "pd_trees.json"),
        "features": list(NAMES),
    }
    with pytest.raises(ModelError, match="the strategy declares"):
        R(strategy_from_dict(d))
    d["scorers"]["m"]["features"] = ["age", "Salary"]
    with pytest.raises(ConfigError, match=r"scorers.m.features.*Salary"):
        strategy_from_dict(d)
