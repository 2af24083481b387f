"""Tuning throughput: 64 or 256 candidates over 1M generated rows on this machine's
cores, or on a local Dask / Ray cluster of 2 worker processes (``--cluster dask:local``).

Baseline in the same run: one plain replay of the same file (read, validate, decide, write
decisions), so "64 × baseline" is what replaying every candidate from scratch, one after
another, would take. Tuning reads the file once, shares it with forked workers, skips
per-candidate outputs, and keeps with each cached batch what candidates that change only
cut-offs, caps and routing share (scores, prices, partner eligibility and values). Goal:
256 candidates × 1M rows under 2 minutes on a 2-core machine.

    python bench/bench_tune.py [ROWS] [--candidates 256] [--cluster dask:local]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRID = {
    "primary.max_pd": [0.03, 0.04, 0.05, 0.06],
    "branch.max_pd": [0.08, 0.10, 0.12, 0.14],
    "routing.method": ["best_value", "waterfall"],
    "routing.min_expected_value": [0, 2000],
}
#: 256 candidates: the same, with two more cut-offs and a partner's day cap.
GRID_256 = {
    **GRID,
    "routing.min_expected_value": [0, 1000, 2000, 4000],
    "partners.credit_dongfang.caps.day.count": [9000, 12000],
}


def main(rows: int, n_candidates: int = 64, cluster: str | None = None) -> dict:
    from router.core.config import load_strategy
    from router.replay import replay
    from router.replay.executors import executor_from_url
    from router.replay.tune import candidates, tune
    from router.traffic import write_traffic

    traffic = ROOT / "out" / "bench" / f"replay_{rows}.parquet"
    if not traffic.exists():
        write_traffic(traffic, rows, seed=5)
    strategy = load_strategy(ROOT / "configs" / "strategy.toml")
    t = time.perf_counter()
    replay(strategy, traffic, ROOT / "out" / "bench" / "tune_baseline", report=False)
    one = time.perf_counter() - t
    grid = GRID_256 if n_candidates == 256 else GRID
    n = len(candidates(grid))
    done = []
    executor = executor_from_url(cluster, 2 if cluster else None)
    t = time.perf_counter()  # (a cluster's start-up is not counted; its first read is)
    try:
        r = tune(
            strategy,
            traffic,
            grid,
            ROOT / "out" / "bench" / "tune",
            max_bad_rate=0.05,
            executor=executor,
            progress=lambda c: done.append(time.perf_counter() - t),
            report=False,
        )
    finally:
        if hasattr(executor, "close"):
            executor.close()
    total = time.perf_counter() - t
    return {
        "rows": rows,
        "candidates": n,
        "executor": cluster or "local processes",
        "workers": 2 if cluster else os.cpu_count(),
        "baseline_one_replay_s": one,
        "baseline_sequential_s": one * n,
        "tune_total_s": total,
        "speedup_vs_sequential": one * n / total,
        "first_candidate_done_s": done[0] if done else None,
        "best": r.result["best"],
        "frontier": sum(c["frontier"] for c in r.result["candidates"]),
    }


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("rows", nargs="?", type=int, default=1_000_000)
    ap.add_argument("--candidates", type=int, default=64, choices=(64, 256))
    ap.add_argument("--cluster", default=None, help="dask:local or ray:local (2 workers)")
    a = ap.parse_args()
    res = main(a.rows, a.candidates, a.cluster)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    name = f"tune_{a.candidates}" + (f"_{a.cluster.split(':')[0]}" if a.cluster else "")
    (ROOT / "bench" / "results" / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    for k, v in res.items():
        print(f"{k:32s} {v:,.2f}" if isinstance(v, float) else f"{k:32s} {v}")
