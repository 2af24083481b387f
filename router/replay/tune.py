"""Strategy tuning: a grid over named strategy parameters, every candidate replayed.

A grid file names parameters by their path in the strategy and lists values::

    [grid]
    "primary.max_pd" = [0.03, 0.04, 0.05]
    "branch.max_pd" = [0.10, 0.12]
    "routing.method" = ["best_value", "waterfall"]
    "partners.bank_ningyuan.priority" = [1, 5]            # partners by id
    "partners.credit_dongfang.caps.day.count" = [6000, 9000]   # caps by window

Every combination is a candidate. Each is replayed on the same traffic (in-memory store,
event time, the unchanged decision core); its metrics are the expected profit plus
referral revenue (``value``), the expected bad rate of kept loans and the keep rate. The
Pareto frontier is the set no other candidate beats on all three at once; the best
candidate under the constraints given is written as a ready strategy file.

Candidates run through an executor: anything with ``map(fn, tasks)`` yielding results as
they finish. :class:`LocalExecutor` uses this machine's cores (the traffic is read once,
before the worker processes fork, and shared); a Ray or Dask cluster plugs in the same way
(see the README) — each remote worker then reads the traffic once and caches it.
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np

from router.core.config import Strategy, strategy_from_dict
from router.core.errors import ConfigError
from router.ingest.mapping import Mapping, as_mapping

# ---- the grid --------------------------------------------------------------------


def load_grid(path: str | Path) -> dict[str, list[Any]]:
    """The ``[grid]`` table of a TOML file: parameter path -> list of values."""
    path = Path(path)
    try:
        raw = msgspec.toml.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"cannot read grid: {exc}", source=str(path)) from exc
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError("expected a non-empty [grid] table", source=str(path), path="grid")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"expected a non-empty list of values (value: {values!r})",
                source=str(path),
                path=f"grid.{name}",
            )
    return grid


def candidates(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = raw
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if isinstance(node, list):
            # Lists are addressed by a member's id (partners) or window (caps).
            match = [
                x
                for x in node
                if isinstance(x, dict) and (x.get("id") == part or x.get("window") == part)
            ]
            if not match:
                raise ConfigError(f"no list entry {part!r} in parameter {path!r}")
            if last:
                raise ConfigError(f"parameter {path!r} names a whole list entry")
            node = match[0]
            continue
        if not isinstance(node, dict) or (part not in node and not last):
            raise ConfigError(f"unknown strategy parameter {path!r} (at {part!r})")
        if last:
            if part not in node:
                raise ConfigError(f"unknown strategy parameter {path!r}")
            node[part] = value
        else:
            if node[part] is None:
                raise ConfigError(f"parameter {path!r}: {part!r} is not set in the strategy")
            node = node[part]


def strategy_data(strategy: Strategy) -> dict[str, Any]:
    """The strategy as plain data, partners inline (the base of every candidate)."""
    raw = msgspec.to_builtins(strategy)
    raw.pop("partner_book", None)
    return raw


def with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of strategy data with the named parameters set."""
    raw = copy.deepcopy(base)
    for path, value in params.items():
        _set(raw, path, value)
    return raw


def make_candidate(base: dict[str, Any], params: dict[str, Any], cid: int) -> Strategy:
    """The candidate strategy (validated like any strategy; its version names it)."""
    raw = with_params(base, params)
    raw["version"] = f"{base['version']}-c{cid}"[:40]
    return strategy_from_dict(raw, source=f"candidate {cid}")


# ---- executors -------------------------------------------------------------------


class Executor(Protocol):
    """Runs ``fn`` on every task; yields results as they finish (any order)."""

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]: ...


class LocalExecutor:
    """Processes on this machine (``workers`` defaults to the CPU count).

    Workers are forked, so whatever the parent loaded (the traffic) is shared with them.
    """

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        tasks = list(tasks)
        if self.workers == 1:
            for t in tasks:
                yield fn(t)
            return
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(self.workers, mp_context=ctx) as pool:
            pending = {pool.submit(fn, t) for t in tasks}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()


# ---- evaluation ------------------------------------------------------------------

#: Per process: traffic already read and validated, by (path, mapping); scorers by file.
_TRAFFIC: dict[tuple, Any] = {}
_SCORERS: dict[tuple, Any] = {}


