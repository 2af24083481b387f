"""The written rules for applying partner postbacks to the journal.

Every event is stored, by its ``event_id``, with one verdict:

``applied``
    its facts are recorded and its money, if any, is in the journal. Fees are keyed per
    referral and fee (``fee:funded:<referral>``), so no fact is charged twice whichever
    events carry it: a ``funded`` also charges the accepted fee when no ``accepted``
    came first (acceptance is implied), and a later ``accepted`` then adds nothing.
``waiting``
    it needs something not here yet — its referral is not consumed from the ledger yet,
    or a repayment / charge-off arrives before the loan's ``funded``. It is tried again
    on every later ingest (and by :func:`retry_waiting`), in business-time order.
``review``
    a return under a review-only returns policy: nothing moves until
    :func:`decide_return` approves or refuses it.
``refused``
    never applied, with the reason: the referral is another partner's; a fact that
    contradicts the referral's history (rejected after accepted, a second funded, a
    second repayment for one period, anything after an approved return); a return for
    a reason the policy does not allow, outside its window, over the period's cap, or of
    a funded loan.

The same id with the same content is a no-op (``duplicate``); with other content a
``conflict`` kept in ``postback_conflicts`` and never applied. An event whose month is
already closed lands, like every journal entry, on the partner's next open statement as a
late adjustment; a closed statement is never rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa

from router.billing.book import BillingBook, share
from router.billing.journal import (
    ABSORBED_LOSSES,
    BRANCH_LOANS,
    FEE_REVENUE,
    FIXED_RETURN,
    FUNDER_LOSSES,
    RECEIVABLE,
    RESERVE,
    RETURNS,
    REVSHARE_REVENUE,
    Entry,
    Journal,
    Line,
    account,
    balance,
    transfer,
)
from router.billing.postbacks import (
    Accepted,
    ChargeOff,
    Funded,
    Postback,
    Rejected,
    Repayment,
    Return,
    canonical,
    content_hash,
    event_type,
)
from router.billing.schema import (
    journal_entries,
    postback_conflicts,
    postbacks,
    postings,
    referrals,
)

DAY_MS = 86_400_000
_FEE_KINDS = ("referral_fee", "accepted_fee", "funded_fee")


@dataclass(frozen=True)
class Verdict:
    """What happened to one postback."""

    event_id: str
    status: str  # applied | waiting | review | refused | duplicate | conflict
    reason: str = ""


def _ms(ev: Postback) -> int:
    return int(ev.occurred_at.timestamp() * 1000)


def ingest_events(
    conn: sa.Connection, events: Sequence[Postback], book: BillingBook, now_ms: int
) -> list[Verdict]:
    """Store and apply ``events`` in order (inside the caller's transaction), then retry
    the waiting ones; returns a verdict per event given."""
    journal = Journal(conn, now_ms, book.tz_of)
    # One query a few hundred events (a round trip each was most of an ingest's time):
    # the content hashes of events ingested before, and the referrals (written by the
    # ledger consumer; nothing here changes them).
    seen = _by_key(conn, postbacks.c.event_id, postbacks.c.content_sha256, events, "event_id")
    refs = _by_key(conn, referrals.c.referral_id, None, events, "referral_id")
    out = []
    for ev in events:
        h = content_hash(ev)
        have = seen.get(ev.event_id)
        if have is not None:
            if have == h:
                out.append(Verdict(ev.event_id, "duplicate", "already ingested"))
                continue
            conn.execute(
                postback_conflicts.insert(),
                {
                    "event_id": ev.event_id,
                    "content_sha256": h,
                    "body": canonical(ev).decode(),
                    "recorded_at_ms": now_ms,
                },
            )
            out.append(
                Verdict(ev.event_id, "conflict", "same event id, different content: not applied")
            )
            continue
        status, reason, entries = judge(conn, journal, ev, book, refs.get(ev.referral_id))
        period = _apply(journal, ev, status, entries)
        seen[ev.event_id] = h
        conn.execute(
            postbacks.insert(),
            {
                "event_id": ev.event_id,
                "partner_id": ev.partner_id,
                "referral_id": ev.referral_id,
                "type": event_type(ev),
                "content_sha256": h,
                "body": canonical(ev).decode(),
                "effective_at_ms": _ms(ev),
                "recorded_at_ms": now_ms,
                "status": status,
                "period": period,
                "reason": reason,
            },
        )
        out.append(Verdict(ev.event_id, status, reason))
    retry_waiting(conn, book, now_ms, journal)
    return out


def _apply(journal: Journal, ev: Postback, status: str, entries: list[Entry]) -> str | None:
    if status != "applied":
        return None
    journal.post_many(entries)  # (it skips keys written before: a retried event is a no-op)
    return journal.landing(ev.partner_id, _ms(ev))[0]


def retry_waiting(
    conn: sa.Connection, book: BillingBook, now_ms: int, journal: Journal | None = None
) -> int:
    """Try the waiting postbacks again, oldest business time first; returns how many were
    decided (applied or refused)."""
    journal = journal or Journal(conn, now_ms, book.tz_of)
    rows = conn.execute(
        sa.select(postbacks.c.event_id, postbacks.c.body)
        .where(postbacks.c.status == "waiting")
        .order_by(postbacks.c.effective_at_ms, postbacks.c.event_id)
    ).all()
    done = 0
    for event_id, body in rows:
        ev = msgspec.json.decode(body, type=Postback)
        status, reason, entries = judge(conn, journal, ev, book)
        if status == "waiting":
            continue
        period = _apply(journal, ev, status, entries)
        conn.execute(
            postbacks.update()
            .where(postbacks.c.event_id == event_id)
            .values(status=status, reason=reason, period=period)
        )
        done += 1
    return done


def _by_key(
    conn: sa.Connection,
    key: sa.Column,
    value: sa.Column | None,
    events: Sequence[Postback],
    attr: str,
) -> dict[str, Any]:
    """The rows whose ``key`` is one of the events' ``attr`` (key -> ``value``, or the
    whole row when ``value`` is None), a few hundred keys a query."""
    wanted = sorted({getattr(e, attr) for e in events})
    out: dict[str, Any] = {}
    for i in range(0, len(wanted), 500):
        cols = [key, value] if value is not None else [key.table]
        rows = conn.execute(sa.select(*cols).where(key.in_(wanted[i : i + 500])))
        for r in rows:
            out[r[0]] = r[1] if value is not None else r
    return out


def judge(
    conn: sa.Connection, journal: Journal, ev: Postback, book: BillingBook, ref: Any = None
) -> tuple[str, str, list[Entry]]:
    """The verdict on one event given what is recorded: (status, reason, journal entries).
    ``ref``: the referral's row when the caller has it already."""
    if ref is None:
        ref = conn.execute(
            sa.select(referrals).where(referrals.c.referral_id == ev.referral_id)
        ).first()
    if ref is None:
        return "waiting", "unknown referral (not consumed from the ledger yet?)", []
    if ref.partner_id != ev.partner_id:
        return "refused", f"referral {ev.referral_id} is not {ev.partner_id}'s", []
    facts = _facts(conn, ev.referral_id)
    if "return" in facts:
        return "refused", f"referral was returned (event {facts['return']})", []
    match ev:
        case Accepted():
            if "rejected" in facts:
                return "refused", f"already rejected (event {facts['rejected']})", []
            if "accepted" in facts:
                return "refused", f"already accepted (event {facts['accepted']})", []
            return "applied", "", _fee(ref, "accepted", ref.fee_per_accepted, ev)
        case Rejected():
            for t in ("accepted", "funded", "rejected"):
                if t in facts:
                    return "refused", f"already {t} (event {facts[t]})", []
            return "applied", "", []
        case Funded():
            for t in ("rejected", "funded"):
                if t in facts:
                    return "refused", f"already {t} (event {facts[t]})", []
            if ref.kind == "branch":
                return "applied", "", _branch_funded(ref, ev, book)
            return (
                "applied",
                "",
                (
                    _fee(ref, "accepted", ref.fee_per_accepted, ev)
                    + _fee(ref, "funded", ref.fee_per_funded, ev)
                ),
            )
        case Repayment():
            if "funded" not in facts:
                return "waiting", "repayment before the loan's funded event", []
            if "charge_off" in facts:
                return "refused", f"loan was charged off (event {facts['charge_off']})", []
            key = f"repay:{ref.referral_id}:{ev.period}"
            if journal.existing([key]) or _repaid(conn, ref.referral_id, ev.period):
                return "refused", f"repayment for {ev.period} already recorded", []
            return "applied", "", _repayment(conn, ref, ev, key, book)
        case ChargeOff():
            if "funded" not in facts:
                return "waiting", "charge-off before the loan's funded event", []
            if "charge_off" in facts:
                return "refused", f"already charged off (event {facts['charge_off']})", []
            return "applied", "", _branch_loss(conn, ref, ev, book) if ref.kind == "branch" else []
        case Return():
            return _judge_return(conn, journal, ref, ev, facts, book)
    raise AssertionError(ev)


