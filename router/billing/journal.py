"""The double-entry journal: balanced, immutable entries in integer minor units.

An entry is identified by a key its writer derives from the cause (``fee:referral:r_…``,
``postback:<event id>``), so a retried write is a no-op, never a second charge. Debits are
positive, credits negative; an entry's postings sum to zero. Nothing is ever updated or
deleted (the database refuses it): a correction is a new entry whose ``corrects`` names the
entry it reverses or adjusts.

Accounts are ``<kind>:<partner id>``, from the funder's point of view:

==================  ==========================================================
receivable          what the partner owes the funder (debit balance)
fee_revenue         per-lead fees earned (referral, accepted, funded)
revshare_revenue    the funder's share of interest the partner collected
returns             fees given back for approved returns (contra-revenue)
reserve             a branch partner's first-loss reserve deposits (credit balance)
absorbed_losses     branch losses the reserve absorbed (the reserve's contra account:
                    reserve held = -(reserve + absorbed_losses))
fixed_return        the branch's fixed return or profit share earned
funder_losses       the funder's own share of branch losses beyond the reserve
branch_loans        principal the funder lent in the second branch (against
                    ``funder_cash``, the funder's own money)
==================  ==========================================================

Each entry lands on a statement **period** (``YYYY-MM`` in the partner's time zone): its
own month, or, when that month was already closed, the next open one, flagged ``late`` —
a closed statement is never rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from router.billing.db import bulk_insert
from router.billing.schema import journal_entries, periods, postings
from router.core.errors import BillingError

#: The advisory lock (PostgreSQL) journal writers share and a period close takes alone.
CLOSE_LOCK = 0x52524250

RECEIVABLE = "receivable"
FEE_REVENUE = "fee_revenue"
REVSHARE_REVENUE = "revshare_revenue"
RETURNS = "returns"
RESERVE = "reserve"
ABSORBED_LOSSES = "absorbed_losses"
FIXED_RETURN = "fixed_return"
FUNDER_LOSSES = "funder_losses"
BRANCH_LOANS = "branch_loans"


def account(kind: str, partner_id: str) -> str:
    """The account ``kind`` of ``partner_id`` (kinds are this module's constants)."""
    return f"{kind}:{partner_id}"


class Line(NamedTuple):
    """One posting: ``amount`` minor units to ``account`` (debit > 0, credit < 0)."""

    account: str
    amount: int


class Entry(NamedTuple):
    """A journal entry to write: balanced lines, a business time and its cause's key."""

    key: str
    kind: str
    partner_id: str
    effective_at_ms: int
    lines: tuple[Line, ...]
    referral_id: str | None = None
    corrects: str | None = None
    memo: str = ""

    def check(self) -> None:
        """Raise :class:`BillingError` unless the lines balance and are whole numbers."""
        if not self.lines:
            raise BillingError(f"journal entry {self.key!r}: no postings")
        for ln in self.lines:
            if type(ln.amount) is not int:
                raise BillingError(
                    f"journal entry {self.key!r}: amount must be integer minor units "
                    f"(value: {ln.amount!r} on {ln.account})"
                )
        total = sum(ln.amount for ln in self.lines)
        if total != 0:
            raise BillingError(f"journal entry {self.key!r}: postings sum to {total}, not 0")


def transfer(debit: str, credit: str, amount: int) -> tuple[Line, ...]:
    """The two postings moving ``amount`` from ``credit`` to ``debit``."""
    return (Line(debit, amount), Line(credit, -amount))


def period_of(ms: int, tz: str) -> str:
    """The statement month ``YYYY-MM`` of an instant in time zone ``tz``."""
    t = datetime.fromtimestamp(ms / 1000, UTC).astimezone(ZoneInfo(tz))
    return f"{t.year:04d}-{t.month:02d}"


def next_period(period: str) -> str:
    """The month after ``period``."""
    y, m = int(period[:4]), int(period[5:7])
    return f"{y + m // 12:04d}-{m % 12 + 1:02d}"


def period_bounds(period: str, tz: str) -> tuple[int, int]:
    """The first millisecond of ``period`` and of the month after, in ``tz``."""

    def start(p: str) -> int:
        t = datetime(int(p[:4]), int(p[5:7]), 1, tzinfo=ZoneInfo(tz))
        return int(t.timestamp() * 1000)

    return start(period), start(next_period(period))


@dataclass
class Journal:
    """Writes entries inside the caller's transaction ``conn`` at recorded time
    ``now_ms``; ``tz_of`` gives a partner's statement time zone."""

    conn: sa.Connection
    now_ms: int
    tz_of: Callable[[str], str]
    _closed: dict[str, set[str]] = field(default_factory=dict)
    _landing: dict[tuple[str, int], tuple[str, bool]] = field(default_factory=dict)

    def closed(self, partner_id: str) -> set[str]:
        """The partner's closed periods."""
        got = self._closed.get(partner_id)
        if got is None:
            if not self._closed and self.conn.dialect.name == "postgresql":
                # Shared with other writers, exclusive for a period close: no entry lands
                # on a period while it is being closed (SQLite's write lock does this).
                self.conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": CLOSE_LOCK}
                )
            rows = self.conn.execute(
                sa.select(periods.c.period).where(periods.c.partner_id == partner_id)
            )
            got = self._closed[partner_id] = {r[0] for r in rows}
        return got

    def landing(self, partner_id: str, effective_ms: int) -> tuple[str, bool]:
        """The period an entry of this business time lands on, and whether it is late."""
        # (Every time zone's months start on a whole minute: one answer per minute.)
        key = (partner_id, effective_ms // 60_000)
        got = self._landing.get(key)
        if got is None:
            own = period_of(effective_ms, self.tz_of(partner_id))
            closed, p = self.closed(partner_id), own
            while p in closed:
                p = next_period(p)
            got = self._landing[key] = (p, p != own)
        return got

    def post_many(self, entries: Sequence[Entry], *, fresh: bool = False) -> list[str]:
        """Write the entries whose keys are new (in one round trip each for the entries and
        their postings); returns the keys written. Unbalanced entries raise before anything
        is written. ``fresh``: the caller knows the keys are new (an old one then fails the
        transaction on the primary key instead of being skipped)."""
        for e in entries:
            e.check()
        keys = [e.key for e in entries]
        if len(set(keys)) != len(keys):
            raise BillingError("journal: the same entry key twice in one write")
        have = set() if fresh else self.existing(keys)
        new = [e for e in entries if e.key not in have]
        if not new:
            return []
        rows: list[tuple] = []
        lines: list[tuple] = []
        now = self.now_ms
        for e in new:
            period, late = self.landing(e.partner_id, e.effective_at_ms)
            rows.append(
                (e.key, e.kind, e.partner_id, e.referral_id, e.effective_at_ms, now, period,
                 late, e.corrects, e.memo)
            )  # fmt: skip
            lines += [(e.key, ln.account, ln.amount) for ln in e.lines]
        bulk_insert(self.conn, journal_entries, rows, _ENTRY_COLS)
        bulk_insert(self.conn, postings, lines, _POSTING_COLS)
        return [e.key for e in new]

    def post(self, entry: Entry) -> bool:
        """Write one entry; False when its key was written before (nothing changes)."""
        return bool(self.post_many([entry]))

    def existing(self, keys: Iterable[str]) -> set[str]:
        """Which of these entry keys are already in the journal."""
        found: set[str] = set()
        keys = list(keys)
        for i in range(0, len(keys), 500):
            q = sa.select(journal_entries.c.key).where(journal_entries.c.key.in_(keys[i : i + 500]))
            found.update(r[0] for r in self.conn.execute(q))
        return found


#: The columns of the rows :meth:`Journal.post_many` writes, in the order it builds them.
_ENTRY_COLS = (
    "key", "kind", "partner_id", "referral_id", "effective_at_ms", "recorded_at_ms", "period",
    "late", "corrects", "memo",
)  # fmt: skip
_POSTING_COLS = ("entry_key", "account", "amount")


def balance(conn: sa.Connection, acct: str, period: str | None = None) -> int:
    """The sum of postings to ``acct`` (debit-positive), over all time or landed in
    ``period``."""
    q = sa.select(sa.func.coalesce(sa.func.sum(postings.c.amount), 0)).where(
        postings.c.account == acct
    )
    if period is not None:
        q = q.join_from(postings, journal_entries).where(journal_entries.c.period == period)
    return int(conn.execute(q).scalar_one())


def trial_balance(conn: sa.Connection) -> int:
    """The sum of every posting ever written: 0 in a consistent journal."""
    return int(
        conn.execute(sa.select(sa.func.coalesce(sa.func.sum(postings.c.amount), 0))).scalar_one()
    )
