"""Billing throughput, each beside a same-run baseline, on SQLite and PostgreSQL.

Prints medians over ``--repeat`` runs of:
  (1) ledger entries consumed per second: the real consumer reading a real redis-server's
      ledger stream (started here on a free port) into the billing database — dedupe
      keys, referral rows, fee postings in one transaction per batch, then XACK;
  (2) the baseline: a raw bulk insert of the same referral rows into a bare table
      (``executemany`` on SQLite, ``COPY`` on PostgreSQL) — no dedupe, no journal;
      the ratio (1)/(2);
  (3) the statement time (JSON and CSV rendered) for a partner-month of
      ``--statement-rows`` referrals (default 1,000,000).

    python bench/bench_billing.py [--entries 100000] [--statement-rows 1000000]

PostgreSQL: a database of its own is created on ``BILLING_PG_URL`` (default the local
server, trust auth) and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
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
from router.billing.db import open_billing, writing  # noqa: E402
from router.billing.ledger_ingest import StreamEntry, apply_entries, parse  # noqa: E402
from router.billing.statements import render_csv, render_json, statement  # noqa: E402
from router.messages import CommercialTerms, ReferralEntry, encode  # noqa: E402
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
    c = LedgerConsumer(store, engine, BOOK, ConsumerSettings(batch=2000))
    t = time.perf_counter()
    stats = c.run(once=True)
    dt = time.perf_counter() - t
    assert stats.billed == n, stats.summary()
    engine.dispose()
    store.discard()
    store.close()
    return n / dt


def raw_rate(db_url: str, n: int) -> float:
    """Rows per second of a raw bulk insert of the same referral rows into a bare table."""
    engine = open_billing(db_url)
    rows = []
    for i, f in enumerate(entries(n, uuid.uuid4().hex[:4])):
        ref = parse(StreamEntry("s", f"{i}-0", f))[2]
        assert ref is not None
        rows.append(
            (
                ref.referral_id,
                ref.partner_id,
                ref.event_time_ms,
                ref.amount,
                ref.terms.fee_per_referral,
                f"{i}-0",
            )
        )
    table = f"raw_{uuid.uuid4().hex[:6]}"
    with engine.begin() as c:
        c.exec_driver_sql(
            f"CREATE TABLE {table} (referral_id VARCHAR(80), partner_id VARCHAR(32), "
            "effective_at_ms BIGINT, amount BIGINT, fee BIGINT, entry_id VARCHAR(40))"
        )
    t = time.perf_counter()
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        with raw.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        raw.commit()
        raw.close()
    else:
        with engine.begin() as c:
            c.exec_driver_sql(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?)", rows)
    dt = time.perf_counter() - t
    with engine.begin() as c:
        c.exec_driver_sql(f"DROP TABLE {table}")
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
            apply_entries(c, batch, BOOK, T0)
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
    try:
        for name, url in (("sqlite", str(tmp / "billing.db")), ("postgresql", pg_url)):
            cons, raw = [], []
            for _ in range(args.repeat):  # alternate: both see the same machine
                raw.append(raw_rate(url, args.entries))
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
