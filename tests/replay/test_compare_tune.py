"""Champion vs challenger swap sets, tuning frontier and choice, the HTML report."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_replay_metrics import PDS, _row, _write

from router.core.config import load_strategy, strategy_from_dict
from router.core.errors import ConfigError
from router.replay.compare import compare, swap_matrix
from router.replay.tune import LocalExecutor, candidates, choose, pareto, tune, with_params
from router.testing import ScoreLookupScorer, strategy_dict


def _decisions(outcomes, values):
    n = len(outcomes)
    return pa.table(
        {
            "application_id": [f"a{i}" for i in range(n)],
            "requested_amount": [100 * (i + 1) for i in range(n)],
            "outcome": outcomes,
            "partner": [None] * n,
            "expected_value": values,
        }
    )


def test_swap_matrix_by_hand():
    a = _decisions(["keep", "keep", "refer", "decline", "decline"], [10, 20, 5, None, None])
    b = _decisions(["keep", "refer", "refer", "keep", "decline"], [11, 7, 6, 30, None])
    m = swap_matrix(a, b.take([4, 3, 2, 1, 0]))  # any row order
    k, r, d = 0, 2, 3
    assert m["counts"][k][k] == 1 and m["counts"][k][r] == 1 and m["counts"][r][r] == 1
    assert m["counts"][d][k] == 1 and m["counts"][d][d] == 1 and m["swapped"] == 2
    assert sum(map(sum, m["counts"])) == 5
    cell = m["cells"]["keep->refer"]
    assert cell == {
        "count": 1,
        "amount": 200,
        "value_champion": 20,
        "value_challenger": 7,
        "value_change": -13,
    }
    assert m["cells"]["decline->keep"]["value_change"] == 30
    assert m["amounts"][d][d] == 500


def test_compare_end_to_end(tmp_path):
    rows = [_row(i, [720, 650, 600, 550][i % 4], hour=9 + i % 10) for i in range(1, 41)]
    path = _write(tmp_path, rows)
    base = strategy_dict()
    base["branch"] = None
    champion = strategy_from_dict(base)
    stricter = strategy_dict(primary={**base["primary"], "max_pd": 0.01}, version="test-2")
    stricter["branch"] = None
    challenger = strategy_from_dict(stricter)
    r = compare(
        champion, challenger, path, tmp_path / "cmp", scorers={"main": ScoreLookupScorer(PDS)}
    )
    m = r.comparison
    # The challenger keeps nobody (cut-off .01 below every PD): all kept rows move.
    kept = r.champion.summary["decisions"]["keep"]
    assert kept > 0 and sum(m["counts"][0]) == kept and m["counts"][0][0] == 0
    assert m["net_change"]["profit"] == -r.champion.summary["expected_profit"]["keep"]
    assert m["net_change"]["referral_revenue"] == (
        r.challenger.summary["expected_profit"]["referral_value"]
        - r.champion.summary["expected_profit"]["referral_value"]
    )
    assert (tmp_path / "cmp" / "compare.json").exists()


def _cands(points):
    return [
        {"id": i, "metrics": {"value": v, "bad_rate": b, "keep_rate": k}}
        for i, (v, b, k) in enumerate(points)
    ]


def test_pareto_and_choice_by_hand():
    c = _cands(
        [
            (100, 0.05, 0.2),  # 0 frontier
            (90, 0.05, 0.2),  # 1 dominated by 0
            (120, 0.08, 0.3),  # 2 frontier (more value, more risk)
            (80, 0.03, 0.1),  # 3 frontier (least risk)
            (80, 0.04, 0.1),
        ]
    )  # 4 dominated by 3
    assert pareto(c) == [True, False, True, True, False]
    assert choose(c)["id"] == 2
    assert choose(c, max_bad_rate=0.06)["id"] == 0
    assert choose(c, max_bad_rate=0.06, min_keep_rate=0.25) is None


def test_a_candidate_that_keeps_nothing_has_no_bad_rate_and_cannot_pass_a_bound():
    from router.replay.tune import metrics_of

    summary = {
        "expected_profit": {"total": 500, "keep": 0, "branch": 200, "referral_value": 300},
        "expected_bad_rate": None,  # no loan kept
        "realised_bad_rate": None,
        "keep_rate": 0.0,
        "decisions": {"keep": 0, "branch": 2, "refer": 3, "decline": 5},
    }
    m = metrics_of(summary)
    assert m["bad_rate"] is None
    c = _cands([(100, 0.05, 0.2)]) + [{"id": 1, "params": {}, "metrics": m}]
    # The most valuable, but with no bad rate it passes no bad-rate bound ...
    assert choose(c, max_bad_rate=0.5)["id"] == 0
    assert choose(c)["id"] == 1  # ... and without a bound it may be chosen on value.
    # On the frontier it is judged on value and keep rate alone: here it is not dominated.
    assert pareto(c) == [True, True]


def test_grid_parameters_by_name():
    s = load_strategy("configs/strategy.toml")
    from router.replay.tune import strategy_data

    base = strategy_data(s)
    raw = with_params(
        base,
        {
            "primary.max_pd": 0.07,
            "partners.credit_dongfang.caps.day.count": 123,
            "partners.bank_ningyuan.priority": 9,
        },
    )
    t = strategy_from_dict(raw)
    assert t.primary.max_pd == 0.07 and t.partner("bank_ningyuan").priority == 9
    assert [c.count for c in t.partner("credit_dongfang").caps if c.window == "day"] == [123]
    for bad in (
        "primary.nope",
        "partners.nobody.priority",
        "partners.bank_ningyuan.caps.week.count",
    ):
        with pytest.raises(ConfigError):
            with_params(base, {bad: 1})
    assert len(candidates({"a": [1, 2], "b": [3, 4, 5]})) == 6


@pytest.mark.parametrize("workers", [1, 2])
def test_tune_end_to_end(tmp_path, workers):
    from router.traffic import write_traffic

    traffic = write_traffic(tmp_path / "t.parquet", 6000, seed=3, per_day=6000)
    grid = {"primary.max_pd": [0.03, 0.06], "routing.method": ["best_value", "waterfall"]}
    s = load_strategy("configs/strategy.toml")
    seen = []
    r = tune(
        s,
        traffic,
        grid,
        tmp_path / "tune",
        max_bad_rate=0.05,
        executor=LocalExecutor(workers),
        progress=seen.append,
    )
    cands = r.result["candidates"]
    assert [c["id"] for c in cands] == [0, 1, 2, 3] and len(seen) == 4
    assert [c["params"] for c in cands] == candidates(grid)
    assert [c["frontier"] for c in cands] == pareto(cands)
    best = [c for c in cands if c.get("best")]
    assert len(best) == 1 and best[0]["metrics"]["bad_rate"] <= 0.05
    # The written strategy loads, and replaying it gives the chosen candidate's figures.
    from router.replay import replay

    tuned = load_strategy(r.best_strategy)
    assert tuned.primary.max_pd == best[0]["params"]["primary.max_pd"]
    again = replay(tuned, traffic, tmp_path / "again", report=False)
    assert again.summary["expected_profit"]["total"] == best[0]["metrics"]["value"]
    # Expected next to realised for every candidate (the traffic has outcomes).
    m = best[0]["metrics"]
    assert m["realised_keep_profit"] == again.summary["realised_keep_profit"] is not None
    kept = again.summary["calibration"]["by_outcome"]["keep"]
    assert m["kept_pds_came_true"] is kept["consistent"]
    assert m["realised_bad_rate"] == kept["realised_bad_rate"]
    _check_report(tmp_path / "tune" / "report.html", expect={"frontier.png"})


def test_replay_and_compare_reports_have_their_charts(tmp_path):
    rows = [
        _row(i, [720, 650, 600, 550][i % 4], hour=8 + i % 12, defaulted=bool(i % 5 == 0))
        for i in range(1, 60)
    ]
    path = _write(tmp_path, rows)
    s = strategy_from_dict(strategy_dict())
    kw = dict(scorers={"main": ScoreLookupScorer(PDS)})
    from router.replay import replay
    from router.replay.report import write_compare_report

    r = replay(s, path, tmp_path / "one", **kw)
    _check_report(
        tmp_path / "one" / "report.html",
        expect={"split_by_hour.png", "quota_use.png", "pd_by_outcome.png"},
    )
    c = compare(s, s, path, tmp_path / "cmp", **kw)
    write_compare_report(c.comparison, c.champion.summary, c.challenger.summary, tmp_path / "cmp")
    _check_report(tmp_path / "cmp" / "report.html", expect={"swap_heatmap.png"})
    assert c.comparison["swapped"] == 0 and r.summary["applications"] == 59


def _check_report(path, expect):
    """Every chart the page shows exists, is a real PNG and is not blank."""
    import matplotlib.image as mpimg

    page = path.read_text()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert expect <= {s.rsplit("/", 1)[-1] for s in srcs}
    for src in srcs:
        png = path.parent / src
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(png)
        assert img.shape[0] > 100 and img.shape[1] > 100
        # Not blank: many distinct colours (axes, bars, text).
        assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20


def test_swap_matrix_files_streams_aligned_files_and_falls_back(tmp_path):
    from router.replay.compare import swap_matrix_files

    a = _decisions(["keep", "keep", "refer", "decline", "decline"], [10, 20, 5, None, None])
    b = _decisions(["keep", "refer", "refer", "keep", "decline"], [11, 7, 6, 30, None])
    pa_, pb_ = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(a, pa_)
    pq.write_table(b, pb_)
    expected = swap_matrix(a, b)
    assert swap_matrix_files(pa_, pb_, batch_size=2) == expected  # in step, 2 rows a batch
    pq.write_table(b.take([4, 3, 2, 1, 0]), pb_)  # not aligned: whole tables
    assert swap_matrix_files(pa_, pb_, batch_size=2) == expected


def test_any_executor_with_map_plugs_in(tmp_path):
    """The executor is pluggable: anything with ``map(fn, tasks)`` yielding results as they
    finish (here threads, in reverse order) gives the same tuning result."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from router.traffic import write_traffic

    class Threads:
        def map(self, fn, tasks):
            with ThreadPoolExecutor(2) as pool:
                for f in as_completed([pool.submit(fn, t) for t in reversed(list(tasks))]):
                    yield f.result()

    traffic = write_traffic(tmp_path / "t.parquet", 3000, seed=4, per_day=3000)
    grid = {"primary.max_pd": [0.03, 0.05, 0.07]}
    s = load_strategy("configs/strategy.toml")
    a = tune(s, traffic, grid, tmp_path / "a", executor=Threads(), report=False)
    b = tune(s, traffic, grid, tmp_path / "b", executor=LocalExecutor(1), report=False)
    assert a.result["candidates"] == b.result["candidates"]
    assert a.result["best"] == b.result["best"]


