"""Billing: the referral ledger turned into statements a partner cannot dispute.

- :mod:`~router.billing.db` opens SQLite or PostgreSQL and runs the Alembic migrations;
- :mod:`~router.billing.journal` is the double-entry journal (immutable, integer money);
- :mod:`~router.billing.consumer` reads the Redis ledger streams exactly once;
- :mod:`~router.billing.postbacks` ingests the partners' events by event id;
- :mod:`~router.billing.statements` prints a partner's month; periods close after grace;
- :mod:`~router.billing.reconcile` compares a partner's file with ours, and the ledger
  with the quota counters.
"""
