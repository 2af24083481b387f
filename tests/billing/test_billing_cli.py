"""The billing commands' answers to bad input: one clear line, exit 2, nothing applied
twice; a closed period refused before its grace ends."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

STRATEGY = str(Path(__file__).resolve().parents[2] / "configs" / "strategy.toml")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=120
    )


def test_postbacks_with_bad_lines_apply_the_good_ones_and_exit_2(tmp_path):
    db = str(tmp_path / "b.db")
    good = {
        "type": "accepted",
        "event_id": "e1",
        "partner_id": "platform_yunfan",
        "referral_id": "r_1",
        "occurred_at": "2026-11-03T10:00:00+08:00",
    }
    f = tmp_path / "pb.jsonl"
    f.write_text(
        json.dumps(good)
        + "\n{not json\n"
        + json.dumps({**good, "event_id": "e2", "type": "funded", "amount": -5})
        + "\n"
    )
    p = run("postbacks", "ingest", str(f), "--db", db, "-s", STRATEGY)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "line 2: malformed postback JSON" in p.stderr
    assert "line 3: invalid postback" in p.stderr and "amount" in p.stderr
    assert re.search(r"waiting\s+│ 1 ", p.stdout)  # the good line: its referral is not consumed yet
    again = run("postbacks", "ingest", str(f), "--db", db, "-s", STRATEGY)
    assert re.search(r"duplicate\s+│ 1 ", again.stdout)


def test_bill_refuses_to_close_inside_grace_and_rejects_a_bad_period(tmp_path):
    def bill(period: str, *extra: str, db: str = str(tmp_path / "b.db")):
        return run("bill", "--db", db, "-p", "platform_yunfan", "--period", period, "-s",
                   STRATEGY, "-o", str(tmp_path), *extra)  # fmt: skip

    p = bill("2026-11", "--close", "--now", "2026-12-03T00:00:00+08:00")
    assert p.returncode == 2 and "grace" in p.stderr and "Traceback" not in p.stderr
    p = bill("2026-13")
    assert p.returncode == 2 and "YYYY-MM" in p.stderr
    p = bill("2026-11", db="postgresql+psycopg://nobody@127.0.0.1:1/x")
    assert p.returncode == 2 and p.stderr.startswith("error: billing database")
    ok = bill("2026-11", "--close", "--now", "2026-12-07T00:00:00+08:00")
    assert ok.returncode == 0, ok.stderr
    assert "(closed)" in ok.stdout


def test_consume_with_redis_down_stops_with_one_clear_line(tmp_path):
    p = run(
        "ledger",
        "consume",
        "--redis",
        "redis://127.0.0.1:1",
        "--db",
        str(tmp_path / "b.db"),
        "-s",
        STRATEGY,
        "--once",
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: redis unavailable")
