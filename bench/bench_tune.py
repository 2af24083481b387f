"""Tuning throughput: 64 candidates over 1M generated rows on this machine's cores.

Baseline in the same run: one plain replay of the same file (read, validate, decide, write
decisions), so "64 × baseline" is what replaying every candidate from scratch, one after
another, would take. Tuning reads the file once, shares it with forked workers and skips
per-candidate outputs. Target: under 5 minutes on a 2-core machine.

    python bench/bench_tune.py [ROWS]
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


def main(rows: int) -> dict:
    from router.core.config import load_strategy
    from router.replay import replay
    from router.replay.tune import LocalExecutor, candidates, tune
    from router.traffic import write_traffic

    traffic = ROOT / "out" / "bench" / f"replay_{rows}.parquet"
    if not traffic.exists():
        write_traffic(traffic, rows, seed=5)
    strategy = load_strategy(ROOT / "configs" / "strategy.toml")
    t = time.perf_counter()
    replay(strategy, traffic, ROOT / "out" / "bench" / "tune_baseline", report=False)
    one = time.perf_counter() - t
    n = len(candidates(GRID))
    done = []
    t = time.perf_counter()
    r = tune(
        strategy,
        traffic,
        GRID,
        ROOT / "out" / "bench" / "tune",
        max_bad_rate=0.05,
        executor=LocalExecutor(),
        progress=lambda c: done.append(time.perf_counter() - t),
    )
    total = time.perf_counter() - t
    return {
        "rows": rows,
        "candidates": n,
        "workers": os.cpu_count(),
        "baseline_one_replay_s": one,
        "baseline_64_sequential_s": one * n,
        "tune_total_s": total,
        "speedup_vs_sequential": one * n / total,
        "first_candidate_done_s": done[0] if done else None,
        "best": r.result["best"],
        "frontier": sum(c["frontier"] for c in r.result["candidates"]),
    }


if __name__ == "__main__":
    res = main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "tune.json").write_text(json.dumps(res, indent=1) + "\n")
    for k, v in res.items():
        print(f"{k:32s} {v:,.2f}" if isinstance(v, float) else f"{k:32s} {v}")
