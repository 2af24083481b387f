"""Partner statements: one partner's month, from the journal, in JSON and CSV.

A statement holds exactly the journal entries that *landed* on its period (see
:mod:`router.billing.journal`): its own month's, plus late events from closed months as
adjustment lines. Every line names its referral and journal entry; every amount is integer
minor units and is what the entry moved on the partner's receivable (positive: the partner
owes it; negative: credited back). Nothing in it depends on when it is printed, so a closed
period prints byte for byte the same every time; closing stores its SHA-256 and printing it
again checks that hash.
"""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from router.billing.book import BillingBook, share
from router.billing.db import writing
from router.billing.journal import (
    ABSORBED_LOSSES,
    BRANCH_LOANS,
    CLOSE_LOCK,
    FIXED_RETURN,
    FUNDER_LOSSES,
    RECEIVABLE,
    RESERVE,
    account,
    period_bounds,
)
from router.billing.schema import journal_entries, periods, postbacks, postings, referrals
from router.core.errors import BillingError

DAY_MS = 86_400_000


class Line(msgspec.Struct, frozen=True, kw_only=True):
    """One statement line: one journal entry's effect on the partner's receivable."""

    entry: str
    kind: str
    referral_id: str | None
    effective_date: str
    amount: int
    late: bool
    corrects: str | None


class Branch(msgspec.Struct, frozen=True, kw_only=True):
    """The risk-share figures of a branch (co-operation) partner at the period's end."""

    loans_funded: int
    principal_outstanding: int
    reserve_deposits: int
    losses_absorbed: int
    reserve_held: int
    funder_losses: int
    partner_loss_share: int
    fixed_return: int
    top_up_due: int


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    """A partner's statement for one period."""

    partner_id: str
    period: str
    timezone: str
    referrals: int
    accepted: int
    funded: int
    returns_approved: int
    returns_refused: int
    fees: dict[str, int]
    rev_share: int
    returns: int
    adjustments: int
    total_due: int
    branch: Branch | None
    lines: list[Line]


_enc = msgspec.json.Encoder(order="sorted")


def build_statement(
    conn: sa.Connection, partner_id: str, period: str, book: BillingBook
) -> Statement:
    """The statement of ``partner_id`` for ``period`` as the journal holds it now."""
    check_period(period)
    tz = book.tz_of(partner_id)
    lines = _lines(conn, partner_id, period, tz)
    fees = {"referral": 0, "accepted": 0, "funded": 0}
    rev = returns = adjustments = 0
    for ln in lines:
        if ln.kind.endswith("_fee") and ln.kind[:-4] in fees:
            fees[ln.kind[:-4]] += ln.amount
        elif ln.kind == "rev_share":
            rev += ln.amount
        elif ln.kind == "return":
            returns += ln.amount
        if ln.late:
            adjustments += ln.amount
    counts = _counts(conn, partner_id, period, tz)
    return Statement(
        partner_id=partner_id,
        period=period,
        timezone=tz,
        referrals=_count_referrals(conn, partner_id, period),
        accepted=counts.get(("accepted", "applied"), 0)
        + _implied_accepts(conn, partner_id, period),
        funded=counts.get(("funded", "applied"), 0),
        returns_approved=counts.get(("return", "applied"), 0),
        returns_refused=counts.get(("return", "refused"), 0),
        fees=fees,
        rev_share=rev,
        returns=returns,
        adjustments=adjustments,
        total_due=sum(ln.amount for ln in lines),
        branch=_branch(conn, partner_id, period, book)
        if partner_id == book.branch_partner
        else None,
        lines=lines,
    )


