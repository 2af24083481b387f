"""Champion versus challenger: both strategies replayed on the same traffic, then the
swap-set matrix — how many applications (and how much money) move from each outcome under
the champion to each outcome under the challenger — with the economics of every cell.

``value`` in a cell is each strategy's expected value of those applications: expected
profit for keep and branch, expected referral income for refer, 0 for decline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from router.core.config import Strategy
from router.core.errors import TrafficError
from router.decide.outcomes import LABELS
from router.replay.run import ReplayResult, replay


@dataclass
class CompareResult:
    """The swap-set comparison (also in ``DIR/compare.json``) and both replays."""

    comparison: dict[str, Any]
    path: Path
    champion: ReplayResult
    challenger: ReplayResult


def _codes(table, column: str) -> np.ndarray:
    labels = table.column(column).to_numpy(zero_copy_only=False)
    out = np.full(len(labels), -1, dtype=np.int64)
    for k, name in enumerate(LABELS):
        out[labels == name] = k
    return out


class _Sums:
    """Running swap-set sums over aligned pieces of the two decision tables."""

    def __init__(self) -> None:
        self.counts = np.zeros(16, dtype=np.int64)
        self.amounts = np.zeros(16)
        self.value_a = np.zeros(16)
        self.value_b = np.zeros(16)
        self.partner_changed = 0

    def add(self, a, b) -> None:
        """Add two decision tables (or batches) whose rows are the same applications."""
        if (
            a.num_rows != b.num_rows
            or not pc.all(pc.equal(a.column("application_id"), b.column("application_id"))).as_py()
        ):
            raise TrafficError("the two replays did not decide the same applications")
        ka, kb = _codes(a, "outcome"), _codes(b, "outcome")
        cell = ka * 4 + kb
        amount = a.column("requested_amount").to_numpy().astype(np.float64)
        va = pc.fill_null(a.column("expected_value"), 0).to_numpy().astype(np.float64)
        vb = pc.fill_null(b.column("expected_value"), 0).to_numpy().astype(np.float64)
        self.counts += np.bincount(cell, minlength=16)
        self.amounts += np.bincount(cell, weights=amount, minlength=16)
        self.value_a += np.bincount(cell, weights=va, minlength=16)
        self.value_b += np.bincount(cell, weights=vb, minlength=16)
        refer = LABELS.index("refer")
        both = np.flatnonzero((ka == refer) & (kb == refer))
        if len(both):
            pa_ = a.column("partner").take(pa.array(both)).to_pylist()
            pb_ = b.column("partner").take(pa.array(both)).to_pylist()
            self.partner_changed += sum(1 for x, y in zip(pa_, pb_) if x != y)

    def result(self) -> dict[str, Any]:
        counts = self.counts.reshape(4, 4)
        amounts, va, vb = (x.reshape(4, 4) for x in (self.amounts, self.value_a, self.value_b))
        cells = {}
        for i, x in enumerate(LABELS):
            for j, y in enumerate(LABELS):
                cells[f"{x}->{y}"] = {
                    "count": int(counts[i, j]),
                    "amount": int(amounts[i, j]),
                    "value_champion": int(round(va[i, j])),
                    "value_challenger": int(round(vb[i, j])),
                    "value_change": int(round(vb[i, j] - va[i, j])),
                }
        return {
            "labels": list(LABELS),
            "counts": counts.tolist(),
            "amounts": amounts.astype(np.int64).tolist(),
            "cells": cells,
            "referrals_moved_partner": self.partner_changed,
            "swapped": int(counts.sum() - np.trace(counts)),
        }


def swap_matrix(a, b) -> dict[str, Any]:
    """The 4×4 swap sets of two decision tables over the same applications (any order)."""
    sums = _Sums()
    sums.add(a.sort_by("application_id"), b.sort_by("application_id"))
    return sums.result()


def swap_matrix_files(
    path_a: str | Path, path_b: str | Path, batch_size: int = 131_072
) -> dict[str, Any]:
    """:func:`swap_matrix` of two decisions files, read in step batch by batch (memory
    bounded by a batch): two replays of the same traffic write their rows in the same
    order. Files whose rows are not aligned are compared whole, in application-id order."""
    fa, fb = pq.ParquetFile(path_a), pq.ParquetFile(path_b)
    sums = _Sums()
    try:
        for a, b in zip(
            fa.iter_batches(batch_size=batch_size),
            fb.iter_batches(batch_size=batch_size),
            strict=True,
        ):
            sums.add(a, b)
    except (TrafficError, ValueError):
        return swap_matrix(pq.read_table(path_a), pq.read_table(path_b))
    return sums.result()


def compare(
    champion: Strategy,
    challenger: Strategy,
    traffic: str | Path,
    out_dir: str | Path,
    **replay_options: Any,
) -> CompareResult:
    """Replay both strategies (into ``DIR/champion`` and ``DIR/challenger``), write
    ``DIR/compare.json`` and return the comparison."""
    out = Path(out_dir)
    a = replay(champion, traffic, out / "champion", **replay_options)
    b = replay(challenger, traffic, out / "challenger", **replay_options)
    assert a.decisions_path is not None and b.decisions_path is not None  # written above
    m = swap_matrix_files(a.decisions_path, b.decisions_path)
    ea, eb = a.summary["expected_profit"], b.summary["expected_profit"]
    m["champion"] = {
        "strategy_version": champion.version,
        "strategy_hash": a.summary["strategy_hash"],
    }
    m["challenger"] = {
        "strategy_version": challenger.version,
        "strategy_hash": b.summary["strategy_hash"],
    }
    m["net_change"] = {
        "profit": (eb["keep"] + eb["branch"]) - (ea["keep"] + ea["branch"]),
        "referral_revenue": eb["referral_value"] - ea["referral_value"],
        "total": eb["total"] - ea["total"],
        "keep_rate": b.summary["keep_rate"] - a.summary["keep_rate"],
    }
    if (
        a.summary.get("realised_referral_value") is not None
        and b.summary.get("realised_referral_value") is not None
    ):
        m["net_change"]["realised_referral_revenue"] = (
            b.summary["realised_referral_value"] - a.summary["realised_referral_value"]
        )
    path = out / "compare.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(m)) + b"\n")
    return CompareResult(m, path, a, b)
