"""The load-test harness: ``python -m bench SCENARIO [--quick]``.

Scenarios (one module each, each measured against a baseline in the same run):

- ``live`` — ``Router.decide`` on a real Redis against the bare reservation round trip,
  sequential and from several processes (bench_redis.py);
- ``http`` — the service under wrk at rising load against its trivial endpoint
  (bench_http.py);
- ``replay`` — replay throughput against deciding one by one (bench_replay.py);
- ``tune`` — tuning against replaying every candidate from scratch (bench_tune.py);
- ``peer`` — the stateless decision against GoRules ZEN running the same logic, after
  checking both decide alike (bench_peer.py);
- ``all`` — each of them in turn.

``--quick`` runs small sizes (every scenario in about a minute, all of them together a
few): a smoke test that each runs and writes its results, not a measurement. Each run
prints its figures and writes ``bench/results/SCENARIO[_quick].json`` (or under
``--results DIR``) with the machine, the versions and the figures (medians, as each module
takes them). ``make test`` runs ``all --quick`` into ``out/bench/results``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]


def _live(quick: bool) -> dict:
    import bench_redis

    return bench_redis.main(quick=quick)


def _http(quick: bool) -> dict:
    import bench_http

    return bench_http.main(quick=quick)


def _replay(quick: bool) -> dict:
    import bench_replay

    return bench_replay.main([20_000] if quick else [100_000, 1_000_000, 10_000_000],
                             quick=quick)  # fmt: skip


def _tune(quick: bool) -> dict:
    import bench_tune

    return bench_tune.main(30_000 if quick else 1_000_000, 64)


def _peer(quick: bool) -> dict:
    import bench_peer

    return bench_peer.main(500 if quick else 5000, repeat=3 if quick else 7)


SCENARIOS = {"live": _live, "http": _http, "replay": _replay, "tune": _tune, "peer": _peer}


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    versions = {}
    pkgs = ("referral-router", "numpy", "numba", "redis", "msgspec", "litestar", "uvicorn",
            "zen-engine")  # fmt: skip
    for pkg in pkgs:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _flat(prefix: str, v: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), x, out)
    elif isinstance(v, list) and v and isinstance(v[0], dict):
        for i, x in enumerate(v):
            _flat(f"{prefix}[{i}]", x, out)
    else:
        out.append((prefix, v))


def run(name: str, quick: bool, results: Path = HERE / "results") -> Path:
    """Run one scenario; print its table and write its JSON (in ``results``); the
    JSON's path."""
    t = time.perf_counter()
    figures = SCENARIOS[name](quick)
    doc = {"scenario": name, "quick": quick, "seconds": round(time.perf_counter() - t, 1),
           "machine": machine(), "figures": figures}  # fmt: skip
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}{'_quick' if quick else ''}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    rows: list[tuple[str, Any]] = []
    _flat("", figures, rows)
    print(f"== {name}{' (quick)' if quick else ''}: {doc['seconds']} s")
    for k, v in rows:
        print(f"  {k:58s} {v:,.2f}" if isinstance(v, float) else f"  {k:58s} {v}")
    print(f"  -> {path}")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=[*SCENARIOS, "all"])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--results", type=Path, default=HERE / "results", help="where the JSON goes")
    a = ap.parse_args()
    for name in SCENARIOS if a.scenario == "all" else [a.scenario]:
        run(name, a.quick, a.results)


if __name__ == "__main__":
    main()
