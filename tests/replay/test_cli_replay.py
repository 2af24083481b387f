"""The replay, compare and tune commands as a user runs them."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from router.cli import app
from router.traffic import write_traffic


def test_replay_into_redis_gets_its_own_prefix(tmp_path, redis_server):
    traffic = write_traffic(tmp_path / "t.parquet", 3000, seed=9, per_day=3000)
    url = f"redis://{redis_server.host}:{redis_server.port}/0"
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    before = set(client.keys("*"))  # (the suite's server: other tests' keys may be there)
    r = CliRunner().invoke(
        app,
        [
            "replay",
            "-s",
            "configs/strategy.toml",
            "-t",
            str(traffic),
            "-o",
            str(tmp_path / "out"),
            "--store",
            url,
            "--allow-demo-key",
        ],
    )
    assert r.exit_code == 0, r.output
    timing = json.loads((tmp_path / "out" / "timing.json").read_text())
    assert timing["store"] == "RedisQuotaStore"
    prefix = timing["store_prefix"]
    assert prefix.startswith("replay-") and prefix != "rr:"
    keys = set(client.keys("*")) - before
    assert keys and all(k.decode().startswith(prefix) for k in keys)
    for k in keys:
        client.delete(k)


def test_compare_and_tune_commands(tmp_path):
    traffic = write_traffic(tmp_path / "t.parquet", 4000, seed=9, per_day=4000)
    from router.core.config import load_strategy
    from router.replay.tune import strategy_data, with_params, write_strategy

    raw = with_params(
        strategy_data(load_strategy("configs/strategy.toml")),
        {"primary.max_pd": 0.03, "version": "stricter"},
    )
    strict = write_strategy(raw, tmp_path / "strict.toml")
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "compare",
            "-a",
            "configs/strategy.toml",
            "-b",
            str(strict),
            "-t",
            str(traffic),
            "-o",
            str(tmp_path / "cmp"),
        ],
    )
    assert r.exit_code == 0, r.output
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert sum(map(sum, cmp["counts"])) == 4000
    assert cmp["swapped"] > 0 and sum(cmp["counts"][0][1:]) > 0  # fewer kept
    assert cmp["net_change"]["keep_rate"] < 0 and "swap sets" in r.output
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\n"primary.max_pd" = [0.03, 0.06]\n')
    r = runner.invoke(
        app,
        [
            "tune",
            "-s",
            "configs/strategy.toml",
            "-t",
            str(traffic),
            "-g",
            str(grid),
            "-o",
            str(tmp_path / "tune"),
            "--workers",
            "1",
            "--max-bad-rate",
            "0.05",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "tune" / "best_strategy.toml").exists()
    assert (tmp_path / "tune" / "report.html").exists()
    grid.write_text('[grid]\n"primary.no_such" = [1]\n')
    bad = runner.invoke(
        app,
        [
            "tune",
            "-s",
            "configs/strategy.toml",
            "-t",
            str(traffic),
            "-g",
            str(grid),
            "-o",
            str(tmp_path / "t3"),
        ],
    )
    assert bad.exit_code == 2 and "primary.no_such" in bad.output


def test_replay_behind_the_stores_newest_event_says_so(tmp_path, redis_server):
    """Replaying October into a prefix that already holds November: every row is older than
    the store's newest event by more than the late limit and is declined LATE_EVENT. The run
    must say so loudly (console and report), not print a quiet 100 % decline."""
    import uuid

    url = f"redis://{redis_server.host}:{redis_server.port}/0?prefix=t{uuid.uuid4().hex[:6]}:"
    nov = write_traffic(tmp_path / "nov.parquet", 500, seed=9, per_day=500)
    oct_ = write_traffic(tmp_path / "oct.parquet", 500, seed=10, per_day=500, start="2026-10-01")
    runner = CliRunner()
    for name, traffic in (("nov", nov), ("oct", oct_)):
        r = runner.invoke(
            app,
            ["replay", "-s", "configs/strategy.toml", "-t", str(traffic), "-o",
             str(tmp_path / name), "--store", url, "--allow-demo-key"],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
    assert "late" not in json.dumps(json.loads((tmp_path / "nov" / "summary.json").read_text())[
        "reason_counts"]).lower()  # fmt: skip
    late = json.loads((tmp_path / "oct" / "summary.json").read_text())["reason_counts"][
        "LATE_EVENT"
    ]
    # Every row that asks the store is late: those a fresh store grants (keep, branch,
    # refer: caps do not bite in 500 rows) or refuses; the rest are declined before.
    from router.core.config import load_strategy
    from router.replay import replay

    fresh = replay(load_strategy("configs/strategy.toml"), oct_, tmp_path / "fresh", report=False)
    granted = sum(v for k, v in fresh.summary["decisions"].items() if k != "decline")
    # (and at most those it refuses as repeat applicants, declined after asking it)
    refused = fresh.summary["reason_counts"].get("PARTNER_DEDUPE", 0)
    assert granted > 300 and granted <= late <= granted + refused
    said = f"{late:,} applications were declined as late events"
    assert said in " ".join(r.output.split())
    assert said in (tmp_path / "oct" / "report.html").read_text()
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    for k in client.scan_iter(url.rsplit("prefix=", 1)[1] + "*"):
        client.delete(k)
