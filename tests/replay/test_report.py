"""What ``report.html`` shows: everything the console shows, and more (issue 12).

The page is parsed (stdlib HTML parser) into its tables, so a test names a table by its
head and reads its cells as a user would see them.
"""

from __future__ import annotations

from datetime import datetime
from html.parser import HTMLParser

import pyarrow.parquet as pq
import pytest
from tests_helpers import small_caps_strategy

from router.core.reasons import CODES, MEANING
from router.replay import replay
from router.replay.report import cap_labels, write_replay_report
from router.traffic import write_traffic


class _Tables(HTMLParser):
    """Every <table> of a page as a list of rows of cell texts (head row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _table(page: str, first_head: str) -> list[dict[str, str]]:
    """The rows of the tables whose first column is ``first_head``, as dicts; several such
    tables (one subject split for width) are joined on that first column."""
    p = _Tables()
    p.feed(page)
    found = [t for t in p.tables if t and t[0] and t[0][0] == first_head]
    assert found, f"no table headed {first_head!r}: {[t[0] for t in p.tables if t]}"
    rows = [dict(zip(found[0][0], row, strict=True)) for row in found[0][1:]]
    for t in found[1:]:
        by_key = {r[first_head]: r for r in rows}
        for row in t[1:]:
            by_key[row[0]].update(zip(t[0], row, strict=True))
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    traffic = write_traffic(d / "t.parquet", 20_000, seed=31, per_day=20_000)
    s = small_caps_strategy()
    r = replay(s, traffic, d / "out")
    page = write_replay_report(r.summary, d / "out").read_text()
    return s, r, page


def _clock(iso: str) -> str:
    return iso.split("T")[1][:5]


def test_partner_table_gives_the_clock_time_each_cap_ran_out(run):
    _, r, page = run
    rows = {row["partner"]: row for row in _table(page, "partner")}
    assert set(rows) == set(r.summary["partners"])
    ran = 0
    for pid, caps in r.summary["quota"].items():
        if pid not in rows:
            continue
        day = caps.get("day")
        times = [w["ran_out_at"] for w in (day or {}).get("by_window", []) if w["ran_out_at"]]
        cell = rows[pid]["day cap ran out"]
        if times:
            ran += 1
            assert _clock(times[0]) in cell, (pid, cell)
        else:
            assert cell in ("–", "not reached"), (pid, cell)
        hour = caps.get("hour")
        if hour:
            assert f"{hour['cap_count']:,}" in rows[pid]["hour cap"]
            ran_hours = f"{hour['windows_ran_out']} of {hour['windows_used']}"
            assert rows[pid]["hours ran out"] == ran_hours
        if day and day["cap_amount"]:
            assert f"{day['cap_amount'] / 100:,.0f}" in rows[pid]["day cap"]
    assert ran >= 3  # the data really runs partners' caps out


def test_funder_budgets_table(run):
    _, r, page = run
    rows = _table(page, "funder's budget")
    seen = {(row["funder's budget"], row["window"]) for row in rows}
    want = {
        (name, window) for name in ("keep", "branch") for window in r.summary["quota"].get(name, {})
    }
    assert seen == want
    for row in rows:
        q = r.summary["quota"][row["funder's budget"]][row["window"]]
        times = [w["ran_out_at"] for w in q.get("by_window", []) if w["ran_out_at"]]
        if times:
            assert _clock(times[0]) in row["ran out"]
        else:
            assert row["ran out"] == "not reached"
        if q["cap_count"]:
            assert row["cap (count)"] == f"{q['cap_count']:,}"
    assert any(row["ran out"] != "not reached" for row in rows)  # branch runs out


def test_reason_codes_and_channels(run):
    _, r, page = run
    reasons = {row["reason code"]: row for row in _table(page, "reason code")}
    assert {k: int(v["applications"].replace(",", "")) for k, v in reasons.items()} == {
        k: v for k, v in r.summary["reason_counts"].items() if v
    }
    for code, row in reasons.items():
        assert row["meaning"] == MEANING[code]
    channels = {row["channel"]: row for row in _table(page, "channel")}
    assert set(channels) == set(r.summary["by_channel"])
    for ch, counts in r.summary["by_channel"].items():
        for label, n in counts.items():
            assert channels[ch][label] == f"{n:,}"


def test_every_reason_code_has_a_meaning():
    assert set(MEANING) == set(CODES)
    assert all(MEANING[c].strip() for c in CODES)


def test_equal_cap_lines_are_labelled_together():
    """Two partners with the same day cap: one line, one label naming both (the chart
    used to draw one dashed line over the other, and one partner's cap vanished)."""
    summary = {
        "quota": {
            "a": {"day": {"cap_count": 900}},
            "b": {"day": {"cap_count": 900}},
            "c": {"day": {"cap_count": 400}},
            "d": {"day": {"cap_count": None}},
        }
    }
    assert cap_labels(summary, ["a", "b", "c", "d"]) == [(400, ["c"]), (900, ["a", "b"])]


def test_decisions_keep_the_strategy_time_zone(run):
    """``received_at`` in decisions.parquet is in the strategy's time zone (the one its
    windows are counted in), and the file says so, instead of silently UTC."""
    s, r, _ = run
    f = pq.read_table(r.decisions_path)
    field = f.schema.field("received_at")
    assert field.type.tz == s.timezone
    assert b"time zone" in field.metadata[b"description"]
    first = f.column("received_at")[0].as_py()
    assert first.utcoffset() is not None and first.utcoffset().total_seconds() == 8 * 3600
    assert isinstance(first, datetime)