def _facts(conn: sa.Connection, referral_id: str) -> dict[str, str]:
    """Applied event types of a referral -> the first event id that applied it."""
    rows = conn.execute(
        sa.select(postbacks.c.type, postbacks.c.event_id)
        .where(postbacks.c.referral_id == referral_id, postbacks.c.status == "applied")
        .order_by(postbacks.c.effective_at_ms)
    )
    out: dict[str, str] = {}
    for t, eid in rows:
        out.setdefault(t, eid)
    return out


def _repaid(conn: sa.Connection, referral_id: str, period: str) -> bool:
    rows = conn.execute(
        sa.select(postbacks.c.body).where(
            postbacks.c.referral_id == referral_id,
            postbacks.c.type == "repayment",
            postbacks.c.status == "applied",
        )
    )
    return any(msgspec.json.decode(b, type=Repayment).period == period for (b,) in rows)


def _fee(ref, what: str, amount: int, ev: Postback) -> list[Entry]:
    if not amount:
        return []
    pid = ref.partner_id
    return [
        Entry(
            key=f"fee:{what}:{ref.referral_id}",
            kind=f"{what}_fee",
            partner_id=pid,
            referral_id=ref.referral_id,
            effective_at_ms=_ms(ev),
            lines=transfer(account(RECEIVABLE, pid), account(FEE_REVENUE, pid), amount),
            memo=f"event {ev.event_id}",
        )
    ]


