"""Tuning that holds out of sample: candidates judged on the earlier part of the traffic,
the frontier replayed on its last share by arrival time, the best chosen there; realised
figures as the objective where the traffic has outcomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from router.core.config import load_strategy
from router.core.errors import ConfigError
from router.replay.run import read_cached, replay, split_in_time
from router.replay.tune import OBJECTIVES, LocalExecutor, make_candidate, metrics_of, tune
from router.traffic import write_traffic

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = load_strategy(ROOT / "configs" / "strategy.toml")
GRID = {"primary.max_pd": [0.05, 0.07, 0.09], "branch.max_pd": [0.12, 0.16]}


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> Path:
    return write_traffic(tmp_path_factory.mktemp("tho") / "t.parquet", 12_000, seed=8,
                         per_day=12_000)  # fmt: skip


def test_the_split_is_out_of_time_and_loses_no_row(traffic):
    whole = read_cached(STRATEGY, traffic)
    train, held = split_in_time(whole, 0.3)
    ids = lambda c: [i for b in c.batches for i in b.cols.application_id]  # noqa: E731
    assert sorted(ids(train) + ids(held)) == sorted(ids(whole))
    assert not set(ids(train)) & set(ids(held))
    last = max(int(b.cols.event_ms.max()) for b in train.batches)
    first = min(int(b.cols.event_ms.min()) for b in held.batches)
    assert last < first
    assert abs(len(ids(held)) / len(ids(whole)) - 0.3) < 0.01


@pytest.mark.parametrize("objective", ["expected", "realised"])
def test_the_frontier_is_judged_on_rows_it_never_saw(traffic, tmp_path, objective):
    r = tune(STRATEGY, traffic, GRID, tmp_path / "o", executor=LocalExecutor(1),
             holdout=0.3, objective=objective, report=True)  # fmt: skip
    res = r.result
    front = [c for c in res["candidates"] if c["frontier"]]
    assert front and all("holdout" in c for c in front)
    assert not any("holdout" in c for c in res["candidates"] if not c["frontier"])
    # Independently: the held-out rows as a file of their own, each frontier candidate
    # replayed on it — the same figures as tune's held-out ones.
    table = pq.read_table(traffic)
    cut = pa.scalar(res["holdout"]["split_at_ms"], pa.timestamp("ms", tz="UTC"))
    later = table.filter(pc.greater_equal(pc.cast(table["received_at"], cut.type), cut))
    assert later.num_rows == res["holdout"]["holdout_applications"]
    pq.write_table(later, tmp_path / "later.parquet")
    base = {**__import__("msgspec").to_builtins(STRATEGY)}
    base.pop("partner_book", None)
    for c in front:
        s = make_candidate(base, c["params"], c["id"])
        m = metrics_of(replay(s, tmp_path / "later.parquet", tmp_path / f"r{c['id']}",
                              write_decisions=False, report=False).summary)  # fmt: skip
        for k in ("value", "bad_rate", "realised_bad_rate", "keep_rate", "realised_value",
                  "realised_value_range95", "keep_profit_range95", "value_came_true"):  # fmt: skip
            assert m[k] == c["holdout"][k], (c["id"], k)
    # The chosen one is the best of the frontier on the held-out figures.
    v, _ = OBJECTIVES[objective]
    best = next(c for c in front if c.get("best"))
    assert best["holdout"][v] == max(c["holdout"][v] for c in front)
    assert res["best_on_train"] in {c["id"] for c in front}
    html = (tmp_path / "o" / "report.html").read_text()
    assert "Held out: the last 30%" in html and "Chosen candidate on the held-out part" in html
    assert "range promised" in html


def test_realised_needs_outcomes_and_bad_options_are_refused(traffic, tmp_path):
    no_outcomes = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(traffic).drop(["defaulted"]), no_outcomes)
    with pytest.raises(ConfigError, match="needs outcomes"):
        tune(STRATEGY, no_outcomes, GRID, tmp_path / "o", objective="realised")
    with pytest.raises(ConfigError, match="unknown objective"):
        tune(STRATEGY, traffic, GRID, tmp_path / "o", objective="luck")
    with pytest.raises(ConfigError, match="holdout"):
        tune(STRATEGY, traffic, GRID, tmp_path / "o", holdout=0.99)
    p = subprocess.run(
        [sys.executable, "-m", "router", "tune", "-s", str(ROOT / "configs" / "strategy.toml"),
         "-t", str(no_outcomes), "-g", str(ROOT / "configs" / "grid.toml"), "-o",
         str(tmp_path / "c"), "--objective", "realised", "--holdout", "0.3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 2 and "needs outcomes" in p.stderr and "Traceback" not in p.stderr


def test_a_cached_batch_is_scored_once_per_model_and_never_with_another_models_pds(traffic):
    """Candidates replay the same cached batches: each model's PDs are kept in the batch's
    memo (keyed by the model object), so a second model on the same batch is scored anew."""
    from router.decide.assess import assess, scorer_pds
    from router.scoring import LinearScorer, load_scorer

    cols = read_cached(STRATEGY, traffic).batches[0].cols
    trees = load_scorer("trees_json", ROOT / "models" / "pd_trees.json")
    logit = LinearScorer.from_file(ROOT / "models" / "pd_logit.json")
    for scorer in (trees, logit, trees):
        a = assess(cols, STRATEGY, {"pd_trees": scorer}, [frozenset()] * len(STRATEGY.partners))
        assert (a.pd == scorer_pds(scorer, cols)).all()
    pds = {k: v for k, v in cols.memo.items() if k[0] == "pd"}
    assert {k[1] for k in pds} == {trees, logit}
    assert not next(iter(pds.values())).flags.writeable


@pytest.mark.parametrize(
    "changes",
    [
        {"routing.min_expected_value": 4000},
        {"partners.cfc_heshan.filters.max_pd": 0.04},
        {"partners.bank_ningyuan.terms.rev_share": 0.05},
        {"partners.platform_yunfan.whitelisted": False},
        {"partners.cfc_heshan.apr_min": 0.19},
        {"channels.h5_aggregator.consent_partners": ["credit_dongfang"]},
        {"rules.max_age": 40},
        {"economics.funding_cost": 0.09},
        {"branch.reserve_rate": 0.0},
        {"branch.max_pd": 0.09},
        {"primary.max_pd": 0.09},
        {"partners.credit_dongfang.caps.day.count": 50},
    ],
)
def test_what_a_cached_batch_keeps_never_leaks_into_another_candidate(traffic, tmp_path, changes):
    """A batch keeps what it worked out for a candidate (window keys, the partners'
    eligibility and values) for the next candidate to reuse: a candidate that changes
    what those depend on is worked out anew — replayed after the base strategy on the
    same cached batches, it gives what it gives on traffic read afresh."""
    from router.replay.tune import _scorers, strategy_data

    cached, scorers = read_cached(STRATEGY, traffic), _scorers(STRATEGY)  # as tune shares them
    replay(STRATEGY, traffic, tmp_path / "base", cached=cached, scorers=scorers, report=False)
    candidate = make_candidate(strategy_data(STRATEGY), changes, 1)
    after = replay(
        candidate, traffic, tmp_path / "after", cached=cached, scorers=scorers, report=False
    )
    fresh = replay(candidate, traffic, tmp_path / "fresh", report=False)
    assert after.decisions_path.read_bytes() == fresh.decisions_path.read_bytes()
    base = (tmp_path / "base" / "decisions.parquet").read_bytes()
    assert after.decisions_path.read_bytes() != base  # (the change changes decisions)
