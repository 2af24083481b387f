"""Billing throughput, each beside a same-run baseline, on SQLite and PostgreSQL.

Prints medians over ``--repeat`` runs of:
  (1) ledger entries consumed per second: the real consumer reading a real redis-server's
      ledger stream (started here on a free port) into the billing database — dedupe
      keys, referral rows, fee postings in one transaction per batch, then XACK;
  (2) the baseline: a raw bulk insert of the very rows the consumer writes for those
      entries (ledger events, referrals, journal entries, postings) into bare tables
      (``executemany`` on SQLite, ``COPY`` on PostgreSQL) — no keys, no indexes, no Redis,
      no logic; the ratio (1)/(2);
  (3) the statement time (JSON and CSV rendered) for a partner-month of
      ``--statement-rows`` referrals (default 1,000,000).

    python bench/bench_billing.py [--entries 100000] [--statement-rows 1000000]

PostgreSQL: a database of its own is created on ``BILLING_PG_URL`` (default the local
server, trust auth) and dropped afterwards.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import port_for  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from router.billing.book import BillingBook  # noqa: E402
from router.billing.consumer import ConsumerSettings, LedgerConsumer  # noqa: E402
from router.billing.db import bulk_insert, open_billing, writing  # noqa: E402
from router.billing.ledger_ingest import StreamEntry, apply_entries  # noqa: E402
from router.billing.statements import render_csv, render_json, statement  # noqa: E402
from router.core.messages import CommercialTerms, ReferralEntry, encode  # noqa: E402
from router.store.redis import RedisQuotaStore  # noqa: E402

T0 = 1_793_500_000_000  # 2026-11-02 in Asia/Shanghai
BOOK = BillingBook()


def entries(n: int, tag: str, partner: str = "plat_b") -> list[dict[bytes, bytes]]:
    """``n`` ledger stream entries (posted referrals to one partner, fee per referral)."""
    terms = CommercialTerms(fee_per_referral=500, rev_share=0.3)
    out = []
    for i in range(n):
        e = ReferralEntry(
            referral_id=f"r_{tag}{i:012x}",
            decision_id=f"d_{tag}{i:012x}",
            application_id=f"A-{tag}{i}",
            partner_id=partner,
            event_time_ms=T0 + i * 2,
            amount=1_000_000,
            term_months=12,
            applicant_hash=f"{i:032x}",
            terms=terms,
            expected_value=1000,
            strategy_version="bench",
        )
        out.append({b"kind": b"post", b"app": e.application_id.encode(), b"entry": encode(e)})
    return out


def consume_rate(db_url: str, redis_url: str, n: int) -> float:
    """Entries per second through the real consumer (Redis stream -> database)."""
    store = RedisQuotaStore.from_url(
        redis_url + f"?prefix=b{uuid.uuid4().hex[:6]}:", timeout_ms=10_000
    )
    stream = f"{store.prefix}{{p:plat_b}}:ledger"
    pipe = store.client.pipeline(transaction=False)
    for f in entries(n, uuid.uuid4().hex[:4]):
        pipe.xadd(stream, f)
    pipe.execute()
    engine = open_billing(db_url)
    c = LedgerConsumer(store, engine, BOOK, ConsumerSettings())
    # As `referral-router ledger consume` does: the heap built so far frozen out of the
    # cyclic collector's sight (here it also holds the baseline's rows, which the
    # command's own process never has).
    gc.freeze()
    t = time.perf_counter()
    try:
        stats = c.run(once=True)
    finally:
        dt = time.perf_counter() - t
        gc.unfreeze()
    assert stats.billed == n, stats.summary()
    engine.dispose()
    store.discard()
    store.close()
    return n / dt


def consumer_rows(n: int) -> dict[str, list[dict]]:
    """The rows the consumer writes for ``n`` entries (every table), made by running it
    once into a scratch SQLite file and reading them back."""
    from router.billing import schema

    path = Path(tempfile.mkdtemp()) / "rows.db"
    engine = open_billing(path)
    batch = [StreamEntry("s", f"{i}-0", f) for i, f in enumerate(entries(n, "raw"))]
    with writing(engine) as c:
        apply_entries(c, batch, BOOK, T0, optimistic=True)
    out = {}
    with engine.connect() as c:
        for t in (schema.ledger_events, schema.referrals, schema.journal_entries, schema.postings):
            out[t.name] = [dict(r._mapping) for r in c.execute(sa.select(t))]
    engine.dispose()
    shutil.rmtree(path.parent)
    out["postings"] = [{k: v for k, v in r.items() if k != "id"} for r in out["postings"]]
    return out


def raw_rate(db_url: str, rows: dict[str, list[dict]], n: int) -> float:
    """Entries per second of a raw bulk insert of the very rows the consumer writes for
    them (all four tables) into bare tables — no keys, no indexes, no logic: ``COPY`` on
    PostgreSQL, ``executemany`` on SQLite."""
    from router.billing import schema

    engine = open_billing(db_url)
    md, tag = sa.MetaData(), uuid.uuid4().hex[:6]
    bare = {
        name: sa.Table(
            f"raw_{name}_{tag}",
            md,
            *[
                sa.Column(c.name, c.type)
                for c in schema.metadata.tables[name].columns
                if c.name != "id"
            ],
        )
        for name in rows
    }
    md.create_all(engine)
    t = time.perf_counter()
    with engine.begin() as c:
        for name, table in bare.items():
            bulk_insert(c, table, rows[name])
    dt = time.perf_counter() - t
    md.drop_all(engine)
    engine.dispose()
    return n / dt


def statement_seconds(db_url: str, n: int) -> tuple[float, float]:
    """(seconds to load, seconds for the statement) of a partner-month of ``n`` referrals."""
    engine = open_billing(db_url)
    tag = uuid.uuid4().hex[:4]
    t = time.perf_counter()
    for start in range(0, n, 5000):
        batch = [
            StreamEntry("s", f"{start + i}-0", f)
            for i, f in enumerate(entries(min(5000, n - start), f"{tag}{start:08x}", "stmt_p"))
        ]
        with writing(engine) as c:
            apply_entries(c, batch, BOOK, T0, optimistic=True)
    load = time.perf_counter() - t
    t = time.perf_counter()
    st = statement(engine, "stmt_p", "2026-11", BOOK)[0]
    render_json(st), render_csv(st)
    took = time.perf_counter() - t
    assert st.referrals == n and st.total_due == 500 * n, (st.referrals, st.total_due)
    engine.dispose()
    return load, took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--statement-rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()

    from mirakuru import TCPExecutor

    port = port_for.select_random()
    tmp = Path(tempfile.mkdtemp())
    redis = TCPExecutor(
        ["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp)],
        host="127.0.0.1",
        port=port,
        timeout=20,
    ).start()
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    pg_name = f"rr_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{pg_name}"')
    pg_url = sa.make_url(args.pg).set(database=pg_name).render_as_string(hide_password=False)
    results: dict[str, float] = {}
    rows = consumer_rows(args.entries)
    try:
        for name, url in (("sqlite", str(tmp / "billing.db")), ("postgresql", pg_url)):
            cons, raw = [], []
            for _ in range(args.repeat):  # alternate: both see the same machine
                raw.append(raw_rate(url, rows, args.entries))
                cons.append(consume_rate(url, f"redis://127.0.0.1:{port}/0", args.entries))
            results[f"{name}_consumed_per_s"] = statistics.median(cons)
            results[f"{name}_raw_insert_per_s"] = statistics.median(raw)
            results[f"{name}_ratio_consumed_vs_raw"] = statistics.median(cons) / statistics.median(
                raw
            )
            load, took = statement_seconds(url, args.statement_rows)
            results[f"{name}_statement_rows"] = args.statement_rows
            results[f"{name}_statement_load_s"] = load
            results[f"{name}_statement_s"] = took
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    for k, v in results.items():
        print(
            f"{k:<40} {v:>14,.3f}" if isinstance(v, float) and v < 100 else f"{k:<40} {v:>14,.0f}"
        )
    out = ROOT / "bench" / "results" / "billing.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
