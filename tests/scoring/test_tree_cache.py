"""The tree kernels load from numba's on-disk cache in a new process: nothing is compiled
again, and no cache file is written, after the first process (a CLI run pays neither)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCORE = """
import numpy as np
from router.scoring.tree_kernel import TreeScorer
s = TreeScorer.from_file("models/pd_trees.json")
X = np.zeros((3, len(s.feature_names_)))
s.pd_batch(X)
s.pd_one(list(X[0]))
"""


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="numba is off")
def test_second_process_compiles_nothing(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_DEBUG_CACHE="1")

    def run() -> str:
        out = subprocess.run(
            [sys.executable, "-c", SCORE], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout + out.stderr

    first = run()
    assert "data saved" in first
    files = sorted(p.name for p in tmp_path.rglob("*.nbc"))
    second = run()
    assert "data saved" not in second, second
    assert "data loaded" in second
    assert sorted(p.name for p in tmp_path.rglob("*.nbc")) == files
