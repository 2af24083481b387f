"""Every code block of the README, run as a reader would run it (issue 12): its examples
cannot rot.

The blocks run in README order in one scratch directory (``configs`` and ``examples``
linked in), one shell command at a time with the environment carried from line to line —
as in a terminal — and the Python blocks in one namespace. What differs from a reader's
terminal is listed here, each with its reason:

- ``127.0.0.1:6379`` is this suite's own throwaway ``redis-server`` (never the machine's);
- ``--rows 200000`` becomes ``--rows 20000`` (a tenth, to keep the suite short);
- ``make test`` is checked with ``make -n test`` (running the suite inside itself would
  recurse); ``make demo`` runs with ``ROWS=20000`` and its output in the scratch directory;
- a command whose trailing comment begins ``exit N`` is expected to exit N (``reconcile``
  exits 1 when it finds differences);
- inputs that stand for the reader's own data are made first: ``their_rows.csv`` (the
  partner's file: our rows with one amount changed), and for the Python blocks
  ``request_body``, ``list_of_applications``, ``concurrent_requests``,
  ``forward_to_partner``, ``strategy`` and ``grid``, and ``dask.distributed.Client``
  connects to a local cluster of 2 worker processes instead of the README's scheduler;
- a TOML block is checked for what it is: a mapping must load, the grid must be the
  shipped one, a ``[scorers]`` table must load as the shipped strategy's primary scorer.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Block:
    lang: str
    line: int  # where the block starts in README.md
    text: str


def readme_blocks() -> list[Block]:
    blocks, lang, start, buf = [], None, 0, []
    for n, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, buf = line[3:].strip(), n, []
            else:
                blocks.append(Block(lang, start, "\n".join(buf) + "\n"))
                lang = None
        elif lang is not None:
            buf.append(line)
    return blocks


BLOCKS = readme_blocks()


def commands(text: str) -> list[str]:
    """A shell block's commands: continuation lines joined, blank lines dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    return out


def expected_exit(command: str) -> int:
    m = re.search(r"#\s*exit (\d+)", command)
    return int(m.group(1)) if m else 0