def _lines(conn: sa.Connection, partner_id: str, period: str, tz: str) -> list[Line]:
    """The statement's lines: every journal entry of the partner's period with its
    receivable posting, in effective-time order, dated in the partner's time zone."""
    query = (
        sa.select(
            journal_entries.c.key,
            journal_entries.c.kind,
            journal_entries.c.referral_id,
            journal_entries.c.effective_at_ms,
            journal_entries.c.late,
            journal_entries.c.corrects,
            postings.c.amount,
        )
        .join_from(journal_entries, postings)
        .where(
            journal_entries.c.partner_id == partner_id,
            journal_entries.c.period == period,
            postings.c.account == account(RECEIVABLE, partner_id),
        )
        .order_by(journal_entries.c.effective_at_ms, journal_entries.c.key)
    )
    zone = ZoneInfo(tz)
    dates: dict[int, str] = {}

    def date_of(ms: int) -> str:
        # One conversion per minute of the month, not per line (a million lines).
        minute = ms // 60_000
        got = dates.get(minute)
        if got is None:
            t = datetime.fromtimestamp(minute * 60, UTC).astimezone(zone)
            got = dates[minute] = t.date().isoformat()
        return got

    return [
        Line(
            entry=key,
            kind=kind,
            referral_id=rid,
            effective_date=date_of(ms),
            amount=int(amount),
            late=bool(late),
            corrects=corrects,
        )
        for key, kind, rid, ms, late, corrects, amount in _raw_rows(conn, query)
    ]


def _raw_rows(conn: sa.Connection, query: sa.Select) -> list[tuple]:
    """The query's rows as the driver returns them: for a million statement lines,
    SQLAlchemy's row objects would cost more than the database."""
    compiled = query.compile(dialect=conn.dialect)
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        params = compiled.params
        if conn.dialect.paramstyle in ("qmark", "numeric"):
            cur.execute(str(compiled), tuple(params[k] for k in compiled.positiontup or ()))
        else:
            cur.execute(str(compiled), params)
        return list(cur.fetchall())
    finally:
        cur.close()


def _counts(conn, partner_id: str, period: str, tz: str) -> dict[tuple[str, str], int]:
    q = (
        sa.select(postbacks.c.type, postbacks.c.status, sa.func.count())
        .where(postbacks.c.partner_id == partner_id, postbacks.c.period == period)
        .group_by(postbacks.c.type, postbacks.c.status)
    )
    out = {(t, s): int(n) for t, s, n in conn.execute(q)}
    # Refused postbacks have no landing period: count them by their own month.
    start, end = period_bounds(period, tz)
    return out | {
        ("return", "refused"): int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    postbacks.c.partner_id == partner_id,
                    postbacks.c.type == "return",
                    postbacks.c.status == "refused",
                    postbacks.c.effective_at_ms >= start,
                    postbacks.c.effective_at_ms < end,
                )
            ).scalar_one()
        )
    }


def _implied_accepts(conn, partner_id: str, period: str) -> int:
    """Funded loans whose acceptance came only with the funded event."""
    accepted = sa.select(postbacks.c.referral_id).where(
        postbacks.c.type == "accepted", postbacks.c.status == "applied"
    )
    q = sa.select(sa.func.count()).where(
        postbacks.c.partner_id == partner_id,
        postbacks.c.period == period,
        postbacks.c.type == "funded",
        postbacks.c.status == "applied",
        postbacks.c.referral_id.not_in(accepted),
    )
    return int(conn.execute(q).scalar_one())


def _count_referrals(conn, partner_id: str, period: str) -> int:
    q = sa.select(sa.func.count()).where(
        referrals.c.partner_id == partner_id, referrals.c.period == period
    )
    return int(conn.execute(q).scalar_one())


def _sum(conn, acct: str, period: str, *, upto: bool, kind: str | None = None) -> int:
    q = (
        sa.select(sa.func.coalesce(sa.func.sum(postings.c.amount), 0))
        .join_from(postings, journal_entries)
        .where(postings.c.account == acct)
        .where(journal_entries.c.period <= period if upto else journal_entries.c.period == period)
    )
    if kind is not None:
        q = q.where(journal_entries.c.kind == kind)
    return int(conn.execute(q).scalar_one())


def _branch(conn, pid: str, period: str, book: BillingBook) -> Branch:
    outstanding = _sum(conn, account(BRANCH_LOANS, pid), period, upto=True)
    held = -(
        _sum(conn, account(RESERVE, pid), period, upto=True)
        + _sum(conn, account(ABSORBED_LOSSES, pid), period, upto=True)
    )
    return Branch(
        loans_funded=_sum(conn, account(BRANCH_LOANS, pid), period, upto=False, kind="branch_loan"),
        principal_outstanding=outstanding,
        reserve_deposits=-_sum(conn, account(RESERVE, pid), period, upto=False),
        losses_absorbed=_sum(conn, account(ABSORBED_LOSSES, pid), period, upto=False),
        reserve_held=held,
        funder_losses=_sum(conn, account(FUNDER_LOSSES, pid), period, upto=False),
        partner_loss_share=_sum(
            conn, account(RECEIVABLE, pid), period, upto=False, kind="loss_absorbed"
        ),
        fixed_return=-_sum(conn, account(FIXED_RETURN, pid), period, upto=False),
        top_up_due=max(0, share(outstanding, book.branch_reserve_ppm) - held),
    )


