"""Every bad input gets one clear line, ``error: …`` (usage errors too), exit 2, no
traceback, no raw identifier from the input — through the real entry point
(``python -m router``), as a user runs it. (Issue 12; the matrix grows with it.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRATEGY = str(ROOT / "configs" / "strategy.toml")
SECRET = "110101199003074258"  # a national id that must never be echoed


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _app(app_id: str, age: int) -> str:
    """One valid application as JSON (national id: the secret), with ``age`` varied."""
    import json

    return json.dumps(
        {
            "application_id": app_id, "received_at": "2026-11-02T10:00:00+08:00",
            "channel": "own_app", "national_id": SECRET, "age": age, "monthly_income": 500000,
            "bureau_score": 700, "inquiries_3m": 1, "open_loans": 1, "dti": 0.2,
            "worst_dpd_12m": 0, "region": "310000", "requested_amount": 3000000,
            "term_months": 12, "max_apr": 0.2, "consent": "any", "fraud_flag": False,
        }
    )  # fmt: skip


def _files(tmp: Path) -> dict[str, str]:
    (tmp / "empty.csv").write_text("")
    (tmp / "empty.parquet").write_bytes(b"")
    header = (
        "application_id,received_at,channel,national_id,age,monthly_income,bureau_score,"
        "inquiries_3m,open_loans,dti,worst_dpd_12m,region,requested_amount,term_months,max_apr"
    )
    (tmp / "extra.csv").write_text(
        header + "\n"
        "A1,2026-11-02T10:00:00+08:00,own_app," + SECRET + ",30,500000,700,1,1,0.2,0,"
        "310000,3000000,12,0.2,EXTRA,MORE\n"
        "A2,2026-11-02T10:05:00+08:00,own_app,110101198001010011,30,500000,700,1,1,0.2,0,"
        "310000,3000000,12,0.2\n"
    )
    (tmp / "bad.toml").write_text("version = [unclosed\n")
    (tmp / "ab.csv").write_text("a,b\n1,2\n")
    good = (
        "A3,2026-11-02T10:00:00+08:00,own_app," + SECRET + ",30,500000,700,1,1,0.2,0,"
        "310000,3000000,12,0.2"
    )
    (tmp / "all_bad.csv").write_text(
        header
        + "\n"
        + good.replace(",30,", ",thirty,")
        + "\n"
        + good.replace("A3", "A4").replace(",30,", ",-5,")
        + "\n"
    )
    (tmp / "target.csv").write_text(
        header + ",bad_flag\n" + good + ",good\n" + good.replace("A3", "A5") + ",bad\n"
    )
    (tmp / "target_map.toml").write_text('[columns]\ndefaulted = "bad_flag"\n')
    (tmp / "unknown_map.toml").write_text('[columns]\nshoe_size = "x"\n')
    (tmp / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (tmp / "garbage.jsonl").write_text("{not json at all\n")
    (tmp / "all_bad.jsonl").write_text(
        '{"application_id": "J1", "national_id": "' + SECRET + '", "age": "old"}\n'
    )
    (tmp / "grid_unknown.toml").write_text('[grid]\n"primary.no_such" = [1, 2]\n')
    (tmp / "grid_type.toml").write_text('[grid]\n"primary.max_pd" = ["high"]\n')
    (tmp / "grid_empty.toml").write_text("[grid]\n")
    (tmp / "secret_age.json").write_text(
        '{"application_id": "S1", "received_at": "2026-11-02T10:00:00+08:00", '
        '"age": ' + SECRET + "}"
    )
    (tmp / "conflict.jsonl").write_text(_app("C1", 30) + "\n" + _app("C1", 31) + "\n")
    (tmp / "naive.json").write_text(
        _app("N1", 30).replace("2026-11-02T10:00:00+08:00", "2026-11-02T10:00:00")
    )
    (tmp / "strategy_rev.toml").write_text(
        (ROOT / "configs" / "strategy.toml")
        .read_text()
        .replace('partner_book = "partners.toml"', f'partner_book = "{tmp / "partners.toml"}"')
    )
    (tmp / "partners.toml").write_text(
        (ROOT / "configs" / "partners.toml")
        .read_text()
        .replace("rev_share = 0.30", "rev_share = 3.0")
    )
    (tmp / "pb_bad.jsonl").write_text('{"type": "teleported", "event_id": "e1"}\n')
    names = (
        "empty.csv", "empty.parquet", "extra.csv", "bad.toml", "ab.csv", "all_bad.csv",
        "target.csv", "target_map.toml", "unknown_map.toml", "garbage.bin", "garbage.jsonl",
        "all_bad.jsonl", "grid_unknown.toml", "grid_type.toml", "grid_empty.toml",
        "secret_age.json", "conflict.jsonl", "naive.json", "strategy_rev.toml", "pb_bad.jsonl",
    )  # fmt: skip
    return {k.replace(".", "_"): str(tmp / k) for k in names}


CASES = [
    # (id, args, words expected in stderr)
    ("missing traffic", ["replay", "-s", STRATEGY, "-t", "{tmp}/nope.parquet", "-o", "{tmp}/o"],
     ["error:", "nope.parquet"]),
    ("empty csv", ["replay", "-s", STRATEGY, "-t", "{empty_csv}", "-o", "{tmp}/o"],
     ["error:", "Empty CSV"]),
    ("empty parquet", ["replay", "-s", STRATEGY, "-t", "{empty_parquet}", "-o", "{tmp}/o"],
     ["error:"]),
    ("bad log level", ["--log-level", "verbose", "demo", "--rows", "5", "--out", "{tmp}/o"],
     ["--log-level", "verbose"]),
    ("bad log format", ["--log-format", "xml", "demo", "--rows", "5", "--out", "{tmp}/o"],
     ["--log-format", "xml"]),
    ("postgres store url", ["decide", "-s", STRATEGY, "--store", "postgres://x", "{{}}"],
     ["error:", "postgres://x"]),
    ("strategy not toml", ["decide", "-s", "{bad_toml}", "{{}}"], ["error:", "bad.toml"]),
    ("missing strategy", ["decide", "-s", "{tmp}/none.toml", "{{}}"], ["error:", "none.toml"]),
    ("demo key on a shared store", ["decide", "-s", STRATEGY, "--store",
                                    "redis://127.0.0.1:1/0", "{{}}"],
     ["error:", "ROUTER_HMAC_KEY", "--allow-demo-key"]),
    ("cluster down", ["decide", "-s", STRATEGY, "--store", "redis+cluster://127.0.0.1:1",
                      "--allow-demo-key", "{{}}"], ["error:", "cannot connect"]),
    ("empty stdin", ["decide", "-s", STRATEGY], ["error:", "no applications"]),
    ("bad application line", ["decide", "-s", STRATEGY, '{{"application_id": "x"}}'],
     ["error:", "line 1", "received_at"]),
    ("missing column", ["replay", "-s", STRATEGY, "-t", "{ab_csv}", "-o", "{tmp}/o"],
     ["error:", "missing column", "the file has: a, b"]),
    ("out is a file", ["replay", "-s", STRATEGY, "-t", "{empty_csv}", "-o", "{bad_toml}"],
     ["--out", "is a file, not a directory"]),
    ("unknown traffic format", ["replay", "-s", STRATEGY, "-t", "{bad_toml}", "-o", "{tmp}/o"],
     ["error:", "unsupported traffic format"]),
    ("bill bad period", ["bill", "--db", "{tmp}/b.db", "-p", "x", "--period", "2026-13", "-s",
                         STRATEGY], ["error:", "YYYY-MM"]),
    # -- beyond the list --------------------------------------------------------
    ("out not creatable", ["replay", "-s", STRATEGY, "-t", "{empty_csv}", "-o", "/proc/nope/o"],
     ["--out", "/proc/nope/o"]),
    ("store bad port", ["decide", "-s", STRATEGY, "--store", "redis://127.0.0.1:notaport/0",
                        "--allow-demo-key", "{{}}"], ["error:", "notaport"]),
    ("store port out of range", ["decide", "-s", STRATEGY, "--store", "redis://127.0.0.1:99999/0",
                                 "--allow-demo-key", "{{}}"], ["error:", "99999"]),
    ("store unreachable", ["replay", "-s", STRATEGY, "-t", "{extra_csv}", "-o", "{tmp}/o",
                           "--store", "redis://127.0.0.1:1/0?timeout_ms=200&retries=1",
                           "--allow-demo-key"],
     ["error:", "127.0.0.1:1"]),
    ("json array argument", ["decide", "-s", STRATEGY, '[{{"application_id": "x"}}]'],
     ["error:", "item 1", "received_at"]),
    ("conflicting lines", ["decide", "-s", STRATEGY, "{conflict_jsonl}"],
     ["error:", "line 2", "C1", "different content"]),
    ("garbage bytes to decide", ["decide", "-s", STRATEGY, "{garbage_bin}"], ["error:", "line"]),
    ("not json to decide", ["decide", "-s", STRATEGY, "{garbage_jsonl}"],
     ["error:", "line 1", "malformed"]),
    ("secret in a number field", ["decide", "-s", STRATEGY, "{secret_age_json}"],
     ["error:", "age"]),
    ("naive received_at", ["decide", "-s", STRATEGY, "{naive_json}"],
     ["error:", "received_at"]),
    ("every csv row rejected", ["replay", "-s", STRATEGY, "-t", "{all_bad_csv}", "-o", "{tmp}/o"],
     ["error:", "every row", "rejects.jsonl"]),
    ("every jsonl row rejected", ["replay", "-s", STRATEGY, "-t", "{all_bad_jsonl}", "-o",
                                  "{tmp}/o"], ["error:", "every row", "rejects.jsonl"]),
    ("good/bad target mapped to defaulted", ["replay", "-s", STRATEGY, "-t", "{target_csv}", "-o",
                                             "{tmp}/o", "--mapping", "{target_map_toml}"],
     ["error:", "defaulted", "'good'"]),
    ("mapping names an unknown field", ["replay", "-s", STRATEGY, "-t", "{target_csv}", "-o",
                                        "{tmp}/o", "--mapping", "{unknown_map_toml}"],
     ["error:", "shoe_size"]),
    ("mapping not toml", ["replay", "-s", STRATEGY, "-t", "{target_csv}", "-o", "{tmp}/o",
                          "--mapping", "{garbage_jsonl}"], ["error:", "garbage.jsonl"]),
    ("reference missing", ["replay", "-s", STRATEGY, "-t", "{extra_csv}", "-o", "{tmp}/o",
                           "--reference", "{tmp}/ref.parquet"], ["error:", "ref.parquet"]),
    ("grid unknown parameter", ["tune", "-s", STRATEGY, "-t", "{extra_csv}", "-g",
                                "{grid_unknown_toml}", "-o", "{tmp}/t"],
     ["error:", "primary.no_such"]),
    ("grid wrong type", ["tune", "-s", STRATEGY, "-t", "{extra_csv}", "-g", "{grid_type_toml}",
                         "-o", "{tmp}/t"], ["error:", "primary.max_pd", "high"]),
    ("grid empty", ["tune", "-s", STRATEGY, "-t", "{extra_csv}", "-g", "{grid_empty_toml}", "-o",
                    "{tmp}/t"], ["error:", "grid"]),
    ("tune constraint out of range", ["tune", "-s", STRATEGY, "-t", "{extra_csv}", "-g",
                                      "{grid_empty_toml}", "-o", "{tmp}/t", "--max-bad-rate",
                                      "1.5"], ["--max-bad-rate", "1.5"]),
    ("compare missing challenger", ["compare", "-a", STRATEGY, "-b", "{tmp}/nope.toml", "-t",
                                    "{extra_csv}", "-o", "{tmp}/c"], ["error:", "nope.toml"]),
    ("partner term out of range", ["decide", "-s", "{strategy_rev_toml}", "{{}}"],
     ["error:", "partners[platform_yunfan].terms.rev_share", "3.0"]),
    ("generate negative rows", ["generate", "--rows", "-1", "--out", "{tmp}/t.parquet"],
     ["--rows", "-1"]),
    ("generate unknown format", ["generate", "--rows", "5", "--out", "{tmp}/t.xlsx"],
     ["error:", ".xlsx"]),
    ("generate bad start", ["generate", "--rows", "5", "--out", "{tmp}/t.parquet", "--start",
                            "yesterday"], ["--start", "yesterday"]),
    ("unknown schema", ["schema", "partners"], ["partners"]),
    ("postbacks file missing", ["postbacks", "ingest", "{tmp}/pb.jsonl", "--db", "{tmp}/b.db",
                                "-s", STRATEGY], ["error:", "pb.jsonl"]),
    ("postback of an unknown type", ["postbacks", "ingest", "{pb_bad_jsonl}", "--db",
                                     "{tmp}/b.db", "-s", STRATEGY], ["error:", "line 1"]),
    ("bill unknown partner", ["bill", "--db", "{tmp}/b.db", "-p", "nobody", "--period",
                              "2026-11", "-s", STRATEGY], ["error:", "nobody"]),
    ("reconcile theirs missing", ["reconcile", "--db", "{tmp}/b.db", "-p", "platform_yunfan",
                                  "--period", "2026-11", "-s", STRATEGY, "--theirs",
                                  "{tmp}/theirs.csv"], ["error:", "theirs.csv"]),
    ("billing db not creatable", ["bill", "--db", "/proc/nope/b.db", "-p", "platform_yunfan",
                                  "--period", "2026-11", "-s", STRATEGY],
     ["error:", "/proc/nope/b.db"]),
    ("demo rows not a number", ["demo", "--rows", "many", "--out", "{tmp}/o"], ["--rows", "many"]),
]  # fmt: skip


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 40, len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(case, tmp_path):
    _, args, words = case
    files = _files(tmp_path)
    argv = [a.format(tmp=tmp_path, **files) for a in args]
    p = run(*argv, cwd=tmp_path)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    for w in words:
        assert w in p.stderr, (w, p.stderr)
    assert SECRET not in p.stderr + p.stdout


def test_debug_shows_the_traceback(tmp_path):
    p = run("--debug", "replay", "-s", STRATEGY, "-t", str(tmp_path / "nope.parquet"), "-o",
            str(tmp_path / "o"))  # fmt: skip
    assert p.returncode == 1 and "Traceback" in p.stderr


def test_info_logging_reports_each_cap_running_out(tmp_path):
    """The README's promise: ``--log-level info`` shows a ``quota.exhausted`` event when a
    cap first refuses in a window (on stderr; stdout keeps the results)."""
    traffic = tmp_path / "t.parquet"
    assert (
        run("generate", "--rows", "60000", "--per-day", "60000", "--out", str(traffic)).returncode
        == 0
    )
    p = run("--log-level", "info", "replay", "-s", STRATEGY, "-t", str(traffic), "-o",
            str(tmp_path / "o"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "quota.exhausted" in p.stderr and "window=day" in p.stderr
    assert "quota.exhausted" not in p.stdout


def test_log_options_after_the_command_and_debug_lines_for_decide(tmp_path):
    traffic = tmp_path / "t.jsonl"
    assert run("generate", "--rows", "3", "--out", str(traffic)).returncode == 0
    p = subprocess.run(
        [sys.executable, "-m", "router", "decide", "-s", STRATEGY, "--log-level", "debug"],
        input=traffic.read_text(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stderr.count(" decision ") == 3 and len(p.stdout.splitlines()) == 3
    assert "national_id" not in p.stderr


def test_a_csv_row_with_extra_fields_is_rejected_and_the_run_goes_on(tmp_path):
    """The README's promise: a bad row goes to rejects.jsonl (its number and why — never its
    text, which holds a national id) and the other rows are decided."""
    files = _files(tmp_path)
    p = run("replay", "-s", STRATEGY, "-t", files["extra_csv"], "-o", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    rejects = (tmp_path / "o" / "rejects.jsonl").read_text()
    assert '"row":1' in rejects and "fields" in rejects and '"row":2' not in rejects
    everything = p.stdout + p.stderr + rejects
    assert SECRET not in everything


def test_tune_with_constraints_no_candidate_meets_says_how_close_and_exits_3(tmp_path):
    traffic = tmp_path / "t.parquet"
    assert (
        run("generate", "--rows", "20000", "--per-day", "20000", "--out", str(traffic)).returncode
        == 0
    )
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\n"primary.max_pd" = [0.04, 0.06]\n')
    p = run("tune", "-s", STRATEGY, "-t", str(traffic), "--grid", str(grid), "--out",
            str(tmp_path / "tune"), "--min-keep-rate", "0.99", "--workers", "1")  # fmt: skip
    assert p.returncode == 3, p.stderr
    assert "no candidate meets the constraints (--min-keep-rate 0.99)" in p.stderr
    assert "highest keep rate" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "tune" / "best_strategy.toml").exists()


def test_decide_takes_a_pretty_printed_json_object(tmp_path):
    """A file holding one indented JSON object (as a user writes one by hand, and as
    examples/application.json is) is one application, not twenty broken lines."""
    p = run("decide", "-s", STRATEGY, str(ROOT / "examples" / "application.json"))
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 1 and '"outcome":"refer"' in p.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "application_id": "x",\n  "age": "old"\n}\n')
    p = run("decide", "-s", STRATEGY, str(bad))
    assert p.returncode == 2 and p.stderr.count("error:") == 2, p.stderr
    assert "received_at" in p.stderr or "age" in p.stderr
