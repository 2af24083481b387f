"""Live decisions against a real local redis-server (started here on a free port).

Prints medians and p99 of:
  (1) the bare round trip of the decision script, called exactly as the router calls it
      for a referral (same store method, keys and arguments, grant lifecycle), no router
      (baseline);
  (2) one ``Router.decide`` end to end, sequential, and the ratio (2)/(1);
  (3) a PING on the very connection path the router uses (the store's link): the floor
      no decision can beat, and decide minus PING (the goal is <= 40 us);
  (4) the server's CPU for the scripts (``INFO commandstats``) per script call and per
      decision, over a run of decisions on a fresh prefix;
  (5) throughput with 1, 2, 4 and 8 processes, each deciding sequentially and each
      deciding coalesced batches of 64 (``decide_batch(..., pipelined=True)``), at the
      store's default deadline (``timeout_ms`` = 50; a batch has one): decisions
      answered at full service per second, and how many came back degraded. Each
      process warms up first (a cold start is bench_cold.py's) and all start together.
      Baseline, the same processes sending the bare walk of (1), prepared, in pipelined
      batches of 64: the store's own rate, and the router's pipelined rate as its ratio;
  (6) ``redis-benchmark`` of a plain INCR on the same server, for scale.

    python bench/bench_redis.py
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import port_for  # noqa: E402
from mirakuru import TCPExecutor  # noqa: E402


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _bare_walks(strategy, store, n: int, start: int = 0) -> list:
    """``n`` referral walks as the router sends them (bank_ningyuan's windows, dedupe,
    ledger entry and decision record), prepared: only the store is left to time. Ids and
    applicants are numbered from ``start`` (processes sharing a server take their own)."""
    from router.core.windows import key_of
    from router.decide.engine import Router
    from router.decide.entries import make_entry
    from router.decide.outcomes import DECLINE, REFER, pack_record
    from router.store import Bucket, CapLimit
    from router.store.base import Attempt, Walk

    real = Router(strategy, store)._allocator.partner_buckets[0]
    # The partner's own windows and dedupe, with limits no run of this length reaches.
    b = Bucket(
        real.id,
        tuple(CapLimit(c.window, 10**9, 10**15) for c in real.caps),
        real.timezone,
        real.dedupe_ms,
    )
    t = 1_793_000_000_000
    keys = tuple(key_of(t, c.window, b.timezone) for c in b.caps)
    calls = []
    for i in range(start, start + n):
        app_id, applicant = f"bare-{i}", f"{i:032x}"
        entry = make_entry(strategy, app_id, 0, t, 100_000, 12, applicant, 1234.0)
        record = pack_record(REFER, 0, 1234.0, 0.18, 0.01, 0.03, b.id)
        attempt = Attempt(b, keys, applicant, entry, record, 0, 0, 0)
        decline = pack_record(DECLINE, 0, 0.0, float("nan"), 0.01, 0.03, "")
        calls.append(Walk(app_id, i * 7919, t, 100_000, [attempt], decline, 0, 0))
    return calls


def sequential_latencies(
    url: str, n: int = 4000, block: int = 200
) -> tuple[list[float], list[float], list[float]]:
    """Latencies (µs) of (1) the bare reservation, (2) ``Router.decide`` and (3) a PING on
    the router's own connection path, sequential.

    (1) is the store call exactly as the router makes it for a referral — one decision's
    walk (``walk_many``, lua/decide.lua) with bank_ningyuan's windows, dedupe, ledger entry
    and decision record, its grant pending and then posted as the router's are — with
    everything the router computes prepared beforehand, so only the store is timed.
    The three run in alternating blocks of ``block`` calls: this
    machine's speed drifts over seconds, and interleaving gives all the same conditions.
    """
    from router.core.config import load_strategy
    from router.decide.engine import Router
    from router.store import quota_store_from_url

    strategy = load_strategy(ROOT / "configs" / "strategy.toml")
    store = quota_store_from_url(url, prefix="bench-bare:")
    calls = _bare_walks(strategy, store, n)
    seq_store = quota_store_from_url(url, prefix="bench-seq:")
    router = Router(strategy, seq_store)
    apps = _apps(n, seed=101)
    bare: list[float] = []
    dec: list[float] = []
    ping: list[float] = []
    clock = time.perf_counter
    link = seq_store.link  # the router's connection path: same pool, socket and parser
    for k in range(0, n, block):
        for walk in calls[k : k + block]:
            s = clock()
            store.begin_decision()
            store.walk_many([walk])
            store.end_decision(True)
            bare.append((clock() - s) * 1e6)
        for a in apps[k : k + block]:
            s = clock()
            router.decide(a)
            dec.append((clock() - s) * 1e6)
        for _ in range(block):
            s = clock()
            link.send([("PING",)], force=True)
            ping.append((clock() - s) * 1e6)
    router.close()
    return bare, dec, ping


def server_cost(url: str, n: int = 3000) -> dict[str, float]:
    """Redis CPU (``INFO commandstats``) over ``n`` decisions on a fresh prefix: µs per
    script call (reservations and settles; a script's own commands are inside its time)
    and per decision, and script calls per decision."""
    from router.core.config import load_strategy
    from router.decide.engine import Router
    from router.store import quota_store_from_url

    store = quota_store_from_url(url, prefix="bench-cpu:")
    router = Router(load_strategy(ROOT / "configs" / "strategy.toml"), store)
    apps = _apps(n, seed=202)
    store.client.config_resetstat()
    for a in apps:
        router.decide(a)
    router.close()
    stats = store.client.info("commandstats")
    ev = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return {
        "server_us_per_script_call": ev["usec"] / max(ev["calls"], 1),
        "script_calls_per_decision": ev["calls"] / n,
        "server_script_us_per_decision": ev["usec"] / n,
    }


def _apps(n: int, seed: int):
    from router.core.messages import decode_application
    from router.traffic import write_traffic

    p = write_traffic(Path(tempfile.mkdtemp()) / "t.jsonl", n, seed=seed)
    return [decode_application(line) for line in p.read_bytes().splitlines()]


def _run(router, apps, batch: int) -> list:
    if batch == 1:
        return [router.decide(a) for a in apps]
    return [
        d
        for k in range(0, len(apps), batch)
        for d in router.decide_batch(apps[k : k + batch], pipelined=True)
    ]


def _bare_run(store, walks: list, batch: int) -> None:
    """The walks in pipelined batches, each batch one decision's grant lifecycle."""
    for k in range(0, len(walks), batch):
        store.begin_decision()
        store.walk_many(walks[k : k + batch])
        store.end_decision(True)


def _worker(
    url: str, prefix: str, seed: int, n: int, batch: int, start, results, bare: bool = False
) -> None:
    """One deciding process: warmed up first (imports, compiled code loaded, a connection
    open: a cold start is measured in bench_cold.py, not here), on a prefix of its own so
    the timed run meets none of it, its start-up heap frozen; then timed from the moment
    all processes are ready."""
    from router.core.config import load_strategy
    from router.decide.engine import Router
    from router.store import quota_store_from_url

    strategy = load_strategy(ROOT / "configs" / "strategy.toml")
    if bare:  # the baseline: the store's own calls, prepared, pipelined as the router's
        warm = quota_store_from_url(url, prefix=f"{prefix}warm{seed}:")
        _bare_run(warm, _bare_walks(strategy, warm, 2 * batch, start=seed * n), batch)
        store = quota_store_from_url(url, prefix=prefix)
        walks = _bare_walks(strategy, store, n, start=seed * n)
        gc.freeze()
        start.wait()
        s = time.perf_counter()
        _bare_run(store, walks, batch)
        results.put((n, time.perf_counter() - s, 0))
        return
    _run(Router(strategy, quota_store_from_url(url, prefix=f"{prefix}warm{seed}:")),
         _apps(2 * max(batch, 64), seed + 500), batch)  # fmt: skip
    apps = _apps(n, seed)
    router = Router(strategy, quota_store_from_url(url, prefix=prefix))
    gc.freeze()  # as the README tells a long-running embedding to (the service does)
    start.wait()
    s = time.perf_counter()
    answers = _run(router, apps, batch)
    took = time.perf_counter() - s
    # A degraded answer (the deadline passed: a batch has one budget) is an answer, but not
    # a decision at full service: throughput counts only the others.
    degraded = sum(1 for d in answers if getattr(d, "degraded", False))
    results.put((n - degraded, took, degraded))


def throughput(url: str, procs: int, n: int, batch: int, bare: bool = False) -> tuple[float, int]:
    """Decisions per second (not degraded) over all processes, and how many degraded: the
    processes start deciding together (a barrier) and the rate is every decision over the
    slowest process's time."""
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(procs), ctx.Queue()
    # One key prefix per run: its processes share (and contend for) the same quotas,
    # and no run meets an earlier run's decisions.
    workers = [
        ctx.Process(
            target=_worker,
            args=(
                url,
                f"bench-tp{procs}x{batch}{'b' if bare else ''}:",
                1000 + w,
                n,
                batch,
                start,
                results,
                bare,
            ),  # fmt: skip
        )
        for w in range(procs)
    ]
    for w in workers:
        w.start()
    res = [results.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return sum(r[0] for r in res) / max(r[1] for r in res), sum(r[2] for r in res)


def redis_benchmark(port: int) -> float | None:
    exe = shutil.which("redis-benchmark")
    if not exe:
        return None
    out = subprocess.run(
        [exe, "-p", str(port), "-t", "incr", "-n", "200000", "-q"], capture_output=True, text=True
    ).stdout
    # The final line reads "INCR: 123456.79 requests per second, p50=…"
    for part in reversed(out.replace("\r", "\n").split("\n")):
        if part.startswith("INCR:") and "requests per second" in part:
            return float(part.split()[1])
    return None


def main(quick: bool = False) -> dict:
    """The figures above (``quick``: few calls and processes — a smoke test)."""
    port = port_for.select_random()
    tmp = tempfile.mkdtemp()
    server = TCPExecutor(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        ],
        host="127.0.0.1",
        port=port,
        timeout=20,
    ).start()
    try:
        url = f"redis://127.0.0.1:{port}/0?timeout_ms=50"
        bare, dec, ping = (
            sequential_latencies(url, n=400, block=100) if quick else (sequential_latencies(url))
        )
        res = {
            "bare_round_trip_us_median": statistics.median(bare),
            "bare_round_trip_us_p99": pct(bare, 0.99),
            "decide_us_median": statistics.median(dec),
            "decide_us_p99": pct(dec, 0.99),
            "ping_us_median": statistics.median(ping),
        }
        res["ratio_decide_vs_bare"] = res["decide_us_median"] / res["bare_round_trip_us_median"]
        res["decide_minus_ping_us"] = res["decide_us_median"] - res["ping_us_median"]
        res.update(server_cost(url, n=300 if quick else 3000))
        # The store's default deadline (no timeout_ms in the URL): what a live caller gets.
        default_url = url.split("?")[0]
        scale = 10 if quick else 1
        for procs in (1, 2) if quick else (1, 2, 4, 8):
            for kind, n, batch in (("sequential", 3000 // scale, 1),
                                   ("pipelined_batch64", 12000 // scale, 64)):  # fmt: skip
                rate, degraded = throughput(default_url, procs, n, batch)
                res[f"throughput_{procs}proc_{kind}_per_s"] = rate
                res[f"degraded_{procs}proc_{kind}"] = degraded
            # The baseline in the same minutes: the store's own calls, prepared, pipelined.
            bare, _ = throughput(default_url, procs, 12000 // scale, 64, bare=True)
            res[f"throughput_{procs}proc_bare_pipelined_batch64_per_s"] = bare
            res[f"ratio_{procs}proc_pipelined_vs_bare"] = (
                res[f"throughput_{procs}proc_pipelined_batch64_per_s"] / bare
            )
        res["redis_benchmark_incr_per_s"] = None if quick else redis_benchmark(port)
        return res
    finally:
        server.stop()


if __name__ == "__main__":
    r = main()
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "redis.json").write_text(json.dumps(r, indent=1) + "\n")
    for k, v in r.items():
        if v is None:
            print(f"{k:40s} n/a")
        else:
            print(
                f"{k:40s} {v:12,.2f}"
                if k.startswith(("ratio", "script_calls"))
                else f"{k:40s} {v:12,.1f}"
            )