@dataclass(frozen=True)
class Task:
    """One candidate to replay (plain data, so any executor can ship it)."""

    cid: int
    params: dict[str, Any]
    base: dict[str, Any]
    traffic: str
    mapping: bytes  # the Mapping as JSON (plain data)
    out_dir: str
    #: Which part of the traffic: "all", or with ``holdout`` > 0 "train" / "holdout".
    part: str = "all"
    holdout: float = 0.0


def cached_traffic(
    strategy: Strategy, traffic: str, mapping: Mapping, part: str = "all", holdout: float = 0.0
) -> Any:
    """The traffic read and validated once per process (``part``: all of it, or with
    ``holdout`` its earlier "train" part or its last "holdout" share by arrival time)."""
    from router.decide.engine import scorers_app_features
    from router.replay.run import read_cached, split_in_time

    if part != "all":
        key_part = (str(Path(traffic).resolve()), msgspec.json.encode(mapping), part, holdout)
        got = _TRAFFIC.get(key_part)
        if got is None:
            train, held = split_in_time(cached_traffic(strategy, traffic, mapping), holdout)
            got = _TRAFFIC[key_part] = train if part == "train" else held
        return got

    # (the application features the scorers read are columns of the cached traffic too)
    features = scorers_app_features(_scorers(strategy).values())
    key = (str(Path(traffic).resolve()), msgspec.json.encode(mapping), tuple(features.items()))
    got = _TRAFFIC.get(key)
    if got is None:
        got = _TRAFFIC[key] = read_cached(strategy, traffic, mapping, features=features)
    return got


def _scorers(strategy: Strategy) -> dict[str, Any]:
    from router.scoring import load_scorer

    out = {}
    # Only the scorers a policy uses (as the Router loads them): a strategy may define
    # alternatives, and loading a model it never reads can cost seconds of imports.
    for name, ref in strategy.scorers.items():
        if name not in strategy.scorers_used():
            continue
        key = (ref.kind, str(Path(strategy.base_dir) / ref.path), tuple(ref.features or ()))
        if key not in _SCORERS:
            _SCORERS[key] = load_scorer(ref.kind, ref.path, strategy.base_dir, ref.features)
        out[name] = _SCORERS[key]
    return out


def metrics_of(summary: dict[str, Any]) -> dict[str, Any]:
    """A candidate's objectives and the figures shown next to them."""
    return {
        "value": summary["expected_profit"]["total"],
        "profit": summary["expected_profit"]["keep"] + summary["expected_profit"]["branch"],
        "referral_revenue": summary["expected_profit"]["referral_value"],
        # None when the candidate keeps no loan: it has no bad rate (not a 0% one).
        "bad_rate": summary["expected_bad_rate"],
        "realised_bad_rate": summary["realised_bad_rate"],
        # Where the traffic has outcomes: the kept loans' profit as it came out, and whether
        # their PDs came true (summary.json's calibration) — expected against realised.
        "realised_keep_profit": summary.get("realised_keep_profit"),
        "keep_profit_range95": (summary.get("keep_profit_promised") or {}).get("range95"),
        # The value as it came out: the kept loans' realised profit, and the referral
        # revenue the partners' results in the traffic realised where it has them (the
        # branch's profit stays expected: its loans' outcomes are the partner's); None
        # without outcomes.
        "realised_value": _realised_value(summary),
        # The range the PDs promise it (the kept loans' part varies; the rest as above),
        # and whether it fell there.
        "realised_value_range95": _value_range(summary),
        "value_came_true": (summary.get("keep_profit_promised") or {}).get("came_true"),
        "kept_pds_came_true": _kept_consistent(summary),
        "kept_realised_ci95": _kept(summary).get("realised_ci95"),
        "kept_with_outcome": _kept(summary).get("n", 0),
        "keep_rate": summary["keep_rate"],
        "decisions": summary["decisions"],
    }


def _realised_value(summary: dict[str, Any]) -> int | None:
    if summary.get("realised_keep_profit") is None and not _has_outcomes(summary):
        return None
    referral = summary.get("realised_referral_value")
    if referral is None:
        referral = summary["expected_profit"]["referral_value"]
    return (
        (summary.get("realised_keep_profit") or 0) + summary["expected_profit"]["branch"] + referral
    )


def _value_range(summary: dict[str, Any]) -> list[int] | None:
    promised, value = summary.get("keep_profit_promised"), _realised_value(summary)
    if promised is None or value is None:
        return None
    rest = value - summary["realised_keep_profit"]
    return [promised["range95"][0] + rest, promised["range95"][1] + rest]


