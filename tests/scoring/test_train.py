"""``referral-router train``: an out-of-time split, calibration on out-of-fold PDs (Platt
folded into the model, isotonic stored beside it), a model file a strategy loads, and a
model card whose numbers are the held-out part's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.core.config import load_strategy
from router.core.errors import ModelError
from router.scoring import LinearScorer, TreeScorer, load_scorer
from router.scoring.fit import calibrated, parse_features, train
from router.scoring.pd_map import PdMap
from router.testing import check_scorer
from router.traffic import generate_batches

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = load_strategy(ROOT / "configs" / "strategy.toml")


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> Path:
    """12,000 generated applications with two own columns: a bank score that carries
    risk the router's features do not (it is the true PD, noised) and a product code."""
    table = pa.Table.from_batches(list(generate_batches(12_000, seed=41)))
    rng = np.random.default_rng(41)
    true_pd = table.column("true_pd").to_numpy()
    score = np.round(600 - 80 * np.log(true_pd / (1 - true_pd)) + rng.normal(0, 25, len(true_pd)))
    product = np.array(["card", "cash", "auto"])[rng.integers(0, 3, len(true_pd))]
    table = table.append_column("bank_score", pa.array(score)).append_column(
        "product", pa.array(product)
    )
    path = tmp_path_factory.mktemp("train") / "t.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(("model", "cal"), [("trees", "isotonic"), ("scorecard", "platt")])
def test_train_writes_a_model_a_strategy_loads_and_a_card_of_held_out_numbers(
    traffic, tmp_path, model, cal
):
    r = train(traffic, tmp_path, STRATEGY, features=["default", "bank_score", "product"],
              model=model, calibration=cal, folds=3)  # fmt: skip
    card = json.loads(r.card_json.read_text())
    assert card["features"][:14] == list(STRATEGY_FEATURES)
    assert "bank_score" in card["features"]
    assert {f for f in card["features"] if f.startswith("product=")} == {
        "product=card",
        "product=cash",
        "product=auto",
    }
    assert card["train"]["rows"] == 8400 and card["holdout"]["rows"] == 3600
    assert card["train"]["to"] <= card["holdout"]["from"]  # out of time
    ho = card["holdout"]
    assert 0.7 < ho["auc"] < 1 and 0.3 < ho["ks"] < 1
    assert ho["all"]["consistent"], ho["all"]  # the held-out PDs come true on average
    kind = "trees_json" if model == "trees" else "logistic_json"
    scorer = load_scorer(kind, r.model_path)
    assert isinstance(scorer, TreeScorer if model == "trees" else LinearScorer)
    assert (scorer.calibration_ is not None) == (cal == "isotonic")
    check_scorer(scorer)  # one row equals a batch, bit for bit, calibration included
    trained = load_strategy(r.strategy_path)  # the base strategy, scoring with the model
    assert trained.primary.scorer == trained.branch.scorer == "trained"
    assert trained.scorers["trained"].kind == kind
    md = r.card_md.read_text()
    assert "| held out | 3,600 |" in md and "product=card" in md and kind in md


STRATEGY_FEATURES = (
    "age", "log_income", "bureau_score", "inquiries_3m", "open_loans", "dti", "dpd_months",
    "log_amount", "term_years", "amount_to_income", "ch_platform", "ch_api", "ch_h5", "max_apr",
)  # fmt: skip


def test_platt_is_folded_into_the_logit_and_isotonic_is_a_stored_map():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(4000, 3))
    base = LinearScorer([0.5, -0.2, 0.1], -2.0, ("age", "dti", "max_apr"))
    z = -2.0 + X @ np.array([0.5, -0.2, 0.1])
    y = (rng.random(4000) < 1 / (1 + np.exp(-(1.7 * z + 0.4)))).astype(int)
    p = base.pd_batch(X)
    platt = calibrated(base, "platt", p, y)
    a, b = platt.coef_[0] / 0.5, platt.intercept_ - (platt.coef_[0] / 0.5) * -2.0
    assert a == pytest.approx(1.7, rel=0.15) and b == pytest.approx(0.4, abs=0.25)
    np.testing.assert_allclose(platt.pd_batch(X), 1 / (1 + np.exp(-(a * z + b))), rtol=1e-9)
    iso = calibrated(base, "isotonic", p, y)
    assert iso.calibration_ is not None
    want = np.interp(p, iso.calibration_.x, iso.calibration_.y)
    np.testing.assert_array_equal(iso.pd_batch(X), want)
    assert np.all(np.diff(iso.pd_batch(X[np.argsort(p)])) >= 0)  # monotone in the raw PD
    with pytest.raises(ModelError, match="non-decreasing"):
        PdMap(x=[0.0, 0.5, 0.4], y=[0.0, 0.1, 0.2]).check()


def test_bad_requests_are_refused_naming_what_is_wrong(traffic, tmp_path):
    with pytest.raises(ModelError, match="Bad Name"):
        parse_features(["default", "Bad Name"])
    with pytest.raises(ModelError, match="computed by the router, not a category"):
        parse_features(["age:cat"])
    with pytest.raises(ModelError, match="unknown model"):
        train(traffic, tmp_path, STRATEGY, model="forest")
    with pytest.raises(ModelError, match="holdout"):
        train(traffic, tmp_path, STRATEGY, holdout=1.5)
    no_target = tmp_path / "no_target.parquet"
    pq.write_table(pq.read_table(traffic).drop(["defaulted"]), no_target)
    with pytest.raises(ModelError, match="map the file's target to `defaulted`"):
        train(no_target, tmp_path, STRATEGY)
    p = subprocess.run(
        [sys.executable, "-m", "router", "train", "-t", str(no_target), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stderr.startswith("error:") and "Traceback" not in p.stderr
