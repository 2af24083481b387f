"""The ``referral-router`` command line (Typer for arguments and help, Rich for output)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from router.core.errors import RouterError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Rejected-traffic referral router: keep / branch / refer / decline.",
    # Every failure is one plain line from main(), never a framed traceback; help texts
    # are plain text (markup would swallow "[columns]").
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_LEVELS = ("debug", "info", "warning", "error")
_FORMATS = ("console", "json")


@app.callback()
def _main(
    log_level: str = typer.Option(
        "warning", "--log-level", help="debug, info, warning or error (logs go to stderr)"
    ),
    log_format: str = typer.Option("console", "--log-format", help="console or json"),
) -> None:
    """Rejected-traffic referral router: keep / branch / refer / decline.

    Add --debug anywhere to see a Python traceback when something fails.
    """
    from router.core.logs import configure

    if log_level.lower() not in _LEVELS:
        raise typer.BadParameter(
            f"must be one of {', '.join(_LEVELS)} (value: {log_level!r})", param_hint="--log-level"
        )
    if log_format.lower() not in _FORMATS:
        raise typer.BadParameter(
            f"must be one of {', '.join(_FORMATS)} (value: {log_format!r})",
            param_hint="--log-format",
        )
    configure(log_level.lower(), log_format.lower())


err = Console(stderr=True)
out = Console()
if not out.is_terminal:  # piped or captured (make demo in CI): don't squeeze to 80 columns
    out = Console(width=120)


def _fail(exc: Exception) -> None:
    # Plain text: a message may hold square brackets (partners[bank_a].terms) that Rich
    # markup would eat.
    print(f"error: {scrub(str(exc))}", file=sys.stderr)
    raise typer.Exit(2)


#: Runs of digits long enough to be a national id, phone or card number.
_LONG_DIGITS = re.compile(r"\d{9,}")


def scrub(text: str) -> str:
    """An error message fit to print: one line, long digit runs (identifiers) masked,
    a CSV parser's echo of the raw row cut off."""
    text = " ".join(text.split())
    m = re.search(r"(CSV parse error: [^:]*)", text)
    if m:  # pyarrow appends the offending row, identifiers and all
        text = text[: m.end()].rstrip()
    return _LONG_DIGITS.sub("<digits>", text)


def _progress(total: int | None, label: str) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _lazy_log():
    from router.core.logs import get_logger

    return get_logger("decide")


class _DecideLog:
    """The decide command's logger, imported on first use (the CLI starts fast)."""

    def __getattr__(self, name: str):
        return getattr(_lazy_log(), name)


_decide_log = _DecideLog()

_DEMO_KEY_HELP = (
    "run a shared (network) store even though ROUTER_HMAC_KEY is unset and applicant "
    "identifiers would be hashed with the strategy's public identity.dev_key"
)


@app.command()
def decide(
    application: str = typer.Argument(
        "-", help="application JSON file, a JSON object, or - for stdin (JSON Lines)"
    ),
    strategy: Path = typer.Option(..., "--strategy", "-s", help="strategy TOML"),
    store: str = typer.Option(
        "memory://", "--store", help="quota store URL: memory://, redis://…, redis+cluster://…"
    ),
    allow_demo_key: bool = typer.Option(False, "--allow-demo-key", help=_DEMO_KEY_HELP),
) -> None:
    """Decide applications and print each decision as one JSON line.

    A bad or conflicting application is reported on stderr with its line (or array item)
    number and the others are still decided; the exit code is then 2.
    """
    from router.core.config import load_strategy
    from router.core.messages import encode

    try:
        source, items = _decide_inputs(application)
        if not items:
            raise RouterError(f"no applications in {source}")
        strat = load_strategy(strategy)
        _check_key(strat, store, allow_demo_key)
        # (Closing sends the posts still owed: every referral printed is billable.)
        with _router_for(strat, store) as router:
            failed = 0
            for label, item in items:
                try:
                    decision = router.decide(_application_of(item))
                except (RouterError, ValueError) as exc:
                    failed += 1
                    print(f"error: {source}: {label}: {scrub(str(exc))}", file=sys.stderr)
                    continue
                sys.stdout.buffer.write(encode(decision) + b"\n")
                sys.stdout.buffer.flush()
                _decide_log.debug(
                    "decision",
                    application_id=decision.application_id,
                    outcome=type(decision).__name__.lower(),
                    partner=getattr(decision, "partner_id", None),
                    degraded=decision.degraded,
                    reasons=list(decision.reasons),
                )
    except (RouterError, OSError) as exc:
        _fail(exc)
    if failed:
        print(f"error: {failed:,} of {len(items):,} applications not decided", file=sys.stderr)
        raise typer.Exit(2)


