"""Exactly once against real servers: the ledger consumer killed between commit and XACK,
killed before its commit (its entries claimed by another), two consumers in one group at
once, a poison entry, a Redis restart mid-consumption — after each, every posted referral
is billed once, nothing is pending, and the journal balances. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import port_for
import pytest
import sqlalchemy as sa
from servers import start_node

from router.billing.db import open_billing
from router.billing.journal import trial_balance
from router.billing.schema import dead_letters, journal_entries, referrals
from router.core.config import strategy_from_dict
from router.core.messages import Refer
from router.decide.engine import Router
from router.store import quota_store_from_url
from router.testing import ScoreLookupScorer, make_application, strategy_dict

pytestmark = pytest.mark.redis
HERE = Path(__file__).resolve().parents[1]  # tests/, where the worker is
WORKER = str(HERE / "consumer_worker.py")
T0 = datetime(2026, 11, 3, tzinfo=UTC)


def produce(url: str, n: int, start: int = 0) -> int:
    """Decide ``n`` applications live on the store at ``url``: the referrals made."""
    store = quota_store_from_url(url, timeout_ms=5000)
    r = Router(
        strategy_from_dict(strategy_dict()),
        store,
        scorers={"main": ScoreLookupScorer({700: 0.15}, default=0.5)},
    )
    made = 0
    for i in range(start, start + n):
        app = make_application(
            application_id=f"a{i}",
            national_id=f"ID{i:08d}",
            bureau_score=700,
            consent="any",
            received_at=T0 + timedelta(minutes=2 * (i % 600)),
        )
        made += isinstance(r.decide(app), Refer)
    store.close()
    return made


def worker(redis_url: str, db: str, name: str, mode: str, *extra: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, redis_url, db, name, mode, *map(str, extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen, timeout: float = 120) -> dict:
    out, errs = p.communicate(timeout=timeout)
    assert p.returncode == 0, errs[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def assert_billed_once(db: str, url: str, group: str = "billing") -> int:
    """Posted referrals == billed referrals, each once; no entry pending; balanced."""
    store = quota_store_from_url(url, timeout_ms=5000)
    posted = [e.referral_id for e in store.ledger()]
    assert posted and len(posted) == len(set(posted))
    engine = open_billing(db)
    with engine.connect() as c:
        billed = [r[0] for r in c.execute(sa.select(referrals.c.referral_id))]
        fees = c.execute(
            sa.select(sa.func.count()).where(journal_entries.c.kind == "referral_fee")
        ).scalar_one()
        assert trial_balance(c) == 0
    engine.dispose()
    assert sorted(billed) == sorted(posted)
    assert fees == len(posted)  # plat_b charges 500 a referral
    for s in store.ledger_streams():
        assert store.client.xpending(s, group)["pending"] == 0
    store.close()
    return len(posted)


def test_killed_between_commit_and_xack_bills_once_after_restart(redis_url, billing_url):
    made = produce(redis_url, 150)
    p = worker(redis_url, billing_url, "c1", "die_after_commit")
    p.wait(120)
    assert p.returncode == -signal.SIGKILL
    engine = open_billing(billing_url)
    with engine.connect() as c:  # the first batch is committed, not acknowledged
        assert c.execute(sa.select(sa.func.count()).select_from(referrals)).scalar_one() == 50
    engine.dispose()
    stats = finish(worker(redis_url, billing_url, "c1", "once"))
    assert stats["already_committed"] == 50 and stats["billed"] == made - 50
    assert assert_billed_once(billing_url, redis_url) == made


def test_dead_consumers_entries_are_claimed_by_another(redis_url, billing_url):
    made = produce(redis_url, 120)
    p = worker(redis_url, billing_url, "dies", "die_before_commit")
    p.wait(120)
    assert p.returncode == -signal.SIGKILL
    time.sleep(0.3)  # idle longer than the other's min-idle
    stats = finish(worker(redis_url, billing_url, "other", "once", 200))
    assert stats["billed"] == made
    assert assert_billed_once(billing_url, redis_url) == made


def test_two_consumers_in_one_group_while_traffic_flows(redis_url, billing_url):
    a = worker(redis_url, billing_url, "a", "run", 60_000)
    b = worker(redis_url, billing_url, "b", "run", 60_000)
    try:
        made = produce(redis_url, 200)
        time.sleep(2)
    finally:
        for p in (a, b):
            p.send_signal(signal.SIGTERM)
    sa_, sb = finish(a), finish(b)
    assert sa_["billed"] + sb["billed"] == made
    assert assert_billed_once(billing_url, redis_url) == made


def test_poison_entry_goes_to_dead_letters_and_the_rest_is_billed(redis_url, billing_url):
    made = produce(redis_url, 60)
    store = quota_store_from_url(redis_url, timeout_ms=5000)
    stream = store.ledger_streams()[0]
    bad = store.client.xadd(stream, {"kind": "post", "app": "x", "entry": "{not json"})
    made += produce(redis_url, 40, start=60)
    stats = finish(worker(redis_url, billing_url, "c", "once", 60_000, 3))
    assert stats["dead_lettered"] == 1 and stats["billed"] == made
    engine = open_billing(billing_url)
    with engine.connect() as c:
        rows = c.execute(sa.select(dead_letters)).all()
    engine.dispose()
    assert [(r.entry_id, r.deliveries) for r in rows] == [(bad.decode(), 3)]
    assert "does not decode" in rows[0].error
    store.client.xdel(stream, bad)  # (the ledger check below reads every post)
    assert assert_billed_once(billing_url, redis_url) == made
    store.close()


def test_redis_restart_mid_consumption_loses_nothing_acknowledged(tmp_path, billing_url):
    port = port_for.select_random()
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    node = start_node(tmp_path / "r", port, *aof)
    url = f"redis://127.0.0.1:{port}/0?prefix=rs:"
    try:
        made = produce(url, 150)
        c = worker(url, billing_url, "c", "run", 60_000)
        time.sleep(1.5)
        node.kill(sig=signal.SIGKILL)
        time.sleep(0.5)
        node = start_node(tmp_path / "r", port, *aof)
        made += produce(url, 50, start=150)
        time.sleep(3)
        c.send_signal(signal.SIGTERM)
        finish(c)
        assert assert_billed_once(billing_url, url) == made
    finally:
        node.stop()
