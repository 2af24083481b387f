import msgspec
import pyarrow.parquet as pq
import pytest
from tests_helpers import small_caps_strategy

from router.core.config import load_strategy
from router.core.messages import decode_application
from router.core.routing import routing_methods
from router.decide.engine import Router
from router.replay import replay
from router.traffic import write_traffic


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    d = tmp_path_factory.mktemp("traffic")
    return (
        write_traffic(d / "t.parquet", 20_000, seed=21, per_day=20_000),
        write_traffic(d / "t.jsonl", 3_000, seed=22, per_day=3_000),
    )


def test_summary_and_decisions(tmp_path, traffic):
    s = load_strategy("configs/strategy.toml")
    r = replay(s, traffic[0], tmp_path)
    summary = msgspec.json.decode(r.summary_path.read_bytes())
    for key in (
        "applications",
        "decisions",
        "partners",
        "expected_profit",
        "quota",
        "strategy_hash",
        "code_version",
        "traffic",
        "reason_counts",
        "by_hour",
    ):
        assert key in summary
    assert summary["traffic"]["rows_rejected"] == 0
    assert len(summary["traffic"]["sha256"]) == 64
    assert (tmp_path / "timing.json").exists()
    assert summary["applications"] == 20_000 == sum(summary["decisions"].values())
    t = pq.read_table(r.decisions_path)
    assert t.num_rows == 20_000
    assert t.column_names[:5] == [
        "application_id",
        "received_at",
        "channel",
        "requested_amount",
        "outcome",
    ]
    refs = sum(1 for o in t.column("outcome").to_pylist() if o == "refer")
    assert (
        refs
        == summary["decisions"]["refer"]
        == sum(p["referred"] for p in summary["partners"].values())
    )
    for p in summary["partners"].values():
        assert p["expected_value"] == pytest.approx(
            p["expected_fee"] + p["expected_rev_share"], abs=p["referred"] + 2
        )
    assert summary["partners"]["trust_lantern"]["referred"] == 0


def test_replay_is_deterministic(tmp_path, traffic):
    s = load_strategy("configs/strategy.toml")
    a = replay(s, traffic[0], tmp_path / "a")
    b = replay(s, traffic[0], tmp_path / "b")
    assert a.decisions_path.read_bytes() == b.decisions_path.read_bytes()
    assert a.summary_path.read_bytes() == b.summary_path.read_bytes()


def test_replay_equals_live_one_by_one(tmp_path, traffic):
    s = load_strategy("configs/strategy.toml")
    r = replay(s, traffic[1], tmp_path)
    live = Router(s)
    decided = [
        live.decide(decode_application(line)) for line in traffic[1].read_bytes().splitlines()
    ]
    t = pq.read_table(r.decisions_path).to_pylist()
    assert [row["outcome"] for row in t] == [type(d).__struct_config__.tag for d in decided]
    assert [row["partner"] for row in t] == [getattr(d, "partner_id", None) for d in decided]
    assert [row["pd"] for row in t] == [d.pd for d in decided]


def test_daily_cap_exhaustion_reported(tmp_path, traffic):
    """With every cap divided by 10, 20k applications run several daily caps out: the
    report says when (the first refused application's time, in the window it names), a cap
    that ran out is used up to its count, and nothing of that kind is granted after it."""
    from datetime import datetime

    s = small_caps_strategy()
    r = replay(s, traffic[0], tmp_path)
    quota = r.summary["quota"]
    rows = pq.read_table(r.decisions_path).to_pylist()
    ran_out = 0
    for name, caps in quota.items():
        day = caps.get("day")
        if day is None:
            continue
        for w in day["by_window"]:
            if day["cap_amount"] is None:  # a count-only cap runs out exactly at its count
                assert (w["ran_out_at"] is not None) == (w["count"] >= day["cap_count"]), w
            if w["ran_out_at"] is None:
                continue
            ran_out += 1
            at = datetime.fromisoformat(w["ran_out_at"])
            assert w["ran_out_at"].startswith(w["window"])  # inside the window it names
            if day["cap_amount"] is None:  # used up: nothing granted after it ran out
                taken = [
                    x["received_at"]
                    for x in rows
                    if (
                        x["partner"] == name
                        if name not in ("keep", "branch")
                        else x["outcome"] == name
                    )
                    and x["received_at"].astimezone(at.tzinfo).date() == at.date()
                ]
                assert len(taken) == day["cap_count"] and max(taken) < at, name
            # the time of a real application (the report gives whole seconds)
            assert any(abs((x["received_at"] - at).total_seconds()) < 1 for x in rows)
    assert ran_out >= 5  # the data really runs caps out (branch and four partners)
    assert quota["keep"]["day"]["windows_ran_out"] == 0


@pytest.mark.parametrize("method", routing_methods())
def test_known_refusal_shortcut_changes_nothing(tmp_path, traffic, monkeypatch, method):
    """Skipping the store for caps known to refuse gives exactly the store's answers."""
    from router.decide.allocate import Allocator

    s = small_caps_strategy(method)
    fast = replay(s, traffic[0], tmp_path / "fast")
    refused = sum(sum(p.values()) for p in fast.summary["cap_refusals"].values())
    assert refused > 1000  # the shortcut really was exercised
    monkeypatch.setattr(Allocator, "known_refusal", lambda self, *a: -1)
    monkeypatch.setattr(Allocator, "skip_full_windows", False)
    slow = replay(s, traffic[0], tmp_path / "slow")
    assert fast.decisions_path.read_bytes() == slow.decisions_path.read_bytes()
    assert fast.summary_path.read_bytes() == slow.summary_path.read_bytes()


def test_replaying_cached_traffic_keeps_only_the_records_a_retry_can_ask_for(tmp_path):
    """Traffic read once (tuning) is replayed on a store that keeps decision records only
    for the ids the traffic holds more than once; the retries, in later batches or the
    same one, still get their first decision back: the same figures as a replay from the
    file, which keeps every record."""
    import pyarrow as pa

    from router.replay.run import read_cached

    t = pq.read_table(write_traffic(tmp_path / "t.parquet", 4000, seed=7, per_day=4000))
    retries = pa.concat_tables([t.slice(0, 400), t.slice(1000, 50), t.slice(1000, 50)])
    path = tmp_path / "with_retries.parquet"
    pq.write_table(pa.concat_tables([t, retries]), path)
    s = small_caps_strategy()  # caps run out: a retry decided anew would differ
    cached = read_cached(s, path, batch_size=1000)
    assert cached.repeated_ids == set(t.column("application_id").to_pylist()[:400]) | set(
        t.column("application_id").to_pylist()[1000:1050]
    )
    a = replay(s, path, tmp_path / "file", batch_size=1000, report=False)
    b = replay(s, path, tmp_path / "cached", cached=cached, report=False)
    assert a.decisions_path.read_bytes() == b.decisions_path.read_bytes()
    assert a.summary_path.read_bytes() == b.summary_path.read_bytes()
    decisions = pq.read_table(a.decisions_path).to_pylist()
    first = {r["application_id"]: r for r in decisions[:4000]}
    assert all(r == first[r["application_id"]] for r in decisions[4000:])