def _kept(summary: dict[str, Any]) -> dict[str, Any]:
    return ((summary.get("calibration") or {}).get("by_outcome") or {}).get("keep") or {}


def _has_outcomes(summary: dict[str, Any]) -> bool:
    return bool(summary.get("calibration"))


def _kept_consistent(summary: dict[str, Any]) -> bool | None:
    keep = _kept(summary)
    return keep.get("consistent") if keep.get("n") else None


#: What a candidate is judged on: its value and its kept loans' bad rate, as the model
#: expects them ("expected") or as the traffic's outcomes realised them ("realised").
OBJECTIVES = {
    "expected": ("value", "bad_rate"),
    "realised": ("realised_value", "realised_bad_rate"),
}


_MALLOC_SET = False


def _roomy_malloc() -> None:
    """Undo, in this process, a malloc trim threshold set in the environment.

    Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting it
    also freezes glibc's mmap threshold at 128 KiB, so every batch-sized array is mapped
    and unmapped afresh, page faults and all: a candidate took twice as long in a Dask
    worker as in a forked one (1.1–1.3 s against 0.5–0.7 s). Raising both thresholds
    again (glibc's ``mallopt``) gives the arrays back to the heap. Only where the variable
    is set, and only on glibc."""
    global _MALLOC_SET
    if _MALLOC_SET or not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return
    _MALLOC_SET = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # (glibc's malloc.h)
    libc.mallopt(m_mmap_threshold, 32 << 20)  # (glibc's largest allowed)
    libc.mallopt(m_trim_threshold, 256 << 20)


def evaluate(task: Task) -> dict[str, Any]:
    """Replay one candidate; its id, parameters and metrics."""
    from router.replay.run import replay

    _roomy_malloc()

    strategy = make_candidate(task.base, task.params, task.cid)
    mapping = msgspec.json.decode(task.mapping, type=Mapping)
    traffic = cached_traffic(strategy, task.traffic, mapping, task.part, task.holdout)
    r = replay(
        strategy,
        task.traffic,
        Path(task.out_dir) / f"c{task.cid:04d}",
        write_decisions=False,
        report=False,
        mapping=mapping,
        cached=traffic,
        scorers=_scorers(strategy),
    )
    return {
        "id": task.cid,
        "params": task.params,
        "metrics": metrics_of(r.summary),
        "strategy_hash": r.summary["strategy_hash"],
    }


# ---- frontier and choice -----------------------------------------------------------


def pareto(cands: list[dict[str, Any]], objective: str = "expected") -> list[bool]:
    """True for candidates no other candidate dominates (value ↑, bad rate ↓, keep rate ↑;
    value and bad rate per ``objective``, :data:`OBJECTIVES`). A candidate that keeps no
    loan has no bad rate: it is compared on value and keep rate."""
    v, b = OBJECTIVES[objective]
    pts = [(c["metrics"][v], c["metrics"]["keep_rate"], c["metrics"][b]) for c in cands]

    def dominates(q: tuple, p: tuple) -> bool:
        both = q[2] is not None and p[2] is not None
        q2 = (q[0], q[1], -q[2]) if both else q[:2]
        p2 = (p[0], p[1], -p[2]) if both else p[:2]
        return all(a >= b for a, b in zip(q2, p2)) and q2 != p2

    return [
        not any(dominates(q, p) for j, q in enumerate(pts) if j != i) for i, p in enumerate(pts)
    ]


def choose(
    cands: list[dict[str, Any]],
    max_bad_rate: float | None = None,
    min_keep_rate: float | None = None,
    objective: str = "expected",
    key: str = "metrics",
) -> dict[str, Any] | None:
    """The feasible candidate of highest value (ties: lower bad rate, then lower id), on
    its ``key`` figures ("metrics", or "holdout" for the held-out part's)."""
    v, b = OBJECTIVES[objective]
    ok = [
        c
        for c in cands
        if (max_bad_rate is None or _at_most(c[key][b], max_bad_rate))
        and (min_keep_rate is None or c[key]["keep_rate"] >= min_keep_rate)
    ]
    if not ok:
        return None
    return min(ok, key=lambda c: (-c[key][v], _or_inf(c[key][b]), c["id"]))


def _at_most(rate: float | None, bound: float) -> bool:
    """A bad rate within a bound; no bad rate (nothing kept) is within none."""
    return rate is not None and rate <= bound


def _or_inf(rate: float | None) -> float:
    return float("inf") if rate is None else rate