def _check_key(strategy, store_url: str, allow: bool) -> None:
    """Refuse a network store while identifiers would be hashed with the strategy's
    public dev key (its hashes would sit in a shared Redis); with ``allow``, warn."""
    import os

    from router.core.errors import ConfigError
    from router.store import store_kind

    ident = strategy.identity
    if not store_kind(store_url).shared or os.environ.get(ident.key_env):  # (checks the URL)
        return
    what = (
        f"{ident.key_env} is not set, so applicant identifiers would be hashed with the "
        "strategy's public identity.dev_key on a shared store"
    )
    if not allow:
        raise ConfigError(f"{what}; set {ident.key_env} (or pass --allow-demo-key)")
    print(f"warning: {what} (--allow-demo-key)", file=sys.stderr)


def _router_for(strategy, store_url: str):
    from router.decide.engine import Router
    from router.store import quota_store_from_url

    return Router(strategy, quota_store_from_url(store_url))


def _decide_inputs(application: str) -> tuple[str, list[tuple[str, object]]]:
    """(where they came from, [(line or item label, JSON bytes or a decoded object)]):
    stdin or a file of JSON Lines, a file or argument holding one object or an array."""
    import msgspec

    text = application.lstrip()
    if application == "-":
        source, data = "stdin", sys.stdin.buffer.read()
    elif text.startswith(("{", "[")):
        source, data = "the argument", application.encode()
    else:
        source, data = application, Path(application).read_bytes()
    if data.lstrip().startswith(b"["):
        try:
            arr = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise RouterError(f"{source}: not a JSON array ({exc})") from None
        if not isinstance(arr, list):
            raise RouterError(f"{source}: not a JSON array")
        return source, [(f"item {k}", obj) for k, obj in enumerate(arr, 1)]
    lines = [(k, ln) for k, ln in enumerate(data.splitlines(), 1) if ln.strip()]
    if len(lines) > 1 and data.lstrip().startswith(b"{"):
        # One object written over several lines (indented by hand) rather than JSON Lines.
        try:
            obj = msgspec.json.decode(data)
        except msgspec.DecodeError:
            pass  # not one value: JSON Lines, each line judged on its own below
        else:
            return source, [(f"the object at line {lines[0][0]}", obj)]
    return source, [(f"line {k}", ln) for k, ln in lines]


def _application_of(item: object):
    from router.core.messages import convert_application, decode_application

    if isinstance(item, bytes):
        return decode_application(item)
    return convert_application(item)


def _iso_date(value: str) -> str:
    from datetime import date

    try:
        date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"expected a date YYYY-MM-DD (value: {value!r})") from None
    return value


@app.command()
def generate(
    rows: int = typer.Option(..., "--rows", "-n", min=0, help="applications to write"),
    out_path: Path = typer.Option(..., "--out", "-o", help="output file: .parquet or .jsonl"),
    seed: int = typer.Option(7, "--seed", help="random seed (same seed, same bytes)"),
    per_day: int = typer.Option(200_000, "--per-day", min=1, help="applications per day"),
    start: str = typer.Option(
        "2026-11-02", "--start", help="first day YYYY-MM-DD (Asia/Shanghai)", callback=_iso_date
    ),
) -> None:
    """Write synthetic application traffic (see router/traffic.py for the assumptions)."""
    from router.traffic import write_traffic

    try:
        with _progress(rows, "generating") as bar:
            task = bar.add_task("gen", total=rows)
            write_traffic(
                out_path, rows, seed, per_day, start, progress=lambda k: bar.advance(task, k)
            )
    except RouterError as exc:
        _fail(exc)
    out.print(f"wrote {rows:,} applications to {out_path}")


def _mapping(path: Path | None):
    """A mapping file (router/ingest/mapping.py): renames, transforms, constants, arrival
    times; errors name the file, line and key."""
    if path is None:
        return None
    from router.ingest.mapping import load_mapping

    return load_mapping(path)


def _freeze_heap() -> None:
    """Freeze what the command has built so far (the imports, numba's and Arrow's modules,
    the strategy, the store) out of the cyclic garbage collector's sight: it lives until
    the process ends, and the collector's passes over a run's short-lived objects walked
    it every time (about 15% of a 100k-row replay). The service's workers and `ledger
    consume` do the same. Used by replay, demo, compare and tune."""
    import gc

    gc.freeze()


def _run_replay(
    strategy: Path,
    traffic: Path,
    out_dir: Path,
    batch_size: int,
    store_url: str = "memory://",
    mapping: Path | None = None,
    reference: Path | None = None,
    allow_degraded: bool = False,
    billing_db: str | None = None,
):
    from router.core.config import load_strategy
    from router.ingest.reader import count_rows
    from router.replay import replay
    from router.store import quota_store_from_url

    strat = load_strategy(strategy)
    store = None  # replay's own in-memory store (the array store)
    if store_url not in ("memory://", "array://"):
        options: dict[str, Any] = {}
        if "prefix=" not in store_url:
            # Never replay into the live router's keys by accident: a run of its own.
            import uuid

            options["prefix"] = f"replay-{uuid.uuid4().hex[:12]}:"
            err.print(
                f"replaying under the Redis key prefix {options['prefix']!r} "
                "(give ?prefix=… to choose one)",
                markup=False,
            )
        from router.store.redis import RedisQuotaStore

        # Replay's service level: long deadlines and retries, never the live 50 ms default
        # (a value given in the URL is kept).
        for name, value in RedisQuotaStore.REPLAY.items():
            if f"{name}=" not in store_url:
                options[name] = value
        store = quota_store_from_url(store_url, **options)
    total = count_rows(traffic)
    _freeze_heap()
    with _progress(total, "replaying") as bar:
        task = bar.add_task("replay", total=total)
        try:
            return replay(
                strat,
                traffic,
                out_dir,
                batch_size=batch_size,
                store=store,
                mapping=_mapping(mapping),
                reference=reference,
                progress=lambda k: bar.advance(task, k),
                allow_degraded=allow_degraded,
                billing_db=billing_db,
            )
        finally:
            if store is not None:
                store.close()


