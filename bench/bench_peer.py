"""The stateless decision against a peer engine: this project vs GoRules ZEN, one run.

The stateless part of a decision — hard rules, scoring, the coverage test of the primary
policy and the branch, consent, partner filters, expected value and the best-value choice;
no quotas — decided for the same generated applications by:

  (1) the router's live path, one application at a time (``OneAssessor`` and the routing
      choice, on the application's scalar row);
  (2) the router's batch path (``assess`` over the whole batch, numpy), per application;
  (3) ZEN (``zen-engine``), one ``evaluate`` per application, on a graph generated from the
      same strategy (bench/zen_graph.py) — the baseline.

Before timing, every application's (outcome, partner) must agree across (1), (2), (3) and a
real ``Router.decide`` of the same strategy with its caps and dedupe removed (so quotas
cannot change a decision); any difference stops the run. The strategy is the shipped one
with the logistic scorecard (``pd_logit``) in both policies: ZEN's graph computes the
scorecard in its own expression language (trees would need a JavaScript function node).
Inputs are built before timing on both sides (the router's scalar rows and column batch,
ZEN's request dicts). Medians of ``--repeat`` alternated runs, µs per application.

    python bench/bench_peer.py [--apps 5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from zen_graph import zen_graph, zen_input  # noqa: E402

from router.core.columns import from_applications, row_from_application  # noqa: E402
from router.core.config import Strategy, load_strategy  # noqa: E402
from router.core.messages import Refer, decode_application  # noqa: E402
from router.decide.assess import assess  # noqa: E402
from router.decide.engine import Router  # noqa: E402
from router.decide.partners import waterfall_order  # noqa: E402
from router.traffic import write_traffic  # noqa: E402

KEEP, BRANCH, DECLINE = ("keep", None), ("branch", None), ("decline", None)


def peer_strategy() -> Strategy:
    """The shipped strategy with the logistic scorecard in both policies."""
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    replace = msgspec.structs.replace
    return replace(
        s,
        primary=replace(s.primary, scorer="pd_logit"),
        branch=replace(s.branch, scorer="pd_logit") if s.branch else None,
    )


def uncapped(s: Strategy) -> Strategy:
    """``s`` without caps or dedupe: its decisions are the stateless ones."""
    replace = msgspec.structs.replace
    return replace(
        s,
        primary=replace(s.primary, caps=[]),
        branch=replace(s.branch, caps=[]) if s.branch else None,
        partners=[replace(p, caps=[], dedupe_days=0) for p in s.partners],
    )


class Stateless:
    """The router's stateless decision: its assessment, then the routing choice."""

    def __init__(self, router: Router):
        s = router.strategy
        self.router, self.assessor = router, router._assess_one
        self.ids = [p.id for p in s.partners]
        self.order = waterfall_order(s.partners)  # rank order: ties go to the first
        if s.routing.method not in ("best_value", "waterfall"):
            raise ValueError(f"routing {s.routing.method!r} is not stateless")
        self.by_value = s.routing.method == "best_value"

    def one(self, r) -> tuple[str, str | None]:
        """One application row, as the live path assesses it."""
        a = self.assessor(r, False)
        if a.keep_ok:
            return KEEP
        if a.branch_ok:
            return BRANCH
        best, pick = -1.0, -1
        for j in self.order:
            if a.eligible[j] and (a.ev[j] > best if self.by_value else pick < 0):
                best, pick = a.ev[j], j
        return ("refer", self.ids[pick]) if pick >= 0 else DECLINE

    def batch(self, cols) -> list[tuple[str, str | None]]:
        """A whole batch, as replay assesses it (numpy over the batch)."""
        rt = self.router
        a = assess(cols, rt.strategy, rt.scorers, rt._employers, rt._table)
        # Partners in rank order, so the first maximum is the lowest rank among ties.
        ev = np.where(a.eligible, a.ev, -np.inf)[:, self.order]
        valuable = a.eligible[:, self.order]
        pick = ev.argmax(axis=1) if self.by_value else valuable.argmax(axis=1)
        refer = valuable.any(axis=1)
        out: list[tuple[str, str | None]] = []
        for k, b, rf, p in zip(a.keep_ok.tolist(), a.branch_ok.tolist(), refer.tolist(),
                               pick.tolist()):  # fmt: skip
            refer = ("refer", self.ids[self.order[p]])
            out.append(KEEP if k else BRANCH if b else refer if rf else DECLINE)
        return out


def _router_decision(d) -> tuple[str, str | None]:
    outcome = msgspec.structs.asdict(d) and type(d).__struct_config__.tag
    return (outcome, d.partner_id) if isinstance(d, Refer) else (outcome, None)


def _per_app_us(fn, items, n: int) -> tuple[float, float]:
    """(wall µs, CPU µs of this process, all threads) per application."""
    t, c = time.perf_counter(), time.process_time()
    for x in items:
        fn(x)
    return (time.perf_counter() - t) / n * 1e6, (time.process_time() - c) / n * 1e6


