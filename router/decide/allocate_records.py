"""The end of a batch walk: outcomes filled in, found decisions handed back as they were,
new decision records stored (declines too), grants voided when their records could not be.
"""

from __future__ import annotations

import numpy as np

from router.core.errors import IdempotencyConflict, StoreError
from router.decide.allocate_ahead import AheadReply
from router.decide.allocate_base import AllocatorBase
from router.decide.outcomes import DECLINE, KEEP, Outcomes, fill_outcomes, pack_record
from router.decide.walk_state import STORE_DOWN, Batch, with_bits


class BatchRecords(AllocatorBase):
    """A walked batch's outcomes and stored records: a part of
    :class:`~router.decide.allocate.Allocator`, mixed in."""

    def _finish(self, b: Batch) -> Outcomes:
        """The batch's outcomes and decision records: found decisions handed back as they
        were, new ones stored (declines too), a failed store answered degraded."""
        out = fill_outcomes(
            b.a,
            np.array(b.kind, dtype=np.int8),
            b.chosen,
            np.array(b.bits, dtype=np.uint64),
            [p.id for p in self.strategy.partners],
            np.array(b.degraded, dtype=bool),
        )
        for i, rec in b.recalled.items():
            out.set_record(i, rec)
            self._note_answered(b.ids[i], rec)
        records = out.records()
        for i, j in b.dups.items():
            out.set_record(i, records[j])
        if b.once:
            self._record_declines(b, out, records)
        else:
            self._remember(b, out, records)
        return out

    def _new_rows(self, b: Batch, out: Outcomes, granted: bool | None = None) -> list[int]:
        """Rows this batch decided itself (not recalled, not repeats, not degraded); only
        its grants (``granted``) or only its declines (``not granted``) when given."""
        return [
            i
            for i in range(b.n)
            if i not in b.recalled
            and i not in b.dups
            and not b.degraded[i]
            and (granted is None or (out.kind[i] != DECLINE) == granted)
        ]

    def _store_records(self, b: Batch, rows: list[int], records: list[bytes], shared: bool):
        """Store the records of ``rows`` (``record_many``: what another caller stored first
        comes back; else ``remember_many``)."""
        args = (
            [b.ids[i] for i in rows],
            [b.fps[i] for i in rows],
            [records[i] for i in rows],
            [b.event_ms[i] for i in rows],
        )
        if shared:
            return self.store.record_many(*args)
        self.store.remember_many(*args)
        return None

    def _record_declines(self, b: Batch, out: Outcomes, records: list[bytes]) -> None:
        """Single trip: grants were recorded by their reservations; store the declines
        unless a concurrent caller decided first (then its decision is the answer)."""
        rows = self._new_rows(b, out, granted=False)
        if self._replies is not None:
            rows = self._declines_sent(rows, records)
        try:
            if self._fixups:
                self._rewrite_fixups(b)
            if not rows:
                return
            found = self._store_records(b, rows, records, shared=True)
            for i, existing in zip(rows, found):
                if existing is not None:
                    out.set_record(i, existing)
                    self._note_answered(b.ids[i], existing)
                    if b.n == 1 and b.counted is not None:  # a retry after all
                        self._restore_counts(b.counted)
                        if b.rotation is not None:
                            self.rotation.current[:] = b.rotation
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            self._store_down(exc, "remember")

    def _remember(self, b: Batch, out: Outcomes, records: list[bytes]) -> None:
        """Store every new decision record. Degraded answers are not remembered: a retry
        once the store is back gets a real decision."""
        try:
            if b.recalled or b.dups or b.down:
                rows = self._new_rows(b, out)
            else:
                rows = list(range(b.n))
            if not rows:
                return
            found = self._store_records(b, rows, records, shared=b.shared)
            if found is not None:
                # Another process may have decided an unclaimed row (a decline) first: its
                # record is the answer, and other content is a conflict.
                changed = {}
                for i, existing in zip(rows, found):
                    if existing is not None and existing != records[i]:
                        out.set_record(i, existing)
                        self._note_answered(b.ids[i], existing)
                        changed[i] = existing
                for i, j in b.dups.items():
                    if j in changed:
                        out.set_record(i, changed[j])
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            self._store_down(exc, "remember")
            if self.store.two_phase:
                self._void_grants(b, out, records)

    def _void_grants(self, b: Batch, out: Outcomes, records: list[bytes]) -> None:
        """A grant whose decision record may be missing must not be handed back (a retry
        could not find it and would decide again): void this batch's grants and answer
        their rows degraded."""
        self._void = True
        a, granted = b.a, self._new_rows(b, out, granted=True)
        instead = {}
        for i in granted:
            kept = b.degrade_keep and b.keep_ok[i]
            instead[i] = pack_record(
                KEEP if kept else DECLINE,
                b.bits[i] | STORE_DOWN,
                a.keep_profit[i] if kept else 0.0,
                a.keep_apr[i] if kept else float("nan"),
                a.keep_margin[i],
                a.pd[i],
                "",
            )
        for i, j in [(i, i) for i in granted] + list(b.dups.items()):
            if j in instead:
                out.set_record(i, instead[j])
                out.degraded[i] = True
        self.store.forget_many(
            [b.ids[i] for i in granted],
            [b.fps[i] for i in granted],
            [records[i] for i in granted],
        )

    def _declines_sent(self, rows: list[int], records: list[bytes]) -> list[int]:
        """Of these declined rows, those still to store: a decision sent ahead stored its
        decline already (rewritten if its reason bits differ from the walk's)."""
        todo = []
        assert self._replies is not None  # (only called while they are)
        self._replies.drain()
        for i in rows:
            reply = self._replies.get(i)
            if not isinstance(reply, AheadReply) or reply.stored is not None:
                todo.append(i)
                continue
            kept = with_bits(reply.walk.decline, reply.decline_bits())
            if kept != records[i]:
                self._fixups.append((i, records[i]))
        return todo

    def _rewrite_fixups(self, b: Batch) -> None:
        """Rewrite the stored records whose reason bits differ from the walk's (a late
        event whose candidates the walk knew were full: the store said late)."""
        fix, self._fixups = self._fixups, []
        self.store.rewrite_records(
            [b.ids[i] for i, _ in fix], [b.fps[i] for i, _ in fix], [rec for _, rec in fix]
        )
