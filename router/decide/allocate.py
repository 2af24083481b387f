"""The sequential half of the decision: idempotency, budgets, routing, reservations.

Rows are walked in arrival order, but only rows that still have an option (keep, branch
or an eligible partner) touch the store; the rest are declines filled in vectorised.
Idempotency is settled for the whole batch *before* the first reservation — a repeated id
with different content raises without anything having been reserved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from router.core.columns import AppColumns, Row
from router.core.config import Cap, Strategy
from router.core.errors import IdempotencyConflict, StoreError
from router.core.fingerprint import find_repeats
from router.core.logs import get_logger
from router.core.messages import ReferralEntry
from router.core.reasons import BIT
from router.core.routing import routing_method
from router.core.windows import WINDOWS
from router.decide import walk_one_call as one_call
from router.decide.assess import Assessment
from router.decide.assess_one import OneAssessment
from router.decide.entries import (
    make_branch_entry,
    make_entry,
    row_branch_entry,
    row_referral_entry,
)
from router.decide.outcomes import (
    BRANCH,
    BRANCH_BUCKET,
    DECLINE,
    KEEP,
    KEEP_BUCKET,
    REFER,
    Outcomes,
    fill_outcomes,
    pack_record,
)
from router.decide.partners import SmoothWeightedRotation, waterfall_order
from router.store import (
    CAP_HIT,
    DEDUPED,
    GRANTED,
    LATE,
    Bucket,
    CapLimit,
    QuotaStore,
    cap_full,
    cap_index,
)
from router.store.base import Attempt, Walk

_KEEP_FULL, _BRANCH_FULL = BIT["KEEP_BUDGET_EXHAUSTED"], BIT["BRANCH_BUDGET_EXHAUSTED"]
_DEDUPE, _QUOTA = BIT["PARTNER_DEDUPE"], BIT["PARTNER_QUOTA_EXHAUSTED"]
_STORE_DOWN, _LATE = BIT["STORE_UNAVAILABLE"], BIT["LATE_EVENT"]
#: The reason a refusal sets for keep (-2) and branch (-1); a partner's is _QUOTA/_DEDUPE.
_REFUSED_BIT = {-2: _KEEP_FULL, -1: _BRANCH_FULL}


def make_bucket(bid: str, caps: Sequence[Cap], tz: str, dedupe_days: int = 0) -> Bucket:
    """A store bucket from configured caps."""
    return Bucket(
        id=bid,
        caps=tuple(CapLimit(c.window, c.count, c.amount) for c in caps),
        timezone=tz,
        dedupe_ms=dedupe_days * 86_400_000,
    )


@dataclass(eq=False)
class _Batch:
    """One batch on its way through the allocator: what :meth:`Allocator._plan` settled,
    the outcome columns the walk fills, and what :meth:`Allocator._finish` needs."""

    cols: AppColumns
    a: Assessment
    n: int
    ids: Sequence[str]
    fps: Sequence[int]
    once: bool
    claiming: bool
    shared: bool
    recalled: dict[int, bytes]
    dups: dict[int, int]
    down: bool
    recall_failed: bool
    todo: list[int]
    mask_l: list[int]
    keep_ok: list[bool]
    branch_ok: list[bool]
    kind: list[int]
    chosen: list[int]
    bits: list[int]
    degraded: list[bool]
    event_ms: list[int]
    amounts: list[int]
    ev_flat: list[float]
    decode: dict[int, list[int]]
    kkeys: Any
    bkeys: Any
    pkeys: Any
    order_codes: list[int] | None
    degrade_keep: bool
    rotation: list[int] | None = None
    counted: dict | None = None


class Allocator:
    """Holds what lives across batches: buckets, the weighted rotation, full-cap memory."""

    #: Mask partners out for the rest of a window once a count cap is full (a shortcut;
    #: tests switch it off to show it changes no result).
    skip_full_windows = True

    def __init__(
        self,
        strategy: Strategy,
        store: QuotaStore,
        on_cap: Callable[[str, str, int, int], None] | None = None,
    ):
        s = strategy
        self.strategy, self.store, self.on_cap = s, store, on_cap
        self.keep_bucket = make_bucket(KEEP_BUCKET, s.primary.caps, s.timezone)
        self.branch_bucket = make_bucket(
            BRANCH_BUCKET, s.branch.caps if s.branch else [], s.timezone
        )
        self.partner_buckets = [
            make_bucket(p.id, p.caps, p.timezone, p.dedupe_days) for p in s.partners
        ]
        self.waterfall = waterfall_order(s.partners)
        self.rank = [0] * len(s.partners)
        for r, j in enumerate(self.waterfall):
            self.rank[j] = r
        self.rotation = SmoothWeightedRotation([p.weight for p in s.partners], self.rank)
        self.routing = routing_method(s.routing.method)
        # bucket -> per cap (window key, smallest amount refused in that window). Counters
        # only grow inside a window, so any amount at least that large is refused too; a
        # full count cap refuses everything (floor 0). Saves store round trips once caps bite.
        self.floors: dict[str, list[tuple[int, int] | None]] = {}
        #: (bucket, window) -> refusals by that cap so far.
        self.refusals: dict[tuple[str, str], int] = {}
        # One batch at a time: recall → reserve → remember must not interleave in-process.
        self.lock = threading.Lock()
        self._new_blocks: list[tuple[int, int]] = []
        # Found decisions handed back in the current decision (two-phase stores post their
        # grants), and whether its own grants must be voided.
        self._answered: list[tuple[str, str]] = []
        self._void = False
        self._ids: list[str] = []
        self._fps: list[int] = []
        self._once = False
        self._recorded = False
        #: Send a batch's reservations in pipelined rounds (live coalescing; see _rounds).
        self._pipelined = False
        #: Replies of decisions sent ahead of the walk (:meth:`_sent_walks`), by row.
        self._replies: _Ahead | None = None
        self._fixups: list[tuple[int, bytes]] = []
        #: On a store failure: answer degraded (True, live) or raise StoreError (replay).
        self.degrade = True
        #: How long a claim on an application protects a decision in progress.
        self.claim_lease_ms = 5000
        self.log = get_logger("allocate")

    def known_refusal(self, bucket: Bucket, kcols: list[list[int]], i: int, amount: int) -> int:
        """A cap result if a cap is already known to refuse ``amount`` for row ``i``, else -1."""
        fl = self.floors.get(bucket.id)
        if fl is not None:
            for k, kf in enumerate(fl):
                if kf is not None and kf[0] == kcols[k][i] and amount >= kf[1]:
                    self.refusals[bucket.id, bucket.caps[k].window] += 1
                    return CAP_HIT + 2 * k + (kf[1] == 0)
        return -1

    def reserve(
        self,
        bucket: Bucket,
        kcols: list[list[int]],
        i: int,
        amount: int,
        applicant: str | None,
        t: int,
        entry: ReferralEntry | None = None,
        record: Callable[[], bytes] | None = None,
    ) -> int:
        """Reserve row ``i`` against ``bucket`` in the store, remembering what caps refuse.

        ``kcols[k][i]`` is the row's window key for ``bucket.caps[k]``. Call
        :meth:`known_refusal` first to skip a round trip a cap would refuse anyway. In
        single-trip mode ``record`` makes the decision record stored with a grant, and an
        application the store already decided raises :class:`_Decided`.
        """
        keys = tuple([col[i] for col in kcols])
        if self._replies is not None:
            r = self._replied(i, bucket, record)
        elif self._once:
            r, existing = self.store.try_reserve_once(
                bucket,
                keys,
                amount,
                applicant,
                t,
                entry,
                application_id=self._ids[i],
                fingerprint=self._fps[i],
                record=record() if record is not None else b"",
            )
            if existing is not None:
                raise _Decided(existing)
        elif self._recorded and record is not None:
            r = self.store.try_reserve_recorded(
                bucket,
                keys,
                amount,
                applicant,
                t,
                entry,
                application_id=self._ids[i],
                fingerprint=self._fps[i],
                record=record(),
            )
        else:
            r = self.store.try_reserve(
                bucket, keys, amount, applicant, t, entry, application_id=self._ids[i]
            )
        self.note(bucket, keys, amount, r, t)
        return r

    def note(self, bucket: Bucket, keys: tuple[int, ...], amount: int, r: int, t: int) -> None:
        """Learn from a store result: refused-amount floors, refusal counts, ``on_cap``."""
        if r >= CAP_HIT:
            bid = bucket.id
            k = cap_index(r)
            fl = self.floors.get(bid)
            if fl is None:
                fl = self.floors[bid] = [None] * len(bucket.caps)
            new = 0 if cap_full(r) else amount
            kf = fl[k]
            first = kf is None or kf[0] != keys[k]
            if kf is None or first or new < kf[1]:
                fl[k] = (keys[k], new)
            w = bucket.caps[k].window
            self.refusals[bid, w] = self.refusals.get((bid, w), 0) + 1
            if first and self.on_cap is not None:
                self.on_cap(bid, w, keys[k], t)

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

    def _settled(self, walk: Callable, *args):
        """Run a decision walk on a two-phase store: its grants are posted when its answers
        are handed back, voided when it fails (or when its records could not be written)."""
        store = self.store
        store.begin_decision()
        self._answered, self._void = [], False
        ok = False
        try:
            out = walk(*args)
            ok = True
            return out
        finally:
            store.end_decision(ok and not self._void, self._answered if ok else ())

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

    def _walks_ahead(self, b: _Batch) -> bool:
        """Whether to send the batch's decisions to the store ahead of the walk, one script
        each, pipelined in arrival order (:meth:`_sent_walks`): a replay on a store that
        walks decisions, routing that does not depend on earlier grants, and event times
        that never go back (so a decision sent ahead moves the late-event horizon no
        further than the walk would have by then)."""
        if not (self.store.walks and self.store.replaying and b.once and not b.down):
            return False
        if self.routing.rotates or len(b.todo) < 2:
            return False
        t = np.asarray(b.event_ms)[b.todo]
        return bool((np.diff(t) >= 0).all())

    def _sent_walks(self, b: _Batch) -> _Ahead:
        """Send every row the walk will try as one decision script, pipelined in arrival
        order, runs of :attr:`WALK_RUN` rows a round trip; the walk then reads each
        attempt's result from the replies (:meth:`reserve`) instead of asking the store.

        A run is built when the walk reaches the run two ahead of it (the store runs one
        while this process walks another), with the floors learnt so far: a candidate
        they know refuses is left out (as reason bits). The walk, reaching the row later,
        knows it too — event times never go back here, so the floor that applied still
        does — and it may know more: the store then tried a candidate the walk skips, and
        refused it as the walk knows (floors only mark refusals; a replay releases
        nothing). A row's stored record is checked against the walk's and rewritten if a
        reason bit differs."""
        rows = [i for i in b.todo if i not in b.recalled and i not in b.dups]
        self._fixups = []
        return _Ahead(self, b, rows, self.WALK_RUN)

    #: Rows per pipelined round trip when decisions are sent ahead of the walk.
    WALK_RUN = 256

    def _row_walk(self, b: _Batch, i: int) -> tuple[Walk, list[str]]:
        """Row ``i``'s decision as one walk: keep, branch, the eligible partners in
        routing order; those the floors know refuse left out, as reason bits."""
        a, s, P = b.a, self.strategy, len(self.strategy.partners)
        t, amount, bits = b.event_ms[i], b.amounts[i], b.bits[i]
        entries = self.store.needs_entries
        attempts: list[Attempt] = []
        buckets: list[str] = []
        pre = 0
        if b.keep_ok[i]:
            kb = self.keep_bucket
            keys = tuple([col[i] for col in b.kkeys])
            if one_call.known(self, kb, keys, amount) >= 0:
                pre |= _KEEP_FULL
            else:
                rec = pack_record(
                    KEEP, bits, a.keep_profit[i], a.keep_apr[i], a.keep_margin[i], a.pd[i], ""
                )
                attempts.append(Attempt(kb, keys, None, None, rec, _KEEP_FULL, _DEDUPE, pre))
                buckets.append(kb.id)
                pre = 0
        if b.branch_ok[i]:
            bb = self.branch_bucket
            keys = tuple([col[i] for col in b.bkeys])
            if one_call.known(self, bb, keys, amount) >= 0:
                pre |= _BRANCH_FULL
            else:
                rec = pack_record(
                    BRANCH,
                    bits,
                    a.branch_profit[i],
                    a.branch_apr[i],
                    a.branch_margin[i],
                    a.branch_pd[i],
                    "",
                )
                entry = (
                    row_branch_entry(s, b.cols, i, t, amount, a.branch_profit[i])
                    if entries
                    else None
                )
                attempts.append(Attempt(bb, keys, None, entry, rec, _BRANCH_FULL, _DEDUPE, pre))
                buckets.append(bb.id)
                pre = 0
        m = b.mask_l[i]
        if m:
            eligible = b.decode.get(m)
            if eligible is None:
                eligible = b.decode[m] = [j for j in range(P) if m >> j & 1]
            applicant = b.cols.applicant[i]
            for j in self._row_order(b, i, m, eligible):
                pb = self.partner_buckets[j]
                keys = tuple([col[i] for col in b.pkeys[j]])
                if one_call.known(self, pb, keys, amount) >= 0:
                    pre |= _QUOTA
                    continue
                entry = (
                    row_referral_entry(s, b.cols, i, j, t, amount, b.ev_flat[i * P + j])
                    if entries
                    else None
                )
                rec = self._refer_record(b, i, j, bits)
                attempts.append(Attempt(pb, keys, applicant, entry, rec, _QUOTA, _DEDUPE, pre))
                buckets.append(pb.id)
                pre = 0
        decline = pack_record(DECLINE, bits, 0.0, float("nan"), a.keep_margin[i], a.pd[i], "")
        walk = Walk(b.ids[i], b.fps[i], t, amount, attempts, decline, pre, _LATE)
        return walk, buckets

    def _row_order(self, b: _Batch, i: int, m: int, eligible: list[int]) -> list[int]:
        """Row ``i``'s eligible partners in the order :meth:`_walk_partners` and
        :meth:`_refer` try them (routing that does not rotate)."""
        P = len(self.strategy.partners)
        if len(eligible) == 1:
            return eligible
        if b.order_codes is not None:
            full = [(b.order_codes[i] >> (4 * k)) & 15 for k in range(P)]
            return [j for j in full if m >> j & 1]
        evs, base = b.ev_flat, i * P
        return self.routing.order(eligible, self.rank, lambda j: evs[base + j], self.rotation)

    def _replied(self, i: int, bucket: Bucket, record: Callable[[], bytes] | None) -> int:
        """The result of row ``i``'s attempt at ``bucket`` from the decision sent ahead
        (see :meth:`_sent_walks`)."""
        assert self._replies is not None  # (only called while they are)
        reply = self._replies.get(i)
        if isinstance(reply, BaseException):
            raise reply
        if reply is None:
            raise StoreError(
                f"application {self._ids[i]!r}: not sent ahead, yet the walk tries a "
                f"candidate ({bucket.id!r}) the floors knew was full"
            )
        if reply.stored is not None:
            raise _Decided(reply.stored)
        try:
            at = reply.buckets.index(bucket.id)
        except ValueError:
            at = len(reply.codes)
        if at >= len(reply.codes):
            raise StoreError(
                f"application {self._ids[i]!r}: the store's walk stopped before "
                f"{bucket.id!r} (it granted a candidate the router knows is refused)"
            )
        code = reply.codes[at]
        if code == GRANTED and record is not None:
            kept = _with_bits(reply.walk.attempts[at].record, reply.bits_before(at))
            mine = record()
            if mine != kept:
                self._fixups.append((i, mine))
        return code

    def _plan(self, cols: AppColumns, a: Assessment) -> _Batch:
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
        recalled, down = self._recall(ids, fps, skip=once and n == 1)
        todo, mask_l = self._candidates(a, n)
        keys = _KeyRows(a)
        b = _Batch(
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
                _LazyKeys(keys, self.partner_buckets)
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
        P = len(self.strategy.partners)
        if n == 1:  # one live decision: plain Python beats numpy here
            m0 = sum(1 << j for j, e in enumerate(a.eligible[0].tolist()) if e)
            return ([0] if bool(a.keep_ok[0]) or bool(a.branch_ok[0]) or m0 else []), [m0]
        if P:
            masks = (a.eligible.astype(np.int64) << np.arange(P)).sum(axis=1)
        else:
            masks = np.zeros(n, dtype=np.int64)
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

    def _claim(self, b: _Batch) -> None:
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

    def _pipelined_rounds(self, b: _Batch) -> None:
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

    def _walk(self, b: _Batch) -> None:
        """Walk the batch's rows in arrival order: keep, branch, then the eligible partners
        in routing order, stopping at the first grant (or answer degraded while the store
        is down)."""
        once, weighted = b.once, self.routing.rotates
        blocks = _Blocks(b.n, len(self.strategy.partners))
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
                except _Decided as done:  # decided before (a retry, or a concurrent caller)
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
            b.bits[i] |= _STORE_DOWN
            b.kind[i] = KEEP if b.degrade_keep and b.keep_ok[i] else DECLINE
            b.chosen[i] = -1
        if b.recall_failed:  # unknown whether any row was decided before: all are degraded
            for i in range(b.n):
                if not b.degraded[i]:
                    b.degraded[i] = True
                    b.bits[i] |= _STORE_DOWN
        b.rotation, b.counted = rotation, counted

    def _walk_partners(
        self, b: _Batch, i: int, blocks: _Blocks, order_cache: dict[Any, list[int]]
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
            b.bits[i] |= _QUOTA
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

    def _own_budgets(self, b: _Batch, i: int, t: int, amount: int) -> bool:
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
            bits[i] |= _LATE if r == LATE else _KEEP_FULL
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
            bits[i] |= _LATE if r == LATE else _BRANCH_FULL
        return False

    def _finish(self, b: _Batch) -> Outcomes:
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

    def _new_rows(self, b: _Batch, out: Outcomes, granted: bool | None = None) -> list[int]:
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

    def _store_records(self, b: _Batch, rows: list[int], records: list[bytes], shared: bool):
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

    def _record_declines(self, b: _Batch, out: Outcomes, records: list[bytes]) -> None:
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

    def _declines_sent(self, rows: list[int], records: list[bytes]) -> list[int]:
        """Of these declined rows, those still to store: a decision sent ahead stored its
        decline already (rewritten if its reason bits differ from the walk's)."""
        todo = []
        assert self._replies is not None  # (only called while they are)
        self._replies.drain()
        for i in rows:
            reply = self._replies.get(i)
            if not isinstance(reply, _Reply) or reply.stored is not None:
                todo.append(i)
                continue
            kept = _with_bits(reply.walk.decline, reply.decline_bits())
            if kept != records[i]:
                self._fixups.append((i, records[i]))
        return todo

    def _rewrite_fixups(self, b: _Batch) -> None:
        """Rewrite the stored records whose reason bits differ from the walk's (a late
        event whose candidates the walk knew were full: the store said late)."""
        fix, self._fixups = self._fixups, []
        self.store.rewrite_records(
            [b.ids[i] for i, _ in fix], [b.fps[i] for i, _ in fix], [rec for _, rec in fix]
        )

    def _remember(self, b: _Batch, out: Outcomes, records: list[bytes]) -> None:
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

    def _void_grants(self, b: _Batch, out: Outcomes, records: list[bytes]) -> None:
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
                b.bits[i] | _STORE_DOWN,
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

    def _store_down(self, exc: StoreError, during: str) -> None:
        """A store call failed: answer degraded (live), or stop the run (``degrade`` off:
        replay, whose results must never silently differ from the store's)."""
        if not self.degrade:
            raise StoreError(f"quota store unavailable during {during}: {exc}") from exc
        self.log.warning("store.unavailable", during=during, error=str(exc))

    def _restore_counts(self, counted: dict) -> None:
        """Put refusal counts back to a snapshot (a walk that turned out to be a retry)."""
        self.refusals.clear()
        self.refusals.update(counted)

    def _note_answered(self, app_id: str, record: bytes) -> None:
        """A found decision handed back: its grant (if any) is posted with this decision."""
        if not self.store.two_phase:
            return
        kind = record[0]
        if kind == KEEP:
            self._answered.append((KEEP_BUCKET, app_id))
        elif kind == BRANCH:
            self._answered.append((BRANCH_BUCKET, app_id))
        elif kind == REFER:
            self._answered.append((record[41:73].rstrip(b"\0").decode(), app_id))

    def allocate_row(self, r: Row, a: OneAssessment) -> tuple[bytes, bool]:
        """:meth:`allocate` for one application on a single-trip store, on scalars: the
        live path. Returns the decision record and whether it was decided degraded.

        The same steps as a batch of one (and the same results, which
        ``tests/test_decide_one.py`` checks): keep, branch, then partners in routing order,
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
            raise _Decided(existing)
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
            except _Decided as done:  # decided before (a retry, or a concurrent caller)
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
                bits |= _STORE_DOWN
                if self.strategy.degraded.policy == "keep" and a.keep_ok:
                    return pack_record(
                        KEEP, bits, a.keep_profit, a.keep_apr, a.keep_margin, a.pd, ""
                    ), True
                return pack_record(DECLINE, bits, 0.0, float("nan"), a.keep_margin, a.pd, ""), True
        return self._decline_row(r, a, bits, rotation, counted), False

    def _walk_row(self, r: Row, a: OneAssessment) -> tuple[bytes, bool]:
        """:meth:`_allocate_row` as one store call (a store that walks a decision: see
        :mod:`router.decide.walk_one_call`)."""
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
        if not walk.attempts:
            # Nothing to reserve (no option, or every cap known full): a decline, stored
            # unless the application was decided before (a plain SET, not a script).
            counted = dict(self.refusals)
            _, bits = one_call.settle(self, steps, -1, [], r.event_ms, r.requested_amount)
            return self._decline_row(r, a, a.bits | bits, rotation, counted), False
        try:
            ((granted, codes, stored),) = self.store.walk_many([walk])
        except IdempotencyConflict:
            raise
        except StoreError as exc:
            if rotation is not None:
                self.rotation.current[:] = rotation
            # Degraded: never refer; keep only if the strategy's degraded policy says so.
            self._store_down(exc, "reserve")
            bits = a.bits | _STORE_DOWN
            if self.strategy.degraded.policy == "keep" and a.keep_ok:
                return pack_record(
                    KEEP, bits, a.keep_profit, a.keep_apr, a.keep_margin, a.pd, ""
                ), True
            return pack_record(DECLINE, bits, 0.0, float("nan"), a.keep_margin, a.pd, ""), True
        if stored is not None:  # decided before (a retry, or a concurrent caller)
            if rotation is not None:
                self.rotation.current[:] = rotation
            self._note_answered(r.application_id, stored)
            return stored, False
        s, bits = one_call.settle(self, steps, granted, codes, r.event_ms, r.requested_amount)
        if s < 0:
            return pack_record(
                DECLINE, a.bits | bits, 0.0, float("nan"), a.keep_margin, a.pd, ""
            ), False
        step = steps[s]
        if step.kind == REFER:
            self.routing.on_grant(self.rotation, step.partner, eligible)
        elif rotation is not None:  # kept or branched: the partners were never reached
            self.rotation.current[:] = rotation
        return _with_bits(walk.attempts[granted].record, bits), False

    def _row_candidates(self, r: Row, a: OneAssessment, order: list[int]) -> list:
        """One row's candidates in walk order: keep, branch, partners in ``order``. Those
        the floors know are full get no record or entry (they are not sent)."""
        s, out, amount = self.strategy, [], r.requested_amount
        if a.keep_ok:
            kb = self.keep_bucket
            keys = _row_keys(kb, a)
            rec = b""
            if one_call.known(self, kb, keys, amount) < 0:
                rec = pack_record(KEEP, a.bits, a.keep_profit, a.keep_apr, a.keep_margin, a.pd, "")
            out.append(one_call.Candidate(KEEP, -1, kb, keys, None, rec, None))
        if a.branch_ok:
            bb = self.branch_bucket
            keys = _row_keys(bb, a)
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
            keys = _row_keys(pb, a)
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
            kk = _row_keys(kb, a)
            res = self._known_row(kb, kk, r.requested_amount)
            if res == -1:
                res = self._reserve_row(kb, kk, r, None, None, rec)
            if res == GRANTED:
                return rec
            bits |= _LATE if res == LATE else _KEEP_FULL
        if a.branch_ok:
            bb = self.branch_bucket
            rec = pack_record(
                BRANCH, bits, a.branch_profit, a.branch_apr, a.branch_margin, a.branch_pd, ""
            )
            bk = _row_keys(bb, a)
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
            bits |= _LATE if res == LATE else _BRANCH_FULL
        return bits

    def _decline_row(
        self, r: Row, a: OneAssessment, bits: int, rotation: list | None, counted: dict | None
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
            kk = _row_keys(bucket, a)
            res = self._known_row(bucket, kk, r.requested_amount)
            if res < 0:
                rec, entry = self._referral_row(r, a, j, bits | extra)
                res = self._reserve_row(bucket, kk, r, r.applicant, entry, rec)
                if res == GRANTED:
                    routing.on_grant(self.rotation, j, eligible)
                    return rec
            extra |= _DEDUPE if res == DEDUPED else _LATE if res == LATE else _QUOTA
        return extra

    def _rounds(self, b: _Batch) -> None:
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

    def _round_plans(self, b: _Batch) -> dict[int, list]:
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

    def _candidate(self, b: _Batch, c: int) -> tuple[Bucket, Any]:
        """The bucket and window-key columns of candidate ``c`` (-2 keep, -1 branch, else
        a partner)."""
        if c == -2:
            return self.keep_bucket, b.kkeys
        if c == -1:
            return self.branch_bucket, b.bkeys
        return self.partner_buckets[c], b.pkeys[c]

    def _round_requests(self, b: _Batch, plans: dict[int, list]) -> tuple[list, list]:
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
                b.bits[i] |= _REFUSED_BIT.get(c, _QUOTA)
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

    def _request_parts(self, b: _Batch, i: int, c: int) -> tuple[Any, Any, bytes]:
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

    def _settle_round(self, b: _Batch, plans: dict[int, list], owners: list, results) -> None:
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
                    _LATE if r == LATE else _REFUSED_BIT.get(c, _DEDUPE if r == DEDUPED else _QUOTA)
                )
                plans[i][1] += 1

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
        b: _Batch,
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
                extra |= _QUOTA
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
            extra |= _DEDUPE if r == DEDUPED else _LATE if r == LATE else _QUOTA
        return -1, extra

    def _refer_record(self, b: _Batch, i: int, j: int, bits: int) -> bytes:
        """The stored decision of row ``i`` referred to partner ``j`` with reason ``bits``."""
        a, P = b.a, len(self.strategy.partners)
        return pack_record(
            REFER,
            bits,
            b.ev_flat[i * P + j],
            a.partner_apr[i, j],
            a.keep_margin[i],
            a.pd[i],
            self.strategy.partners[j].id,
        )


class _Blocks:
    """Partners whose count cap is full for the window the current rows are in: refused
    without a store call or floor lookup until the first row of the next window (rows
    are in time order)."""

    def __init__(self, n: int, partners: int):
        self.mask = 0  # bit j: partner j is blocked
        self.until = [n] * partners  # first row partner j's block no longer covers
        self.cap = [0] * partners  # the cap index that is full
        self.n = n
        self.next_release = n

    def release(self, i: int) -> None:
        """Unblock the partners whose window ended before row ``i``."""
        if self.mask and i >= self.next_release:
            for j in range(len(self.until)):
                if self.mask >> j & 1 and self.until[j] <= i:
                    self.mask &= ~(1 << j)
            self.next_release = min(
                [self.until[j] for j in range(len(self.until)) if self.mask >> j & 1],
                default=self.n,
            )

    def add(self, j: int, k: int, end: int, i: int) -> None:
        """Partner ``j``'s cap ``k`` is full until row ``end`` (a block only pays past
        the next row)."""
        if end > i + 1:
            self.mask |= 1 << j
            self.until[j] = end
            self.cap[j] = k
            self.next_release = min(self.next_release, end)


class _Reply(NamedTuple):
    """A decision sent ahead of the walk and the store's answer (see
    :meth:`Allocator._sent_walks`)."""

    walk: Walk
    buckets: list[str]  # each attempt's bucket id, in order
    granted: int
    codes: list[int]
    stored: bytes | None

    def bits_before(self, at: int) -> int:
        """The reason bits the store ORed into attempt ``at``'s record."""
        bits = self.walk.attempts[at].pre_bits if at < len(self.walk.attempts) else 0
        for a, code in zip(self.walk.attempts[:at], self.codes):
            bits |= a.pre_bits
            bits |= _LATE if code == LATE else _DEDUPE if code == DEDUPED else a.cap_bit
        return bits

    def decline_bits(self) -> int:
        """The reason bits the store ORed into the decline it stored (no grant)."""
        return self.bits_before(len(self.codes)) | self.walk.after_bits


