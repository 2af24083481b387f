"""The replay loop: a traffic file through the unchanged decision core.

Event time drives every window. Batches are scored vectorised and reserved in
event-time order (each batch is sorted; a row older than the previous batch's newest is
counted as ``late_events`` and still decided at its own event time). Outputs in ``DIR``:

* ``summary.json`` — the metrics of :mod:`router.replay.metrics`, plus the input file's
  SHA-256, the strategy's hash and the code version. It holds no timings, so the same
  input and strategy give a byte-identical summary;
* ``decisions.parquet`` — one row per accepted application (optional);
* ``rejects.jsonl`` — one line per rejected row: row number, field, reason;
* ``timing.json`` — elapsed time and applications per second;
* ``report.html`` and ``charts/*.png`` — see :mod:`router.replay.report`.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from router.core.columns import AppColumns, take
from router.core.config import Strategy, strategy_hash
from router.core.errors import TrafficError
from router.core.logs import get_logger
from router.decide.engine import Router
from router.decide.outcomes import LABELS, Outcomes, reason_strings
from router.ingest.mapping import Mapping, as_mapping
from router.ingest.reader import TrafficBatch, read_batches
from router.ingest.validate import OUTCOME_FIELDS, SPEC, Reject
from router.replay.metrics import Metrics
from router.store import QuotaStore
from router.store.array import ArrayQuotaStore


def decisions_schema(timezone: str = "UTC") -> pa.Schema:
    """The columns of ``decisions.parquet``; ``received_at`` is shown in ``timezone`` (the
    strategy's, in which its day and hour windows are counted)."""
    fields = [
        pa.field(
            "received_at",
            pa.timestamp("ms", tz=timezone),
            metadata={
                "description": f"when the application arrived, shown in the strategy's time "
                f"zone {timezone}; the input's own UTC offset is not kept"
            },
        )
    ]
    return pa.schema(
        [
            ("application_id", pa.string()),
            *fields,
            ("channel", pa.string()),
            ("requested_amount", pa.int64()),
            ("outcome", pa.string()),
            ("partner", pa.string()),
            ("pd", pa.float64()),
            ("apr", pa.float64()),
            ("expected_value", pa.int64()),
            ("reasons", pa.string()),
            ("degraded", pa.bool_()),
            ("defaulted", pa.bool_()),
        ]
    )


@dataclass
class ReplayResult:
    """What a replay produced: the summary (also written as JSON) and the output paths."""

    summary: dict[str, Any]
    summary_path: Path
    decisions_path: Path | None
    rejects_path: Path
    elapsed_s: float


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The package version, and the git commit when run from a checkout."""
    try:
        version = metadata.version("referral-router")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            rev = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            if rev:
                version += f"+g{rev}"
        except (OSError, subprocess.SubprocessError):
            pass
    return version


def check_mapping(mapping: Mapping | dict[str, str]) -> None:
    """A column mapping names known fields only."""
    if isinstance(mapping, Mapping):
        return  # (checked when it was made)
    known = set(SPEC) | set(OUTCOME_FIELDS)
    for field in mapping:
        if field not in known:
            raise TrafficError(
                f"column mapping: unknown field {field!r} (fields: {', '.join(sorted(known))})"
            )


def reference_pds(
    strategy: Strategy,
    path: str | Path,
    router: Router,
    mapping: Mapping | dict[str, str] | None = None,
) -> np.ndarray:
    """The primary scorer's PD of every valid row of a reference file (for the PSI)."""
    from router.decide.assess import scorer_pds

    scorer = router.scorers[strategy.primary.scorer]
    parts = [
        scorer_pds(scorer, b.cols)
        for b in read_batches(
            path,
            router.hasher,
            partner_ids=[p.id for p in strategy.partners],
            mapping=mapping,
            features=router.app_features,
        )
    ]
    return np.concatenate(parts) if parts else np.empty(0)


@dataclass
class CachedTraffic:
    """A traffic file read and validated once, to replay many times (tuning)."""

    batches: list[TrafficBatch]
    sha256: str
    rejects: list[Reject]

    @cached_property
    def repeated_ids(self) -> frozenset[str]:
        """The application ids that occur more than once (retries): the only ones a
        replay's store will be asked to recall."""
        seen: set[str] = set()
        again: set[str] = set()
        for b in self.batches:
            ids = b.cols.application_id
            batch = set(ids)
            if len(batch) < len(ids):
                again.update(a for a, k in Counter(ids).items() if k > 1)
            again |= seen & batch
            seen |= batch
        return frozenset(again)


def read_cached(
    strategy: Strategy,
    traffic: str | Path,
    mapping: Mapping | dict[str, str] | None = None,
    batch_size: int = 131_072,
    features: dict[str, str] | None = None,
) -> CachedTraffic:
    """Read ``traffic`` into memory for repeated replays of strategies that share
    ``strategy``'s identity key and partner book (``features``: the application features
    their scorers read, :func:`router.decide.engine.scorers_app_features`)."""
    from router.core.identity import Hasher

    rejects: list[Reject] = []
    batches = [
        _in_time_order(b)
        for b in read_batches(
            traffic,
            Hasher.from_config(strategy.identity),
            partner_ids=[p.id for p in strategy.partners],
            mapping=mapping,
            batch_size=batch_size,
            on_rejects=rejects.extend,
            features=features,
        )
    ]
    return CachedTraffic(batches, file_sha256(traffic), rejects)


def split_in_time(cached: CachedTraffic, holdout: float) -> tuple[CachedTraffic, CachedTraffic]:
    """The traffic's earlier part and its last ``holdout`` share by arrival time (an
    out-of-time split: every held-out application arrived at or after the cut)."""
    events = np.concatenate([b.cols.event_ms for b in cached.batches] or [np.empty(0, np.int64)])
    if not len(events):
        return cached, CachedTraffic([], cached.sha256, [])
    cut = np.sort(events)[min(int(len(events) * (1 - holdout)), len(events) - 1)]
    parts: tuple[list[TrafficBatch], list[TrafficBatch]] = ([], [])
    for b in cached.batches:
        later = b.cols.event_ms >= cut
        for part, rows in zip(parts, (np.flatnonzero(~later), np.flatnonzero(later))):
            if len(rows):
                outcomes = {k: v[rows] for k, v in b.outcomes.items()}
                part.append(TrafficBatch(take(b.cols, rows), outcomes, b.rows[rows]))
    # (rejected rows belong to neither part's decisions; the earlier part reports them)
    return (
        CachedTraffic(parts[0], cached.sha256, cached.rejects),
        CachedTraffic(parts[1], cached.sha256, []),
    )


def replay(
    strategy: Strategy,
    traffic: str | Path | Iterable[pa.RecordBatch],
    out_dir: str | Path,
    *,
    batch_size: int = 131_072,
    store: QuotaStore | None = None,
    mapping: Mapping | dict[str, str] | None = None,
    reference: str | Path | None = None,
    write_decisions: bool = True,
    report: bool = True,
    scorers: dict[str, Any] | None = None,
    cached: CachedTraffic | None = None,
    progress: Callable[[int], None] | None = None,
    allow_degraded: bool = False,
    billing_db: str | Path | None = None,
) -> ReplayResult:
    """Replay ``traffic`` with ``strategy``; write the outputs listed above to ``out_dir``.

    ``store`` defaults to a fresh in-memory store; any :class:`QuotaStore` gives the same
    decisions (``redis://…?prefix=…`` replays against a real Redis under its own prefix).
    ``mapping`` (field -> the file's column) defaults to the strategy's ``[columns]``;
    ``reference`` is a traffic file whose PD distribution the PSI compares against;
    ``scorers`` overrides the strategy's model files (as for :class:`Router`);
    ``report`` writes ``report.html`` with its charts; ``cached`` replays traffic already
    read by :func:`read_cached` (``traffic`` then only names it). ``traffic`` may also be
    an iterable of Arrow record batches (generated on the fly; no file hash then).

    A network store is switched to replay's service level (:meth:`QuotaStore.for_replay`:
    long deadlines, retries with backoff). If it still fails, the replay stops with
    :class:`~router.core.errors.StoreError` — unless ``allow_degraded``: then those rows are
    decided degraded and counted (``summary["degraded"]``).

    ``billing_db`` (a path or database URL) also writes the run's referrals and branch
    loans into that billing database (:mod:`router.billing.what_if`), for what-if
    statements; ``summary["billing"]`` says how many.
    """
    traffic_file = Path(traffic) if isinstance(traffic, (str, Path)) else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_mapping(strategy.columns if mapping is None else mapping)
    mapping = as_mapping(strategy.columns if mapping is None else mapping)
    log = get_logger("replay").bind(strategy=strategy.version)
    sink = None
    if billing_db is not None:
        from router.billing.what_if import BillingSink

        sink = BillingSink(billing_db, strategy)
    own_store = store is None
    store = _replay_store(strategy, store, sink, cached.repeated_ids if cached else None)
    router, metrics = _replay_router(strategy, store, scorers, allow_degraded, reference, mapping)
    log.info("replay.start", traffic=str(traffic) if traffic_file else "<stream>", out=str(out))
    run = _Run(out, strategy, router, metrics, sink)
    t0 = time.perf_counter()
    with open(out / "rejects.jsonl", "wb") as rej:
        run.rejects_file = rej
        if cached is not None:
            run.on_rejects(cached.rejects)
            source: Any = cached.batches
        else:
            source = _read_in_time_order(strategy, traffic, router, mapping, batch_size, run)
        run.decide_all(source, write_decisions, progress)
    store.flush()  # the last batch's grants are posted before the run reports done
    billing = None
    if sink is not None:
        if not own_store:  # the caller's store kept its ledger (a Redis one, its streams)
            sink.extend(store.ledger(branch=True))
        billing = sink.close()
    decisions_path = run.finish_decisions()
    elapsed = time.perf_counter() - t0
    body = metrics.summary()
    summary = _summary(strategy, traffic_file, cached, run, mapping, reference, body)
    if billing is not None:
        summary["billing"] = billing
    summary_path = _write_summary(out, summary, store, run.rows_read, elapsed)
    if report:
        from router.replay.report import write_replay_report

        write_replay_report(summary, out)
    log.info(
        "replay.done",
        applications=run.rows_read,
        rejected=run.n_rejects,
        elapsed_s=round(elapsed, 3),
        **body["decisions"],
    )
    return ReplayResult(summary, summary_path, decisions_path, out / "rejects.jsonl", elapsed)


def _replay_router(
    strategy: Strategy,
    store: QuotaStore,
    scorers: dict[str, Any] | None,
    allow_degraded: bool,
    reference: str | Path | None,
    mapping: Mapping,
) -> tuple[Router, Metrics]:
    """The replay's router and the metrics it reports its cap refusals to."""
    holder: list[Metrics] = []
    router = Router(
        strategy,
        store,
        scorers=scorers,
        on_cap=lambda *a: holder[0].on_cap(*a),
        degrade=allow_degraded,
    )
    ref = reference_pds(strategy, reference, router, mapping) if reference else None
    holder.append(Metrics(strategy, ref))
    return router, holder[0]


def _read_in_time_order(
    strategy: Strategy,
    traffic: Any,
    router: Router,
    mapping: Mapping,
    batch_size: int,
    run: _Run,
) -> Iterator[TrafficBatch]:
    """The traffic's batches, each in time order, rejects handed to ``run``."""
    return (
        _in_time_order(b)
        for b in read_batches(
            traffic,
            router.hasher,
            mapping=mapping,
            partner_ids=[p.id for p in strategy.partners],
            batch_size=batch_size,
            on_rejects=run.on_rejects,
            features=router.app_features,
        )
    )


def _replay_store(
    strategy: Strategy, store: QuotaStore | None, sink: Any, recall_only: frozenset[str] | None
) -> QuotaStore:
    """The caller's store at replay's service level, or a fresh in-process one (keeping
    records only of ``recall_only`` when the whole traffic is known)."""
    if store is None:
        store = ArrayQuotaStore(
            idempotency_ttl_ms=strategy.idempotency_ttl_hours * 3600_000,
            retain_ledger=False,
            on_append=sink,
            validate=False,
            recall_only=recall_only,
        )
    store.for_replay()
    return store


def _summary(
    strategy: Strategy,
    traffic_file: Path | None,
    cached: CachedTraffic | None,
    run: _Run,
    mapping: Mapping,
    reference: str | Path | None,
    body: dict[str, Any],
) -> dict[str, Any]:
    """``summary.json``'s document: what ran on what, then the metrics' figures."""
    sha: str | None = None
    if cached is not None:
        sha = cached.sha256
    elif traffic_file is not None:
        sha = file_sha256(traffic_file)
    return {
        "strategy_version": strategy.version,
        "strategy_hash": strategy_hash(strategy),
        "code_version": code_version(),
        "traffic": {
            "file": traffic_file.name if traffic_file is not None else "<stream>",
            "sha256": sha,
            "rows_accepted": run.rows_read,
            "rows_rejected": run.n_rejects,
            "late_events": run.late,
            "column_mapping": (
                mapping.renames() if mapping.is_plain() else msgspec.to_builtins(mapping)
            ),
        },
        "reference": (
            {"file": Path(reference).name, "sha256": file_sha256(reference)} if reference else None
        ),
        **body,
        "cap_refusals": _cap_refusals(run.router),
        "money_unit": "minor units (fen)",
    }


class _Run:
    """One replay's loop state: counts, the rejects file, the decisions file being
    written (as ``.tmp`` until the run completes: never a half-written one)."""

    def __init__(self, out: Path, strategy: Strategy, router: Router, metrics: Metrics, sink):
        self.out, self.router, self.metrics, self.sink = out, router, metrics, sink
        self.schema = decisions_schema(strategy.timezone)
        self.tmp = out / "decisions.parquet.tmp"
        self.rejects_file: Any = None
        self.n_rejects = self.rows_read = self.late = 0
        self.newest = -(2**62)
        self.wrote = False

    def on_rejects(self, items: list[Reject]) -> None:
        self.n_rejects += len(items)
        self.rejects_file.write(b"".join(msgspec.json.encode(r.to_dict()) + b"\n" for r in items))

    def decide_all(self, source: Iterable[TrafficBatch], write: bool, progress) -> None:
        """Decide every batch in order, into the metrics and the decisions file."""
        writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd") if write else None
        try:
            for batch in source:
                cols = batch.cols
                self.late += int((cols.event_ms < self.newest).sum())
                self.newest = max(self.newest, int(cols.event_ms.max()))
                outcomes = self.router.decide_columns(cols)
                self.metrics.add(outcomes, cols, batch.outcomes)
                if writer is not None:
                    writer.write_batch(_decision_batch(outcomes, cols, batch.outcomes, self.schema))
                self.rows_read += len(cols)
                if self.sink is not None:
                    self.sink.flush()
                if progress:
                    progress(len(cols))
        except BaseException:
            if writer is not None:
                writer.close()
                self.tmp.unlink(missing_ok=True)  # no half-written decisions file is left
            raise
        if writer is not None:
            writer.close()
            self.wrote = True

    def finish_decisions(self) -> Path | None:
        """``decisions.parquet`` in place (None when not written)."""
        if not self.wrote:
            return None
        path = self.out / "decisions.parquet"
        self.tmp.replace(path)
        return path


def _cap_refusals(router: Router) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (bucket, window), count in sorted(router.cap_refusals().items()):
        out.setdefault(bucket.strip("_"), {})[window] = count
    return out


def _write_summary(out: Path, summary: dict, store, rows: int, elapsed: float) -> Path:
    """``summary.json`` (byte-identical for the same input and strategy) and
    ``timing.json`` (the run facts that differ between runs)."""
    summary_path = out / "summary.json"
    summary_path.write_bytes(msgspec.json.format(msgspec.json.encode(summary)) + b"\n")
    (out / "timing.json").write_bytes(
        msgspec.json.encode(
            {
                "elapsed_s": round(elapsed, 3),
                "applications_per_s": round(rows / elapsed, 1) if elapsed > 0 else None,
                "store": type(store).__name__,
                "store_prefix": getattr(store, "prefix", None),
            }
        )
        + b"\n"
    )
    return summary_path


def _in_time_order(batch: TrafficBatch) -> TrafficBatch:
    ev = batch.cols.event_ms
    if not (np.diff(ev) < 0).any():
        return batch
    order = np.argsort(ev, kind="stable")
    return TrafficBatch(
        take(batch.cols, order), {k: v[order] for k, v in batch.outcomes.items()}, batch.rows[order]
    )


def _decision_batch(
    out: Outcomes, cols: AppColumns, outcomes: dict[str, np.ndarray], schema: pa.Schema
) -> pa.RecordBatch:
    d = outcomes.get("defaulted")
    return pa.RecordBatch.from_arrays(
        [
            pa.array(cols.application_id, pa.string()),
            pa.array(cols.event_ms, pa.int64()).cast(schema.field("received_at").type),
            pa.array(cols.channel, pa.string()),
            pa.array(cols.requested_amount, pa.int64()),
            pa.array(np.take(np.array(LABELS), out.kind), pa.string()),
            pa.array([p or None for p in out.partner], pa.string()),
            pa.array(out.pd, pa.float64()),
            pa.array(out.apr, pa.float64(), from_pandas=True),
            pa.array(np.where(out.kind == 3, 0, out.value), pa.int64(), mask=out.kind == 3),
            pa.array(reason_strings(out.bits), pa.string()),
            pa.array(out.degraded, pa.bool_()),
            pa.array(d == 1, pa.bool_(), mask=d < 0)
            if d is not None
            else pa.nulls(len(cols), pa.bool_()),
        ],
        schema=schema,
    )