def write_strategy(raw: dict[str, Any], path: Path) -> Path:
    """A strategy file for ``raw`` (partners inline; scorer paths relative to the file)."""
    raw = copy.deepcopy(raw)
    base = Path(raw.pop("base_dir", "."))
    for ref in raw.get("scorers", {}).values():
        ref["path"] = os.path.relpath((base / ref["path"]).resolve(), path.parent.resolve())
    path.parent.mkdir(parents=True, exist_ok=True)

    def drop_none(x: Any) -> Any:  # TOML has no null: unset options are left out
        if isinstance(x, dict):
            return {k: drop_none(v) for k, v in x.items() if v is not None}
        if isinstance(x, list):
            return [drop_none(v) for v in x]
        return x

    path.write_bytes(msgspec.toml.encode(drop_none(raw)))
    return path


@dataclass
class TuneResult:
    """All candidates (with frontier flags), the chosen one and the files written."""

    result: dict[str, Any]
    path: Path
    best_strategy: Path | None


def tune(
    strategy: Strategy,
    traffic: str | Path,
    grid: dict[str, list[Any]],
    out_dir: str | Path,
    *,
    max_bad_rate: float | None = None,
    min_keep_rate: float | None = None,
    executor: Executor | None = None,
    mapping: Mapping | dict[str, str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    report: bool = True,
    holdout: float | None = None,
    objective: str = "expected",
) -> TuneResult:
    """Replay every grid candidate, mark the frontier, choose and write the best.

    ``objective``: judge candidates on expected figures, or on realised ones (the traffic's
    outcomes: the kept loans' realised profit and bad rate). ``holdout`` (a share, e.g.
    0.3): candidates are replayed and the frontier found on the earlier part of the
    traffic only; every frontier candidate is then replayed on the last ``holdout`` share
    by arrival time, which chose nothing, and the best is chosen on those held-out figures
    — the candidate that holds up, not the one that fitted the earlier part best
    (``best_on_train`` names that one, for comparison).

    Writes ``DIR/tune.json`` (with ``baseline``: the figures of ``strategy`` itself, the
    point to beat), ``DIR/best_strategy.toml`` (when a candidate meets the constraints)
    and ``DIR/report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mapping = _checked_mapping(strategy, mapping)
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    if holdout is not None and not 0.05 <= holdout <= 0.9:
        raise ConfigError(f"holdout must be between 0.05 and 0.9 (value: {holdout})")
    base = strategy_data(strategy)
    combos = candidates(grid)
    for cid, params in enumerate(combos):  # fail fast on a bad parameter or value
        make_candidate(base, params, cid)
    # Read once here: forked local workers share it.
    whole = cached_traffic(strategy, str(traffic), mapping)
    if objective == "realised" and not _any_outcome(whole):
        raise ConfigError("objective realised needs outcomes: the traffic has no `defaulted`")
    part, h = ("train", holdout) if holdout else ("all", 0.0)
    run = _Runs(base, str(traffic), mapping, out, executor, h)
    # The strategy tuning starts from, the point to beat, replayed first: what it works
    # out once per batch (scores, partner values) is then in memory for forked workers.
    start = run.baseline(strategy, part)
    results = run.candidates(list(enumerate(combos)), part, progress)
    for r, front in zip(results, pareto(results, objective)):
        r["frontier"] = front
    best = best_on_train = choose(results, max_bad_rate, min_keep_rate, objective)
    result: dict[str, Any] = {
        "strategy_version": strategy.version,
        "grid": grid,
        "constraints": {"max_bad_rate": max_bad_rate, "min_keep_rate": min_keep_rate},
        "objective": objective,
        "objectives": _objectives(objective),
        "baseline": metrics_of(start.summary),
        "candidates": results,
    }
    if holdout:
        best = _hold_out(run, strategy, results, result, max_bad_rate, min_keep_rate)
        result["best_on_train"] = best_on_train["id"] if best_on_train else None
    best_path = best_summary = None
    if best is not None:
        best["best"] = True
        best_path, best_summary = run.write_best(
            strategy, best, report, "holdout" if holdout else "all"
        )
    result["best"] = best["id"] if best else None
    path = out / "tune.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    if report:
        from router.replay.report import write_tune_report

        write_tune_report(result, best_summary, out)
    return TuneResult(result, path, best_path)


def _checked_mapping(strategy: Strategy, mapping: Mapping | dict[str, str] | None) -> Mapping:
    from router.replay.run import check_mapping

    check_mapping(strategy.columns if mapping is None else mapping)
    return as_mapping(strategy.columns if mapping is None else mapping)


def _any_outcome(cached: Any) -> bool:
    return any((b.outcomes.get("defaulted", np.empty(0)) >= 0).any() for b in cached.batches)


def _objectives(objective: str) -> dict[str, str]:
    if objective == "realised":
        return {
            "realised_value": "max (realised keep profit + expected branch profit + "
            "realised referral revenue)",
            "realised_bad_rate": "min (realised, kept loans)",
            "keep_rate": "max",
        }
    return {
        "value": "max (expected profit + referral revenue)",
        "bad_rate": "min (expected, kept loans)",
        "keep_rate": "max",
    }


def _hold_out(
    run: _Runs,
    strategy: Strategy,
    results: list[dict[str, Any]],
    result: dict[str, Any],
    max_bad_rate: float | None,
    min_keep_rate: float | None,
) -> dict[str, Any] | None:
    """Replay the frontier on the held-out part; the best there (the module docstring)."""
    front = [r for r in results if r["frontier"]]
    held = run.candidates([(r["id"], r["params"]) for r in front], "holdout", None)
    for r, h in zip(front, held):
        r["holdout"] = h["metrics"]
    train, test = (cached_traffic(strategy, run.traffic, run.mapping, p, run.holdout)
                   for p in ("train", "holdout"))  # fmt: skip
    result["holdout"] = {
        "share": run.holdout,
        "train_applications": sum(len(b.cols) for b in train.batches),
        "holdout_applications": sum(len(b.cols) for b in test.batches),
        "split_at_ms": int(min((int(b.cols.event_ms.min()) for b in test.batches), default=0)),
        "baseline": metrics_of(run.baseline(strategy, "holdout").summary),
    }
    return choose(front, max_bad_rate, min_keep_rate, result["objective"], key="holdout")


class _Runs:
    """Candidates and the baseline replayed on a part of the traffic."""

    def __init__(
        self,
        base: dict[str, Any],
        traffic: str,
        mapping: Mapping,
        out: Path,
        executor: Executor | None,
        holdout: float,
    ):
        self.base, self.traffic, self.mapping, self.out = base, traffic, mapping, out
        self.executor, self.holdout = executor, holdout

    def candidates(
        self,
        combos: list[tuple[int, dict[str, Any]]],
        part: str,
        progress: Callable[[dict[str, Any]], None] | None,
    ) -> list[dict[str, Any]]:
        """Every candidate's figures, in candidate order (``progress`` sees them as they
        come)."""
        where = str(self.out / ("candidates" if part != "holdout" else "holdout"))
        m = msgspec.json.encode(self.mapping)
        tasks = [
            Task(cid, params, self.base, self.traffic, m, where, part, self.holdout)
            for cid, params in combos
        ]
        results = []
        for r in (self.executor or LocalExecutor()).map(evaluate, tasks):
            results.append(r)
            if progress:
                progress(r)
        results.sort(key=lambda r: r["id"])
        return results

    def write_best(
        self, strategy: Strategy, best: dict[str, Any], report: bool, part: str
    ) -> tuple[Path, dict[str, Any] | None]:
        """Write the chosen candidate as ``best_strategy.toml``; with ``report``, replay it
        on ``part`` of the traffic (the held-out part, when tuning held one out) for the
        report's figures (its summary)."""
        from router.core.config import load_strategy
        from router.replay.run import replay

        raw = with_params(self.base, best["params"])
        raw["version"] = f"{self.base['version']}-tuned"[:40]
        best_path = write_strategy(raw, self.out / "best_strategy.toml")
        if not report:
            return best_path, None
        tuned = load_strategy(best_path)
        chosen = replay(
            tuned,
            self.traffic,
            self.out / "best",
            mapping=self.mapping,
            cached=cached_traffic(strategy, self.traffic, self.mapping, part, self.holdout),
            scorers=_scorers(tuned),  # (the models already loaded: their scores are in memory)
            write_decisions=False,
            report=False,
        )
        return best_path, chosen.summary

    def baseline(self, strategy: Strategy, part: str) -> Any:
        """The strategy itself replayed on ``part``."""
        from router.replay.run import replay

        return replay(
            strategy,
            self.traffic,
            self.out / ("baseline" if part != "holdout" else "baseline_holdout"),
            mapping=self.mapping,
            cached=cached_traffic(strategy, self.traffic, self.mapping, part, self.holdout),
            scorers=_scorers(strategy),
            write_decisions=False,
            report=False,
        )