def _repayment(conn, ref, ev: Repayment, key: str, book: BillingBook) -> list[Entry]:
    pid = ref.partner_id
    if ref.kind == "branch":
        if book.branch_return_model == "share":
            amount = share(ev.interest, book.branch_profit_share_ppm)
        else:  # a fixed annual return on the principal outstanding before this repayment
            outstanding = _outstanding(conn, ref.referral_id)
            amount = (outstanding * book.branch_fixed_return_ppm + 6_000_000) // 12_000_000
        lines = transfer(account(RECEIVABLE, pid), account(FIXED_RETURN, pid), amount)
        lines += (Line(account(BRANCH_LOANS, pid), -ev.principal),) if ev.principal else ()
        lines += (Line("funder_cash", ev.principal),) if ev.principal else ()
        kind = "branch_return"
    else:
        amount = share(ev.interest, ref.rev_share_ppm)
        lines = transfer(account(RECEIVABLE, pid), account(REVSHARE_REVENUE, pid), amount)
        kind = "rev_share"
    if not any(ln.amount for ln in lines):
        return []
    return [
        Entry(
            key=key,
            kind=kind,
            partner_id=pid,
            referral_id=ref.referral_id,
            effective_at_ms=_ms(ev),
            lines=tuple(ln for ln in lines if ln.amount),
            memo=f"event {ev.event_id}: period {ev.period}, interest {ev.interest}",
        )
    ]


