"""The live path: one application at a time, on Python scalars.

The same steps as a batch of one (``tests/decide/test_decide_one.py`` checks the results are the
same): keep, branch, then partners in routing order — step by step, one reservation call
each, on a single-trip store, or as one call for the whole walk on a store that walks
decisions (:mod:`router.decide.walk_one_call`).
"""

from __future__ import annotations

from typing import NamedTuple

from router.core.columns import Row
from router.core.errors import IdempotencyConflict, StoreError
from router.core.messages import ReferralEntry
from router.decide import walk_one_call as one_call
from router.decide.allocate_base import AllocatorBase
from router.decide.assess_one import OneAssessment
from router.decide.entries import make_branch_entry, make_entry
from router.decide.outcomes import BRANCH, DECLINE, KEEP, REFER, pack_record
from router.decide.walk_state import (
    BRANCH_FULL,
    DEDUPE,
    KEEP_FULL,
    LATE_BIT,
    QUOTA,
    STORE_DOWN,
    Decided,
    row_keys,
    with_bits,
)
from router.store import CAP_HIT, DEDUPED, GRANTED, LATE, Bucket
from router.store.base import Walk


class WalkPlan(NamedTuple):
    """One row's walk, laid out before its store call."""

    eligible: list[int]
    rotation: list | None  # the rotation before ranking (put back unless a partner won)
    steps: list[one_call.Step]
    walk: Walk


