import msgspec
from typer.testing import CliRunner

from router.cli import app
from router.traffic import write_traffic


def test_replay_logs_json_to_stderr_without_identifiers(tmp_path):
    t = write_traffic(tmp_path / "t.jsonl", 3000, seed=4)
    r = CliRunner().invoke(
        app,
        [
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "replay",
            "-s",
            "configs/strategy.toml",
            "-t",
            str(t),
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 0, r.output
    events = [msgspec.json.decode(line) for line in r.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names[0] == "replay.start" and names[-1] == "replay.done"
    assert events[-1]["applications"] == 3000
    raw_ids = {
        line.split('"national_id":"')[1].split('"')[0] for line in t.read_text().splitlines()
    }
    assert not any(i in r.stderr for i in raw_ids)
    assert "replay.start" not in r.stdout
