"""The replay loop: a traffic file through the decision core on the in-memory store.

Event time drives every window. Batches are scored vectorised and reserved in
event-time order (each batch is sorted; a row older than the previous batch's newest is
counted as ``late_events`` and still decided at its own event time). Outputs:
``DIR/summary.json`` and ``DIR/decisions.parquet`` (one row per application).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from router import economics as eco
from router.columns import AppColumns, take
from router.config import Strategy
from router.engine import BRANCH_BUCKET, KEEP_BUCKET, Router
from router.logs import get_logger
from router.outcomes import BRANCH, KEEP, LABELS, REFER, Outcomes, reason_strings
from router.replay.reader import read_columns
from router.store import MemoryQuotaStore, QuotaStore

DECISIONS_SCHEMA = pa.schema([
    ("application_id", pa.string()), ("received_at", pa.timestamp("ms", tz="UTC")),
    ("outcome", pa.string()), ("partner", pa.string()), ("pd", pa.float64()),
    ("apr", pa.float64()), ("expected_value", pa.int64()), ("reasons", pa.string()),
    ("degraded", pa.bool_()),
])


@dataclass
class _PartnerTotals:
    referred: int = 0
    amount: int = 0
    expected_fee: float = 0.0
    expected_rev_share: float = 0.0
    expected_value: int = 0
    cap_refusals: dict[str, int] = field(default_factory=dict)
    daily_cap_ran_out: dict[str, str] = field(default_factory=dict)


@dataclass
class ReplayResult:
    """What a replay produced: the summary (also written as JSON) and the output paths."""

    summary: dict[str, Any]
    summary_path: Path
    decisions_path: Path


def _iso(ms: int, tz: str) -> str:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).isoformat(timespec="seconds")


def _day(key: int) -> str:
    return f"{key // 10000:04d}-{key // 100 % 100:02d}-{key % 100:02d}"


def replay(strategy: Strategy, traffic: str | Path, out_dir: str | Path, *,
           batch_size: int = 131_072, store: QuotaStore | None = None,
           progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Replay ``traffic`` with ``strategy`` and write the summary and decisions to ``out_dir``.

    ``store`` defaults to a fresh in-memory store; any :class:`QuotaStore` gives the same
    decisions (a Redis store is how live semantics are checked against replay).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    totals = {p.id: _PartnerTotals() for p in strategy.partners}
    budgets = {KEEP_BUCKET: _PartnerTotals(), BRANCH_BUCKET: _PartnerTotals()}
    tz_of = {p.id: p.timezone for p in strategy.partners}
    tz_of[KEEP_BUCKET] = tz_of[BRANCH_BUCKET] = strategy.timezone

    first_day_hit: set[tuple[str, int]] = set()
    log = get_logger("replay").bind(strategy=strategy.version)

    def on_cap(bucket: str, window: str, key: int, event_ms: int) -> None:
        t = totals.get(bucket) or budgets[bucket]
        log.debug("quota.exhausted", bucket=bucket.strip("_"), window=window, window_key=key,
                  at=_iso(event_ms, tz_of[bucket]))
        if window == "day" and (bucket, key) not in first_day_hit:
            first_day_hit.add((bucket, key))
            t.daily_cap_ran_out.setdefault(_day(key), _iso(event_ms, tz_of[bucket]))

    if store is None:
        store = MemoryQuotaStore(idempotency_ttl_ms=strategy.idempotency_ttl_hours * 3600_000,
                                 retain_ledger=False, validate=False)
    router = Router(strategy, store, on_cap=on_cap)
    counts = {"keep": 0, "branch": 0, "refer": 0, "decline": 0}
    profit = {"keep": 0, "branch": 0}
    n_apps = late = 0
    newest = -(2**62)
    partners = {p.id: p for p in strategy.partners}
    tmp = out / "decisions.parquet.tmp"
    log.info("replay.start", traffic=str(traffic), out=str(out))
    t0 = time.perf_counter()
    with pq.ParquetWriter(tmp, DECISIONS_SCHEMA, compression="zstd") as writer:
        for cols in read_columns(traffic, router.hasher, batch_size):
            order = np.argsort(cols.event_ms, kind="stable")
            if (np.diff(cols.event_ms) < 0).any():
                cols = take(cols, order)
            late += int((cols.event_ms < newest).sum())
            newest = max(newest, int(cols.event_ms.max()))
            outcomes = router.decide_columns(cols)
            _account(outcomes, cols, partners, totals, counts, profit)
            writer.write_batch(_decision_batch(outcomes, cols))
            n_apps += len(cols)
            if progress:
                progress(len(cols))
    tmp.replace(out / "decisions.parquet")
    for (bucket, window), count in sorted(router.cap_refusals().items()):
        (totals.get(bucket) or budgets[bucket]).cap_refusals[window] = count
    elapsed = time.perf_counter() - t0
    referral_value = sum(t.expected_value for t in totals.values())
    summary = {
        "strategy_version": strategy.version,
        "traffic": str(traffic),
        "applications": n_apps,
        "decisions": counts,
        "shares": {k: (v / n_apps if n_apps else 0.0) for k, v in counts.items()},
        "partners": {pid: {
            "referred": t.referred, "amount": t.amount,
            "expected_fee": int(round(t.expected_fee)),
            "expected_rev_share": int(round(t.expected_rev_share)),
            "expected_value": t.expected_value,
            "cap_refusals": t.cap_refusals,
            "daily_cap_ran_out": t.daily_cap_ran_out,
        } for pid, t in totals.items()},
        "budgets": {name.strip("_"): {"cap_refusals": t.cap_refusals,
                                       "daily_cap_ran_out": t.daily_cap_ran_out}
                    for name, t in budgets.items()},
        "expected_profit": profit["keep"] + profit["branch"] + referral_value,
        "expected_profit_breakdown": {**profit, "referral_value": referral_value},
        "late_events": late,
        "elapsed_s": round(elapsed, 3),
        "applications_per_s": round(n_apps / elapsed, 1) if elapsed > 0 else None,
        "money_unit": "minor units (fen)",
    }
    log.info("replay.done", applications=n_apps, elapsed_s=summary["elapsed_s"],
             applications_per_s=summary["applications_per_s"], **counts)
    summary_path = out / "summary.json"
    summary_path.write_bytes(msgspec.json.format(msgspec.json.encode(summary)) + b"\n")
    return ReplayResult(summary, summary_path, out / "decisions.parquet")


def _account(out: Outcomes, cols: AppColumns, partners: dict[str, Any],
             totals: dict[str, _PartnerTotals], counts: dict[str, int],
             profit: dict[str, int]) -> None:
    """Add a batch's outcomes to the running totals (fee / rev-share split vectorised)."""
    for k, c in enumerate(np.bincount(out.kind, minlength=4).tolist()):
        counts[LABELS[k]] += c
    profit["keep"] += int(out.value[out.kind == KEEP].sum())
    profit["branch"] += int(out.value[out.kind == BRANCH].sum())
    refer = np.flatnonzero(out.kind == REFER)
    if not len(refer):
        return
    pids = np.array([out.partner[i] for i in refer.tolist()])
    for pid in np.unique(pids).tolist():
        idx = refer[pids == pid]
        t = totals[pid]
        t.referred += len(idx)
        t.amount += int(cols.requested_amount[idx].sum())
        t.expected_value += int(out.value[idx].sum())
        fees, share = eco.referral_value_parts(
            cols.requested_amount[idx].astype(float), cols.term_months[idx].astype(float),
            out.pd[idx], cols.max_apr[idx], partners[pid])
        totals[pid].expected_fee += float(np.sum(fees))
        totals[pid].expected_rev_share += float(np.sum(share))


def _decision_batch(out: Outcomes, cols: AppColumns) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([
        pa.array(cols.application_id, pa.string()),
        pa.array(cols.event_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        pa.array(np.take(np.array(LABELS), out.kind), pa.string()),
        pa.array([p or None for p in out.partner], pa.string()),
        pa.array(out.pd, pa.float64()),
        pa.array(out.apr, pa.float64(), from_pandas=True),
        pa.array(np.where(out.kind == 3, 0, out.value), pa.int64(),
                 mask=out.kind == 3),
        pa.array(reason_strings(out.bits), pa.string()),
        pa.array(out.degraded, pa.bool_()),
    ], schema=DECISIONS_SCHEMA)
