"""Traffic readers: Parquet, CSV and JSON Lines, a lender's own column names, bad rows."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_helpers import MAPPING, lender_rows, strategy_and_scorer

from router.core.errors import TrafficError
from router.ingest.reader import read_batches
from router.replay import replay

# The lender's file uses its own names; the mapping (field -> their column) reads it.
BAD = {  # row number (1-based) -> (field, what is wrong)
    3: ("age", "abc"),
    5: ("requested_amount", -100),
    7: ("received_at", "2026-11-02 10:00:00"),  # no zone offset
    8: ("consent", "bank_a,nobody"),  # unknown partner
    10: ("region", "31"),  # not six digits
}


def _rows():
    rows = lender_rows(12)
    for row_no, (field, value) in BAD.items():
        rows[row_no - 1][MAPPING.get(field, field)] = value
    return rows


def _write(tmp_path, fmt):
    rows = _rows()
    path = tmp_path / f"lender.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        # Parquet is typed: bad values of another type go in as text columns.
        pq.write_table(
            pa.Table.from_pylist(
                [{k: (str(v) if v is not None else None) for k, v in r.items()} for r in rows]
            ),
            path,
        )
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_reader_maps_columns_and_rejects_bad_rows(tmp_path, fmt):
    s, scorer = strategy_and_scorer()
    path = _write(tmp_path, fmt)
    rejects = []
    batches = list(
        read_batches(
            path,
            _hasher(s),
            partner_ids=[p.id for p in s.partners],
            mapping=MAPPING,
            batch_size=4,
            on_rejects=rejects.extend,
        )
    )
    rows = [int(r) for b in batches for r in b.rows]
    assert rows == [r for r in range(1, 13) if r not in BAD]
    assert {r.row: r.field for r in rejects} == {k: v[0] for k, v in BAD.items()}
    ids = [a for b in batches for a in b.cols.application_id]
    assert ids == [f"L{r:03d}" for r in rows]
    # Outcome columns come through, aligned with the accepted rows.
    defaulted = [v for b in batches for v in b.outcomes["defaulted"].tolist()]
    assert defaulted == [int(r % 4 == 0) for r in rows]  # 1 yes, 0 no (-1 unknown)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_replay_counts_rejects_and_goes_on(tmp_path, fmt):
    s, scorer = strategy_and_scorer()
    r = replay(
        s, _write(tmp_path, fmt), tmp_path / "out", mapping=MAPPING, scorers={"main": scorer}
    )
    assert r.summary["traffic"]["rows_rejected"] == len(BAD)
    assert r.summary["applications"] == 12 - len(BAD)
    lines = [json.loads(x) for x in r.rejects_path.read_text().splitlines()]
    assert [x["row"] for x in lines] == sorted(BAD)
    assert all(x["reason"] for x in lines)
    # The same rows through all three formats give the same decisions.
    assert r.summary["decisions"] == _reference_decisions(tmp_path, s, scorer)


def _reference_decisions(tmp_path, s, scorer):
    good = [row for i, row in enumerate(_rows(), 1) if i not in BAD]
    path = tmp_path / "good.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    return replay(s, path, tmp_path / "ref", mapping=MAPPING, scorers={"main": scorer}).summary[
        "decisions"
    ]


def test_raw_identifiers_never_reach_the_rejects_file(tmp_path):
    s, scorer = strategy_and_scorer()
    rows = lender_rows(3)
    rows[1][MAPPING["national_id"]] = "12"  # too short: rejected
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = replay(s, path, tmp_path / "o", mapping=MAPPING, scorers={"main": scorer})
    text = r.rejects_path.read_text()
    assert r.summary["traffic"]["rows_rejected"] == 1
    assert "national_id" in text and '"12"' not in text and "withheld" in text


def test_a_missing_column_names_the_mapping(tmp_path):
    s, scorer = strategy_and_scorer()
    rows = [{k: v for k, v in r.items() if k != "score"} for r in lender_rows(2)]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(TrafficError, match="bureau_score"):
        replay(s, path, tmp_path / "o", mapping=MAPPING, scorers={"main": scorer})


def test_an_unknown_mapping_field_is_an_error(tmp_path):
    s, scorer = strategy_and_scorer()
    with pytest.raises(TrafficError, match="unknown field 'fico'"):
        replay(
            s,
            _write(tmp_path, "csv"),
            tmp_path / "o",
            mapping={"fico": "score"},
            scorers={"main": scorer},
        )


def _hasher(s):
    from router.core.identity import Hasher

    return Hasher.from_config(s.identity)


def test_float_columns_for_integer_fields(tmp_path):
    """A Parquet file written from a data frame often has floats for integer fields."""
    s, scorer = strategy_and_scorer()
    rows = lender_rows(5)
    for r in rows:
        r["age"] = float(r["age"])
    rows[1]["age"] = 35.5  # not whole
    rows[2]["age"] = float("inf")  # not finite
    rows[3]["age"] = None  # missing
    path = tmp_path / "f.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    r = replay(s, path, tmp_path / "o", mapping=MAPPING, scorers={"main": scorer})
    lines = [json.loads(x) for x in r.rejects_path.read_text().splitlines()]
    assert [(x["row"], x["field"]) for x in lines] == [(2, "age"), (3, "age"), (4, "age")]
    assert r.summary["applications"] == 2


def _replay_csv(tmp_path, rows: list[dict], s, scorer):
    """Replay ``rows`` written as a CSV file (the lender's column names, MAPPING)."""
    path = tmp_path / "f.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return replay(s, path, tmp_path / "o", mapping=MAPPING, scorers={"main": scorer})


def test_csv_whole_numbers_with_a_zero_fraction_are_integers(tmp_path):
    """``316667.0`` in a CSV integer column is the whole number a Parquet float column with
    the same value is; ``35.5`` is still not an integer."""
    s, scorer = strategy_and_scorer()
    rows = lender_rows(4)
    rows[0]["age"], rows[1]["age"], rows[2]["age"] = "31.0", " 42.00 ", "35.5"
    r = _replay_csv(tmp_path, rows, s, scorer)
    lines = [json.loads(x) for x in r.rejects_path.read_text().splitlines()]
    assert [(x["row"], x["field"], x["reason"]) for x in lines] == [(3, "age", "not an integer")]
    assert r.summary["applications"] == 3


def test_a_rejected_row_lists_all_its_problems(tmp_path):
    s, scorer = strategy_and_scorer()
    rows = lender_rows(3)
    rows[1]["age"] = "abc"
    rows[1][MAPPING.get("requested_amount", "requested_amount")] = -100
    rows[1][MAPPING.get("region", "region")] = "31"
    r = _replay_csv(tmp_path, rows, s, scorer)
    (line,) = [json.loads(x) for x in r.rejects_path.read_text().splitlines()]
    assert line["row"] == 2
    assert {p["field"] for p in line["problems"]} == {"age", "requested_amount", "region"}
    assert r.summary["traffic"]["rows_rejected"] == 1


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_misshapen_row_that_is_not_utf8_is_one_clear_error(tmp_path):
    """pyarrow cannot hand a row of invalid UTF-8 to the invalid-row handler (its wrapper
    fails to decode it and prints an "Exception ignored" traceback), so such a row cannot
    be skipped as a reject: the file stops with one error naming why, nothing printed
    besides. (Found by tests/ingest/test_fuzz_inputs.py.)"""
    from router.core.identity import Hasher

    f = tmp_path / "t.csv"
    f.write_bytes(
        b"application_id,received_at,bureau_score\n"
        b"A1,2026-11-02T10:00:00+08:00,700\n"
        b"A2,\xcc\xff,1,2,3\n"
    )
    with pytest.raises(TrafficError, match="not valid UTF-8"):
        list(read_batches(f, Hasher(b"k" * 32), partner_ids=[]))
