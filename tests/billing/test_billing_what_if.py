"""What-if billing: a replay writes its referrals and branch loans into a billing database
of its own; statements then bill them at each referral's terms; replaying again bills
nothing twice."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from router.billing.book import BillingBook
from router.billing.db import open_billing
from router.billing.statements import statement
from router.core.config import load_strategy
from router.replay import replay
from router.traffic import write_traffic

ROOT = Path(__file__).resolve().parents[2]


def test_replay_billing_db_bills_every_referral_once(tmp_path, billing_url):
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    traffic = tmp_path / "t.parquet"
    write_traffic(traffic, 6000, 3, 6000, "2026-11-02")
    first = replay(s, traffic, tmp_path / "a", report=False, billing_db=billing_url)
    d = pq.read_table(tmp_path / "a" / "decisions.parquet").to_pydict()
    n_ref = sum(o == "refer" for o in d["outcome"])
    n_branch = sum(o == "branch" for o in d["outcome"])
    assert first.summary["billing"] == {"billed": n_ref + n_branch, "already_billed": 0}
    again = replay(s, traffic, tmp_path / "b", report=False, billing_db=billing_url)
    assert again.summary["billing"] == {"billed": 0, "already_billed": n_ref + n_branch}
    engine = open_billing(billing_url)
    book = BillingBook.from_strategy(s)
    for p in s.partners:
        st, _ = statement(engine, p.id, "2026-11", book)
        referred = sum(pid == p.id for pid in d["partner"])
        assert st.referrals == referred
        assert st.total_due == referred * p.terms.fee_per_referral
    assert statement(engine, s.branch.partner_id, "2026-11", book)[0].referrals == n_branch
    engine.dispose()
