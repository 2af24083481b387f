"""The billing database's tables (SQLAlchemy Core; the same schema on SQLite and PostgreSQL).

Times are integer milliseconds since the epoch (UTC): ``effective_at_ms`` is business time
(when the referral or the partner's event happened), ``recorded_at_ms`` is when this
database learnt it. Money is integer minor units. A ``period`` is a statement month
``YYYY-MM`` in the partner's time zone: the period an entry *lands on*, which is its own
month unless that month was already closed (then the next open one, flagged ``late``).

The schema is created and changed only by the Alembic migrations in
``router/billing/migrations`` (:func:`router.billing.db.open_billing` runs them).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Every ledger stream entry the consumer has committed, keyed by stream and entry id: the
#: consumer's dedupe key, written in the same transaction as the entry's postings.
ledger_events = Table(
    "ledger_events",
    metadata,
    Column("stream", String(200), primary_key=True),
    Column("entry_id", String(40), primary_key=True),
    Column("kind", String(8), nullable=False),  # post | void
    Column("application_id", String(64), nullable=False),
    Column("referral_id", String(80)),
    #: billed (a new referral), duplicate (its referral id was billed before), void
    Column("outcome", String(12), nullable=False),
    Column("recorded_at_ms", BigInteger, nullable=False),
)

#: One row per billable (posted) referral or branch loan, with the commercial terms
#: snapshotted when it was decided: every fee is computed from these, never from today's
#: partner book.
referrals = Table(
    "referrals",
    metadata,
    Column("referral_id", String(80), primary_key=True),
    Column("decision_id", String(80), nullable=False),
    Column("application_id", String(64), nullable=False),
    Column("partner_id", String(32), nullable=False, index=True),
    Column("kind", String(8), nullable=False),  # refer | branch
    Column("effective_at_ms", BigInteger, nullable=False),
    Column("recorded_at_ms", BigInteger, nullable=False),
    Column("period", String(7), nullable=False),
    Column("late", Boolean, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("term_months", Integer, nullable=False),
    Column("applicant_hash", String(64), nullable=False),
    Column("fee_per_referral", BigInteger, nullable=False),
    Column("fee_per_accepted", BigInteger, nullable=False),
    Column("fee_per_funded", BigInteger, nullable=False),
    #: revenue share of interest collected, in parts per million (exact integer arithmetic)
    Column("rev_share_ppm", Integer, nullable=False),
    Column("expected_value", BigInteger, nullable=False),
    Column("strategy_version", String(40), nullable=False),
    Column("stream", String(200), nullable=False),
    Column("entry_id", String(40), nullable=False),
)

#: Journal entries: immutable (database triggers refuse UPDATE and DELETE), identified by a
#: key the writer chooses from what caused them (``fee:referral:<referral id>``,
#: ``postback:<event id>``…), so writing the same cause twice is a no-op.
journal_entries = Table(
    "journal_entries",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("kind", String(24), nullable=False),
    Column("partner_id", String(32), nullable=False),
    Column("referral_id", String(80)),
    Column("effective_at_ms", BigInteger, nullable=False),
    Column("recorded_at_ms", BigInteger, nullable=False),
    Column("period", String(7), nullable=False),
    Column("late", Boolean, nullable=False),
    #: the entry this one reverses or adjusts (corrections never edit what they correct)
    Column("corrects", String(200), ForeignKey("journal_entries.key")),
    Column("memo", Text, nullable=False),
)
Index("ix_journal_partner_period", journal_entries.c.partner_id, journal_entries.c.period)
Index("ix_journal_referral", journal_entries.c.referral_id)

#: Double-entry postings: debits positive, credits negative; each entry's postings sum to 0.
postings = Table(
    "postings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("entry_key", String(200), ForeignKey("journal_entries.key"), nullable=False),
    Column("account", String(80), nullable=False),
    Column("amount", BigInteger, nullable=False),
)
Index("ix_postings_entry", postings.c.entry_key)
Index("ix_postings_account", postings.c.account)

#: Partner postbacks, by the partner's event id, with the hash of their content: the same
#: id and content again is a no-op, other content a conflict. ``status`` is the written
#: rule's verdict (see :mod:`router.billing.postbacks`).
postbacks = Table(
    "postbacks",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("partner_id", String(32), nullable=False),
    Column("referral_id", String(80), nullable=False),
    Column("type", String(16), nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("effective_at_ms", BigInteger, nullable=False),
    Column("recorded_at_ms", BigInteger, nullable=False),
    Column("status", String(12), nullable=False),
    Column("period", String(7)),
    Column("reason", Text, nullable=False),
)
Index("ix_postbacks_referral", postbacks.c.referral_id)
Index("ix_postbacks_status", postbacks.c.status)

#: Postbacks that reused an event id with different content: kept for the dispute, never
#: applied.
postback_conflicts = Table(
    "postback_conflicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(128), nullable=False, index=True),
    Column("content_sha256", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("recorded_at_ms", BigInteger, nullable=False),
)

#: Closed statement periods per partner, with the SHA-256 of the statement as closed.
periods = Table(
    "periods",
    metadata,
    Column("partner_id", String(32), primary_key=True),
    Column("period", String(7), primary_key=True),
    Column("closed_at_ms", BigInteger, nullable=False),
    Column("statement_sha256", String(64), nullable=False),
)

#: Ledger entries that kept failing, with the error, after N deliveries (then acknowledged).
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("stream", String(200), primary_key=True),
    Column("entry_id", String(40), primary_key=True),
    Column("deliveries", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("fields", Text, nullable=False),
    Column("recorded_at_ms", BigInteger, nullable=False),
)