class _Ahead:
    """Decisions sent ahead of the walk (see :meth:`Allocator._sent_walks`): runs built
    and sent as the walk reaches them, their replies by row."""

    def __init__(self, al: Allocator, b: _Batch, rows: list[int], run: int):
        self._al, self._b = al, b
        self._runs = [rows[k : k + run] for k in range(0, len(rows), run)]
        self._built: list[list[tuple[int, Walk, list[str]]]] = []
        self._replies: dict[int, Any] = {}
        self._done = 0
        self._failed: StoreError | None = None
        self._stream = al.store.walk_stream(self._walks())

    def _walks(self):
        for run in self._runs:
            built = [(i, *self._al._row_walk(self._b, i)) for i in run]
            # (A row with nothing to try is not sent: its decline is stored with the rest.)
            built = [x for x in built if x[1].attempts]
            if built:
                self._built.append(built)
                yield [w for _, w, _ in built]

    def _pull(self) -> bool:
        if self._failed is not None:
            return False
        try:
            got = next(self._stream)
        except StopIteration:
            return False
        except StoreError as exc:  # later rows are answered as the walk answers a failure
            self._failed = exc
            return False
        for (i, walk, buckets), (g, codes, stored) in zip(self._built[self._done], got):
            self._replies[i] = _Reply(walk, buckets, g, codes, stored)
        self._done += 1
        return True

    def get(self, i: int) -> Any:
        """Row ``i``'s reply (pulling runs until it is in), the store's failure, or None:
        not sent."""
        while i not in self._replies and self._pull():
            pass
        got = self._replies.get(i)
        return self._failed if got is None and self._failed is not None else got

    def drain(self) -> None:
        """Read every reply still due (every script sent has run)."""
        while self._pull():
            pass

    def close(self) -> None:
        self._stream.close()


