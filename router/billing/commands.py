"""The billing commands of the ``referral-router`` CLI: ``ledger consume``, ``postbacks
ingest`` / ``review``, ``bill`` and ``reconcile`` (mounted by :mod:`router.cli`)."""

from __future__ import annotations

import gc
import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from router.core.errors import InputError, RouterError

ledger_app = typer.Typer(no_args_is_help=True, help="The referral ledger (Redis streams).")
postbacks_app = typer.Typer(no_args_is_help=True, help="Partner postbacks (outcome events).")
out = Console(width=120) if not Console().is_terminal else Console()
err = Console(stderr=True, soft_wrap=True)

_DB_HELP = "billing database: a file path (SQLite) or postgresql+psycopg://user@host:port/db"
_STRATEGY = typer.Option(..., "--strategy", "-s", help="strategy TOML (partner book, branch)")


def _fail(exc: Exception, code: int = 2) -> None:
    err.print(f"error: {exc}", markup=False, highlight=False)
    raise typer.Exit(code)


def _book(strategy: Path):
    from router.billing.book import BillingBook
    from router.core.config import load_strategy

    return BillingBook.from_strategy(load_strategy(strategy))


def _known_partner(engine, book, partner: str, period: str) -> None:
    """The period is a month, and the partner to bill is in the partner book or was
    referred to before it left it; anything else is a typo, refused (not an empty
    statement)."""
    import sqlalchemy as sa

    from router.billing.schema import referrals
    from router.billing.statements import check_period

    check_period(period)
    if partner in book.zones:
        return
    with engine.connect() as conn:
        seen = conn.execute(
            sa.select(referrals.c.referral_id).where(referrals.c.partner_id == partner).limit(1)
        ).first()
    if seen is None:
        known = ", ".join(sorted(book.zones))
        raise InputError(
            f"unknown partner {partner!r}: not in the strategy's partner book and never "
            f"referred to in this database (partners: {known})"
        )


@ledger_app.command("consume")
def consume(
    redis_url: str = typer.Option(..., "--redis", help="the router's Redis store URL (?prefix=…)"),
    db: str = typer.Option(..., "--db", help=_DB_HELP),
    strategy: Path = _STRATEGY,
    group: str = typer.Option("billing", "--group", help="consumer group"),
    name: str | None = typer.Option(None, "--name", help="consumer name (default host-pid)"),
    batch: int = typer.Option(5000, "--batch", min=1, max=100_000),
    min_idle_ms: int = typer.Option(
        60_000, "--min-idle-ms", min=100, help="claim another consumer's entry idle this long"
    ),
    max_deliveries: int = typer.Option(5, "--max-deliveries", min=1, max=1000),
    once: bool = typer.Option(False, "--once", help="drain what is there, then exit"),
    trim: bool = typer.Option(False, "--trim", help="trim entries every group acknowledged"),
) -> None:
    """Consume the ledger streams into the billing database, exactly once (SIGTERM stops
    after the batch in hand)."""
    from router.billing.consumer import ConsumerSettings, LedgerConsumer
    from router.billing.db import open_billing
    from router.store.redis import RedisQuotaStore

    try:
        book = _book(strategy)
        engine = open_billing(db)
        store = RedisQuotaStore.from_url(redis_url, timeout_ms=10_000)
        settings = ConsumerSettings(
            group=group,
            batch=batch,
            min_idle_ms=min_idle_ms,
            max_deliveries=max_deliveries,
            trim=trim,
        )
        if name:
            settings.name = name
        consumer = LedgerConsumer(store, engine, book, settings)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: consumer.stop())
        # What was built so far (imports, SQLAlchemy's tables, the connections) lives as
        # long as the process: frozen out of the cyclic collector's sight, so its passes
        # over each batch's short-lived rows no longer walk it (~25% of the time a batch
        # took). The service's workers do the same.
        gc.freeze()
        t0 = time.perf_counter()
        stats = consumer.run(once=once)
    except RouterError as exc:
        _fail(exc)
    summary = stats.summary() | {"seconds": round(time.perf_counter() - t0, 3)}
    out.print(json.dumps(summary), markup=False, highlight=False)


@postbacks_app.command("ingest")
def ingest(
    path: Path = typer.Argument(..., help="postbacks file: .jsonl (JSON Lines) or .csv"),
    db: str = typer.Option(..., "--db", help=_DB_HELP),
    strategy: Path = _STRATEGY,
) -> None:
    """Ingest postbacks by event id (the same file twice changes nothing). Bad lines are
    listed and the run exits 2; the good ones are applied."""
    from router.billing.db import open_billing, writing
    from router.billing.postback_rules import ingest_events
    from router.billing.postbacks import read_postbacks

    try:
        book = _book(strategy)
        engine = open_billing(db)
        good: list[tuple[int, Any]] = []
        bad: list[tuple[int, Any]] = []
        for line, ev in read_postbacks(path):
            (bad if isinstance(ev, InputError) else good).append((line, ev))
        with writing(engine) as conn:
            verdicts = ingest_events(conn, [e for _, e in good], book, int(time.time() * 1000))
    except RouterError as exc:
        _fail(exc)
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.status] = counts.get(v.status, 0) + 1
    table = Table("verdict", "events")
    for k in ("applied", "waiting", "review", "refused", "duplicate", "conflict"):
        table.add_row(k, f"{counts.get(k, 0):,}")
    out.print(table)
    for (line, _), v in zip(good, verdicts, strict=True):
        if v.status in ("refused", "conflict"):
            err.print(f"line {line}: {v.event_id}: {v.status}: {v.reason}", markup=False)
    for line, problem in bad:
        err.print(f"error: {path}: line {line}: {problem}", markup=False, highlight=False)
    if bad:
        raise typer.Exit(2)


