"""Mapping with transforms (router/ingest/mapping.py): a lender's own file — its column
names, yuan instead of fen, a good/bad target, local times without a zone, fields it
lacks, no dates at all — replays as the same traffic in the router's schema does; a bad
mapping is refused naming its line and key."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.core.config import load_strategy
from router.core.errors import ConfigError, TrafficError
from router.ingest.mapping import load_mapping
from router.replay import replay
from router.traffic import generate_batches

ROOT = Path(__file__).resolve().parents[2]

MAPPING = """
[columns]
application_id = "loan_no"
monthly_income = "income_yuan"
requested_amount = "amount_yuan"
defaulted = "target"
received_at = "applied_local"
bureau_score = "score"

[transforms.monthly_income]
scale = 100

[transforms.requested_amount]
scale = 100

[transforms.defaulted]
map = { good = false, bad = true }

[transforms.received_at]
timezone = "Europe/Berlin"

[constants]
channel = "own_app"
consent = "any"
"""


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """Generated traffic with one channel and consent for all (what the constants say)."""
    d = tmp_path_factory.mktemp("mapping")
    t = pa.Table.from_batches(list(generate_batches(3000, seed=21))).to_pandas()
    t["channel"], t["consent"] = "own_app", "any"
    t["monthly_income"] = (t["monthly_income"] // 100) * 100  # whole yuan
    t["requested_amount"] = (t["requested_amount"] // 100) * 100
    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), d / "truth.parquet")
    return d, t


def _lender_frame(t: pd.DataFrame) -> pd.DataFrame:
    local = t["received_at"].dt.tz_convert("Europe/Berlin").dt.tz_localize(None)
    return pd.DataFrame(
        {
            "loan_no": t["application_id"],
            "applied_local": local.dt.strftime("%Y-%m-%d %H:%M:%S.%f").str[:23],
            "national_id": t["national_id"],
            "age": t["age"],
            "income_yuan": t["monthly_income"] // 100,
            "score": t["bureau_score"],
            "inquiries_3m": t["inquiries_3m"],
            "open_loans": t["open_loans"],
            "dti": t["dti"],
            "worst_dpd_12m": t["worst_dpd_12m"],
            "region": t["region"],
            "employer": t["employer"],
            "amount_yuan": t["requested_amount"] // 100,
            "term_months": t["term_months"],
            "max_apr": t["max_apr"],
            "fraud_flag": t["fraud_flag"],
            "target": t["defaulted"].map({True: "bad", False: "good"}),
        }
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_lenders_file_replays_as_the_same_traffic(truth, tmp_path, fmt):
    d, t = truth
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    want = replay(s, d / "truth.parquet", tmp_path / "truth", report=False)
    frame = _lender_frame(t)
    path = tmp_path / f"lender.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    (tmp_path / "m.toml").write_text(MAPPING)
    m = load_mapping(tmp_path / "m.toml")
    got = replay(s, path, tmp_path / "got", report=False, mapping=m)
    assert got.summary["traffic"]["rows_rejected"] == 0
    assert got.summary["decisions"] == want.summary["decisions"]
    assert got.summary["calibration"] == want.summary["calibration"]  # the target, mapped
    a = pq.read_table(want.decisions_path).to_pandas()
    b = pq.read_table(got.decisions_path).to_pandas()
    assert (a["received_at"] == b["received_at"]).all()  # local times, back in their zone
    assert got.summary["traffic"]["column_mapping"]["constants"] == {
        "channel": "own_app",
        "consent": "any",
    }


def test_a_file_without_dates_gets_arrival_times_from_row_order(truth, tmp_path):
    d, t = truth
    frame = _lender_frame(t).drop(columns=["applied_local"])
    frame.to_csv(tmp_path / "nodates.csv", index=False)
    text = MAPPING.replace('received_at = "applied_local"\n', "").split("[transforms.received_at]")
    text = text[0] + '[constants]\nchannel = "own_app"\nconsent = "any"\n'
    text += "\n[arrival]\nstart = 2026-11-02T08:00:00+08:00\nevery_ms = 1500\n"
    (tmp_path / "m.toml").write_text(text)
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    got = replay(
        s,
        tmp_path / "nodates.csv",
        tmp_path / "out",
        report=False,
        mapping=load_mapping(tmp_path / "m.toml"),
        batch_size=1000,  # (row numbers carry across batches)
    )
    assert got.summary["applications"] == len(frame)
    ts = pq.read_table(got.decisions_path).column("received_at").to_pandas()
    start = pd.Timestamp("2026-11-02T08:00:00+08:00")
    assert ts.iloc[0] == start
    assert ts.iloc[2999] == start + pd.Timedelta(milliseconds=1500 * 2999)


_CASES = [
    (
        "[columns]\nage = 'AGE'\n\n[transforms.ages]\nscale = 2\n",
        4,
        "transforms.ages",
        "unknown field",
    ),
    ("[transforms.region]\nscale = 100\n", 2, "transforms.region.scale", "applies to numbers"),
    ("[transforms.age]\nscale = -1\n", 2, "transforms.age.scale", "positive"),
    (
        "[transforms.received_at]\ntimezone = 'Mars/Base'\n",
        2,
        "transforms.received_at.timezone",
        "unknown time zone",
    ),
    ("[transforms.age]\nscale = 'ten'\n", 2, "transforms.age.scale", "Expected `float"),
    ("[transforms.age]\noffset_hours = 2\n", 1, "transforms.age", "received_at only"),
    ("[columns]\nchannel = 'ch'\n\n[constants]\nchannel = 'app'\n", 5, "constants.channel", "both"),
    ("[arrival]\nstart = 2026-11-02T00:00:00\n", 2, "arrival.start", "time zone"),
    (
        "[columns]\nreceived_at = 'ts'\n[arrival]\nstart = 2026-11-02T00:00:00Z\n",
        3,
        "arrival",
        "derived",
    ),
    ("[colums]\nage = 'AGE'\n", None, "", "unknown field"),
]


@pytest.mark.parametrize("text,line,key,why", _CASES)
def test_a_bad_mapping_names_its_line_and_key(tmp_path, text, line, key, why):
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_mapping(p)
    msg = str(e.value)
    assert why in msg, msg
    if line is not None:
        assert f"m.toml: line {line}: {key}:" in msg, msg


def test_a_value_the_map_does_not_list_rejects_its_row_naming_the_field(truth, tmp_path):
    d, t = truth
    frame = _lender_frame(t).head(50).astype({"income_yuan": object})
    frame.loc[3, "target"] = "unknown"
    frame.loc[7, "income_yuan"] = "lots"
    frame.to_csv(tmp_path / "f.csv", index=False)
    (tmp_path / "m.toml").write_text(MAPPING)
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    got = replay(
        s,
        tmp_path / "f.csv",
        tmp_path / "out",
        report=False,
        mapping=load_mapping(tmp_path / "m.toml"),
    )
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert {(r["row"], r["field"]) for r in rejects} == {(4, "defaulted"), (8, "monthly_income")}
    assert got.summary["applications"] == 48


def test_json_lines_take_renames_only(tmp_path):
    (tmp_path / "t.jsonl").write_text("{}\n")
    (tmp_path / "m.toml").write_text("[constants]\nchannel = 'own_app'\n")
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    with pytest.raises(TrafficError, match="renames only"):
        replay(s, tmp_path / "t.jsonl", tmp_path / "o", mapping=load_mapping(tmp_path / "m.toml"))
