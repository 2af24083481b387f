"""Reconciliation with each kind of difference: missing on either side, an amount and a
status that differ — and the CLI exits 1 while there is any."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

from billing_helpers import consume, ingest, pb, ref_entry

from router.billing.book import BillingBook
from router.billing.reconcile import differences

SH = ZoneInfo("Asia/Shanghai")
BOOK = BillingBook()


def T(day: int) -> datetime:
    return datetime(2026, 11, day, 10, tzinfo=SH)


def test_every_kind_of_difference(billing, tmp_path):
    consume(
        billing,
        [
            ref_entry(f"k{i}", "plat_b", T(2), fee_per_referral=500, fee_per_funded=3000)
            for i in range(4)
        ],
        BOOK,
        T(2),
    )
    ingest(
        billing,
        [pb("funded", "f1", "k1", "plat_b", T(3), amount=10**6, apr=0.2, term_months=12)],
        BOOK,
        T(3),
    )
    theirs = {
        "k0": ("referred", 500),  # agrees
        "k1": ("accepted", 3500),  # we say funded
        "k2": ("referred", 400),  # we say 500
        "zz": ("referred", 500),  # not ours
    }  # k3 missing on their side
    got = {
        (d.kind, d.key): (d.ours, d.theirs)
        for d in differences(billing, "plat_b", "2026-11", theirs, BOOK)
    }
    assert got == {
        ("status", "k1"): ("funded", "accepted"),
        ("amount", "k2"): (500, 400),
        ("missing_theirs", "k3"): (("referred", 500), None),
        ("missing_ours", "zz"): (None, ("referred", 500)),
    }


def test_reconcile_cli_exits_1_on_differences(billing_url, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from router.billing.db import open_billing

    engine = open_billing(billing_url)
    consume(engine, [ref_entry("m1", "platform_yunfan", T(2), fee_per_referral=300)], BOOK, T(2))
    engine.dispose()
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text(json.dumps({"referral_id": "m1", "status": "referred", "amount": 0}) + "\n")
    strategy = str(Path(__file__).resolve().parents[2] / "configs" / "strategy.toml")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "router",
            "reconcile",
            "--db",
            billing_url,
            "-p",
            "platform_yunfan",
            "--period",
            "2026-11",
            "-s",
            strategy,
            "--theirs",
            str(theirs),
            "--out",
            str(tmp_path / "d.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, p.stderr
    assert "1 differences" in p.stdout
    assert (tmp_path / "d.csv").read_text().splitlines()[1] == "amount,m1,300,0"