def _outstanding(conn, referral_id: str) -> int:
    """A branch loan's principal outstanding: lent, less repaid and written off."""
    q = (
        sa.select(sa.func.coalesce(sa.func.sum(postings.c.amount), 0))
        .join_from(postings, journal_entries)
        .where(
            journal_entries.c.referral_id == referral_id,
            postings.c.account.like(f"{BRANCH_LOANS}:%"),
        )
    )
    return int(conn.execute(q).scalar_one())


def reserve_held(conn, partner_id: str) -> int:
    """The branch partner's reserve still held: deposits less the losses it absorbed
    (``absorbed_losses`` is the reserve's contra account)."""
    return -(
        balance(conn, account(RESERVE, partner_id))
        + balance(conn, account(ABSORBED_LOSSES, partner_id))
    )


def _branch_funded(ref, ev: Funded, book: BillingBook) -> list[Entry]:
    """The funder lends the principal; the partner owes its first-loss reserve deposit."""
    pid, rid = ref.partner_id, ref.referral_id
    deposit = share(ev.amount, book.branch_reserve_ppm)
    out = [
        Entry(
            key=f"branch:loan:{rid}",
            kind="branch_loan",
            partner_id=pid,
            referral_id=rid,
            effective_at_ms=_ms(ev),
            lines=transfer(account(BRANCH_LOANS, pid), "funder_cash", ev.amount),
            memo=f"event {ev.event_id}",
        )
    ]
    if deposit:
        out.append(
            Entry(
                key=f"branch:reserve:{rid}",
                kind="reserve_deposit",
                partner_id=pid,
                referral_id=rid,
                effective_at_ms=_ms(ev),
                lines=transfer(account(RECEIVABLE, pid), account(RESERVE, pid), deposit),
                memo=f"event {ev.event_id}: reserve on {ev.amount}",
            )
        )
    return out


def _branch_loss(conn, ref, ev: ChargeOff, book: BillingBook) -> list[Entry]:
    """A written-off branch loan: the partner's reserve absorbs it first; of what exceeds
    the reserve the funder bears its ``funder_loss_share`` and the partner owes the rest."""
    pid, rid = ref.partner_id, ref.referral_id
    loss = min(ev.principal, _outstanding(conn, rid))
    held = reserve_held(conn, pid)
    absorbed = max(0, min(loss, held))
    excess = loss - absorbed
    funder = share(excess, book.branch_funder_loss_ppm)
    lines = [
        Line(account(BRANCH_LOANS, pid), -loss),
        Line(account(ABSORBED_LOSSES, pid), absorbed),
        Line(account(RECEIVABLE, pid), excess - funder),
        Line(account(FUNDER_LOSSES, pid), funder),
    ]
    lines = [ln for ln in lines if ln.amount]
    if not lines:
        return []
    entry = Entry(
        key=f"branch:loss:{rid}",
        kind="loss_absorbed",
        partner_id=pid,
        referral_id=rid,
        effective_at_ms=_ms(ev),
        lines=tuple(lines),
        memo=f"event {ev.event_id}: loss {loss}, reserve absorbed {absorbed}",
    )
    return [entry]


