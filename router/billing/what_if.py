"""What-if billing: a replay's referrals and branch loans written into a billing database
of their own (``replay --billing-db``), through the same ledger ingest as live billing.

Entries go in as if read from a stream named ``replay:<strategy version>``, each keyed by
its referral id, so replaying the same traffic into the same database again bills nothing
twice, and two strategies' replays sit side by side.
"""

from __future__ import annotations

import time
from pathlib import Path

from router.billing.book import BillingBook
from router.billing.db import open_billing, writing
from router.billing.ledger_ingest import StreamEntry, apply_entries
from router.core.config import Strategy
from router.core.messages import ReferralEntry, encode


class BillingSink:
    """Collects ledger entries as a replay makes them (``on_append``) and writes them in
    batches (:meth:`flush`)."""

    def __init__(self, target: str | Path, strategy: Strategy):
        self.engine = open_billing(target)
        self.book = BillingBook.from_strategy(strategy)
        self.stream = f"replay:{strategy.version}"
        self._pending: list[ReferralEntry] = []
        self.counts = {"billed": 0, "duplicate": 0, "void": 0, "seen": 0}

    def __call__(self, entry: ReferralEntry) -> None:
        self._pending.append(entry)

    def extend(self, entries) -> None:
        """Add entries read from a store's ledger (a replay on a network store)."""
        self._pending.extend(entries)

    def flush(self) -> None:
        """Write what was collected (one transaction per 5,000 entries)."""
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 5000):
            batch = [
                StreamEntry(
                    self.stream,
                    e.referral_id[:40],
                    {b"kind": b"post", b"app": e.application_id.encode(), b"entry": encode(e)},
                )
                for e in pending[i : i + 5000]
            ]
            with writing(self.engine) as conn:
                got = apply_entries(conn, batch, self.book, int(time.time() * 1000))
            for k, v in got.items():
                self.counts[k] += v

    def close(self) -> dict[str, int]:
        """Write the rest, release the database; the counts written."""
        self.flush()
        self.engine.dispose()
        return {"billed": self.counts["billed"], "already_billed": self.counts["seen"]}
