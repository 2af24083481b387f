"""The compiled tree scorers give the same answers under threads (the ONNX one through
per-thread buffers, the numba one with no state at all), and refuse a row of the wrong
width instead of reading past it."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from router.scoring import OnnxTreeScorer, load_scorer
from router.scoring.sklearn_adapter import load_skops

ROOT = Path(__file__).resolve().parents[2]


def _rows(n: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.column_stack(
        [rng.uniform(20, 60, n), rng.uniform(7, 11, n), rng.uniform(4, 8, n)]
        + [rng.uniform(0, 3, n) for _ in range(width - 3)]
    )


@pytest.mark.parametrize("kind", ["numba", "onnx"])
def test_pd_one_thread_safe(kind):
    if kind == "numba":
        scorer = load_scorer("trees_json", "pd_trees.json", ROOT / "models")
    else:
        scorer = OnnxTreeScorer.from_estimator(load_skops(ROOT / "models" / "pd_hgb.skops"))
    X = _rows(400, len(scorer.feature_names_))
    expected = scorer.pd_batch(X)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda row: scorer.pd_one(row.tolist()), X))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_a_row_of_the_wrong_width_is_refused():
    scorer = load_scorer("trees_json", "pd_trees.json", ROOT / "models")
    n = len(scorer.feature_names_)
    with pytest.raises(ValueError, match="features"):
        scorer.pd_one([0.0] * (n - 1))
    with pytest.raises(ValueError, match="features"):
        scorer.pd_batch(np.zeros((3, n - 1)))
