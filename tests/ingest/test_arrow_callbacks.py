"""Arrow's streaming CSV reader holds a Python callback (misshapen rows); the process waits
at exit until Arrow has released it (router/ingest/arrow_callbacks.py), so an abandoned
reader's read-ahead thread never releases it while the interpreter shuts down (an abort,
exit 134, instead of the command's own exit code)."""

from __future__ import annotations

import csv
import gc
import subprocess
import sys
from pathlib import Path

import pytest
from tests_helpers import MAPPING, lender_rows, strategy_and_scorer

from router.core.errors import TrafficError
from router.core.identity import Hasher
from router.ingest import arrow_callbacks
from router.ingest.reader import read_batches

STRATEGY = str(Path(__file__).resolve().parents[2] / "configs" / "strategy.toml")


def _csv(path, rows=50, misshapen=False):
    data = lender_rows(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows(data)
        if misshapen:
            f.write("only,three,fields\n")
    return path


def _batches(path, **kw):
    s, _ = strategy_and_scorer()
    return read_batches(
        path, Hasher(b"k" * 32), partner_ids=[p.id for p in s.partners], mapping=MAPPING, **kw
    )


def test_a_tracked_callback_is_seen_released():
    calls = []
    cb = arrow_callbacks.tracked(calls.append)
    before = arrow_callbacks.outstanding()
    cb("row")
    assert calls == ["row"] and before >= 1
    assert not arrow_callbacks.wait_released(0.05)  # held here: the wait gives up
    del cb
    gc.collect()
    assert arrow_callbacks.outstanding() == before - 1


def test_a_csv_read_to_its_end_releases_its_callbacks(tmp_path):
    rejects = []
    got = list(_batches(_csv(tmp_path / "t.csv", misshapen=True), on_rejects=rejects.extend))
    assert sum(len(b.cols) for b in got) == 50
    assert [r.field for r in rejects] == ["row"]  # the misshapen row, through the callback
    gc.collect()
    assert arrow_callbacks.wait_released(2.0) and arrow_callbacks.outstanding() == 0


def test_a_csv_abandoned_after_its_first_batch_releases_its_callbacks(tmp_path):
    it = _batches(_csv(tmp_path / "t.csv"), batch_size=10)
    next(it)
    it.close()  # what a refused replay does: the reader and its read-ahead left behind
    del it
    gc.collect()
    assert arrow_callbacks.wait_released(2.0) and arrow_callbacks.outstanding() == 0


def test_a_csv_refused_at_its_first_block_exits_with_its_own_code(tmp_path):
    """The case that aborted (1 run in 10 once): a missing column, refused at the first
    block, the process exiting at once. 10 runs, each the command's exit code 2."""
    bad = tmp_path / "ab.csv"
    bad.write_text("a,b\n1,2\n3,4\n" * 2000)
    argv = ["referral-router", "replay", "-s", STRATEGY, "-t", str(bad), "-o", str(tmp_path / "o")]
    code = f"import sys; from router.cli import main; sys.argv = {argv!r}; main()"
    for _ in range(10):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr[-500:]
        assert "missing column" in r.stderr and "terminate" not in r.stderr


def test_a_csv_refused_raises_its_error_in_process(tmp_path):
    bad = tmp_path / "ab.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(TrafficError, match="missing column"):
        list(_batches(bad))