def _writable_dir(value: Path | None) -> Path | None:
    """An ``--out`` directory that exists (made if missing) and can be written to."""
    import os

    if value is None:
        return value
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{str(value)!r} is a file, not a directory")
    try:
        value.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"cannot create {str(value)!r} ({exc.strerror})") from None
    if not os.access(value, os.W_OK):
        raise typer.BadParameter(f"{str(value)!r} is not writable")
    return value


_MAPPING_HELP = (
    'TOML mapping: [columns] field = "your column", [features] name = "your column", '
    "[transforms.FIELD] scale / map / timezone / offset_hours, [constants], [arrival] "
    "(see router/ingest/mapping.py)"
)


@app.command()
def replay(
    strategy: Path = typer.Option(..., "--strategy", "-s", help="strategy TOML"),
    traffic: Path = typer.Option(
        ..., "--traffic", "-t", help="traffic file (.parquet / .csv / .jsonl)"
    ),
    out_dir: Path = typer.Option(
        ..., "--out", "-o", help="output directory", callback=_writable_dir
    ),
    batch_size: int = typer.Option(131_072, "--batch-size", min=1),
    store: str = typer.Option(
        "memory://",
        "--store",
        help="quota store URL: memory://, redis://…?prefix=…, redis+cluster://…",
    ),
    mapping: Path | None = typer.Option(None, "--mapping", help=_MAPPING_HELP),
    reference: Path | None = typer.Option(
        None, "--reference", help="traffic file for the PD's population stability"
    ),
    allow_degraded: bool = typer.Option(
        False,
        "--allow-degraded",
        help="on a network store that stays unreachable, decide the rows degraded and go on "
        "(counted, and the exit code is 3) instead of stopping",
    ),
    billing_db: str | None = typer.Option(
        None,
        "--billing-db",
        help="also write the run's referrals into this billing database (a path or "
        "postgresql+psycopg://…) for what-if statements",
    ),
    allow_demo_key: bool = typer.Option(False, "--allow-demo-key", help=_DEMO_KEY_HELP),
) -> None:
    """Replay a traffic file: summary.json, decisions.parquet, rejects.jsonl, report.html."""
    try:
        from router.core.config import load_strategy

        _check_key(load_strategy(strategy), store, allow_demo_key)
        result = _run_replay(
            strategy,
            traffic,
            out_dir,
            batch_size,
            store,
            mapping,
            reference,
            allow_degraded,
            billing_db,
        )
    except RouterError as exc:
        _fail(exc)
    _print_summary(result.summary)
    out.print(f"report: {out_dir / 'report.html'}\nsummary: {result.summary_path}")
    rejected = result.summary["traffic"]["rows_rejected"]
    if rejected and not result.summary["applications"]:
        print(
            f"error: every row of {traffic} was rejected ({rejected:,}; see "
            f"{result.rejects_path}): {_commonest_problem(result.rejects_path)}; check the "
            "file and the column mapping",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    if "billing" in result.summary:
        b = result.summary["billing"]
        out.print(
            f"billing: {b['billed']:,} referrals and branch loans written to {billing_db} "
            f"({b['already_billed']:,} were there already); statements: referral-router bill",
            markup=False,
        )
    from router.replay.report import warnings

    for w in warnings(result.summary):
        err.print(f"warning: {w}", markup=False)
    if result.summary.get("degraded", 0):
        raise typer.Exit(3)


@app.command()
def compare(
    champion: Path | None = typer.Option(None, "--champion", "-a", help="champion strategy TOML"),
    challenger: Path | None = typer.Option(
        None, "--challenger", "-b", help="challenger strategy TOML"
    ),
    traffic: Path | None = typer.Option(None, "--traffic", "-t", help="traffic file"),
    out_dir: Path = typer.Option(
        ..., "--out", "-o", help="output directory", callback=_writable_dir
    ),
    mapping: Path | None = typer.Option(None, "--mapping", help=_MAPPING_HELP),
    shadow_log: Path | None = typer.Option(
        None, "--shadow-log", help="the live swap sets of a service's shadow challenger instead"
    ),
) -> None:
    """Champion vs challenger on the same traffic: the 4×4 swap sets and the net change
    (or, with --shadow-log, the swap sets a service's shadow challenger logged live)."""
    from router.core.config import load_strategy
    from router.replay.compare import compare as run_compare
    from router.replay.report import write_compare_report

    if shadow_log is not None:
        _compare_shadow(shadow_log, out_dir)
        return
    for given, flag in ((champion, "--champion"), (challenger, "--challenger"),
                        (traffic, "--traffic")):  # fmt: skip
        if given is None:
            raise typer.BadParameter("required (or give --shadow-log)", param_hint=flag)
    assert champion is not None and challenger is not None and traffic is not None

    try:
        _freeze_heap()
        r = run_compare(
            load_strategy(champion),
            load_strategy(challenger),
            traffic,
            out_dir,
            mapping=_mapping(mapping),
        )
    except RouterError as exc:
        _fail(exc)
    m = r.comparison
    _print_swaps(m, "swap sets: champion (rows) → challenger (columns), applications")
    nc = m["net_change"]
    out.print(
        f"net change: profit {_yuan(nc['profit'])} yuan, referral revenue "
        f"{_yuan(nc['referral_revenue'])} yuan, keep rate "
        f"{nc['keep_rate'] * 100:+.2f} percentage points"
    )
    report = write_compare_report(m, r.champion.summary, r.challenger.summary, out_dir)
    out.print(f"report: {report}\ncomparison: {r.path}")


def _print_swaps(m: dict, title: str) -> None:
    t = Table(title=title)
    t.add_column("")
    for label in m["labels"]:
        t.add_column(label, justify="right")
    for label, row in zip(m["labels"], m["counts"]):
        t.add_row(label, *[f"{v:,}" for v in row])
    out.print(t)


def _compare_shadow(log: Path, out_dir: Path) -> None:
    """The live swap sets of a shadow log, into ``out_dir/compare.json``."""
    import msgspec

    from router.replay.compare import swap_matrix
    from router.service.shadow import read_shadow_log

    try:
        a, b = read_shadow_log(log)
    except (RouterError, OSError) as exc:
        _fail(exc)
    m = swap_matrix(a, b)
    m["source"] = {"shadow_log": str(log), "applications": a.num_rows}
    _print_swaps(m, f"live swap sets ({a.num_rows:,} shadowed applications): champion (rows) → "
                    "challenger (columns)")  # fmt: skip
    path = out_dir / "compare.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(m)) + b"\n")
    out.print(f"comparison: {path}")


def _frontier_table(cands: list, objective: str, v: str, b: str, held_out: bool) -> Table:
    """Tune's Pareto frontier: each candidate's parameters and figures (``v`` and ``b``:
    the objective's value and bad-rate keys)."""
    part = " (the earlier part)" if held_out else ""
    t = Table(title=f"{len(cands)} candidates: the Pareto frontier{part}")
    for c in ("#", "parameters", f"{objective} value (yuan)", "bad rate", "keep rate", ""):
        t.add_column(c, justify="left" if c == "parameters" else "right")
    for c in cands:
        if c["frontier"]:
            mtr = c["metrics"]
            t.add_row(
                str(c["id"]),
                ", ".join(f"{k}={v}" for k, v in c["params"].items()),
                _yuan(mtr[v]),
                _pct_or_dash(mtr[b]),
                f"{mtr['keep_rate']:.2%}",
                "chosen" if c.get("best") else "",
            )
    return t


@app.command()
def tune(
    strategy: Path = typer.Option(..., "--strategy", "-s", help="base strategy TOML"),
    traffic: Path = typer.Option(..., "--traffic", "-t", help="traffic file"),
    grid: Path = typer.Option(..., "--grid", "-g", help="TOML file with a [grid] table"),
    out_dir: Path = typer.Option(
        ..., "--out", "-o", help="output directory", callback=_writable_dir
    ),
    max_bad_rate: float | None = typer.Option(
        None, "--max-bad-rate", min=0.0, max=1.0, help="constraint: expected bad rate of kept loans"
    ),
    min_keep_rate: float | None = typer.Option(
        None, "--min-keep-rate", min=0.0, max=1.0, help="constraint: share of applications kept"
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="local processes (default: CPU count)"
    ),
    mapping: Path | None = typer.Option(None, "--mapping", help=_MAPPING_HELP),
    holdout: float | None = typer.Option(
        None,
        "--holdout",
        min=0.05,
        max=0.9,
        help="tune on the earlier part of the traffic, replay the frontier on its last share "
        "by arrival time (e.g. 0.3), and choose there",
    ),
    objective: str = typer.Option(
        "expected",
        "--objective",
        help="judge candidates on expected figures, or on realised ones (needs outcomes)",
    ),
    cluster: str | None = typer.Option(
        None,
        "--cluster",
        help="run candidates on dask://host:port, ray://host:port, or a local cluster of "
        "--workers processes: dask:local, ray:local (default: this machine's processes)",
    ),
) -> None:
    """Replay every grid candidate, report the Pareto frontier, write the best strategy."""
    from router.core.config import load_strategy
    from router.replay.executors import executor_from_url
    from router.replay.tune import OBJECTIVES, candidates, load_grid
    from router.replay.tune import tune as run_tune

    executor = None
    try:
        g = load_grid(grid)
        n = len(candidates(g))
        executor = executor_from_url(cluster, workers)
        _freeze_heap()  # (forked local workers inherit it frozen)
        with _progress(n, "candidates") as bar:
            task = bar.add_task("tune", total=n)
            r = run_tune(
                load_strategy(strategy),
                traffic,
                g,
                out_dir,
                max_bad_rate=max_bad_rate,
                min_keep_rate=min_keep_rate,
                executor=executor,
                mapping=_mapping(mapping),
                progress=lambda _: bar.advance(task),
                holdout=holdout,
                objective=objective,
            )
    except RouterError as exc:
        _fail(exc)
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()
    cands = r.result["candidates"]
    v, b = OBJECTIVES[objective]
    out.print(_frontier_table(cands, objective, v, b, bool(holdout)))
    if holdout:
        _print_held_out(r.result, v)
    base = r.result["holdout"]["baseline"] if holdout else r.result["baseline"]
    key = "holdout" if holdout else "metrics"
    out.print(
        f"starting strategy{' (held out)' if holdout else ''}: {objective} value "
        f"{_yuan(base[v])} yuan, bad rate {_pct_or_dash(base[b])}, keep rate "
        f"{base['keep_rate']:.2%}",
        markup=False,
    )
    if r.best_strategy:
        best = next(c for c in cands if c["id"] == r.result["best"])
        gain = best[key][v] - base[v]
        out.print(
            f"best under the constraints: candidate {r.result['best']} -> {r.best_strategy} "
            f"({'+' if gain >= 0 else '−'}{_yuan(abs(gain))} yuan against the starting strategy)",
            markup=False,
        )
    out.print(f"report: {out_dir / 'report.html'}\nall candidates: {r.path}")
    if not r.best_strategy:
        _no_candidate_met(cands, max_bad_rate, min_keep_rate)


def _no_candidate_met(
    cands: list, max_bad_rate: float | None, min_keep_rate: float | None
) -> NoReturn:
    """Exit 3 saying how close the candidates came, so the user knows which bound to move."""
    rates = [c["metrics"]["bad_rate"] for c in cands if c["metrics"]["bad_rate"] is not None]
    low_bad = min(rates) if rates else None
    high_keep = max(c["metrics"]["keep_rate"] for c in cands) if cands else None
    given = ", ".join(
        f"{name} {v:g}"
        for name, v in (("--max-bad-rate", max_bad_rate), ("--min-keep-rate", min_keep_rate))
        if v is not None
    )
    print(
        f"error: no candidate meets the constraints ({given}); the lowest bad rate seen "
        f"was {_pct_or_dash(low_bad)} and the highest keep rate {high_keep:.2%} — no "
        "best_strategy.toml written"
        if cands
        else "error: no candidates were run",
        file=sys.stderr,
    )
    raise typer.Exit(3)


def _realised_and_range(realised: int | None, promised: list[int] | None) -> str:
    if realised is None:
        return "–"
    # (spaces around the dash: a narrow console wraps the range instead of cutting it)
    return _yuan(realised) + (f" ({_yuan(promised[0])} – {_yuan(promised[1])})" if promised else "")


def _print_held_out(result: dict, v: str) -> None:
    """The frontier's figures on the held-out part: expected against realised."""
    h = result["holdout"]
    t = Table(
        title=f"the frontier on the last {h['share']:.0%} of the traffic "
        f"({h['holdout_applications']:,} applications; chose nothing)"
    )
    for c in ("#", "value", "keep profit: realised (range promised)", "bad rate: expected",
              "realised (95% CI)",
              "PDs came true", "keep rate", ""):  # fmt: skip
        t.add_column(c, justify="right")
    for c in result["candidates"]:
        if "holdout" not in c:
            continue
        m = c["holdout"]
        ci = m.get("kept_realised_ci95") or [None, None]
        t.add_row(
            str(c["id"]),
            _yuan(m[v]) if m[v] is not None else "–",
            _realised_and_range(m["realised_keep_profit"], m.get("keep_profit_range95")),
            _pct_or_dash(m["bad_rate"]),
            f"{_pct_or_dash(m['realised_bad_rate'])} ({_pct_or_dash(ci[0])}–{_pct_or_dash(ci[1])})",
            {True: "yes", False: "no", None: "–"}[m["kept_pds_came_true"]],
            f"{m['keep_rate']:.2%}",
            "chosen" if c.get("best") else "",
        )
    out.print(t)
    if result.get("best_on_train") is not None and result["best_on_train"] != result["best"]:
        out.print(
            f"(candidate {result['best_on_train']} was best on the earlier part; candidate "
            f"{result['best']} holds up better on the held-out part)",
            markup=False,
        )


@app.command()
def train(
    traffic: Path = typer.Option(..., "--traffic", "-t", help="traffic file with `defaulted`"),
    out_dir: Path = typer.Option(
        ..., "--out", "-o", help="output directory", callback=_writable_dir
    ),
    strategy: Path | None = typer.Option(
        None, "--strategy", "-s", help="its partner book checks consent (default: the shipped)"
    ),
    mapping: Path | None = typer.Option(None, "--mapping", help=_MAPPING_HELP),
    features: str = typer.Option(
        "default",
        "--features",
        help="comma-separated: `default` (the router's 14), router feature names, your own "
        "columns (numbers, or categories one-hot; `name:cat` forces a category)",
    ),
    model: str = typer.Option("trees", "--model", help="trees or scorecard"),
    calibration: str = typer.Option("isotonic", "--calibration", help="isotonic, platt or none"),
    holdout: float = typer.Option(0.3, "--holdout", help="last share of rows held out"),
    folds: int = typer.Option(5, "--folds", help="out-of-fold parts for the calibration"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train and calibrate a PD model on your traffic: model.json and its model card."""
    from router.core.config import load_strategy
    from router.scoring.fit import train as fit

    root = Path(__file__).resolve().parent.parent
    try:
        result = fit(
            traffic,
            out_dir,
            load_strategy(strategy or root / "configs" / "strategy.toml"),
            features=features.split(","),
            model=model,
            calibration=calibration,
            holdout=holdout,
            folds=folds,
            mapping=_mapping(mapping),
            seed=seed,
        )
    except RouterError as exc:
        _fail(exc)
    c = result.card
    tr, ho = c["train"], c["holdout"]
    a = ho["all"]
    lo, hi = a["realised_ci95"]
    true = "came true" if a["consistent"] else "did NOT come true"
    out.print(
        f"trained {c['model']} ({c['calibration']} calibration) on {tr['rows']:,} rows, "
        f"{len(c['features'])} features; held out the last {ho['rows']:,} by arrival",
        markup=False,
    )
    out.print(
        f"held out: AUC {ho['auc']:.4f}, KS {ho['ks']:.4f}; default rate "
        f"{a['realised_bad_rate']:.2%} (95% CI {lo:.2%}–{hi:.2%}) vs mean PD "
        f"{a['expected_bad_rate']:.2%}: the PDs {true}; "
        f"PD bands consistent: {sum(b['consistent'] for b in ho['by_pd_band'])}"
        f"/{len(ho['by_pd_band'])}",
        markup=False,
    )
    out.print(
        f"model: {result.model_path}\ncard: {result.card_md}\nstrategy scoring with it: "
        f"{result.strategy_path}",
        markup=False,
    )


@app.command()
def demo(
    rows: int = typer.Option(200_000, "--rows", help="applications in the demo day"),
    out_dir: Path = typer.Option(Path("out/demo"), "--out", callback=_writable_dir),
    strategy: Path | None = typer.Option(None, "--strategy", help="default: configs/strategy.toml"),
    seed: int = typer.Option(7, "--seed"),
) -> None:
    """Generate a day of traffic and replay it with the example strategy."""
    from router.traffic import write_traffic

    root = Path(__file__).resolve().parent.parent
    strategy = strategy or root / "configs" / "strategy.toml"
    traffic = out_dir / "traffic.parquet"
    try:
        write_traffic(traffic, rows, seed)
        out.print(f"generated {rows:,} applications (one day) -> {traffic}")
        result = _run_replay(strategy, traffic, out_dir, 131_072)
    except RouterError as exc:
        _fail(exc)
    _print_summary(result.summary)
    out.print(
        f"report: {out_dir / 'report.html'}  (summary: {result.summary_path}; "
        f"per-application decisions: {result.decisions_path})"
    )


def _yuan(minor: int) -> str:
    return f"{minor / 100:,.0f}"


def _commonest_problem(rejects: Path, sample: int = 100_000) -> str:
    """The problem most rows of ``rejects.jsonl`` share (of the first ``sample`` rows), in
    words with one example value (already masked as the rejects file shows it)."""
    import msgspec

    counts: dict[tuple[str, str], list] = {}
    with open(rejects, "rb") as f:
        for k, line in enumerate(f):
            if k >= sample:
                break
            r = msgspec.json.decode(line)
            for p in r.get("problems") or [r]:
                seen = counts.setdefault((p["field"], p["reason"]), [0, p.get("value")])
                seen[0] += 1
    if not counts:
        return "no problem recorded"
    (field, reason), (n, value) = max(counts.items(), key=lambda kv: kv[1][0])
    return f"most often {field}: {reason} (in {n:,} rows; e.g. value {value!r})"


def _partners_table(s: dict) -> Table:
    """The summary's partners: referrals, amounts, expected revenue, when the day cap ran
    out."""
    from router.replay.report import ran_out_text

    p = Table(title="partners (amounts and expected revenue in yuan)")
    for c in ("partner", "referred", "amount", "fees", "rev-share", "day cap out"):
        p.add_column(
            c, justify="left" if c in ("partner", "day cap out") else "right", no_wrap=True
        )
    for pid, v in s["partners"].items():
        p.add_row(
            pid,
            f"{v['referred']:,}",
            _yuan(v["amount"]),
            _yuan(v["expected_fee"]),
            _yuan(v["expected_rev_share"]),
            ran_out_text(s["quota"], pid),
        )
    return p


def _print_summary(s: dict) -> None:
    from router.replay.report import ran_out_text

    n = s["applications"]
    t = Table(title=f"{n:,} applications, strategy {s['strategy_version']}")
    t.add_column("outcome")
    t.add_column("count", justify="right")
    t.add_column("share", justify="right")
    for k, v in s["decisions"].items():
        t.add_row(k, f"{v:,}", f"{v / n:.1%}" if n else "-")
    if s.get("degraded"):
        t.add_row(
            "[bold red]degraded[/bold red] (store unreachable)",
            f"{s['degraded']:,}",
            f"{s['degraded'] / n:.1%}" if n else "-",
        )
    out.print(t)
    out.print(_partners_table(s))
    budgets = [
        f"{name} {ran_out_text(s['quota'], name)}"
        for name in ("keep", "branch")
        if "day" in s["quota"].get(name, {})
    ]
    if budgets:
        out.print("funder's daily budgets ran out: " + "; ".join(budgets))
    b = s["expected_profit"]
    line = (
        f"expected profit {_yuan(b['total'])} yuan = keep {_yuan(b['keep'])} + "
        f"branch {_yuan(b['branch'])} + referral {_yuan(b['referral_value'])}"
    )
    if s.get("realised_bad_rate") is not None:
        line += (
            f"; kept loans: expected bad rate {s['expected_bad_rate']:.2%}, "
            f"realised {s['realised_bad_rate']:.2%}"
        )
        k = (s.get("calibration") or {}).get("by_outcome", {}).get("keep")
        if k and k.get("n"):
            lo, hi = k["realised_ci95"]
            verdict = "PDs came true" if k["consistent"] else "PDs did NOT come true"
            line += f" (95% interval {lo:.2%}–{hi:.2%}: {verdict})"
    out.print(line)
    if s.get("realised_referral_value") is not None:
        out.print(
            f"referral revenue: expected {_yuan(b['referral_value'])} yuan, realised "
            f"{_yuan(s['realised_referral_value'])} yuan (from the partners' results in "
            "the traffic)"
        )
    rej = s["traffic"]["rows_rejected"]
    if rej:
        out.print(f"[yellow]{rej:,} rows rejected[/yellow] (see rejects.jsonl)")


@app.command()
def schema(
    what: str = typer.Argument("strategy", help="strategy (JSON Schema) or reference (Markdown)"),
) -> None:
    """Print the strategy's JSON Schema (for editors) or its field reference."""
    from router.core.strategy_docs import reference_text, schema_text

    if what not in ("strategy", "reference"):
        raise typer.BadParameter(f"strategy or reference (value: {what!r})", param_hint="WHAT")
    sys.stdout.write(schema_text() if what == "strategy" else reference_text())


@app.command()
def serve(
    strategy: Path = typer.Option(..., "--strategy", "-s", help="strategy TOML"),
    store: str = typer.Option("memory://", "--store", help="quota store URL (redis://…)"),
    api_keys: Path = typer.Option(..., "--api-keys", help="API key file (TOML; `api-key`)"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="server processes"),
    deadline_ms: int = typer.Option(50, "--deadline-ms", min=1, help="each store call's budget"),
    max_batch: int = typer.Option(1000, "--max-batch", min=1),
    coalesce: int = typer.Option(
        64,
        "--coalesce",
        min=1,
        max=10_000,
        help="concurrent single decisions sent to the store together, at most (1: none)",
    ),  # fmt: skip
    shadow_strategy: Path | None = typer.Option(
        None, "--shadow-strategy", help="a challenger decided beside the champion, never answered"
    ),
    shadow_share: float = typer.Option(
        0.1, "--shadow-share", min=0.0, max=1.0, help="share of applicants it sees"
    ),
    shadow_log: Path | None = typer.Option(
        None, "--shadow-log", help="JSON lines: champion and challenger (compare --shadow-log)"
    ),
    billing_db: str | None = typer.Option(
        None, "--billing-db", help="billing database for POST /v1/postbacks (a path or URL)"
    ),
    partner_secrets: Path | None = typer.Option(
        None,
        "--partner-secrets",
        help="TOML: each partner's signing secret (postbacks; reading its referrals)",
    ),
) -> None:
    """Serve decisions over HTTP (router/service/app.py): POST /v1/decisions, /v1/decisions/batch;
    /healthz, /readyz, /metrics, /schema/openapi.json."""
    import os

    import uvicorn

    from router.service.app import Settings, create_app
    from router.service.one_write import OneWriteHttpToolsProtocol
    from router.store.registry import store_kind

    if workers > 1 and not store_kind(store).shared:
        # (each worker process would hold its own quotas: every cap N times over)
        raise typer.BadParameter(
            f"an in-process store is per process: with --workers {workers} use a shared "
            f"store (redis://…) (value: {store!r})",
            param_hint="--store",
        )
    settings = Settings(
        str(strategy.resolve()), store, str(api_keys.resolve()), deadline_ms,
        max_batch=max_batch,
        coalesce=coalesce,
        shadow_strategy=str(shadow_strategy.resolve()) if shadow_strategy else None,
        shadow_share=shadow_share if shadow_strategy else 0.0,
        shadow_log=str(shadow_log.resolve()) if shadow_log else None,
        billing_db=billing_db,
        partner_secrets=str(partner_secrets.resolve()) if partner_secrets else None,
    )  # fmt: skip
    # A bad strategy, store URL or key file stops here, with its error, not in a worker.
    create_app(settings).state.service.router.close()
    os.environ["ROUTER_SERVICE"] = settings.to_env()
    uvicorn.run("router.service.app:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="warning", access_log=False,
                http=OneWriteHttpToolsProtocol)  # fmt: skip


@app.command("api-key")
def api_key(
    key_id: str = typer.Option(..., "--id", help="who the key is for (logged)"),
    scopes: str = typer.Option("decide", "--scopes", help="comma-separated: decide, read, admin"),
) -> None:
    """Make an API key: prints the key (once; give it to the caller) and its entry for the
    key file (which holds only its SHA-256)."""
    import msgspec

    from router.service.keys import new_key

    key, entry = new_key(key_id, [s.strip() for s in scopes.split(",") if s.strip()])
    print(f"key: {key}", file=sys.stderr)
    sys.stdout.write("[[keys]]\n" + msgspec.toml.encode(entry).decode())


def _mount_billing() -> None:
    from router.billing.commands import bill, ledger_app, postbacks_app, reconcile

    app.add_typer(ledger_app, name="ledger")
    app.add_typer(postbacks_app, name="postbacks")
    app.command()(bill)
    app.command()(reconcile)


_mount_billing()


def main() -> None:
    """Entry point of ``referral-router`` and ``python -m router``: every failure ends as
    one line ``error: …`` on stderr — exit 2 for bad input (a file, a value, a config), 1 for
    an internal error — and a traceback only with ``--debug``."""
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv = [a for a in sys.argv if a != "--debug"]
    sys.argv = _global_options_first(sys.argv)
    from typer.exceptions import Abort, TyperException

    try:
        code = app(standalone_mode=False)
    except SystemExit:
        raise
    except TyperException as exc:  # click's usage errors (typer carries its own click)
        if type(exc).__name__ == "NoArgsIsHelpError":
            # a group run bare: its help, as click would
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)
        print(f"error: {scrub(_usage_line(exc, sys.argv))}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Abort):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        code, what = _classify(exc)
        hint = "" if code == 2 else " (run again with --debug for the traceback)"
        print(f"error: {what}{scrub(str(exc))}{hint}", file=sys.stderr)
        sys.exit(code)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_line(exc, argv: list[str]) -> str:
    """click's usage error as one line, with the value given (click leaves it out) and
    where to look: ``Invalid value for '--rows': … (value: '-1'); see generate --help``."""
    msg = " ".join(exc.format_message().split()).rstrip(".")
    param = getattr(exc, "param", None)
    for opt in getattr(param, "opts", ()) if param is not None else ():
        if not opt.startswith("-"):
            continue
        for i, token in enumerate(argv):
            if token == opt and i + 1 < len(argv):
                msg += f" (value: {argv[i + 1]!r})"
                break
            if token.startswith(opt + "="):
                msg += f" (value: {token[len(opt) + 1 :]!r})"
                break
        else:
            continue
        break
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "referral-router"
    return f"{msg}; see {where} --help"


def _global_options_first(argv: list[str]) -> list[str]:
    """``--log-level`` and ``--log-format`` are accepted after the command too
    (``decide --log-level debug``): moved in front of it, where the parser wants them."""
    moved, rest, i = [], [argv[0]], 1
    while i < len(argv):
        a = argv[i]
        if a in ("--log-level", "--log-format") and i + 1 < len(argv):
            moved += [a, argv[i + 1]]
            i += 2
            continue
        if a.startswith(("--log-level=", "--log-format=")):
            moved.append(a)
        else:
            rest.append(a)
        i += 1
    return [rest[0], *moved, *rest[1:]]


def _classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, prefix) of an exception that reached main()."""
    if isinstance(exc, RouterError):
        return 2, ""
    if isinstance(exc, OSError):  # the user's file or directory
        return 2, ""
    try:
        import pyarrow as pa

        if isinstance(exc, pa.ArrowInvalid):
            return 2, "cannot read the input: "
    except ImportError:  # pragma: no cover
        pass
    return 1, f"internal error: {type(exc).__name__}: "


def _pct_or_dash(x: float | None) -> str:
    """A rate as a percentage; "–" for none (a candidate that keeps no loan)."""
    return "–" if x is None else f"{x:.2%}"
