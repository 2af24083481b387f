"""Expected against realised (router/replay/calibration.py): figures worked out by hand,
the section in a replay's summary, and the demo's kept loans, whose PDs must come true."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router.decide.outcomes import BRANCH, DECLINE, KEEP, REFER
from router.replay.calibration import Calibration, wilson

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_by_hand():
    kind = np.array([KEEP, KEEP, KEEP, KEEP, BRANCH, REFER, DECLINE, KEEP], dtype=np.int8)
    pd = np.array([0.01, 0.03, 0.05, 0.11, 0.08, 0.2, 0.5, 0.03])
    amount = np.array([100_000, 200_000, 100_000, 100_000, 300_000, 1, 1, 50_000])
    defaulted = np.array([0, 1, 0, 1, 0, 1, 1, -1])  # the last has no outcome
    c = Calibration()
    c.add(kind, pd, amount, defaulted, loss_rate=0.5)
    c.add(kind[:0], pd[:0], amount[:0], defaulted[:0], 0.5)  # an empty batch changes nothing
    t = c.table()
    k = t["by_outcome"]["keep"]
    p = np.array([0.01, 0.03, 0.05, 0.11])  # the kept rows with an outcome
    assert k["n"] == 4 and k["defaulted"] == 2
    assert k["expected_bad_rate"] == pytest.approx(p.mean())
    assert k["realised_bad_rate"] == 0.5
    half = 1.959963984540054 * math.sqrt((p * (1 - p)).sum()) / 4
    assert k["expected_range95"] == pytest.approx([max(p.mean() - half, 0), p.mean() + half])
    assert k["consistent"] is False  # 2 defaults of 4 at PDs of a few percent
    assert k["realised_ci95"] == pytest.approx(list(wilson(2, 4)))
    loss = 0.5 * np.array([100_000, 200_000, 100_000, 100_000])
    assert k["expected_loss"] == round((p * loss).sum())
    assert k["realised_loss"] == round(loss[1] + loss[3])
    lh = 1.959963984540054 * math.sqrt((p * (1 - p) * loss**2).sum())
    assert k["expected_loss_range95"] == [
        round(max((p * loss).sum() - lh, 0)),
        round((p * loss).sum() + lh),
    ]
    assert "expected_loss" not in t["by_outcome"]["refer"]  # booked loans only
    assert t["by_outcome"]["all"]["n"] == 7
    bands = {b["band"]: b["n"] for b in t["kept_by_pd_band"]}
    assert bands == {"0%–2%": 1, "2%–4%": 1, "4%–7%": 1, "10%–15%": 1}
    assert sum(b["n"] for b in t["by_pd_band"]) == 7


def test_wilson_by_hand():
    lo, hi = wilson(10, 100)
    # p = 0.1, z = 1.96: the textbook values
    assert lo == pytest.approx(0.05523, abs=1e-4) and hi == pytest.approx(0.17437, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 50)[0] == 0.0 and wilson(50, 50)[1] == 1.0


def test_no_outcomes_no_table():
    c = Calibration()
    c.add(np.array([KEEP]), np.array([0.1]), np.array([10]), None, 0.5)
    c.add(np.array([KEEP]), np.array([0.1]), np.array([10]), np.array([-1]), 0.5)
    assert c.table() is None


def test_the_demo_kept_loans_pds_come_true(tmp_path):
    """The example strategy's kept loans: the expected bad rate inside the 95% interval of
    the realised one (it was not, before the models read ``max_apr``: 4.19% vs 5.43%)."""
    out = tmp_path / "demo"
    subprocess.run(
        [sys.executable, "-m", "router", "demo", "--rows", "200000", "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    s = json.loads((out / "summary.json").read_text())
    k = s["calibration"]["by_outcome"]["keep"]
    lo, hi = k["realised_ci95"]
    assert k["n"] > 10_000
    assert lo <= k["expected_bad_rate"] <= hi, k
    assert k["consistent"], k
    # Booked or not, every outcome's PDs come true on the generator's traffic.
    assert all(r["consistent"] for r in s["calibration"]["by_outcome"].values())
    # And so does the money: the kept loans' realised profit in the range they promised.
    promised = s["keep_profit_promised"]
    assert promised["came_true"], promised
    assert promised["range95"][0] <= s["realised_keep_profit"] <= promised["range95"][1]


def test_the_kept_loans_promised_profit_by_hand(tmp_path):
    """The range a replay promises for the kept loans' realised profit, worked out again
    from its decisions and the traffic: each kept loan with an outcome earns its interest
    less costs if it repays, and loses LGD × EAD of its amount less costs if it defaults,
    with its PD; the mean and variance of the sum."""
    import pyarrow.parquet as pq

    from router.core.config import load_strategy
    from router.replay import replay
    from router.traffic import write_traffic

    traffic = write_traffic(tmp_path / "t.parquet", 5000, seed=12, per_day=5000)
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    r = replay(s, traffic, tmp_path / "out", report=False)
    apps = {a["application_id"]: a for a in pq.read_table(traffic).to_pylist()}
    e = s.economics
    mean = var = realised = 0.0
    for d in pq.read_table(r.decisions_path).to_pylist():
        if d["outcome"] != "keep" or d["defaulted"] is None:
            continue
        a = apps[d["application_id"]]
        by = a["requested_amount"] * (a["term_months"] + 1) / 24
        cost = (e.funding_cost + e.operating_cost) * by
        repaid = d["apr"] * by - cost
        lost = -e.lgd * e.ead_factor * a["requested_amount"] - cost
        p = d["pd"]
        mean += (1 - p) * repaid + p * lost
        var += p * (1 - p) * (repaid - lost) ** 2
        realised += lost if d["defaulted"] else repaid
    got = r.summary["keep_profit_promised"]
    half = 1.959963984540054 * math.sqrt(var)
    assert got["expected"] == pytest.approx(mean, abs=2)
    assert got["range95"] == pytest.approx([mean - half, mean + half], abs=2)
    assert r.summary["realised_keep_profit"] == pytest.approx(realised, abs=2)
    assert got["came_true"] is (got["range95"][0] <= realised <= got["range95"][1])