class Peer:
    """One run's inputs on both sides: ``n`` generated applications (``seed``) as the
    router's rows and column batch and as ZEN requests, and ZEN's graph of ``strategy``."""

    def __init__(self, strategy: Strategy, n: int, seed: int = 4242):
        import zen

        self.strategy = strategy
        self.router = Router(strategy)
        self.ours = Stateless(self.router)
        with tempfile.TemporaryDirectory() as tmp:
            lines = write_traffic(Path(tmp) / "peer.jsonl", n, seed=seed).read_bytes()
        self.apps = [decode_application(line) for line in lines.splitlines()]
        self.rows = [row_from_application(a, self.router.hasher) for a in self.apps]
        self.cols = from_applications(self.apps, self.router.hasher)
        self.requests = [
            zen_input(r, float(np.log1p(r.monthly_income / 100.0)),
                      float(np.log1p(r.requested_amount / 100.0)))
            for r in self.rows
        ]  # fmt: skip
        self.graph = zen_graph(strategy, self.router.scorers, self.router._employers)
        self.engine = zen.ZenEngine({"loader": {"type": "static", "content": {"peer": self.graph}}})
        self.decision = self.engine.create_decision(json.dumps(self.graph))
        self.batch_requests = [{"key": "peer", "context": q} for q in self.requests]

    def zen_one(self, req: dict) -> tuple[str, str | None]:
        """ZEN's decision for one request (one ``evaluate``)."""
        res = self.decision.evaluate(req)["result"]
        return res["outcome"], res.get("partner")  # (ZEN leaves out a null)

    def zen_batch(self, reqs: list[dict]) -> list[tuple[str, str | None]]:
        """ZEN's decisions for many requests (one ``evaluate_batch``)."""
        out = []
        for got in self.engine.evaluate_batch(reqs):
            if not got.get("success"):
                raise RuntimeError(f"ZEN: {got.get('error')}")
            res = got["data"]["result"]
            out.append((res["outcome"], res.get("partner")))
        return out

    def disagreements(self) -> dict[str, list]:
        """Per other path, the applications it decides otherwise than the router's live
        path: (id, live decision, its decision). All empty when every path agrees."""
        live = [self.ours.one(r) for r in self.rows]
        with Router(uncapped(self.strategy)) as real:
            routed = [_router_decision(real.decide(a)) for a in self.apps]
        others = {
            "batch": self.ours.batch(self.cols),
            "zen": [self.zen_one(q) for q in self.requests],
            "zen batch": self.zen_batch(self.batch_requests),
            "router": routed,
        }
        ids = [a.application_id for a in self.apps]
        return {
            name: [(ids[i], live[i], g) for i, g in enumerate(got) if g != live[i]]
            for name, got in others.items()
        }


def main(apps_n: int = 5000, repeat: int = 5) -> dict:
    peer = Peer(peer_strategy(), apps_n)
    for name, bad in peer.disagreements().items():
        if bad:
            raise AssertionError(f"{name} decides {len(bad)} of {apps_n} otherwise: {bad[:5]}")
    ours, rows, cols = peer.ours, peer.rows, peer.cols
    live = [ours.one(r) for r in rows]
    k = max(apps_n // 5, 1)  # one evaluate at a time is slow: a fifth of them

    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in ("one", "batch", "zen", "zenb")}
    for _ in range(repeat):  # alternated: all of them see the same machine
        runs["one"].append(_per_app_us(ours.one, rows, apps_n))
        runs["batch"].append(_per_app_us(ours.batch, [cols], apps_n))
        runs["zen"].append(_per_app_us(peer.zen_one, peer.requests[:k], k))
        runs["zenb"].append(_per_app_us(peer.zen_batch, [peer.batch_requests], apps_n))
    peer.router.close()
    counts: dict[str, int] = {}
    for outcome, _ in live:
        counts[outcome] = counts.get(outcome, 0) + 1
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    # ZEN at its fastest: the batch call (it spreads a batch over threads, so its wall
    # time per decision can be below its CPU time) — the baseline for the ratios.
    zen_best = min(wall["zenb"], cpu["zenb"])
    return {
        "applications": apps_n,
        "decisions_agree": apps_n,
        "outcomes": counts,
        "zen_engine_version": _version("zen-engine"),
        "zen_graph_nodes": len(peer.graph["nodes"]),
        "router_one_us_median": wall["one"],
        "router_one_cpu_us_median": cpu["one"],
        "router_batch_us_per_app_median": wall["batch"],
        "zen_evaluate_batch_us_median": wall["zenb"],
        "zen_evaluate_batch_cpu_us_median": cpu["zenb"],
        "zen_evaluate_one_us_median": wall["zen"],
        "ratio_zen_vs_router_one": zen_best / wall["one"],
        "ratio_zen_cpu_vs_router_one_cpu": cpu["zenb"] / cpu["one"],
        "ratio_zen_vs_router_batch": zen_best / wall["batch"],
    }


def _version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    for k, v in main(args.apps, args.repeat).items():
        print(f"{k:40s} {v:,.2f}" if isinstance(v, float) else f"{k:40s} {v}")