def render_json(st: Statement) -> bytes:
    """The statement as JSON (sorted keys, one trailing newline)."""
    return _enc.encode(st) + b"\n"


def render_csv(st: Statement) -> bytes:
    """The statement's lines as CSV, then its total."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    p, per = st.partner_id, st.period
    w.writerow(
        [
            "partner_id",
            "period",
            "entry",
            "kind",
            "referral_id",
            "effective_date",
            "amount",
            "late",
            "corrects",
        ]
    )
    w.writerows(
        (
            p,
            per,
            ln.entry,
            ln.kind,
            ln.referral_id or "",
            ln.effective_date,
            ln.amount,
            int(ln.late),
            ln.corrects or "",
        )
        for ln in st.lines
    )
    w.writerow([st.partner_id, st.period, "total", "", "", "", st.total_due, "", ""])
    return buf.getvalue().encode()


def digest(st: Statement) -> str:
    """SHA-256 of the JSON statement (what closing records)."""
    return hashlib.sha256(render_json(st)).hexdigest()


def closed_digest(conn, partner_id: str, period: str) -> str | None:
    """The stored hash of a closed period, or None while it is open."""
    row = conn.execute(
        sa.select(periods.c.statement_sha256).where(
            periods.c.partner_id == partner_id, periods.c.period == period
        )
    ).first()
    return row[0] if row else None


def statement(
    engine: Engine, partner_id: str, period: str, book: BillingBook
) -> tuple[Statement, bool]:
    """(statement, closed?) — for a closed period, checked against the hash taken at close
    (a mismatch is a :class:`BillingError`: the journal was changed behind our back)."""
    with engine.connect() as conn:
        _fresh_statistics(conn)
        st = build_statement(conn, partner_id, period, book)
        stored = closed_digest(conn, partner_id, period)
    if stored is not None and stored != digest(st):
        raise BillingError(
            f"statement {partner_id} {period} no longer matches what was closed "
            f"(sha256 {stored[:12]}…); the journal was altered"
        )
    return st, stored is not None


def _fresh_statistics(conn: sa.Connection) -> None:
    # PostgreSQL plans from table statistics; right after a month is loaded they say the
    # tables are small, and the statement's join becomes a nested loop (minutes for 1M
    # lines). ANALYZE samples a fixed number of rows: a second or two at any size.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE journal_entries, postings, referrals, postbacks")
        conn.commit()


def close_period(
    engine: Engine, partner_id: str, period: str, book: BillingBook, now_ms: int
) -> Statement:
    """Close a partner's period (after its grace days): later events for it land on the
    next open period. Refused with the reason while the grace period runs."""
    check_period(period)
    _, end = period_bounds(period, book.tz_of(partner_id))
    due = end + book.policy.grace_days * DAY_MS
    if now_ms < due:
        opens = datetime.fromtimestamp(due / 1000, UTC).isoformat()
        raise BillingError(
            f"period {period} of {partner_id} can close from {opens} "
            f"({book.policy.grace_days} grace days after its end)"
        )
    with writing(engine) as conn:
        if conn.dialect.name == "postgresql":  # wait for journal writers in flight
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLOSE_LOCK})
        if closed_digest(conn, partner_id, period) is not None:
            raise BillingError(f"period {period} of {partner_id} is already closed")
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE journal_entries, postings, referrals, postbacks")
        st = build_statement(conn, partner_id, period, book)
        conn.execute(
            periods.insert(),
            {
                "partner_id": partner_id,
                "period": period,
                "closed_at_ms": now_ms,
                "statement_sha256": digest(st),
            },
        )
    return st


def check_period(period: str) -> None:
    """A statement period is ``YYYY-MM`` (a month 01–12)."""
    ok = len(period) == 7 and period[4] == "-" and period[:4].isdigit() and period[5:].isdigit()
    if not ok or not 1 <= int(period[5:]) <= 12:
        raise BillingError(f"period must be YYYY-MM (value: {period!r})")
