"""The allocator's state and the steps every walk shares: buckets, the weighted rotation,
the refused-amount floors learnt from the store, one reservation and what it teaches, the
two-phase settle of a decision's grants.

The walks themselves are mixed into :class:`router.decide.allocate.Allocator` from their
own modules: the batch walk (``allocate``), one application on scalars
(``allocate_row``), decisions sent ahead in a replay (``allocate_ahead``), pipelined rounds
(``allocate_rounds``), and the records a walked batch stores (``allocate_records``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from router.core.config import Cap, Strategy
from router.core.errors import StoreError
from router.core.logs import get_logger
from router.core.messages import ReferralEntry
from router.core.routing import routing_method
from router.decide.outcomes import BRANCH, BRANCH_BUCKET, KEEP, KEEP_BUCKET, REFER, pack_record
from router.decide.partners import SmoothWeightedRotation, waterfall_order
from router.decide.walk_state import Batch, Decided, with_bits
from router.store import CAP_HIT, GRANTED, Bucket, CapLimit, QuotaStore, cap_full, cap_index

if TYPE_CHECKING:
    from router.decide.allocate_ahead import AheadReplies


def make_bucket(bid: str, caps: Sequence[Cap], tz: str, dedupe_days: int = 0) -> Bucket:
    """A store bucket from configured caps."""
    return Bucket(
        id=bid,
        caps=tuple(CapLimit(c.window, c.count, c.amount) for c in caps),
        timezone=tz,
        dedupe_ms=dedupe_days * 86_400_000,
    )


class AllocatorBase:
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
        #: The async path's (:meth:`RowWalk.aallocate_row`), made in the running loop.
        self._async_lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
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
        self._replies: AheadReplies | None = None
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
        application the store already decided raises :class:`Decided`.
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
                raise Decided(existing)
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

    def _settled(self, walk: Callable, *args):
        """Run a decision walk on a two-phase store: its grants are posted when its answers
        are handed back, voided when it fails (or when its records could not be written)."""
        self._settle_begin()
        ok = False
        try:
            out = walk(*args)
            ok = True
            return out
        finally:
            self._settle_end(ok)

    @property
    def async_lock(self) -> asyncio.Lock:
        """One async decision at a time (the walk's state is the router's)."""
        loop = asyncio.get_running_loop()
        if self._async_lock is None or self._lock_loop is not loop:  # (a lock is a loop's)
            self._async_lock, self._lock_loop = asyncio.Lock(), loop
        return self._async_lock

    def _settle_begin(self) -> None:
        """A decision starts on a two-phase store (see :meth:`_settled`)."""
        self.store.begin_decision()
        self._answered, self._void = [], False

    def _settle_end(self, ok: bool) -> None:
        """The decision ended: ``ok`` when its answer is handed back."""
        self.store.end_decision(ok and not self._void, self._answered if ok else ())

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

    def _refer_record(self, b: Batch, i: int, j: int, bits: int) -> bytes:
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
            raise Decided(reply.stored)
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
            kept = with_bits(reply.walk.attempts[at].record, reply.bits_before(at))
            mine = record()
            if mine != kept:
                self._fixups.append((i, mine))
        return code
