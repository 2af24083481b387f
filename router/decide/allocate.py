"""The sequential half of the decision: idempotency, budgets, routing, reservations.

Rows are walked in arrival order, but only rows that still have an option (keep, branch
or an eligible partner) touch the store; the rest are declines filled in vectorised.
Idempotency is settled for the whole batch *before* the first reservation — a repeated id
with different content raises without anything having been reserved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from router.core.columns import AppColumns
from router.core.errors import IdempotencyConflict, StoreError
from router.core.fingerprint import find_repeats
from router.decide.allocate_ahead import SentAhead
from router.decide.allocate_records import BatchRecords
from router.decide.allocate_rounds import PipelinedRounds
from router.decide.allocate_row import RowWalk
from router.decide.assess import Assessment
from router.decide.entries import row_branch_entry, row_referral_entry
from router.decide.outcomes import BRANCH, DECLINE, KEEP, REFER, Outcomes, pack_record
from router.decide.partners import partner_bits
from router.decide.walk_state import (
    BRANCH_FULL,
    DEDUPE,
    KEEP_FULL,
    LATE_BIT,
    QUOTA,
    STORE_DOWN,
    Batch,
    Blocks,
    Decided,
    KeyRows,
    LazyKeys,
)
from router.store import CAP_HIT, DEDUPED, GRANTED, LATE, cap_full, cap_index


class Allocator(RowWalk, SentAhead, PipelinedRounds, BatchRecords):
    """Decides batches and single applications against the store, in arrival order (the
    batch walk is here; the other walks are mixed in, see :mod:`router.decide.allocate_base`)."""

    def allocate(self, cols: AppColumns, a: Assessment, pipelined: bool = False) -> Outcomes:
        """Decide every row of the batch against the store (``pipelined``: see _rounds)."""
        with self.lock:
            self._pipelined = pipelined
            if len(cols) > 1 and not pipelined and self.store.compiled:
                # An in-process array store: the whole walk is one compiled call (numba
                # is imported only by those who use it).
                from router.decide.allocate_compiled import allocate_compiled

                return allocate_compiled(self, cols, a)
            if not self.store.two_phase:
                return self._allocate(cols, a)
            return self._settled(self._allocate, cols, a)

    def _allocate(self, cols: AppColumns, a: Assessment) -> Outcomes:
        b = self._plan(cols, a)
        if self._pipelined and not b.down and b.n > 1:
            self._pipelined_rounds(b)
        self._replies = self._sent_walks(b) if self._walks_ahead(b) else None
        try:
            self._walk(b)
            return self._finish(b)
        finally:
            if self._replies is not None:
                self._replies.close()
            self._replies = None

    def _plan(self, cols: AppColumns, a: Assessment) -> Batch:
        """Settle what the store already knows before walking: recalled decisions,
        repeats inside the batch, claims (shared stores), and what each row may try."""
        n = len(cols)
        ids, fps = cols.application_id, cols.fingerprint
        self._ids, self._fps = ids, fps
        # One decision on a store that can check, reserve and record in one round trip:
        # no separate recall, and a grant's record is written by the reservation itself.
        shared = self.store.needs_claims
        single = self.store.single_trip
        # Single-trip reservations (check the application's record, reserve, record a grant,
        # all atomic): for one decision on any store that can, and for every batch on a
        # shared store that can (a single Redis server) — no claims needed there.
        once = self._once = single and (n == 1 or shared)
        # Shared stores, when a decision is not one single trip (a batch, or any decision on
        # a cluster), claim each application first and keep the decision record with every
        # grant, so a crash can never lead to a second grant (see router/store/redis.py).
        claiming = self._recorded = shared and not single
        # Pipelined rounds on a single-trip store need no recall either: each row's first
        # reservation reads its record first and answers a stored decision as it is, and a
        # row with nothing to try finds it when its decline is stored (record_many).
        recalled, down = self._recall(ids, fps, skip=once and (n == 1 or self._pipelined))
        todo, mask_l = self._candidates(a, n)
        keys = KeyRows(a)
        b = Batch(
            cols=cols,
            a=a,
            n=n,
            ids=ids,
            fps=fps,
            once=once,
            claiming=claiming,
            shared=shared,
            recalled=recalled,
            dups=find_repeats(ids, fps),
            down=down,
            recall_failed=down,
            todo=todo,
            mask_l=mask_l,
            keep_ok=a.keep_ok.tolist(),
            branch_ok=a.branch_ok.tolist(),
            kind=[DECLINE] * n,
            chosen=[-1] * n,
            bits=a.bits.tolist(),
            degraded=[False] * n,
            event_ms=cols.event_ms.tolist(),
            amounts=cols.requested_amount.tolist(),
            ev_flat=a.ev.ravel().tolist(),  # flat: far cheaper than a nested tolist
            decode={},
            kkeys=keys.get(self.keep_bucket),
            bkeys=keys.get(self.branch_bucket),
            # Small batches (live) build partner key columns on demand; big ones all at
            # once, which is cheaper than a lookup per attempt.
            pkeys=(
                LazyKeys(keys, self.partner_buckets)
                if n < 64
                else [keys.get(pb) for pb in self.partner_buckets]
            ),
            order_codes=self._order_codes(a, n),
            degrade_keep=self.strategy.degraded.policy == "keep",
        )
        if claiming and not down:
            self._claim(b)
        return b

    def _recall(self, ids, fps, skip: bool) -> tuple[dict[int, bytes], bool]:
        """(decisions the store already holds for these applications, whether the store
        failed); ``skip`` when the reservation itself will check (one single-trip call)."""
        if skip:
            return {}, False
        try:
            return self.store.recall_many(ids, fps), False
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            self._store_down(exc, "recall")
            return {}, True

    def _candidates(self, a: Assessment, n: int) -> tuple[list[int], list[int]]:
        """(rows with an option left — keep, branch or an eligible partner —, each row's
        eligible partners as a bit mask)."""
        if n == 1:  # one live decision: plain Python beats numpy here
            m0 = sum(1 << j for j, e in enumerate(a.eligible[0].tolist()) if e)
            return ([0] if bool(a.keep_ok[0]) or bool(a.branch_ok[0]) or m0 else []), [m0]
        masks = partner_bits(a.eligible)  # (zeros without partners)
        todo = np.flatnonzero(a.keep_ok | a.branch_ok | (masks != 0)).tolist()
        return todo, masks.tolist()

    def _order_codes(self, a: Assessment, n: int) -> list[int] | None:
        """best_value on a big batch: every row's partner order (EV descending, then
        priority) from one vectorised sort, packed 4 bits a partner; decoded once per
        distinct (order, eligible set)."""
        P = len(self.strategy.partners)
        if not (self.routing.by_value and n >= 64 and 1 < P <= 15):
            return None
        neg = np.where(a.eligible, -a.ev, np.inf)
        ranks = np.broadcast_to(np.asarray(self.rank), neg.shape)
        idx = np.lexsort((ranks, neg), axis=-1).astype(np.int64)
        return (idx << (4 * np.arange(P, dtype=np.int64))).sum(axis=1).tolist()

    def _claim(self, b: Batch) -> None:
        """Claim every application the batch will try (shared stores that are not single
        trip); an application another caller holds is recovered as its decision."""
        ids, fps = b.ids, b.fps
        try:
            want = [i for i in b.todo if i not in b.recalled and i not in b.dups]
            claims = self.store.claim_many(
                [ids[i] for i in want], [fps[i] for i in want], self.claim_lease_ms
            )
            bucket_ids = [self.keep_bucket.id, self.branch_bucket.id] + [
                pb.id for pb in self.partner_buckets
            ]
            for i, ok in zip(want, claims):
                if not ok:
                    rec = self.store.recover(
                        ids[i], fps[i], bucket_ids, self.claim_lease_ms, b.event_ms[i]
                    )
                    if rec is not None:
                        b.recalled[i] = rec
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            self._store_down(exc, "claim")
            b.down = True

    def _walk(self, b: Batch) -> None:
        """Walk the batch's rows in arrival order: keep, branch, then the eligible partners
        in routing order, stopping at the first grant (or answer degraded while the store
        is down)."""
        once, weighted = b.once, self.routing.rotates
        blocks = Blocks(b.n, len(self.strategy.partners))
        order_cache: dict[Any, list[int]] = {}
        self._new_blocks = []
        rotation = counted = None
        for i in b.todo:
            if i in b.recalled or i in b.dups:
                continue
            if not b.down:
                # On a single-trip store a retry shows only when the store answers with its
                # decision: keep the rotation to put it back then.
                rotation = list(self.rotation.current) if once and weighted else None
                counted = dict(self.refusals) if once else None
                try:
                    t, amount = b.event_ms[i], b.amounts[i]
                    if (b.keep_ok[i] or b.branch_ok[i]) and self._own_budgets(b, i, t, amount):
                        continue
                    blocks.release(i)
                    if b.mask_l[i]:
                        self._walk_partners(b, i, blocks, order_cache)
                    continue
                except Decided as done:  # decided before (a retry, or a concurrent caller)
                    if rotation is not None:
                        self.rotation.current[:] = rotation
                    if counted is not None:
                        self._restore_counts(counted)
                    b.recalled[i] = done.record
                    continue
                except IdempotencyConflict:
                    raise
                except StoreError as exc:
                    # From here on this batch is decided without the store (a breaker: no
                    # row waits for another deadline); the next batch tries again.
                    self._store_down(exc, "reserve")
                    b.down = True
                    self._new_blocks = []
            # Degraded: never refer; keep only if the strategy's degraded policy says so.
            b.degraded[i] = True
            b.bits[i] |= STORE_DOWN
            b.kind[i] = KEEP if b.degrade_keep and b.keep_ok[i] else DECLINE
            b.chosen[i] = -1
        if b.recall_failed:  # unknown whether any row was decided before: all are degraded
            for i in range(b.n):
                if not b.degraded[i]:
                    b.degraded[i] = True
                    b.bits[i] |= STORE_DOWN
        b.rotation, b.counted = rotation, counted

    def _walk_partners(
        self, b: Batch, i: int, blocks: Blocks, order_cache: dict[Any, list[int]]
    ) -> None:
        """Row ``i``'s referral: its eligible partners in routing order (those whose cap
        is known full for this window refused without a store call)."""
        P, m = len(self.strategy.partners), b.mask_l[i]
        eligible = b.decode.get(m)
        if eligible is None:
            eligible = b.decode[m] = [j for j in range(P) if m >> j & 1]
        if not m & ~blocks.mask and not self.routing.rotates:
            # Every eligible partner is full for this window: refused in any order, so
            # skip ranking (weighted routing must still rotate).
            for j in eligible:
                w = self._refusing_window(j, blocks.cap[j], b.pkeys[j], i, b.amounts[i])
                self.refusals[self.strategy.partners[j].id, w] += 1
            b.bits[i] |= QUOTA
            return
        order = None
        if b.order_codes is not None and len(eligible) > 1:
            key = (b.order_codes[i], m)
            order = order_cache.get(key)
            if order is None:
                full = [(key[0] >> (4 * k)) & 15 for k in range(P)]
                order = order_cache[key] = [j for j in full if m >> j & 1]
        j, extra = self._refer(b, i, eligible, blocks.mask & m, blocks.cap, order)
        b.bits[i] |= extra
        if j >= 0:
            b.kind[i], b.chosen[i] = REFER, j
        if self._new_blocks:
            if self.skip_full_windows:
                for jb, k in self._new_blocks:
                    blocks.add(jb, k, self._window_end_row(b.a, jb, k, i), i)
            self._new_blocks = []

    def _own_budgets(self, b: Batch, i: int, t: int, amount: int) -> bool:
        """Row ``i``'s attempts at the funder's own budgets: keep, then the branch. True
        when one granted (``b.kind`` says which); else the refusals are in ``b.bits``."""
        a, bits, records = b.a, b.bits, b.once or b.claiming
        if b.keep_ok[i]:
            make: Callable[[], bytes] | None = (
                (
                    lambda: pack_record(
                        KEEP,
                        bits[i],
                        a.keep_profit[i],
                        a.keep_apr[i],
                        a.keep_margin[i],
                        a.pd[i],
                        "",
                    )
                )
                if records
                else None
            )
            r = self.known_refusal(self.keep_bucket, b.kkeys, i, amount)
            if r == -1:
                r = self.reserve(self.keep_bucket, b.kkeys, i, amount, None, t, None, make)
            if r == GRANTED:
                b.kind[i] = KEEP
                return True
            bits[i] |= LATE_BIT if r == LATE else KEEP_FULL
        if b.branch_ok[i]:
            make = (
                (
                    lambda: pack_record(
                        BRANCH,
                        bits[i],
                        a.branch_profit[i],
                        a.branch_apr[i],
                        a.branch_margin[i],
                        a.branch_pd[i],
                        "",
                    )
                )
                if records
                else None
            )
            r = self.known_refusal(self.branch_bucket, b.bkeys, i, amount)
            if r == -1:
                entry = (
                    row_branch_entry(self.strategy, b.cols, i, t, amount, a.branch_profit[i])
                    if self.store.needs_entries and self._replies is None  # (sent ahead)
                    else None
                )
                r = self.reserve(self.branch_bucket, b.bkeys, i, amount, None, t, entry, make)
            if r == GRANTED:
                b.kind[i] = BRANCH
                return True
            bits[i] |= LATE_BIT if r == LATE else BRANCH_FULL
        return False

    def _refusing_window(self, j: int, k: int, kcols: list[list[int]], i: int, amount: int) -> str:
        """The window :meth:`known_refusal` would name: the first cap before ``k`` with a
        matching refused-amount floor, else cap ``k`` (full)."""
        bucket = self.partner_buckets[j]
        if k:
            fl = self.floors.get(bucket.id) or []
            for k2 in range(k):
                kf = fl[k2]
                if kf is not None and kf[0] == kcols[k2][i] and amount >= kf[1]:
                    return bucket.caps[k2].window
        return bucket.caps[k].window

    def _window_end_row(self, a: Assessment, j: int, k: int, i: int) -> int:
        """First row after ``i`` outside row i's window for partner j's cap k (rows in time
        order); ``i + 1`` when the batch's keys are not in order."""
        bucket = self.partner_buckets[j]
        keys = a.keys[bucket.timezone][bucket.caps[k].window]
        ordered = a.ordered.get((bucket.timezone, bucket.caps[k].window))
        if ordered is None:
            ordered = a.ordered[(bucket.timezone, bucket.caps[k].window)] = bool(
                np.all(keys[1:] >= keys[:-1])
            )
        if not ordered:
            return i + 1
        return int(np.searchsorted(keys, keys[i], side="right"))

    def _refer(
        self,
        b: Batch,
        i: int,
        eligible: list[int],
        blocked: int,
        block_cap: list[int],
        order: list[int] | None = None,
    ) -> tuple[int, int]:
        """Try row ``i``'s eligible partners in routing order (``order`` when the batch
        ranked them already); (chosen index or -1, reason bits).

        Partners in ``blocked`` have cap ``block_cap[j]`` full for this row's window:
        refused without asking the store, exactly as the store would refuse them.
        """
        routing, P = self.routing, len(self.strategy.partners)
        if order is None:
            if len(eligible) == 1 and not routing.rotates:
                order = eligible
            else:
                evs, base = b.ev_flat, i * P
                order = routing.order(eligible, self.rank, lambda j: evs[base + j], self.rotation)
        t, amount, pkeys = b.event_ms[i], b.amounts[i], b.pkeys
        applicant = b.cols.applicant[i]
        extra = 0
        buckets, known = self.partner_buckets, self.known_refusal
        for j in order:
            if blocked >> j & 1:
                w = self._refusing_window(j, block_cap[j], pkeys[j], i, amount)
                self.refusals[buckets[j].id, w] += 1
                extra |= QUOTA
                continue
            r = known(buckets[j], pkeys[j], i, amount)
            if r < 0:
                rec: Callable[[], bytes] | None = None
                if self._once or self._recorded:

                    def rec(j=j, bits=b.bits[i] | extra) -> bytes:
                        return self._refer_record(b, i, j, bits)

                entry = (
                    row_referral_entry(self.strategy, b.cols, i, j, t, amount, b.ev_flat[i * P + j])
                    if self.store.needs_entries and self._replies is None  # (sent ahead)
                    else None
                )
                r = self.reserve(buckets[j], pkeys[j], i, amount, applicant, t, entry, rec)
            if r == GRANTED:
                routing.on_grant(self.rotation, j, eligible)
                return j, extra
            if r >= CAP_HIT and cap_full(r):
                self._new_blocks.append((j, cap_index(r)))
            extra |= DEDUPE if r == DEDUPED else LATE_BIT if r == LATE else QUOTA
        return -1, extra