@postbacks_app.command("review")
def review(
    event_id: str = typer.Argument(..., help="the return's event id"),
    db: str = typer.Option(..., "--db", help=_DB_HELP),
    strategy: Path = _STRATEGY,
    approve: bool = typer.Option(..., "--approve/--refuse", help="approve or refuse it"),
    reason: str = typer.Option("", "--reason", help="why (kept with the event)"),
) -> None:
    """Approve or refuse a return held for review."""
    from router.billing.db import open_billing, writing
    from router.billing.postback_rules import decide_return

    try:
        book = _book(strategy)
        with writing(open_billing(db)) as conn:
            v = decide_return(conn, event_id, approve, book, int(time.time() * 1000), reason)
    except RouterError as exc:
        _fail(exc)
    out.print(f"{v.event_id}: {v.status} {v.reason}".rstrip(), markup=False)
    if v.status not in ("applied", "refused") or v.reason == "not held for review":
        raise typer.Exit(2)


def bill(
    db: str = typer.Option(..., "--db", help=_DB_HELP),
    partner: str = typer.Option(..., "--partner", "-p", help="partner id"),
    period: str = typer.Option(..., "--period", help="statement month YYYY-MM"),
    strategy: Path = _STRATEGY,
    out_dir: Path = typer.Option(Path("."), "--out", "-o", help="where the files go"),
    close: bool = typer.Option(False, "--close", help="close the period (after its grace)"),
    now: str | None = typer.Option(None, "--now", help="ISO time to close at (default: now)"),
) -> None:
    """A partner's statement for a month: statement_<partner>_<period>.json and .csv."""
    from router.billing.db import open_billing
    from router.billing.statements import close_period, render_csv, render_json, statement

    try:
        book = _book(strategy)
        engine = open_billing(db)
        _known_partner(engine, book, partner, period)
        if close:
            at = _parse_now(now)
            st, closed = close_period(engine, partner, period, book, at), True
        else:
            st, closed = statement(engine, partner, period, book)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / f"statement_{partner}_{period}"
        stem.with_suffix(".json").write_bytes(render_json(st))
        stem.with_suffix(".csv").write_bytes(render_csv(st))
    except RouterError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(RouterError(f"cannot write the statement to {str(out_dir)!r}: {exc.strerror}"))
    table = Table(title=f"{partner} {period} ({'closed' if closed else 'open'})")
    table.add_column("line")
    table.add_column("amount / count", justify="right")
    rows = [
        ("referrals", st.referrals),
        ("accepted", st.accepted),
        ("funded", st.funded),
        *((f"fee per {k}", v) for k, v in st.fees.items()),
        ("revenue share", st.rev_share),
        (f"returns ({st.returns_approved} approved, {st.returns_refused} refused)", st.returns),
        ("late adjustments (included)", st.adjustments),
    ]
    if st.branch is not None:
        b = st.branch
        rows += [
            ("branch: reserve held", b.reserve_held),
            ("branch: losses absorbed", b.losses_absorbed),
            ("branch: partner's loss share", b.partner_loss_share),
            ("branch: return", b.fixed_return),
            ("branch: reserve top-up due", b.top_up_due),
        ]
    for label, v in rows:
        table.add_row(label, f"{v:,}")
    table.add_row("total due (minor units)", f"{st.total_due:,}")
    out.print(table)
    out.print(f"statement: {stem.with_suffix('.json')} {stem.with_suffix('.csv')}", markup=False)


def _parse_now(now: str | None) -> int:
    if now is None:
        return int(time.time() * 1000)
    try:
        t = datetime.fromisoformat(now)
    except ValueError:
        raise RouterError(f"--now: not an ISO time (value: {now!r})") from None
    if t.tzinfo is None:
        raise RouterError(f"--now: give a time zone offset (value: {now!r})")
    return int(t.timestamp() * 1000)


def reconcile(
    db: str = typer.Option(..., "--db", help=_DB_HELP),
    partner: str = typer.Option(..., "--partner", "-p", help="partner id"),
    period: str = typer.Option(..., "--period", help="statement month YYYY-MM"),
    theirs: Path = typer.Option(..., "--theirs", help="the partner's file (CSV or JSON Lines)"),
    strategy: Path = _STRATEGY,
    redis_url: str | None = typer.Option(
        None, "--redis", help="also check billed referrals against the quota counters"
    ),
    out_file: Path | None = typer.Option(None, "--out", help="write the differences as CSV"),
) -> None:
    """Every difference with the partner's own file, by referral id (exit 1 if any)."""
    from router.billing.db import open_billing
    from router.billing.reconcile import counter_differences, differences, read_theirs, write_csv

    try:
        book = _book(strategy)
        engine = open_billing(db)
        _known_partner(engine, book, partner, period)
        diffs = differences(engine, partner, period, read_theirs(theirs), book)
        if redis_url:
            from router.core.config import load_strategy
            from router.store.redis import RedisQuotaStore

            store = RedisQuotaStore.from_url(redis_url, timeout_ms=10_000)
            diffs += counter_differences(engine, store, load_strategy(strategy), partner, period)
        if out_file is not None:
            write_csv(diffs, out_file)
    except RouterError as exc:
        _fail(exc)
    table = Table("kind", "referral / day", "ours", "theirs")
    for d in diffs[:50]:
        table.add_row(d.kind, d.key, str(d.ours), str(d.theirs))
    out.print(table)
    out.print(f"{len(diffs):,} differences" + (f" (all in {out_file})" if out_file else ""))
    if diffs:
        raise typer.Exit(1)
