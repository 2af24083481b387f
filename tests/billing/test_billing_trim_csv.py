"""Trimming drops only what every consumer group acknowledged; postbacks read from CSV
bill like JSON Lines."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from billing_helpers import consume, ref_entry

from router.billing.book import BillingBook
from router.billing.consumer import ConsumerSettings, LedgerConsumer
from router.billing.db import open_billing, writing
from router.billing.postback_rules import ingest_events
from router.billing.postbacks import read_postbacks
from router.billing.statements import statement
from router.store.redis import RedisQuotaStore

T0 = datetime(2026, 11, 3, 2, tzinfo=UTC)


@pytest.mark.redis
def test_trim_keeps_what_another_group_has_not_acknowledged(redis_server, tmp_path):
    url = f"redis://{redis_server.host}:{redis_server.port}/0?prefix=tr{uuid.uuid4().hex[:6]}:"
    store = RedisQuotaStore.from_url(url, timeout_ms=5000)
    stream = f"{store.prefix}{{p:plat_b}}:ledger"
    entries = [ref_entry(f"t{i}", "plat_b", T0 + timedelta(minutes=i)) for i in range(30)]
    ids = [store.client.xadd(stream, e.fields) for e in entries]
    # An auditors' group has read (and acknowledged) only the first 10.
    store.client.xgroup_create(stream, "audit", id="0")
    got = store.client.xreadgroup("audit", "a1", {stream: ">"}, count=10)
    store.client.xack(stream, "audit", *[i for i, _ in got[0][1]])
    engine = open_billing(tmp_path / "b.db")
    c = LedgerConsumer(store, engine, BillingBook(), ConsumerSettings(batch=7, trim=True))
    assert c.run(once=True).billed == 30
    left = [i for i, _ in store.client.xrange(stream)]
    assert left == ids[10:]  # billing acknowledged all 30; audit only 10
    got = store.client.xreadgroup("audit", "a1", {stream: ">"}, count=100)
    store.client.xack(stream, "audit", *[i for i, _ in got[0][1]])
    c._trim(stream)
    assert store.client.xlen(stream) == 0
    store.discard()
    store.close()
    engine.dispose()


def test_csv_postbacks_bill_like_json_lines(billing, tmp_path):
    consume(
        billing,
        [ref_entry("c1", "bank", T0, fee_per_funded=10_000, rev_share=0.2)],
        BillingBook(),
        T0,
    )
    f = tmp_path / "pb.csv"
    f.write_text(
        "type,event_id,partner_id,referral_id,occurred_at,amount,apr,term_months,period,"
        "interest,principal,reason\n"
        "funded,e1,bank,c1,2026-11-04T10:00:00+08:00,500000,0.1,6,,,,\n"
        "repayment,e2,bank,c1,2026-11-30T10:00:00+08:00,,,,2026-11,4167,80000,\n"
        "funded,e3,bank,c1,not a time,1,0.1,6,,,,\n"
    )
    read = list(read_postbacks(f))
    assert [n for n, _ in read] == [2, 3, 4]
    assert "occurred_at" in str(read[2][1])
    with writing(billing) as conn:
        v = ingest_events(conn, [e for _, e in read[:2]], BillingBook(), 0)
    assert [x.status for x in v] == ["applied", "applied"]
    st = statement(billing, "bank", "2026-11", BillingBook())[0]
    assert st.total_due == 10_000 + 833
