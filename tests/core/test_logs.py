import json

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


class _Recording:
    """A stand-in for sys.stderr that records each write call."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_batched_logs_write_a_loop_turns_lines_at_once(monkeypatch):
    """On an event loop the lines of one turn go out in one write at its end, in order; off
    a loop (a worker thread) each line is written at once."""
    import asyncio
    import threading

    import structlog

    from router.core.logs import configure, get_logger

    err = _Recording()
    monkeypatch.setattr("sys.stderr", err)
    configure("info", "json", batched=True)
    try:
        log = get_logger("t")

        async def turn() -> int:
            for i in range(5):
                log.info("decision", n=i)
            written_before_the_turn_ends = len(err.writes)
            await asyncio.sleep(0)  # the turn ends: its lines are written
            return written_before_the_turn_ends

        assert asyncio.run(turn()) == 0
        assert len(err.writes) == 1
        lines = err.writes[0].splitlines()
        assert [json.loads(x)["n"] for x in lines] == [0, 1, 2, 3, 4]

        # A loop closed before its turn ended does not hold the next loop's lines back.
        loop = asyncio.new_event_loop()

        async def no_turn_end() -> None:
            log.info("decision", n=5)
            loop.stop()  # the write-out callback is still pending when the loop closes

        loop.create_task(no_turn_end())
        loop.run_forever()
        loop.close()
        err.writes.clear()
        asyncio.run(turn())
        assert any('"n":0' in w for w in err.writes), err.writes

        err.writes.clear()
        t = threading.Thread(target=lambda: log.info("off_loop", n=9))
        t.start()
        t.join()
        assert err.writes and json.loads("".join(err.writes))["n"] == 9
    finally:
        structlog.reset_defaults()