@dataclass
class Reader:
    """The reader's terminal and Python session, shared by the blocks in README order."""

    work: Path
    redis: str  # host:port of the suite's own server
    env: dict[str, str] = field(default_factory=dict)
    namespace: dict = field(default_factory=dict)
    done: int = 0

    def substitute(self, command: str) -> str:
        command = command.replace("127.0.0.1:6379", self.redis)
        command = command.replace("--rows 200000", "--rows 20000")
        if re.match(r"make test\b", command):
            return f"make -n -C {shlex.quote(str(ROOT))} test"
        if re.match(r"make demo\b", command):
            return (
                f"make -C {shlex.quote(str(ROOT))} demo ROWS=20000 "
                f"OUT={shlex.quote(str(self.work / 'make-demo'))}"
            )
        return command

    def shell(self, command: str) -> subprocess.CompletedProcess:
        if "--theirs their_rows.csv" in command:
            self.their_rows()
        envfile = self.work / ".env"
        script = f"{self.substitute(command)}\nstatus=$?\nenv -0 > {envfile}\nexit $status\n"
        p = subprocess.run(
            ["bash", "-c", script],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if envfile.exists():
            pairs = envfile.read_bytes().split(b"\0")
            self.env = dict(kv.decode().split("=", 1) for kv in pairs if b"=" in kv)
        return p

    def their_rows(self) -> None:
        """The partner's own file for the reconcile example: our rows for the period, one
        amount changed (so reconcile has a difference to show)."""
        from router.billing.book import BillingBook
        from router.billing.db import open_billing
        from router.billing.reconcile import ours
        from router.core.config import load_strategy

        book = BillingBook.from_strategy(load_strategy(self.work / "configs/strategy.toml"))
        engine = open_billing(str(self.work / "billing.db"))
        with engine.connect() as conn:
            rows = ours(conn, "platform_yunfan", "2026-10", book)
        engine.dispose()
        assert len(rows) > 100, len(rows)
        with open(self.work / "their_rows.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["referral_id", "status", "amount"])
            for k, (rid, (status, amount)) in enumerate(sorted(rows.items())):
                w.writerow([rid, status, amount + (100 if k == 0 else 0)])

    def python(self, text: str) -> None:
        text = text.replace("127.0.0.1:6379", self.redis)
        old = os.getcwd()
        os.chdir(self.work)
        try:
            exec(compile(text, "README.md", "exec"), self.namespace)
        finally:
            os.chdir(old)


def _fake_dask(own: list) -> types.ModuleType:
    """``dask.distributed`` whose ``Client(address)`` is a real client of a local cluster of
    2 worker processes (the README's scheduler address stands for the reader's cluster)."""
    import distributed

    mod = types.ModuleType("dask.distributed")

    def client(address: str) -> distributed.Client:
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        c = distributed.Client(cluster)
        own.extend([c, cluster])
        return c

    mod.Client = client  # type: ignore[attr-defined]
    mod.as_completed = distributed.as_completed  # type: ignore[attr-defined]
    return mod


@pytest.fixture(scope="module")
def reader(tmp_path_factory, redis_server):
    from router.core.config import load_strategy
    from router.core.messages import decode_application
    from router.replay.tune import load_grid
    from router.traffic import write_traffic

    work = tmp_path_factory.mktemp("readme")
    for name in ("configs", "examples"):
        (work / name).symlink_to(ROOT / name)
    env = {
        k: v for k, v in os.environ.items() if k not in ("ROUTER_HMAC_KEY", "PYTEST_CURRENT_TEST")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    r = Reader(work, f"{redis_server.host}:{redis_server.port}", env)
    apps = write_traffic(work / "apps.jsonl", 50, seed=3).read_bytes().splitlines()
    sent: list = []
    (work / "s3-mount").mkdir()
    write_traffic(work / "s3-mount" / "history.parquet", 5000, seed=4, per_day=5000)
    r.namespace.update(
        request_body=(ROOT / "examples" / "application.json").read_bytes(),
        list_of_applications=[decode_application(a) for a in apps[:20]],
        concurrent_requests=[decode_application(a) for a in apps[20:]],
        forward_to_partner=lambda pid, decision: sent.append((pid, decision)),
        strategy=load_strategy(ROOT / "configs" / "strategy.toml"),
        grid=load_grid(ROOT / "configs" / "grid.toml"),
        sent=sent,
    )
    saved = sys.modules.get("dask.distributed")
    own: list = []
    sys.modules["dask.distributed"] = _fake_dask(own)
    yield r
    for thing in own:
        thing.close()
    if saved is None:
        sys.modules.pop("dask.distributed", None)
    else:
        sys.modules["dask.distributed"] = saved
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    for prefix in ("live:", "run1:", "oct:", "http:"):  # (deleted in chunks: one by one took 20 s)
        keys = list(client.scan_iter(f"{prefix}*", count=10_000))
        for i in range(0, len(keys), 5_000):
            client.delete(*keys[i : i + 5_000])
    client.close()


def run_block(reader: Reader, block: Block) -> None:
    where = f"README.md line {block.line}"
    if block.lang == "sh":
        for command in commands(block.text):
            p = reader.shell(command)
            assert p.returncode == expected_exit(command), (
                f"{where}: {command}\nexit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
            )
            assert "Traceback" not in p.stderr, (where, command, p.stderr)
    elif block.lang == "python":
        reader.python(block.text)
    elif block.lang == "toml":
        data = msgspec.toml.decode(block.text.encode())
        if {"columns", "transforms", "constants", "arrival"} & set(data):
            from router.ingest.mapping import load_mapping

            path = reader.work / f"readme-mapping-{block.line}.toml"
            path.write_text(block.text)
            load_mapping(path)  # a mapping file as the README shows it: it must load
        elif "grid" in data:
            shipped = msgspec.toml.decode((ROOT / "configs" / "grid.toml").read_bytes())
            assert data == shipped, f"{where}: the grid differs from configs/grid.toml"
        elif set(data) == {"scorers"}:
            # A scorer table: the shipped strategy with it as the primary scorer must load.
            from router.core.config import load_strategy, strategy_from_dict
            from router.decide.engine import Router
            from router.replay.tune import strategy_data

            raw = strategy_data(load_strategy(ROOT / "configs" / "strategy.toml"))
            raw["scorers"] |= data["scorers"]
            raw["primary"]["scorer"] = next(iter(data["scorers"]))
            Router(strategy_from_dict(raw)).close()
        else:
            raise AssertionError(f"{where}: a TOML block this test does not know")
    else:
        raise AssertionError(f"{where}: a ```{block.lang} block this test cannot run")


@pytest.mark.parametrize("k", range(len(BLOCKS)), ids=[f"line{b.line}" for b in BLOCKS])
def test_readme_block_runs(reader, k):
    while reader.done < k:  # the blocks before it (a reader follows the README in order)
        run_block(reader, BLOCKS[reader.done])
        reader.done += 1
    if reader.done == k:
        run_block(reader, BLOCKS[k])
        reader.done += 1


def test_the_examples_did_what_the_readme_says(reader):
    """Beyond exit codes: the outputs the README's examples promise are there."""
    while reader.done < len(BLOCKS):
        run_block(reader, BLOCKS[reader.done])
        reader.done += 1
    w = reader.work
    for d in ("out/run", "out/run-redis", "out/tune", "out/cmp", "out/october", "make-demo"):
        assert (w / d / "report.html").exists(), d
    assert (w / "out/tune/best_strategy.toml").exists()
    assert any((w / "out/bills").iterdir())
    ns = reader.namespace
    assert ns["sent"] and ns["sent"][0][0] == "platform_yunfan"  # the example is referred
    assert len(ns["decisions"]) == len(ns["concurrent_requests"])