def test_a_grid_value_that_is_not_a_list_is_a_config_error(tmp_path):
    """(Found by the type checker: the error was built with an argument it does not take.)"""
    from router.replay.tune import load_grid

    p = tmp_path / "grid.toml"
    p.write_text('[grid]\n"primary.max_pd" = 0.05\n')
    with pytest.raises(ConfigError, match=r"grid\.primary\.max_pd.*\(value: 0\.05\)"):
        load_grid(p)


def test_tune_shows_the_starting_strategy_next_to_the_candidates(tmp_path):
    """The strategy tuning starts from is replayed too and shown as a point of its own, so a
    user sees whether the chosen candidate beats what they run today (the demo's own
    strategy beats every candidate of the README's grid at --min-keep-rate 0.06)."""
    from router.replay.tune import metrics_of
    from router.traffic import write_traffic

    traffic = write_traffic(tmp_path / "t.parquet", 6000, seed=3, per_day=6000)
    s = load_strategy("configs/strategy.toml")
    r = tune(s, traffic, {"primary.max_pd": [0.03, 0.05]}, tmp_path / "tune", max_bad_rate=0.05)
    from router.replay import replay

    plain = replay(s, traffic, tmp_path / "plain", report=False)
    assert r.result["baseline"] == metrics_of(plain.summary)
    assert [c["id"] for c in r.result["candidates"]] == [0, 1]  # not a candidate itself
    page = (tmp_path / "tune" / "report.html").read_text()
    assert "starting strategy" in page and s.version in page