def _judge_return(conn, journal: Journal, ref, ev: Return, facts, book: BillingBook):
    policy = book.returns_of(ref.partner_id)
    if "funded" in facts:
        return "refused", f"a funded loan cannot be returned (event {facts['funded']})", []
    if ev.reason not in policy.reasons:
        return "refused", f"reason {ev.reason!r} not allowed ({', '.join(policy.reasons)})", []
    age = _ms(ev) - ref.effective_at_ms
    if age > policy.window_days * DAY_MS:
        return "refused", f"outside the {policy.window_days}-day return window", []
    if age < 0:
        return "refused", "return dated before the referral", []
    period = journal.landing(ref.partner_id, _ms(ev))[0]
    made = _count(conn, postbacks, ref.partner_id, period, type="return", status="applied")
    base = _count(conn, referrals, ref.partner_id, period)
    if (made + 1) * 1_000_000 > base * int(round(policy.max_rate * 1_000_000)):
        return (
            "refused",
            f"over the return cap: {made} of {base} referrals in {period} returned "
            f"(max {policy.max_rate:.2%})",
            [],
        )
    if not policy.auto_approve:
        return "review", "held for review (returns policy)", []
    return "applied", "", reversals(conn, ref.referral_id, ev)


def reversals(conn, referral_id: str, ev: Postback) -> list[Entry]:
    """The entries giving back every per-lead fee charged on a referral (an approved
    return), each linked to the fee entry it reverses."""
    rows = conn.execute(
        sa.select(journal_entries.c.key, journal_entries.c.partner_id)
        .where(journal_entries.c.referral_id == referral_id, journal_entries.c.kind.in_(_FEE_KINDS))
        .order_by(journal_entries.c.key)
    ).all()
    out = []
    for key, pid in rows:
        amount = balance_of_entry(conn, key, account(RECEIVABLE, pid))
        out.append(
            Entry(
                key=f"return:{key}",
                kind="return",
                partner_id=pid,
                referral_id=referral_id,
                effective_at_ms=_ms(ev),
                lines=transfer(account(RETURNS, pid), account(RECEIVABLE, pid), amount),
                corrects=key,
                memo=f"event {ev.event_id}: return ({getattr(ev, 'reason', '')})",
            )
        )
    return out


def balance_of_entry(conn, key: str, acct: str) -> int:
    """What one journal entry posted to one account."""
    q = sa.select(sa.func.coalesce(sa.func.sum(postings.c.amount), 0)).where(
        postings.c.entry_key == key, postings.c.account == acct
    )
    return int(conn.execute(q).scalar_one())


def _count(conn, table, partner_id: str, period: str, **where) -> int:
    q = (
        sa.select(sa.func.count())
        .select_from(table)
        .where(table.c.partner_id == partner_id, table.c.period == period)
    )
    for k, v in where.items():
        q = q.where(table.c[k] == v)
    return int(conn.execute(q).scalar_one())


def decide_return(
    conn: sa.Connection, event_id: str, approve: bool, book: BillingBook, now_ms: int, why: str = ""
) -> Verdict:
    """Approve or refuse a return held for review; approving checks the cap again."""
    row = conn.execute(sa.select(postbacks).where(postbacks.c.event_id == event_id)).first()
    if row is None or row.status != "review":
        return Verdict(event_id, row.status if row else "unknown", "not held for review")
    journal = Journal(conn, now_ms, book.tz_of)
    ev = msgspec.json.decode(row.body, type=Postback)
    status, reason, entries = "refused", why or "refused on review", []
    if approve:
        ref = conn.execute(
            sa.select(referrals).where(referrals.c.referral_id == ev.referral_id)
        ).one()
        policy = book.returns_of(ref.partner_id)
        period = journal.landing(ref.partner_id, _ms(ev))[0]
        made = _count(conn, postbacks, ref.partner_id, period, type="return", status="applied")
        base = _count(conn, referrals, ref.partner_id, period)
        if (made + 1) * 1_000_000 > base * int(round(policy.max_rate * 1_000_000)):
            reason = f"over the return cap: {made} of {base} referrals in {period} returned"
        else:
            status, reason, entries = (
                "applied",
                "approved on review",
                reversals(conn, ev.referral_id, ev),
            )
    landed = _apply(journal, ev, status, entries)
    conn.execute(
        postbacks.update()
        .where(postbacks.c.event_id == event_id)
        .values(status=status, reason=reason, period=landed)
    )
    return Verdict(event_id, status, reason)