class RowWalk(AllocatorBase):
    """One application's walk on scalars: a part of
    :class:`~router.decide.allocate.Allocator`, mixed in."""

    def allocate_row(self, r: Row, a: OneAssessment) -> tuple[bytes, bool]:
        """:meth:`allocate` for one application on a single-trip store, on scalars: the
        live path. Returns the decision record and whether it was decided degraded.

        The same steps as a batch of one (and the same results, which
        ``tests/decide/test_decide_one.py`` checks): keep, branch, then partners in routing order,
        each reservation checking and recording the application in one store call.
        """
        with self.lock:
            if not self.store.two_phase:
                return self._allocate_row(r, a)
            return self._settled(self._allocate_row, r, a)

    def _known_row(self, bucket: Bucket, keys: tuple[int, ...], amount: int) -> int:
        """:meth:`known_refusal` for one row (keys as a tuple)."""
        fl = self.floors.get(bucket.id)
        if fl is not None:
            for k, kf in enumerate(fl):
                if kf is not None and kf[0] == keys[k] and amount >= kf[1]:
                    self.refusals[bucket.id, bucket.caps[k].window] += 1
                    return CAP_HIT + 2 * k + (kf[1] == 0)
        return -1

    def _reserve_row(
        self,
        bucket: Bucket,
        keys: tuple[int, ...],
        r: Row,
        applicant: str | None,
        entry: ReferralEntry | None,
        rec: bytes,
    ) -> int:
        """:meth:`reserve` for one row (keys as a tuple); call :meth:`_known_row` first."""
        amount = r.requested_amount
        res, existing = self.store.try_reserve_once(
            bucket,
            keys,
            amount,
            applicant,
            r.event_ms,
            entry,
            application_id=r.application_id,
            fingerprint=r.fingerprint,
            record=rec,
        )
        if existing is not None:
            raise Decided(existing)
        if res >= CAP_HIT:
            self.note(bucket, keys, amount, res, r.event_ms)
        return res

    def _allocate_row(self, r: Row, a: OneAssessment) -> tuple[bytes, bool]:
        if self.store.walks:
            return self._walk_row(r, a)
        bits = a.bits
        eligible = [j for j, ok in enumerate(a.eligible) if ok]
        rotation = counted = None
        if a.keep_ok or a.branch_ok or eligible:
            # A retry is only known as one when the store answers with its decision: the
            # rotation, advanced while ranking, is then put back (retries never move it).
            rotation = list(self.rotation.current) if eligible else None
            counted = dict(self.refusals)  # nor its refusal counts
            try:
                got = self._own_budgets_row(r, a, bits)
                if isinstance(got, bytes):
                    return got, False
                bits = got
                if eligible:
                    referred = self._refer_row(r, a, eligible, bits)
                    if isinstance(referred, bytes):
                        return referred, False
                    bits |= referred
            except Decided as done:  # decided before (a retry, or a concurrent caller)
                if rotation is not None:
                    self.rotation.current[:] = rotation
                self._restore_counts(counted)
                self._note_answered(r.application_id, done.record)
                return done.record, False
            except IdempotencyConflict:
                raise
            except StoreError as exc:
                # Degraded: never refer; keep only if the strategy's degraded policy says so.
                self._store_down(exc, "reserve")
                bits |= STORE_DOWN
                if self.strategy.degraded.policy == "keep" and a.keep_ok:
                    return pack_record(
                        KEEP, bits, a.keep_profit, a.keep_apr, a.keep_margin, a.pd, ""
                    ), True
                return pack_record(DECLINE, bits, 0.0, float("nan"), a.keep_margin, a.pd, ""), True
        return self._decline_row(r, a, bits, rotation, counted), False

    def _walk_row(self, r: Row, a: OneAssessment) -> tuple[bytes, bool]:
        """:meth:`_allocate_row` as one store call (a store that walks a decision: see
        :mod:`router.decide.walk_one_call`)."""
        p = self._walk_plan(r, a)
        if not p.walk.attempts:
            # Nothing to reserve (no option, or every cap known full): a decline, stored
            # unless the application was decided before (a plain SET, not a script).
            counted = dict(self.refusals)
            _, bits = one_call.settle(self, p.steps, -1, [], r.event_ms, r.requested_amount)
            return self._decline_row(r, a, a.bits | bits, p.rotation, counted), False
        try:
            ((granted, codes, stored),) = self.store.walk_many([p.walk])
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            return self._walk_down(a, p, exc)
        return self._walk_done(r, a, p, granted, codes, stored)

    async def aallocate_row(
        self, r: Row, a: OneAssessment, budget_ms: float | None = None
    ) -> tuple[bytes, bool]:
        """:meth:`allocate_row` awaited on the running event loop, on a store that walks
        a decision asynchronously (``store.async_walks``): the same plan, one awaited
        script call (a decision with nothing to reserve sends its decline the same way),
        the same settling and grant lifecycle. One router's async decisions run one at a
        time, as its sync ones do (the walk's state is the router's); do not mix the two
        on one router."""
        return (await self.aallocate_rows([r], [a], budget_ms))[0]

    async def aallocate_rows(
        self, rows: list[Row], assessed: list[OneAssessment], budget_ms: float | None = None
    ) -> list[tuple[bytes, bool]]:
        """Several rows' decisions in arrival order, each as :meth:`aallocate_row`'s, as
        one decision of the grant lifecycle (handed back together), their walks sent in
        one pipelined write within one budget. Under a routing method that rotates, one
        walk a round trip (each ranks on the grants before it)."""
        async with self.async_lock:
            self._settle_begin()
            ok = False
            try:
                if self.routing.rotates or len(rows) == 1:
                    out = [await self._awalk(r, a, budget_ms) for r, a in zip(rows, assessed)]
                else:
                    out = await self._awalk_together(rows, assessed, budget_ms)
                ok = True
                return out
            finally:
                self._settle_end(ok)

    async def _awalk(self, r: Row, a: OneAssessment, budget_ms: float | None) -> tuple[bytes, bool]:
        p = self._walk_plan(r, a)
        try:
            ((granted, codes, stored),) = await self.store.awalk_many([p.walk], budget_ms)
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            return self._walk_down(a, p, exc)
        return self._walk_done(r, a, p, granted, codes, stored)

    async def _awalk_together(
        self, rows: list[Row], assessed: list[OneAssessment], budget_ms: float | None
    ) -> list[tuple[bytes, bool]]:
        """Every row planned first (with the floors known then), the walks sent in one
        write, then each reply read in order as its plan knew it (``rejudge=False``:
        room may be released between two walks, so a later floor says nothing of them)."""
        plans = [self._walk_plan(r, a) for r, a in zip(rows, assessed)]
        try:
            results = await self.store.awalk_many([p.walk for p in plans], budget_ms)
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            self._store_down(exc, "reserve")
            return [self._walk_down(a, p, exc, log=False) for a, p in zip(assessed, plans)]
        return [
            self._walk_done(r, a, p, *res, rejudge=False)
            for r, a, p, res in zip(rows, assessed, plans, results)
        ]

    def _walk_plan(self, r: Row, a: OneAssessment) -> WalkPlan:
        """The walk of one row, ranked (moving a weighted rotation) and laid out."""
        eligible = [j for j, ok in enumerate(a.eligible) if ok]
        # The order is ranked before the call; the step-by-step walk ranks (and so moves a
        # weighted rotation) only when it reaches the partners: put it back otherwise.
        rotation = list(self.rotation.current) if eligible and self.routing.rotates else None
        order = eligible
        if eligible and (len(eligible) > 1 or self.routing.rotates):
            order = self.routing.order(eligible, self.rank, a.ev.__getitem__, self.rotation)
        decline = pack_record(DECLINE, a.bits, 0.0, float("nan"), a.keep_margin, a.pd, "")
        steps, walk = one_call.plan(
            self,
            r.application_id,
            r.fingerprint,
            r.event_ms,
            r.requested_amount,
            self._row_candidates(r, a, order),
            decline,
        )
        return WalkPlan(eligible, rotation, steps, walk)

    def _walk_down(
        self, a: OneAssessment, p: WalkPlan, exc: StoreError, log: bool = True
    ) -> tuple[bytes, bool]:
        """The store failed: a degraded answer, never a referral; keep only if the
        strategy's degraded policy says so."""
        if p.rotation is not None:
            self.rotation.current[:] = p.rotation
        if log:
            self._store_down(exc, "reserve")
        bits = a.bits | STORE_DOWN
        if self.strategy.degraded.policy == "keep" and a.keep_ok:
            return pack_record(KEEP, bits, a.keep_profit, a.keep_apr, a.keep_margin, a.pd, ""), True
        return pack_record(DECLINE, bits, 0.0, float("nan"), a.keep_margin, a.pd, ""), True

    def _walk_done(
        self,
        r: Row,
        a: OneAssessment,
        p: WalkPlan,
        granted: int,
        codes: list[int],
        stored: bytes | None,
        rejudge: bool = True,
    ) -> tuple[bytes, bool]:
        """Read the store's reply as the step-by-step walk would (walk_one_call.settle)."""
        if stored is not None:  # decided before (a retry, or a concurrent caller)
            if p.rotation is not None:
                self.rotation.current[:] = p.rotation
            self._note_answered(r.application_id, stored)
            return stored, False
        s, bits = one_call.settle(
            self, p.steps, granted, codes, r.event_ms, r.requested_amount, rejudge=rejudge
        )
        if s < 0:
            return pack_record(
                DECLINE, a.bits | bits, 0.0, float("nan"), a.keep_margin, a.pd, ""
            ), False
        step = p.steps[s]
        if step.kind == REFER:
            self.routing.on_grant(self.rotation, step.partner, p.eligible)
        elif p.rotation is not None:  # kept or branched: the partners were never reached
            self.rotation.current[:] = p.rotation
        return with_bits(p.walk.attempts[granted].record, bits), False

    def _row_candidates(self, r: Row, a: OneAssessment, order: list[int]) -> list:
        """One row's candidates in walk order: keep, branch, partners in ``order``. Those
        the floors know are full get no record or entry (they are not sent)."""
        s, out, amount = self.strategy, [], r.requested_amount
        if a.keep_ok:
            kb = self.keep_bucket
            keys = row_keys(kb, a)
            rec = b""
            if one_call.known(self, kb, keys, amount) < 0:
                rec = pack_record(KEEP, a.bits, a.keep_profit, a.keep_apr, a.keep_margin, a.pd, "")
            out.append(one_call.Candidate(KEEP, -1, kb, keys, None, rec, None))
        if a.branch_ok:
            bb = self.branch_bucket
            keys = row_keys(bb, a)
            rec, entry = b"", None
            if one_call.known(self, bb, keys, amount) < 0:
                rec = pack_record(
                    BRANCH, a.bits, a.branch_profit, a.branch_apr, a.branch_margin, a.branch_pd, ""
                )
                if self.store.needs_entries:
                    entry = make_branch_entry(
                        s,
                        r.application_id,
                        r.event_ms,
                        amount,
                        r.term_months,
                        r.applicant,
                        a.branch_profit,
                    )
            out.append(one_call.Candidate(BRANCH, -1, bb, keys, None, rec, entry))
        for j in order:
            pb = self.partner_buckets[j]
            keys = row_keys(pb, a)
            if one_call.known(self, pb, keys, amount) >= 0:
                out.append(one_call.Candidate(REFER, j, pb, keys, r.applicant, b"", None))
                continue
            rec, entry = self._referral_row(r, a, j, a.bits)
            out.append(one_call.Candidate(REFER, j, pb, keys, r.applicant, rec, entry))
        return out

    def _referral_row(
        self, r: Row, a: OneAssessment, j: int, bits: int
    ) -> tuple[bytes, ReferralEntry | None]:
        """One row's referral to partner ``j``: its decision record (with ``bits``) and
        its ledger entry (None when the store does not keep entries)."""
        s, ev = self.strategy, a.ev
        rec = pack_record(
            REFER, bits, ev[j], a.partner_apr[j], a.keep_margin, a.pd, s.partners[j].id
        )
        if not self.store.needs_entries:
            return rec, None
        entry = make_entry(
            s,
            r.application_id,
            j,
            r.event_ms,
            r.requested_amount,
            r.term_months,
            r.applicant,
            ev[j],
        )
        return rec, entry

    def _own_budgets_row(self, r: Row, a: OneAssessment, bits: int) -> bytes | int:
        """One row's attempts at the funder's own budgets, keep then branch: the granted
        decision's record, or the reason bits with the refusals added."""
        if a.keep_ok:
            kb = self.keep_bucket
            rec = pack_record(KEEP, bits, a.keep_profit, a.keep_apr, a.keep_margin, a.pd, "")
            kk = row_keys(kb, a)
            res = self._known_row(kb, kk, r.requested_amount)
            if res == -1:
                res = self._reserve_row(kb, kk, r, None, None, rec)
            if res == GRANTED:
                return rec
            bits |= LATE_BIT if res == LATE else KEEP_FULL
        if a.branch_ok:
            bb = self.branch_bucket
            rec = pack_record(
                BRANCH, bits, a.branch_profit, a.branch_apr, a.branch_margin, a.branch_pd, ""
            )
            bk = row_keys(bb, a)
            res = self._known_row(bb, bk, r.requested_amount)
            if res == -1:
                entry = (
                    make_branch_entry(
                        self.strategy,
                        r.application_id,
                        r.event_ms,
                        r.requested_amount,
                        r.term_months,
                        r.applicant,
                        a.branch_profit,
                    )  # fmt: skip
                    if self.store.needs_entries
                    else None
                )
                res = self._reserve_row(bb, bk, r, None, entry, rec)
            if res == GRANTED:
                return rec
            bits |= LATE_BIT if res == LATE else BRANCH_FULL
        return bits

    def _decline_row(
        self,
        r: Row,
        a: OneAssessment,
        bits: int,
        rotation: list | None,
        counted: dict | None,
    ) -> bytes:
        """Store a row's decline unless a concurrent caller decided first (then its
        decision is the answer, and this attempt changes no count)."""
        rec = pack_record(DECLINE, bits, 0.0, float("nan"), a.keep_margin, a.pd, "")
        try:
            existing = self.store.record_many(
                [r.application_id], [r.fingerprint], [rec], [r.event_ms]
            )[0]
            if existing is not None:  # a retry after all
                if counted is not None:
                    if rotation is not None:
                        self.rotation.current[:] = rotation
                    self._restore_counts(counted)
                self._note_answered(r.application_id, existing)
                return existing
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            self._store_down(exc, "remember")
        return rec

    def _refer_row(self, r: Row, a: OneAssessment, eligible: list[int], bits: int) -> bytes | int:
        """Try eligible partners in routing order: the granted decision's record, or the
        reason bits of the refusals."""
        routing = self.routing
        if len(eligible) == 1 and not routing.rotates:
            order = eligible
        else:
            order = routing.order(eligible, self.rank, a.ev.__getitem__, self.rotation)
        extra = 0
        for j in order:
            bucket = self.partner_buckets[j]
            kk = row_keys(bucket, a)
            res = self._known_row(bucket, kk, r.requested_amount)
            if res < 0:
                rec, entry = self._referral_row(r, a, j, bits | extra)
                res = self._reserve_row(bucket, kk, r, r.applicant, entry, rec)
                if res == GRANTED:
                    routing.on_grant(self.rotation, j, eligible)
                    return rec
            extra |= DEDUPE if res == DEDUPED else LATE_BIT if res == LATE else QUOTA
        return extra
