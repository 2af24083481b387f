"""Pipelined allocation for a live service coalescing concurrent requests: every row's next
candidate goes to the store in one pipeline per round (see :meth:`PipelinedRounds._rounds`).
"""

from __future__ import annotations

from typing import Any

from router.core.errors import IdempotencyConflict, StoreError
from router.decide.allocate_base import AllocatorBase
from router.decide.entries import row_branch_entry, row_referral_entry
from router.decide.outcomes import BRANCH, DECLINE, KEEP, REFER, pack_record
from router.decide.walk_state import DEDUPE, LATE_BIT, QUOTA, REFUSED_BIT, Batch
from router.store import DEDUPED, GRANTED, LATE, Bucket


class PipelinedRounds(AllocatorBase):
    """A batch's reservations in pipelined rounds: a part of
    :class:`~router.decide.allocate.Allocator`, mixed in."""

    def _pipelined_rounds(self, b: Batch) -> None:
        """A pipelined batch's rounds (see :meth:`_rounds`); rows they leave undecided
        because the store failed are walked degraded."""
        down = False
        try:
            self._rounds(b)
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            self._store_down(exc, "reserve")
            down = True
        b.down = down
        b.todo = [i for i in b.todo if b.kind[i] == DECLINE] if down else []

    def _rounds(self, b: Batch) -> None:
        """Pipelined allocation: every row's next candidate goes to the store in one
        pipeline per round, so a batch costs a few round trips instead of one per attempt.

        Each row still tries keep, branch, then partners in routing order, and caps are
        never overrun (each reservation is atomic); but rows of the batch are treated as
        concurrent, so which of two rows wins a last place may differ from arrival order.
        """
        plans = self._round_plans(b)
        while plans:
            requests, owners = self._round_requests(b, plans)
            if not requests:
                break
            results = self.store.try_reserve_many(requests, single_trip=self._once)
            self._settle_round(b, plans, owners, results)

    def _round_plans(self, b: Batch) -> dict[int, list]:
        """Row -> [candidates in order (-2 keep, -1 branch, partner index), position,
        eligible partners] for every row the rounds must decide."""
        P = len(self.strategy.partners)
        rank, routing, decode = self.rank, self.routing, b.decode
        plans: dict[int, list] = {}
        for i in b.todo:
            if i in b.recalled or i in b.dups:
                continue
            cands: list[int] = ([-2] if b.keep_ok[i] else []) + ([-1] if b.branch_ok[i] else [])
            eligible: list[int] = []
            m = b.mask_l[i]
            if m:
                eligible = decode.get(m) or decode.setdefault(
                    m, [j for j in range(P) if m >> j & 1]
                )
                if len(eligible) == 1 and not routing.rotates:
                    cands += eligible
                else:
                    row_ev = b.ev_flat[i * P : (i + 1) * P]
                    cands += routing.order(eligible, rank, row_ev.__getitem__, self.rotation)
            plans[i] = [cands, 0, eligible]
        return plans

    def _candidate(self, b: Batch, c: int) -> tuple[Bucket, Any]:
        """The bucket and window-key columns of candidate ``c`` (-2 keep, -1 branch, else
        a partner)."""
        if c == -2:
            return self.keep_bucket, b.kkeys
        if c == -1:
            return self.branch_bucket, b.bkeys
        return self.partner_buckets[c], b.pkeys[c]

    def _round_requests(self, b: Batch, plans: dict[int, list]) -> tuple[list, list]:
        """This round's reservation requests: each row's next candidate the floors do not
        already refuse (rows with none left are done and leave ``plans``)."""
        known, requests, owners = self.known_refusal, [], []
        for i, plan in list(plans.items()):
            cands, pos, _ = plan
            amount = b.amounts[i]
            while pos < len(cands):
                c = cands[pos]
                bucket, kc = self._candidate(b, c)
                if known(bucket, kc, i, amount) < 0:
                    break
                b.bits[i] |= REFUSED_BIT.get(c, QUOTA)
                pos += 1
            plan[1] = pos
            if pos == len(cands):
                del plans[i]
                continue
            keys = tuple([col[i] for col in kc])
            entry, applicant, record = self._request_parts(b, i, c)
            requests.append(
                (bucket, keys, amount, applicant, b.event_ms[i], entry, self._ids[i],
                 self._fps[i], record if b.claiming or self._once else b"")
            )  # fmt: skip
            owners.append((i, c, bucket, keys))
        return requests, owners

    def _request_parts(self, b: Batch, i: int, c: int) -> tuple[Any, Any, bytes]:
        """(ledger entry, applicant hash, stored decision record) of row ``i`` taking
        candidate ``c``."""
        s, a, cols = self.strategy, b.a, b.cols
        t, amount, entries = b.event_ms[i], b.amounts[i], self.store.needs_entries
        if c >= 0:
            ev = b.ev_flat[i * len(s.partners) + c]
            entry = row_referral_entry(s, cols, i, c, t, amount, ev) if entries else None
            return entry, cols.applicant[i], pack_record(
                REFER, b.bits[i], ev, a.partner_apr[i, c], a.keep_margin[i], a.pd[i],
                s.partners[c].id,
            )  # fmt: skip
        if c == -2:
            return (
                None,
                None,
                pack_record(
                    KEEP, b.bits[i], a.keep_profit[i], a.keep_apr[i], a.keep_margin[i], a.pd[i], ""
                ),
            )
        entry = row_branch_entry(s, cols, i, t, amount, a.branch_profit[i]) if entries else None
        return entry, None, pack_record(
            BRANCH, b.bits[i], a.branch_profit[i], a.branch_apr[i], a.branch_margin[i],
            a.branch_pd[i], "",
        )  # fmt: skip

    def _settle_round(self, b: Batch, plans: dict[int, list], owners: list, results) -> None:
        """Apply a round's answers: a grant decides the row, a refusal moves it to its next
        candidate, a stored decision (a retry) is recalled as it was."""
        for (i, c, bucket, keys), (r, stored) in zip(owners, results):
            if stored is not None:  # decided before (a retry, or a concurrent caller)
                b.recalled[i] = stored
                del plans[i]
                continue
            self.note(bucket, keys, b.amounts[i], r, b.event_ms[i])
            if r == GRANTED:
                b.kind[i] = KEEP if c == -2 else BRANCH if c == -1 else REFER
                if c >= 0:
                    b.chosen[i] = c
                    self.routing.on_grant(self.rotation, c, plans[i][2])
                del plans[i]
            else:
                b.bits[i] |= (
                    LATE_BIT if r == LATE else REFUSED_BIT.get(c, DEDUPE if r == DEDUPED else QUOTA)
                )
                plans[i][1] += 1
