"""Cold start and the CLI end to end, as a user sees them: every figure is a fresh process.

  (1) ``python -c pass`` (the baseline) against ``import router``, ``from router import
      Router`` and ``import router.cli``;
  (2) a first decision in a fresh process — import, load the strategy, build a ``Router``
      (memory store), decide one application — with numba's cache warm, and cold (an empty
      ``NUMBA_CACHE_DIR``: what a fresh install pays once);
  (3) ``referral-router replay`` end to end (read, validate, hash, decide with quotas,
      metrics, decisions.parquet, summary, report with charts) on 100k and 1M generated
      rows: applications per second of wall time, next to the rate of the run inside the
      command (``timing.json``): the difference is the command's fixed cost; and the 100k
      replay once with numba's cache cold (it compiles the walk);

  (4) next to the 1M replay, on the same file and in a fresh process too, a numpy baseline
      of the same rules without quotas: read the Parquet file, the columns, the
      vectorised assessment (rules, PD, coverage, values: ``router.decide.assess``), then
      keep / branch / best-value partner / decline by masks and an argmax — no validation
      of rejects, no quotas, dedupe, idempotency or ledger, no outputs but the counts.

Medians of 5 runs (3 for the 1M replay and its baseline), written to
``bench/results/cold.json``.

    python bench/bench_cold.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLI = str(Path(PY).parent / "referral-router")

FIRST_DECISION = """
import time
t = time.perf_counter()
from router import Router, load_strategy
from router.testing import make_application
router = Router(load_strategy("configs/strategy.toml"))
router.decide(make_application())
print(time.perf_counter() - t)
"""


def _wall(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def _median(cmd: list[str], runs: int = 5, env: dict | None = None) -> float:
    return statistics.median(_wall(cmd, env) for _ in range(runs))


def imports() -> dict[str, float]:
    """(1): seconds per fresh process, and each import's cost above ``python -c pass``."""
    out = {"python_c_pass_s": _median([PY, "-c", "pass"])}
    for name, code in (
        ("import_router", "import router"),
        ("import_router_Router", "from router import Router"),
        ("import_router_cli", "import router.cli"),
    ):
        out[f"{name}_s"] = _median([PY, "-W", "ignore", "-c", code])
        out[f"{name}_above_baseline_s"] = out[f"{name}_s"] - out["python_c_pass_s"]
    return out


def first_decision() -> dict[str, float]:
    """(2): seconds from process start to the first decision, numba cache warm and cold."""
    cmd = [PY, "-W", "ignore", "-c", FIRST_DECISION]
    _wall(cmd)  # the cache warm
    warm = _median(cmd)
    cold = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(_wall(cmd, {**os.environ, "NUMBA_CACHE_DIR": cache}))
    return {"first_decision_warm_s": warm, "first_decision_cold_cache_s": statistics.median(cold)}


BASELINE = """
import sys, time
t = time.perf_counter()
import numpy as np
import pyarrow.parquet as pq
from router.core.columns import from_arrow
from router.core.config import load_strategy
from router.core.identity import Hasher
from router.decide.assess import assess
from router.decide.partners import PartnerTable
from router.scoring import load_scorer

s = load_strategy("configs/strategy.toml")
scorers = {n: load_scorer(r.kind, r.path, s.base_dir) for n, r in s.scorers.items()}
hasher = Hasher.from_config(s.identity)
employers = [frozenset(hasher.token(e, "employer") for e in p.employer_names) for p in s.partners]
table = PartnerTable(s.partners)
counts = np.zeros(4, dtype=np.int64)
for batch in pq.ParquetFile(sys.argv[1]).iter_batches(batch_size=131_072):
    a = assess(from_arrow(batch, hasher, checked=True), s, scorers, employers, table)
    refer = ~a.keep_ok & ~a.branch_ok & a.eligible.any(axis=1)
    best = np.where(a.eligible, a.ev, -np.inf).argmax(axis=1)  # the best-value partner
    counts += [a.keep_ok.sum(), (~a.keep_ok & a.branch_ok).sum(), refer.sum(), 0]
    counts[3] += len(best) - a.keep_ok.sum() - (~a.keep_ok & a.branch_ok).sum() - refer.sum()
print(time.perf_counter() - t, *counts.tolist())
"""


def numpy_baseline(traffic: Path, rows: int, runs: int) -> dict[str, float]:
    """(4): the numpy baseline on ``traffic``, wall time of a fresh process."""
    cmd = [PY, "-W", "ignore", "-c", BASELINE, str(traffic)]
    wall = _median(cmd, runs)
    return {f"numpy_baseline_{rows}_apps_per_s_wall": rows / wall}


def cli_replay(rows: int, runs: int) -> dict[str, float]:
    """(3): the replay command end to end, and the run inside it."""
    tmp = Path(tempfile.mkdtemp())
    traffic = tmp / "traffic.parquet"
    subprocess.run([CLI, "generate", "-n", str(rows), "-o", str(traffic)], check=True)
    cmd = [CLI, "replay", "-s", "configs/strategy.toml", "-t", str(traffic), "--out", str(tmp)]
    walls, inner = [], []
    for _ in range(runs):
        walls.append(_wall(cmd))
        inner.append(json.loads((tmp / "timing.json").read_text())["applications_per_s"])
    wall = statistics.median(walls)
    out = numpy_baseline(traffic, rows, runs) if rows >= 1_000_000 else {}
    if rows < 1_000_000:
        # Once with numba's cache cold (an empty NUMBA_CACHE_DIR): a fresh install's first run.
        with tempfile.TemporaryDirectory() as cache:
            out[f"cli_replay_{rows}_cold_cache_wall_s"] = _wall(
                cmd, {**os.environ, "NUMBA_CACHE_DIR": cache}
            )
    return out | {
        f"cli_replay_{rows}_wall_s": wall,
        f"cli_replay_{rows}_apps_per_s_wall": rows / wall,
        f"cli_replay_{rows}_apps_per_s_inside": statistics.median(inner),
        f"cli_replay_{rows}_fixed_cost_s": wall - rows / statistics.median(inner),
    }


def main() -> dict[str, float]:
    res = imports()
    res.update(first_decision())
    res.update(cli_replay(100_000, 5))
    res.update(cli_replay(1_000_000, 3))
    return res


if __name__ == "__main__":
    r = main()
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "cold.json").write_text(json.dumps(r, indent=1) + "\n")
    for k, v in r.items():
        print(f"{k:40s} {v:12,.3f}" if k.endswith("_s") else f"{k:40s} {v:12,.0f}")
