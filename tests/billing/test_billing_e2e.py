"""End to end through the CLI: generate traffic, decide it live against a real Redis, consume
the ledger, ingest postbacks made from the traffic's outcome columns (twice: nothing
changes), print every partner's statement — whose totals equal a few-line computation from
the traffic file and the decisions — and reconcile."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from router.core.config import load_strategy

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[2]
STRATEGY = str(ROOT / "configs" / "strategy.toml")


def cli(*args: str, stdin: bytes | None = None, ok=(0,)) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-m", "router", *args], input=stdin, capture_output=True, timeout=600
    )
    assert p.returncode in ok, (p.returncode, p.stderr.decode()[-3000:])
    assert b"Traceback" not in p.stderr
    return p


def test_traffic_to_statements_equal_an_independent_computation(redis_url, billing_url, tmp_path):
    url = redis_url
    traffic = tmp_path / "traffic.jsonl"
    cli("generate", "--rows", "4000", "--out", str(traffic), "--per-day", "4000")
    decided = cli(
        "decide",
        "-s",
        STRATEGY,
        "--store",
        url + "&timeout_ms=2000",
        "--allow-demo-key",
        stdin=traffic.read_bytes(),
    )
    decisions = [json.loads(x) for x in decided.stdout.splitlines()]
    apps = {a["application_id"]: a for a in map(json.loads, traffic.read_text().splitlines())}
    refers = [d for d in decisions if d["outcome"] == "refer"]
    branches = [d for d in decisions if d["outcome"] == "branch"]
    assert len(refers) > 100 and len(branches) > 10

    consumed = cli(
        "ledger", "consume", "--redis", url, "--db", billing_url, "-s", STRATEGY, "--once"
    )
    assert json.loads(consumed.stdout)["billed"] == len(refers) + len(branches)

    # Postbacks from the traffic's outcome columns: accepted, funded, one month's interest.
    events: list[dict] = []
    for d in refers:
        a = apps[d["application_id"]]
        rid, pid = "r_" + d["decision_id"][2:], d["partner_id"]
        t = datetime.fromisoformat(a["received_at"])
        base = {"partner_id": pid, "referral_id": rid}
        if not a.get("partner_accepted"):
            events.append(
                {
                    **base,
                    "type": "rejected",
                    "event_id": f"{rid}-x",
                    "occurred_at": (t + timedelta(hours=1)).isoformat(),
                }
            )
            continue
        events.append(
            {
                **base,
                "type": "accepted",
                "event_id": f"{rid}-a",
                "occurred_at": (t + timedelta(hours=1)).isoformat(),
            }
        )
        if a.get("partner_funded"):
            amount = a["funded_amount"]
            events.append(
                {
                    **base,
                    "type": "funded",
                    "event_id": f"{rid}-f",
                    "amount": amount,
                    "apr": d["apr"],
                    "term_months": a["term_months"],
                    "occurred_at": (t + timedelta(days=1)).isoformat(),
                }
            )
            events.append(
                {
                    **base,
                    "type": "repayment",
                    "event_id": f"{rid}-r1",
                    "period": "2026-11",
                    "interest": int(amount * d["apr"] / 12),
                    "principal": amount // a["term_months"],
                    "occurred_at": "2026-11-28T12:00:00+08:00",
                }
            )
    strategy = load_strategy(STRATEGY)
    assert strategy.branch is not None
    coop = strategy.branch.partner_id
    for d in branches:  # the branch's loans are paid out as asked
        a = apps[d["application_id"]]
        events.append(
            {
                "partner_id": coop,
                "referral_id": "r_" + d["decision_id"][2:],
                "type": "funded",
                "event_id": f"{d['decision_id']}-bf",
                "amount": a["requested_amount"],
                "apr": d["apr"],
                "term_months": a["term_months"],
                "occurred_at": a["received_at"],
            }
        )
    pb_file = tmp_path / "postbacks.jsonl"
    pb_file.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    first = cli("postbacks", "ingest", str(pb_file), "--db", billing_url, "-s", STRATEGY)
    assert "refused" not in first.stderr.decode()
    again = cli("postbacks", "ingest", str(pb_file), "--db", billing_url, "-s", STRATEGY)
    assert f"duplicate │ {len(events):,}" in again.stdout.decode()

    # The independent computation: fees at the partner's terms, rev-share half up; the
    # branch partner owes its reserve deposit on every loan paid out.
    expect: dict[str, int] = {coop: 0}
    for e in events:
        if e["partner_id"] == coop:
            expect[coop] += int(e["amount"] * strategy.branch.reserve_rate + 0.5)
            continue
        t = strategy.partner(e["partner_id"]).terms
        fee = {"accepted": t.fee_per_accepted, "funded": t.fee_per_funded}.get(e["type"], 0)
        if e["type"] == "repayment":
            fee = int(e["interest"] * t.rev_share + 0.5)
        expect[e["partner_id"]] = expect.get(e["partner_id"], 0) + fee
    for d in refers:
        t = strategy.partner(d["partner_id"]).terms
        expect[d["partner_id"]] = expect.get(d["partner_id"], 0) + t.fee_per_referral
    checked = dict(expect)
    if billing_url.startswith("postgresql"):
        # Statements and reconciliation are the same SQL on both databases: on PostgreSQL
        # two partners (the branch's and the busiest referral partner) show it, each CLI
        # call costing a second; SQLite checks them all.
        busiest = max((p for p in expect if p != coop), key=lambda p: expect[p])
        checked = {p: expect[p] for p in (coop, busiest)}
    for pid, total in checked.items():
        common = ("--db", billing_url, "-p", pid, "--period", "2026-11", "-s", STRATEGY)
        cli("bill", *common, "-o", str(tmp_path / "st"))
        st = json.loads((tmp_path / "st" / f"statement_{pid}_2026-11.json").read_text())
        assert st["total_due"] == total, pid
        assert st["referrals"] == (
            len(branches) if pid == coop else sum(d["partner_id"] == pid for d in refers)
        )
        # Reconciling with a partner file built from our own statement: no difference.
        theirs = tmp_path / f"theirs_{pid}.jsonl"
        ours = json.loads((tmp_path / "st" / f"statement_{pid}_2026-11.json").read_text())
        amounts: dict[str, int] = {}
        for ln in ours["lines"]:
            amounts[ln["referral_id"]] = amounts.get(ln["referral_id"], 0) + ln["amount"]
        status: dict[str, str] = {}
        rank = ["referred", "accepted", "rejected", "funded"]
        for e in events:
            t = e["type"] if e["type"] != "repayment" else "funded"
            if e["partner_id"] == pid and rank.index(t) > rank.index(
                status.get(e["referral_id"], "referred")
            ):
                status[e["referral_id"]] = t
        rows = [
            {
                "referral_id": "r_" + d["decision_id"][2:],
                "amount": amounts.get("r_" + d["decision_id"][2:], 0),
                "status": status.get("r_" + d["decision_id"][2:], "referred"),
            }
            for d in refers + branches
            if d.get("partner_id", coop) == pid
        ]
        theirs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        rec = cli("reconcile", *common, "--theirs", str(theirs), "--redis", url, ok=(0, 1))
        assert rec.returncode == 0 and "0 differences" in rec.stdout.decode(), rec.stdout.decode()
