"""Apply referral-ledger stream entries to the billing database, exactly once.

Each stream entry is written with its dedupe key — (stream, entry id) in ``ledger_events``
and the referral id in ``referrals`` — in the same transaction as its postings, so a
crash before the commit leaves nothing and a crash after it (before the stream ``XACK``)
makes the redelivery a no-op. A ``void`` entry (a grant released because the caller never
got its answer) is recorded for audit and bills nothing; a second ``post`` of a referral
already billed is recorded as a duplicate and bills nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa

from router.billing.book import BillingBook, ppm
from router.billing.db import bulk_insert
from router.billing.journal import FEE_REVENUE, RECEIVABLE, Entry, Journal, account, transfer
from router.billing.schema import ledger_events, referrals
from router.core.errors import BillingError
from router.core.messages import ReferralEntry

_entry_dec = msgspec.json.Decoder(ReferralEntry)
#: Column widths the database enforces, checked before writing so a bad entry is refused
#: with its field named (and dead-lettered), not failed deep inside a batch insert.
_WIDTH = {"referral_id": 80, "decision_id": 80, "application_id": 64, "partner_id": 32}


@dataclass(frozen=True)
class StreamEntry:
    """One entry read from a ledger stream."""

    stream: str
    entry_id: str
    fields: Mapping[bytes, bytes]


class EntryError(BillingError):
    """This stream entry cannot be billed as it is (malformed): retrying will not help."""

    def __init__(self, entry: StreamEntry, why: str):
        self.entry = entry
        super().__init__(f"ledger entry {entry.stream} {entry.entry_id}: {why}")


def parse(entry: StreamEntry) -> tuple[str, str, ReferralEntry | None]:
    """(kind, application id, posted referral or None) of a stream entry, or
    :class:`EntryError`."""
    f = entry.fields
    kind = f.get(b"kind", b"post").decode("utf-8", "replace")
    app = f.get(b"app", b"").decode("utf-8", "replace")
    if kind == "void":
        return kind, app[:64], None
    if kind != "post":
        raise EntryError(entry, f"unknown kind {kind!r}")
    raw = f.get(b"entry")
    if not raw:
        raise EntryError(entry, "a post without its entry")
    try:
        ref = _entry_dec.decode(raw)
    except msgspec.DecodeError as exc:  # (ValidationError is a DecodeError)
        raise EntryError(entry, f"entry does not decode ({exc})") from None
    for name, width in _WIDTH.items():
        if not 0 < len(getattr(ref, name)) <= width:
            raise EntryError(entry, f"{name} must be 1 to {width} characters")
    return kind, app or ref.application_id, ref


def apply_entries(
    conn: sa.Connection,
    entries: Sequence[StreamEntry],
    book: BillingBook,
    now_ms: int,
    *,
    optimistic: bool = False,
) -> dict[str, int]:
    """Write these stream entries (inside the caller's transaction): returns counts of
    ``billed``, ``duplicate``, ``void`` and ``seen`` (already committed before). Raises
    :class:`EntryError` for a malformed entry before writing anything.

    ``optimistic`` skips looking up what was committed before: the unique keys then make
    the transaction fail (``IntegrityError``) if anything was, and the caller runs it
    again without it. New entries — nearly all of them — save three lookups a batch."""
    parsed = [(e, *parse(e)) for e in entries]
    seen = set() if optimistic else _seen(conn, entries)
    fresh = [p for p in parsed if (p[0].stream, p[0].entry_id) not in seen]
    ids = [ref.referral_id for _, _, _, ref in fresh if ref is not None]
    billed_before = set() if optimistic else _known_referrals(conn, ids)
    journal = Journal(conn, now_ms, book.tz_of)
    counts = {"billed": 0, "duplicate": 0, "void": 0, "seen": len(parsed) - len(fresh)}
    events, rows, fees = [], [], []
    for e, kind, app, ref in fresh:
        outcome = "void" if ref is None else "duplicate"
        if ref is not None and ref.referral_id not in billed_before:
            billed_before.add(ref.referral_id)
            outcome = "billed"
            rows.append(_referral_row(ref, e, journal, now_ms))
            if ref.terms.fee_per_referral and ref.outcome == "refer":
                fees.append(referral_fee(ref))
        counts[outcome] += 1
        events.append(
            (e.stream, e.entry_id, kind, app, ref.referral_id if ref else None, outcome, now_ms)
        )
    bulk_insert(conn, ledger_events, events, _EVENT_COLS)
    bulk_insert(conn, referrals, rows, _REFERRAL_COLS)
    journal.post_many(fees, fresh=optimistic)
    return counts


#: The columns of the rows :func:`apply_entries` writes, in the order it builds them.
_EVENT_COLS = (
    "stream", "entry_id", "kind", "application_id", "referral_id", "outcome", "recorded_at_ms",
)  # fmt: skip
_REFERRAL_COLS = (
    "referral_id", "decision_id", "application_id", "partner_id", "kind", "effective_at_ms",
    "recorded_at_ms", "period", "late", "amount", "term_months", "applicant_hash",
    "fee_per_referral", "fee_per_accepted", "fee_per_funded", "rev_share_ppm",
    "expected_value", "strategy_version", "stream", "entry_id",
)  # fmt: skip


def referral_fee(ref: ReferralEntry) -> Entry:
    """The per-referral fee entry of a billed referral."""
    pid = ref.partner_id
    return Entry(
        key=f"fee:referral:{ref.referral_id}",
        kind="referral_fee",
        partner_id=pid,
        referral_id=ref.referral_id,
        effective_at_ms=ref.event_time_ms,
        lines=transfer(
            account(RECEIVABLE, pid), account(FEE_REVENUE, pid), ref.terms.fee_per_referral
        ),
    )


def _referral_row(ref: ReferralEntry, e: StreamEntry, journal: Journal, now_ms: int) -> tuple:
    """A billed referral's row, in :data:`_REFERRAL_COLS` order."""
    period, late = journal.landing(ref.partner_id, ref.event_time_ms)
    t = ref.terms
    return (
        ref.referral_id,
        ref.decision_id,
        ref.application_id,
        ref.partner_id,
        ref.outcome,
        ref.event_time_ms,
        now_ms,
        period,
        late,
        ref.amount,
        ref.term_months,
        ref.applicant_hash,
        t.fee_per_referral,
        t.fee_per_accepted,
        t.fee_per_funded,
        ppm(t.rev_share),
        ref.expected_value,
        ref.strategy_version,
        e.stream,
        e.entry_id,
    )


def _seen(conn: sa.Connection, entries: Sequence[StreamEntry]) -> set[tuple[str, str]]:
    by_stream: dict[str, list[str]] = {}
    for e in entries:
        by_stream.setdefault(e.stream, []).append(e.entry_id)
    out: set[tuple[str, str]] = set()
    for stream, ids in by_stream.items():
        for i in range(0, len(ids), 500):
            q = sa.select(ledger_events.c.entry_id).where(
                ledger_events.c.stream == stream, ledger_events.c.entry_id.in_(ids[i : i + 500])
            )
            out.update((stream, r[0]) for r in conn.execute(q))
    return out


def _known_referrals(conn: sa.Connection, ids: list[str]) -> set[str]:
    out: set[str] = set()
    for i in range(0, len(ids), 500):
        q = sa.select(referrals.c.referral_id).where(referrals.c.referral_id.in_(ids[i : i + 500]))
        out.update(r[0] for r in conn.execute(q))
    return out
