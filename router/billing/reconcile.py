"""Reconciliation: our statement against the partner's own records, referral by referral,
and the billed referrals against the live quota counters, partner-day by partner-day.

The partner's file (CSV with a header, or JSON Lines) has one row per referral of the
period: ``referral_id``, ``status`` (``referred``, ``accepted``, ``rejected``, ``funded``,
``charged_off``, ``returned``) and ``amount`` (what they count as owed for it in the
period, integer minor units).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from router.billing.book import BillingBook
from router.billing.journal import period_bounds
from router.billing.schema import postbacks, referrals
from router.billing.statements import build_statement
from router.core.errors import BillingError

#: The status a referral's applied events add up to, strongest last.
_ORDER = ("referred", "accepted", "rejected", "funded", "charged_off", "returned")
_STATUS_OF = {
    "accepted": "accepted",
    "rejected": "rejected",
    "funded": "funded",
    "charge_off": "charged_off",
    "return": "returned",
}


@dataclass(frozen=True)
class Difference:
    """One difference: ``kind`` is missing_theirs, missing_ours, amount, status or
    counter; ``key`` the referral id (or ``partner day``)."""

    kind: str
    key: str
    ours: object
    theirs: object


def read_theirs(path: str | Path) -> dict[str, tuple[str, int]]:
    """The partner's rows: referral id -> (status, amount)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BillingError(f"cannot read {str(p)!r}: {exc}") from None
    rows: list[tuple[int, dict]] = []
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = [(reader.line_num, r) for r in reader]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise BillingError(f"{p}: line {n}: not JSON ({exc.msg})") from None
    out: dict[str, tuple[str, int]] = {}
    for n, r in rows:
        rid, status, amount = r.get("referral_id"), r.get("status"), r.get("amount")
        if not rid or status not in _ORDER:
            raise BillingError(
                f"{p}: line {n}: need referral_id and a status of {', '.join(_ORDER)} "
                f"(value: {status!r})"
            )
        try:
            out[str(rid)] = (str(status), int(amount))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BillingError(
                f"{p}: line {n}: amount: not an integer (value: {amount!r})"
            ) from None
    return out


def ours(
    conn: sa.Connection, partner_id: str, period: str, book: BillingBook
) -> dict[str, tuple[str, int]]:
    """Our rows for the period: every referral landed on it or moved money in it."""
    st = build_statement(conn, partner_id, period, book)
    amounts: dict[str, int] = {}
    for ln in st.lines:
        if ln.referral_id:
            amounts[ln.referral_id] = amounts.get(ln.referral_id, 0) + ln.amount
    ids = set(amounts) | {
        r[0]
        for r in conn.execute(
            sa.select(referrals.c.referral_id).where(
                referrals.c.partner_id == partner_id, referrals.c.period == period
            )
        )
    }
    status = {rid: "referred" for rid in ids}
    rows = conn.execute(
        sa.select(postbacks.c.referral_id, postbacks.c.type).where(
            postbacks.c.partner_id == partner_id, postbacks.c.status == "applied"
        )
    )
    for rid, t in rows:
        new = _STATUS_OF.get(t)  # (a repayment does not change the status)
        if rid in status and new and _ORDER.index(new) > _ORDER.index(status[rid]):
            status[rid] = new
    return {rid: (status[rid], amounts.get(rid, 0)) for rid in ids}


def differences(
    engine: Engine,
    partner_id: str,
    period: str,
    theirs: dict[str, tuple[str, int]],
    book: BillingBook,
) -> list[Difference]:
    """Every difference between our period and the partner's rows, by referral id."""
    with engine.connect() as conn:
        mine = ours(conn, partner_id, period, book)
    out = []
    for rid in sorted(set(mine) | set(theirs)):
        a, b = mine.get(rid), theirs.get(rid)
        if b is None:
            out.append(Difference("missing_theirs", rid, a, None))
        elif a is None:
            out.append(Difference("missing_ours", rid, None, b))
        else:
            if a[1] != b[1]:
                out.append(Difference("amount", rid, a[1], b[1]))
            if a[0] != b[0]:
                out.append(Difference("status", rid, a[0], b[0]))
    return out


def counter_differences(
    engine: Engine, store, strategy, partner_id: str, period: str
) -> list[Difference]:
    """Posted referrals (or, for the branch partner, branch loans) per day of the period
    against the day counter in the quota store (when there is a day cap). A counter also
    holds grants still pending at the moment it is read, and a day whose counter expired
    reads 0."""
    from router.core.windows import key_of
    from router.decide.allocate_base import make_bucket
    from router.decide.outcomes import BRANCH_BUCKET

    if strategy.branch is not None and partner_id == strategy.branch.partner_id:
        kind, caps, tz = "branch", strategy.branch.caps, strategy.timezone
        bucket = make_bucket(BRANCH_BUCKET, caps, tz)
    else:
        p = strategy.partner(partner_id)
        kind, caps, tz = "refer", p.caps, p.timezone
        bucket = make_bucket(p.id, caps, tz, p.dedupe_days)
    windows = [c.window for c in caps]
    if "day" not in windows:
        return []
    day = windows.index("day")
    start, end = period_bounds(period, tz)
    zone = ZoneInfo(tz)
    billed: dict[str, int] = {}
    with engine.connect() as conn:
        for (t,) in conn.execute(
            sa.select(referrals.c.effective_at_ms).where(
                referrals.c.partner_id == partner_id,
                referrals.c.kind == kind,
                referrals.c.effective_at_ms >= start,
                referrals.c.effective_at_ms < end,
            )
        ):
            d = datetime.fromtimestamp(t / 1000, zone).date().isoformat()
            billed[d] = billed.get(d, 0) + 1
    out = []
    d0 = datetime.fromtimestamp(start / 1000, zone)
    while int(d0.timestamp() * 1000) < end:
        t = int(d0.timestamp() * 1000)
        keys = tuple(key_of(t, w, tz) for w in windows)
        counted = store.usage(bucket, keys)[day][0]
        name = d0.date().isoformat()
        if counted != billed.get(name, 0):
            out.append(Difference("counter", f"{partner_id} {name}", billed.get(name, 0), counted))
        d0 = (d0 + timedelta(days=1, hours=2)).replace(hour=0)
    return out


def write_csv(diffs: list[Difference], path: str | Path) -> None:
    """The differences as CSV (kind, key, ours, theirs)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["kind", "key", "ours", "theirs"])
        for d in diffs:
            w.writerow([d.kind, d.key, d.ours, d.theirs])
