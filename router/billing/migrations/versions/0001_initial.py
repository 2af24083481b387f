"""Billing schema, first release: ledger events, referrals, journal, postbacks, periods,
dead letters; the journal made immutable by triggers.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_IMMUTABLE = ("journal_entries", "postings")


def upgrade() -> None:
    ms = sa.BigInteger
    op.create_table(
        "ledger_events",
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("entry_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("application_id", sa.String(64), nullable=False),
        sa.Column("referral_id", sa.String(80)),
        sa.Column("outcome", sa.String(12), nullable=False),
        sa.Column("recorded_at_ms", ms, nullable=False),
        sa.PrimaryKeyConstraint("stream", "entry_id", name="pk_ledger_events"),
    )
    op.create_table(
        "referrals",
        sa.Column("referral_id", sa.String(80), nullable=False),
        sa.Column("decision_id", sa.String(80), nullable=False),
        sa.Column("application_id", sa.String(64), nullable=False),
        sa.Column("partner_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("effective_at_ms", ms, nullable=False),
        sa.Column("recorded_at_ms", ms, nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("late", sa.Boolean, nullable=False),
        sa.Column("amount", ms, nullable=False),
        sa.Column("term_months", sa.Integer, nullable=False),
        sa.Column("applicant_hash", sa.String(64), nullable=False),
        sa.Column("fee_per_referral", ms, nullable=False),
        sa.Column("fee_per_accepted", ms, nullable=False),
        sa.Column("fee_per_funded", ms, nullable=False),
        sa.Column("rev_share_ppm", sa.Integer, nullable=False),
        sa.Column("expected_value", ms, nullable=False),
        sa.Column("strategy_version", sa.String(40), nullable=False),
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("entry_id", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("referral_id", name="pk_referrals"),
    )
    op.create_index("ix_referrals_partner_id", "referrals", ["partner_id"])
    op.create_table(
        "journal_entries",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("partner_id", sa.String(32), nullable=False),
        sa.Column("referral_id", sa.String(80)),
        sa.Column("effective_at_ms", ms, nullable=False),
        sa.Column("recorded_at_ms", ms, nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("late", sa.Boolean, nullable=False),
        sa.Column("corrects", sa.String(200)),
        sa.Column("memo", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_journal_entries"),
        sa.ForeignKeyConstraint(
            ["corrects"], ["journal_entries.key"], name="fk_journal_entries_corrects"
        ),
    )
    op.create_index("ix_journal_partner_period", "journal_entries", ["partner_id", "period"])
    op.create_index("ix_journal_referral", "journal_entries", ["referral_id"])
    op.create_table(
        "postings",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("entry_key", sa.String(200), nullable=False),
        sa.Column("account", sa.String(80), nullable=False),
        sa.Column("amount", ms, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_postings"),
        sa.ForeignKeyConstraint(
            ["entry_key"], ["journal_entries.key"], name="fk_postings_entry_key"
        ),
    )
    op.create_index("ix_postings_entry", "postings", ["entry_key"])
    op.create_index("ix_postings_account", "postings", ["account"])
    op.create_table(
        "postbacks",
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("partner_id", sa.String(32), nullable=False),
        sa.Column("referral_id", sa.String(80), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("effective_at_ms", ms, nullable=False),
        sa.Column("recorded_at_ms", ms, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("period", sa.String(7)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_postbacks"),
    )
    op.create_index("ix_postbacks_referral", "postbacks", ["referral_id"])
    op.create_index("ix_postbacks_status", "postbacks", ["status"])
    op.create_table(
        "postback_conflicts",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("recorded_at_ms", ms, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_postback_conflicts"),
    )
    op.create_index("ix_postback_conflicts_event_id", "postback_conflicts", ["event_id"])
    op.create_table(
        "periods",
        sa.Column("partner_id", sa.String(32), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("closed_at_ms", ms, nullable=False),
        sa.Column("statement_sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("partner_id", "period", name="pk_periods"),
    )
    op.create_table(
        "dead_letters",
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("entry_id", sa.String(40), nullable=False),
        sa.Column("deliveries", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("recorded_at_ms", ms, nullable=False),
        sa.PrimaryKeyConstraint("stream", "entry_id", name="pk_dead_letters"),
    )
    _make_immutable()


def _make_immutable() -> None:
    """Refuse UPDATE and DELETE on the journal in the database itself: a correction is a new
    entry linked to what it corrects, never an edit."""
    dialect = op.get_bind().dialect.name
    for table in _IMMUTABLE:
        if dialect == "sqlite":
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} are immutable'); END"
                )
        elif dialect == "postgresql":
            op.execute(
                f"CREATE FUNCTION {table}_immutable() RETURNS trigger AS $$ BEGIN "
                f"RAISE EXCEPTION '{table} are immutable'; END $$ LANGUAGE plpgsql"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {table}_immutable()"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in _IMMUTABLE:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {table}_immutable()")
    for table in (
        "dead_letters",
        "periods",
        "postback_conflicts",
        "postbacks",
        "postings",
        "journal_entries",
        "referrals",
        "ledger_events",
    ):
        op.drop_table(table)
