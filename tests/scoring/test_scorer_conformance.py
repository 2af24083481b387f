"""One conformance test over every scorer implementation."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from router.core.columns import from_arrow
from router.core.errors import ModelError
from router.core.identity import Hasher
from router.decide.features import FEATURES, FeatureSet, features_batch
from router.reference import features_one
from router.scoring import (
    LinearScorer,
    OnnxTreeScorer,
    SklearnScorer,
    TreeScorer,
    load_scorer,
    scorer_from_estimator,
)
from router.testing import FixedPDScorer, ScoreLookupScorer, check_scorer, make_application
from router.traffic import generate_batches

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data():
    batch = next(generate_batches(3000, seed=11))
    cols = from_arrow(batch, Hasher(b"conformance-key-000000"))
    X = features_batch(cols)
    y = batch.column("defaulted").to_numpy(zero_copy_only=False).astype(int)
    return X, y, cols


def _fitted(data):
    X, y, _ = data
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    hgb = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, y)
    return lr, hgb


SCORERS = [
    "linear_json",
    "linear_compiled",
    "numba_trees",
    "onnx_trees",
    "trees_json_shipped",
    "trees_json_round_trip",
    "sklearn_shipped_hgb",
    "sklearn_fallback",
    "fixed",
    "lookup",
]


@pytest.fixture(scope="module")
def scorers(data, tmp_path_factory):
    lr, hgb = _fitted(data)
    path = tmp_path_factory.mktemp("trees") / "t.json"
    TreeScorer.from_estimator(hgb).to_file(path)
    return {
        "linear_json": (load_scorer("logistic_json", "pd_logit.json", ROOT / "models"), None),
        "linear_compiled": (scorer_from_estimator(lr), lr),
        "numba_trees": (scorer_from_estimator(hgb), hgb),
        "onnx_trees": (OnnxTreeScorer.from_estimator(hgb), hgb),
        "trees_json_shipped": (load_scorer("trees_json", "pd_trees.json", ROOT / "models"), None),
        "trees_json_round_trip": (load_scorer("trees_json", path), hgb),
        "sklearn_shipped_hgb": (load_scorer("sklearn", "pd_hgb.skops", ROOT / "models"), None),
        "sklearn_fallback": (SklearnScorer(lr), lr),
        "fixed": (FixedPDScorer(0.03), None),
        "lookup": (ScoreLookupScorer({700: 0.02, 650: 0.07}), None),
    }


@pytest.mark.parametrize("name", SCORERS)
def test_conformance(name, scorers, data):
    """Every scorer passes the shipped check (:func:`router.testing.check_scorer`); the
    compiled ones reproduce the scikit-learn estimator they came from."""
    scorer, source = scorers[name]
    X = _features(scorer, data)
    check_scorer(scorer, X, reference=source)


def _features(scorer, data):
    """The data's features in the scorer's own order (the shipped models read max_apr)."""
    X, _, cols = data
    names = tuple(scorer.feature_names_)
    return X if names == FEATURES else FeatureSet(names).batch(cols)


class _OffByOne:
    feature_names_ = FEATURES

    def pd_one(self, x):
        return 0.5

    def pd_batch(self, X):
        return np.full(len(X), 0.5 + 1e-6)


@pytest.mark.parametrize(
    "bad,message",
    [
        (object(), "is not a scorer"),
        (_OffByOne(), "pd_one and pd_batch disagree at row 0"),
        (FixedPDScorer(1.5), r"not in \[0, 1\]"),
    ],
)
def test_check_scorer_names_what_is_wrong(bad, message, data):
    with pytest.raises(AssertionError, match=message):
        check_scorer(bad, data[0])


@pytest.mark.parametrize(
    "name", ["linear_json", "linear_compiled", "numba_trees", "onnx_trees", "trees_json_shipped"]
)
def test_batch_of_one_is_bit_identical_to_the_batch(name, scorers, data):
    """Live (one row) and replay (large batches) must see the very same PD at a cut-off."""
    scorer, _ = scorers[name]
    X = _features(scorer, data)
    batch = scorer.pd_batch(X)
    ones = np.concatenate([scorer.pd_batch(X[i : i + 1]) for i in range(len(X))])
    assert np.array_equal(batch, ones)
    if getattr(scorer, "exact_one", False):  # the live path then scores with pd_one
        assert np.array_equal(batch, [scorer.pd_one(row) for row in X.tolist()])


def test_features_row_is_bit_identical_to_the_batch():
    """The live path's features (one row of scalars) equal the batch's, bit for bit."""
    from router.core.columns import from_arrow, row_of
    from router.decide.features import features_row
    from router.traffic import generate_batches

    cols = from_arrow(next(generate_batches(3000, seed=8)), Hasher(b"conformance-key-000000"))
    rows = [features_row(row_of(cols, i)) for i in range(len(cols))]
    assert np.array_equal(features_batch(cols), np.array(rows))


def test_compiled_kinds(scorers, data):
    assert isinstance(scorers["linear_compiled"][0], LinearScorer)
    assert isinstance(scorers["numba_trees"][0], TreeScorer)
    assert isinstance(scorers["onnx_trees"][0], OnnxTreeScorer)
    assert isinstance(scorers["sklearn_shipped_hgb"][0], TreeScorer)
    # The shipped trees, as scikit-learn fitted them and as compiled JSON: one model.
    X = _features(scorers["trees_json_shipped"][0], data)
    assert np.array_equal(
        scorers["trees_json_shipped"][0].pd_batch(X), scorers["sklearn_shipped_hgb"][0].pd_batch(X)
    )


def test_a_trees_file_that_does_not_fit_is_refused(tmp_path):
    import msgspec

    good = msgspec.json.decode((ROOT / "models" / "pd_trees.json").read_bytes())
    for change, message in [
        ({"nodes": []}, "no tree nodes"),
        ({"roots": [10**6]}, "root points outside"),
        ({"features": ["age"]}, "outside the model"),
        ({"values": [0.0]}, "do not fit"),
        ({"extra": 1}, "cannot load trees"),
    ]:
        p = tmp_path / "bad.json"
        p.write_bytes(msgspec.json.encode({**good, **change}))
        with pytest.raises(ModelError, match=message):
            load_scorer("trees_json", p)


def test_features_one_equals_batch(data):
    from router.core.columns import from_applications

    apps = [
        make_application(
            application_id=f"a{i}", channel=ch, bureau_score=600 + i, worst_dpd_12m=30 * i
        )
        for i, ch in enumerate(["own_app", "platform", "api_aggregator", "h5_aggregator"])
    ]
    cols = from_applications(apps, Hasher(b"conformance-key-000000"))
    np.testing.assert_allclose(features_batch(cols), [features_one(a) for a in apps], atol=1e-12)


def test_model_feature_mismatch_is_an_error():
    with pytest.raises(ModelError, match=r"\['A', 'b c'\] are neither computed by the router"):
        LinearScorer([0.1, 0.2], 0.0, ["A", "b c"])
    with pytest.raises(ModelError, match="name a feature twice"):
        LinearScorer([0.1, 0.2], 0.0, ["age", "age"])
    with pytest.raises(ModelError, match="2 coefficients for 1 features"):
        LinearScorer([0.1, 0.2], 0.0, ["age"])


def test_skops_refuses_untrusted(tmp_path):
    import skops.io as sio

    from router.scoring import load_skops

    class Evil:  # a type outside scikit-learn/numpy
        pass

    sio.dump({"model": Evil()}, tmp_path / "evil.skops")
    with pytest.raises(ModelError, match="untrusted"):
        load_skops(tmp_path / "evil.skops")


def test_a_registered_scorer_kind_loads_from_a_strategy(tmp_path):
    """A user's scorer kind: registered once, named in a strategy, checked by check_scorer;
    an unregistered kind is a config error naming the known ones."""
    import json

    from router.core.config import strategy_from_dict
    from router.core.errors import ConfigError
    from router.decide.engine import Router
    from router.scoring import register_scorer
    from router.testing import strategy_dict

    def load_fixed(path):
        return FixedPDScorer(json.loads(path.read_text())["pd"])

    register_scorer("fixed_json", load_fixed)
    (tmp_path / "m.json").write_text('{"pd": 0.01}')
    d = strategy_dict(scorers={"main": {"kind": "fixed_json", "path": "m.json"}})
    d["base_dir"] = str(tmp_path)
    router = Router(strategy_from_dict(d))
    check_scorer(router.scorers["main"])
    assert router.decide(make_application()).pd == 0.01
    d["scorers"]["main"]["kind"] = "xgboost"
    with pytest.raises(ConfigError, match=r"scorers\.main\.kind: unknown scorer kind .*fixed_json"):
        strategy_from_dict(d)
