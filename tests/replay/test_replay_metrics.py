"""Replay metrics on small hand-built traffic, where every figure can be worked out by hand."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.core.config import strategy_from_dict
from router.replay import replay
from router.testing import ScoreLookupScorer, strategy_dict

SH = timezone(timedelta(hours=8))
PDS = {720: 0.02, 650: 0.10, 600: 0.20, 550: 0.60}


def _row(
    i,
    score,
    *,
    hour=10,
    channel="own_app",
    defaulted=None,
    accepted=None,
    funded=None,
    funded_amount=None,
    amount=1_000_000,
    consent="any",
    max_apr=0.18,
    region="310000",
):
    return {
        "application_id": f"h{i}",
        "received_at": datetime(2026, 11, 2, hour, i, tzinfo=SH),
        "channel": channel,
        "national_id": f"11010119900101{i:04d}",
        "age": 35,
        "monthly_income": 1_500_000,
        "bureau_score": score,
        "inquiries_3m": 1,
        "open_loans": 1,
        "dti": 0.3,
        "worst_dpd_12m": 0,
        "region": region,
        "requested_amount": amount,
        "term_months": 12,
        "max_apr": max_apr,
        "consent": consent,
        "fraud_flag": False,
        "defaulted": defaulted,
        "partner_accepted": accepted,
        "partner_funded": funded,
        "funded_amount": funded_amount,
    }


def _strategy(**over):
    d = strategy_dict(**over)
    d["branch"] = None  # keep / refer / decline only: every figure stays hand-computable
    d["partners"][1]["caps"] = [{"window": "day", "count": 2}]
    return strategy_from_dict(d)


def _write(tmp_path, rows, name="t.parquet"):
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _replay(tmp_path, rows, **kw):
    s = kw.pop("strategy", None) or _strategy()
    return replay(
        s, _write(tmp_path, rows), tmp_path / "out", scorers={"main": ScoreLookupScorer(PDS)}, **kw
    )


def test_hand_built_day(tmp_path):
    rows = [
        _row(1, 720, defaulted=False),  # kept, repaid
        _row(2, 720, defaulted=True, channel="platform"),  # kept, defaulted
        # plat_b (max_pd .25): referred, accepted, funded 800,000, repaid
        _row(3, 600, hour=11, accepted=True, funded=True, funded_amount=800_000, defaulted=False),
        _row(4, 600, hour=11, accepted=False, funded=False),  # referred, declined by partner
        _row(5, 600, hour=12),  # plat_b day cap (2) is full
        _row(6, 550, hour=12),  # PD .6: nobody takes it
        _row(7, 720, consent="none", region="440300"),  # unlicensed, no consent
    ]
    r = _replay(tmp_path, rows)
    s = r.summary
    assert s["decisions"] == {"keep": 2, "branch": 0, "refer": 2, "decline": 3}
    assert s["keep_rate"] == pytest.approx(2 / 7)
    assert s["by_channel"]["platform"] == {"keep": 1, "branch": 0, "refer": 0, "decline": 0}
    assert s["by_hour"]["10"] == {"keep": 2, "branch": 0, "refer": 0, "decline": 1}
    assert s["by_hour"]["11"]["refer"] == 2 and s["by_hour"]["12"]["decline"] == 2
    # Kept loans: PD .02 each; one of two defaulted. Loss = LGD .6 x EAD 1.0 x 1,000,000.
    assert s["expected_bad_rate"] == pytest.approx(0.02)
    assert s["realised_bad_rate"] == 0.5
    assert s["kept"]["expected_loss"] == round(2 * 0.02 * 0.6 * 1_000_000)
    assert s["kept"]["realised_loss"] == 600_000
    # plat_b: fee per referral 500 on both; rev-share 30% of the partner's APR (min(.24,
    # applicant's .18)) on the funded 800,000 over 12 months (13/24 balance-years), repaid.
    b = s["partners"]["plat_b"]
    assert (b["referred"], b["with_outcome"], b["accepted"], b["funded"]) == (2, 2, 1, 1)
    assert b["funded_amount"] == 800_000
    assert b["realised_fee"] == 2 * 500
    assert b["realised_rev_share"] == round(0.3 * 0.18 * 800_000 * 13 / 24)
    assert s["realised_referral_value"] == b["realised_fee"] + b["realised_rev_share"]
    # Quota: plat_b's day cap of 2 was used up and refused row 5 at 12:05 local time.
    day = s["quota"]["plat_b"]["day"]
    assert day["by_window"] == [
        {
            "window": "2026-11-02",
            "count": 2,
            "amount": 2_000_000,
            "count_utilisation": 1.0,
            "amount_utilisation": None,
            "ran_out_at": "2026-11-02T12:05:00+08:00",
        }
    ]
    assert day["windows_ran_out"] == 1 and day["max_utilisation"] == 1.0
    assert s["cap_refusals"]["plat_b"] == {"day": 1}
    # Reasons: row 5 quota, row 7 region + no consent, rows 3-6 PD above the keep cut-off.
    rc = s["reason_counts"]
    assert rc["PARTNER_QUOTA_EXHAUSTED"] == 1
    assert rc["REGION_UNLICENSED"] == 1 and rc["NO_CONSENT"] == 1
    assert rc["KEEP_PD_ABOVE_CUTOFF"] == 4
    # PD histogram by outcome: repaid rows 1 (PD .02) and 3 (.2), defaulted row 2 (.02),
    # the other four unknown. Bins are 0.025 wide.
    h = s["pd_histogram"]
    assert h["repaid"][0] == 1 and h["repaid"][8] == 1 and sum(h["repaid"]) == 2
    assert h["defaulted"][0] == 1 and sum(h["defaulted"]) == 1 and sum(h["unknown"]) == 4


def test_coverage_failures_count_referrals_the_funder_could_not_price(tmp_path):
    # PD .02 but the applicant accepts at most 5% APR: the funder's funding cost is not
    # covered, so the application goes to a partner (bank_a prices from 4%).
    rows = [_row(1, 720, max_apr=0.05), _row(2, 720, max_apr=0.18)]
    s = _replay(tmp_path, rows).summary
    assert s["decisions"]["refer"] == 1 and s["decisions"]["keep"] == 1
    assert s["coverage_failures"] == 1
    assert s["reason_counts"]["KEEP_NOT_COVERED"] == 1


def test_psi_against_a_reference(tmp_path):
    ref_rows = [_row(i, score) for i, score in enumerate([720, 650, 600, 550] * 5)]
    ref = _write(tmp_path, ref_rows, "ref.parquet")
    same = _replay(tmp_path, ref_rows, reference=ref).summary
    assert same["psi"] == pytest.approx(0.0, abs=1e-9)
    shifted = [_row(i, 550) for i in range(20)]
    s = replay(
        _strategy(),
        _write(tmp_path, shifted, "s.parquet"),
        tmp_path / "o2",
        scorers={"main": ScoreLookupScorer(PDS)},
        reference=ref,
    ).summary
    assert s["psi"] > 1.0  # everything moved into the top bin
    assert s["reference"]["sha256"] and same["reference"]["file"] == "ref.parquet"


def test_summary_is_byte_identical_between_runs(tmp_path):
    rows = [_row(i, [720, 600, 550][i % 3]) for i in range(1, 30)]
    path = _write(tmp_path, rows)
    s = _strategy()
    kw = dict(scorers={"main": ScoreLookupScorer(PDS)})
    a = replay(s, path, tmp_path / "a", **kw)
    b = replay(s, path, tmp_path / "b", **kw)
    assert a.summary_path.read_bytes() == b.summary_path.read_bytes()
    assert a.decisions_path.read_bytes() == b.decisions_path.read_bytes()
    summary = json.loads(a.summary_path.read_text())
    assert summary["strategy_hash"] and summary["code_version"]
    # A different strategy has a different hash.
    other = replay(_strategy(routing={"method": "best_value"}), path, tmp_path / "c", **kw)
    assert other.summary["strategy_hash"] != summary["strategy_hash"]
    assert msgspec.json.decode(a.summary_path.read_bytes())["traffic"]["rows_accepted"] == 29
