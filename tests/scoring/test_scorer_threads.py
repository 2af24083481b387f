"""The compiled tree scorer's per-thread buffers give the same answers under threads."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from router.scoring import load_scorer

ROOT = Path(__file__).resolve().parents[2]


def test_pd_one_thread_safe():
    scorer = load_scorer("sklearn", "pd_hgb.skops", ROOT / "models")
    rng = np.random.default_rng(3)
    X = np.column_stack(
        [rng.uniform(20, 60, 400), rng.uniform(7, 11, 400), rng.uniform(4, 8, 400)]
        + [rng.uniform(0, 3, 400) for _ in range(10)]
    )
    expected = scorer.pd_batch(X)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda row: scorer.pd_one(row.tolist()), X))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
