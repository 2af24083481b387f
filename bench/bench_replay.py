"""Replay throughput (applications/s) and peak memory at 100k, 1M and 10M generated rows.

Each size runs in its own child process so peak RSS is that run's alone; the median of
warm runs is reported (five at 100k, three at 1M) after a cold first run reported apart;
10M rows are generated on the fly in one run (the generator is timed alone too). Baseline in the
same run: the same strategy deciding a 5,000-row sample one application at a time through
``Router.decide`` (the embedded path), so the ratio shows what batching buys.

    python bench/bench_replay.py [ROWS ...]
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


STREAM_FROM = 5_000_000  # sizes from here on are generated on the fly, not read from disk


def child(rows: int) -> None:
    from router.config import load_strategy
    from router.replay import replay
    from router.traffic import generate_batches, write_traffic

    strategy = load_strategy(ROOT / "configs" / "strategy.toml")
    out = ROOT / "out" / "bench" / f"replay_{rows}"
    if rows >= STREAM_FROM:
        # One run: the traffic is generated while it is replayed (generation time included;
        # the generator alone is timed below so it can be taken out).
        t = time.perf_counter()
        n = sum(b.num_rows for b in generate_batches(rows, seed=5))
        gen_rate = n / (time.perf_counter() - t)
        t, c = time.perf_counter(), time.process_time()
        r = replay(strategy, generate_batches(rows, seed=5), out, report=False)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"rows": rows, "source": "generated on the fly",
                          "apps_per_s_median": rows / wall, "runs": [rows / wall],
                          "apps_per_cpu_s_median": rows / cpu,
                          "generator_alone_apps_per_s": gen_rate,
                          "apps_per_s_excluding_generation": rows / (wall - rows / gen_rate),
                          "peak_rss_mb": rss_mb, "decisions": r.summary["decisions"]}))
        return
    traffic = ROOT / "out" / "bench" / f"replay_{rows}.parquet"
    if not traffic.exists():
        write_traffic(traffic, rows, seed=5)
    # The first run in a process pays one-off costs (caches, allocator growth): reported
    # as "cold" and left out of the median of the warm runs.
    t = time.perf_counter()
    replay(strategy, traffic, out, report=False)
    cold = rows / (time.perf_counter() - t)
    runs, cpu_runs = [], []
    for _ in range(5 if rows <= 200_000 else 3):
        t, c = time.perf_counter(), time.process_time()
        r = replay(strategy, traffic, out, report=False)
        runs.append(rows / (time.perf_counter() - t))
        # CPU time of this process: on a shared VM wall time also counts time the host
        # gave to others; CPU time shows what one core does.
        cpu_runs.append(rows / (time.process_time() - c))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "source": "parquet file", "apps_per_s_median": statistics.median(runs),
                      "runs": runs, "cold_run_apps_per_s": cold,
                      "apps_per_cpu_s_median": statistics.median(cpu_runs), "peak_rss_mb": rss_mb,
                      "decisions": r.summary["decisions"]}))


def baseline() -> float:
    from router.config import load_strategy
    from router.engine import Router
    from router.messages import decode_application
    from router.traffic import write_traffic

    p = write_traffic(ROOT / "out" / "bench" / "baseline.jsonl", 5000, seed=5)
    apps = [decode_application(line) for line in p.read_bytes().splitlines()]
    strategy = load_strategy(ROOT / "configs" / "strategy.toml")
    rates = []
    for _ in range(3):
        router = Router(strategy)
        t = time.perf_counter()
        for a in apps:
            router.decide(a)
        rates.append(len(apps) / (time.perf_counter() - t))
    return statistics.median(rates)


def main(sizes: list[int]) -> dict:
    results = {"baseline_decide_one_by_one_apps_per_s": baseline(), "sizes": []}
    for rows in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(rows)], check=True,
                             capture_output=True, text=True).stdout
        results["sizes"].append(json.loads(out.strip().splitlines()[-1]))
    base = results["baseline_decide_one_by_one_apps_per_s"]
    for s in results["sizes"]:
        s["ratio_vs_baseline"] = s["apps_per_s_median"] / base
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        sys.exit(0)
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000, 10_000_000]
    res = main(sizes)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "replay.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"baseline (Router.decide one by one): {res['baseline_decide_one_by_one_apps_per_s']:,.0f} apps/s")
    for s in res["sizes"]:
        print(f"replay {s['rows']:>9,} rows: {s['apps_per_s_median']:>9,.0f} apps/s wall, "
              f"{s['apps_per_cpu_s_median']:>9,.0f} per CPU-second "
              f"(x{s['ratio_vs_baseline']:.1f} baseline), peak RSS {s['peak_rss_mb']:,.0f} MB")
