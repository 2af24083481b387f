import hashlib

import msgspec
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from router.cli import app
from router.core.errors import TrafficError
from router.core.messages import Application
from router.traffic import write_traffic


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_same_seed_same_bytes(tmp_path, suffix):
    a = write_traffic(tmp_path / f"a{suffix}", 5000, seed=3, per_day=2000)
    b = write_traffic(tmp_path / f"b{suffix}", 5000, seed=3, per_day=2000)
    c = write_traffic(tmp_path / f"c{suffix}", 5000, seed=4, per_day=2000)
    assert _sha(a) == _sha(b) != _sha(c)


def test_jsonl_lines_are_applications(tmp_path):
    p = write_traffic(tmp_path / "t.jsonl", 2000, seed=5)
    dec = msgspec.json.Decoder(Application)
    apps = [dec.decode(line) for line in p.read_bytes().splitlines()]
    assert len(apps) == 2000
    times = [a.received_at for a in apps]
    assert times == sorted(times)
    assert {a.channel for a in apps} == {"own_app", "platform", "api_aggregator", "h5_aggregator"}


def test_realistic_mix(tmp_path):
    p = write_traffic(tmp_path / "t.parquet", 40_000, seed=9, per_day=40_000)
    t = pq.read_table(p)
    ids = t.column("national_id").to_pylist()
    repeats = len(ids) - len(set(ids))
    assert 0.02 * len(ids) < repeats < 0.1 * len(ids)
    hours = [x.hour for x in t.column("received_at").to_pylist()]
    night = sum(h in (2, 3, 4, 5) for h in hours)
    evening = sum(h in (20, 21) for h in hours)
    assert evening > 4 * night  # daily cycle
    rate = sum(t.column("defaulted").to_pylist()) / len(ids)
    assert 0.04 < rate < 0.2
    assert (
        0.0
        < sum(
            e
            in (
                "Ningyuan Bank",
                "Heshan Consumer Finance",
                "Qianhai Micro Lending",
                "Yunfan Platform Technology",
                "Dongfang Credit Services",
            )
            for e in t.column("employer").to_pylist()
        )
        < 0.01 * len(ids)
    )


def test_bad_format(tmp_path):
    with pytest.raises(TrafficError, match="unsupported format"):
        write_traffic(tmp_path / "t.csv", 10)


def test_cli_generate_and_decide_line(tmp_path):
    runner = CliRunner()
    out = tmp_path / "t.jsonl"
    r = runner.invoke(app, ["generate", "--rows", "50", "--seed", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    line = out.read_bytes().splitlines()[0]
    r = runner.invoke(app, ["decide", "--strategy", "configs/strategy.toml", "-"], input=line)
    assert r.exit_code == 0, r.output
    d = msgspec.json.decode(r.stdout)
    assert d["outcome"] in ("keep", "branch", "refer", "decline")
    assert d["application_id"] == "A1-0000000000"


def test_cli_decide_bad_input_names_field():
    r = CliRunner().invoke(
        app, ["decide", "--strategy", "configs/strategy.toml", '{"application_id": "x"}']
    )
    assert r.exit_code == 2 and "received_at" in r.output