class _Decided(Exception):
    """The store already holds a decision for this application (single-trip mode)."""

    def __init__(self, record: bytes):
        self.record = record


class _LazyKeys:
    """``pkeys[j]``: the window-key columns of partner j's bucket, built on first use."""

    def __init__(self, rows: _KeyRows, buckets: list[Bucket]):
        self._rows, self._buckets = rows, buckets
        self._got: dict[int, list[list[int]]] = {}

    def __getitem__(self, j: int) -> list[list[int]]:
        got = self._got.get(j)
        if got is None:
            got = self._got[j] = self._rows.get(self._buckets[j])
        return got


class _KeyRows:
    """Window-key columns (one list per cap) of each bucket for one batch, built on first use."""

    def __init__(self, a: Assessment):
        self._zones = a.keys
        self._cols: dict[str, list[list[int]]] = {}

    def get(self, bucket: Bucket) -> list[list[int]]:
        cols = self._cols.get(bucket.id)
        if cols is None:
            zk = self._zones[bucket.timezone]
            cols = self._cols[bucket.id] = [zk[c.window].tolist() for c in bucket.caps]
        return cols


def _with_bits(record: bytes, bits: int) -> bytes:
    """A decision record with more reason bits ORed in (as lua/decide.lua stores it)."""
    if not bits:
        return record
    low = int.from_bytes(record[1:5], "little") | bits
    return record[:1] + low.to_bytes(4, "little") + record[5:]


def _row_keys(bucket: Bucket, a: OneAssessment) -> tuple[int, ...]:
    """One row's window key for each of ``bucket``'s caps."""
    zk = a.keys[bucket.timezone]
    return tuple([zk[_WINDOW_INDEX[c.window]] for c in bucket.caps])


_WINDOW_INDEX = {w: i for i, w in enumerate(WINDOWS)}
