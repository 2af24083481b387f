"""Replay through a store that walks decisions: every row sent ahead of the walk as one
decision script, pipelined in arrival order, and the walk reading each attempt's result
from the replies (see :meth:`SentAhead._sent_walks`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from router.core.errors import StoreError
from router.decide import walk_one_call as one_call
from router.decide.allocate_base import AllocatorBase
from router.decide.entries import row_branch_entry, row_referral_entry
from router.decide.outcomes import BRANCH, DECLINE, KEEP, pack_record
from router.decide.walk_state import BRANCH_FULL, DEDUPE, KEEP_FULL, LATE_BIT, QUOTA, Batch
from router.store import DEDUPED, LATE
from router.store.base import Attempt, Walk


class SentAhead(AllocatorBase):
    """Decisions sent ahead of the batch walk: a part of
    :class:`~router.decide.allocate.Allocator`, mixed in."""

    def _walks_ahead(self, b: Batch) -> bool:
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

    def _sent_walks(self, b: Batch) -> AheadReplies:
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
        return AheadReplies(self, b, rows, self.WALK_RUN)

    #: Rows per pipelined round trip when decisions are sent ahead of the walk.
    WALK_RUN = 256

    def _row_walk(self, b: Batch, i: int) -> tuple[Walk, list[str]]:
        """Row ``i``'s decision as one walk: keep, branch, the eligible partners in
        routing order; those the floors know refuse left out, as reason bits."""
        a, s = b.a, self.strategy
        t, amount, bits = b.event_ms[i], b.amounts[i], b.bits[i]
        entries = self.store.needs_entries
        attempts: list[Attempt] = []
        buckets: list[str] = []
        pre = 0
        if b.keep_ok[i]:
            kb = self.keep_bucket
            keys = tuple([col[i] for col in b.kkeys])
            if one_call.known(self, kb, keys, amount) >= 0:
                pre |= KEEP_FULL
            else:
                rec = pack_record(
                    KEEP, bits, a.keep_profit[i], a.keep_apr[i], a.keep_margin[i], a.pd[i], ""
                )
                attempts.append(Attempt(kb, keys, None, None, rec, KEEP_FULL, DEDUPE, pre))
                buckets.append(kb.id)
                pre = 0
        if b.branch_ok[i]:
            bb = self.branch_bucket
            keys = tuple([col[i] for col in b.bkeys])
            if one_call.known(self, bb, keys, amount) >= 0:
                pre |= BRANCH_FULL
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
                attempts.append(Attempt(bb, keys, None, entry, rec, BRANCH_FULL, DEDUPE, pre))
                buckets.append(bb.id)
                pre = 0
        m = b.mask_l[i]
        if m:
            pre = self._partner_attempts(b, i, m, attempts, buckets, pre)
        decline = pack_record(DECLINE, bits, 0.0, float("nan"), a.keep_margin[i], a.pd[i], "")
        walk = Walk(b.ids[i], b.fps[i], t, amount, attempts, decline, pre, LATE_BIT)
        return walk, buckets

    def _partner_attempts(
        self, b: Batch, i: int, m: int, attempts: list[Attempt], buckets: list[str], pre: int
    ) -> int:
        """Append row ``i``'s partner attempts (eligible mask ``m``) in routing order to
        ``attempts`` and ``buckets``; returns the bits of refusals known after the last."""
        s, P = self.strategy, len(self.strategy.partners)
        t, amount, bits = b.event_ms[i], b.amounts[i], b.bits[i]
        entries = self.store.needs_entries
        eligible = b.decode.get(m)
        if eligible is None:
            eligible = b.decode[m] = [j for j in range(P) if m >> j & 1]
        applicant = b.cols.applicant[i]
        for j in self._row_order(b, i, m, eligible):
            pb = self.partner_buckets[j]
            keys = tuple([col[i] for col in b.pkeys[j]])
            if one_call.known(self, pb, keys, amount) >= 0:
                pre |= QUOTA
                continue
            entry = (
                row_referral_entry(s, b.cols, i, j, t, amount, b.ev_flat[i * P + j])
                if entries
                else None
            )
            rec = self._refer_record(b, i, j, bits)
            attempts.append(Attempt(pb, keys, applicant, entry, rec, QUOTA, DEDUPE, pre))
            buckets.append(pb.id)
            pre = 0
        return pre

    def _row_order(self, b: Batch, i: int, m: int, eligible: list[int]) -> list[int]:
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


class AheadReply(NamedTuple):
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
            bits |= LATE_BIT if code == LATE else DEDUPE if code == DEDUPED else a.cap_bit
        return bits

    def decline_bits(self) -> int:
        """The reason bits the store ORed into the decline it stored (no grant)."""
        return self.bits_before(len(self.codes)) | self.walk.after_bits


class AheadReplies:
    """Decisions sent ahead of the walk (see :meth:`Allocator._sent_walks`): runs built
    and sent as the walk reaches them, their replies by row."""

    def __init__(self, al: SentAhead, b: Batch, rows: list[int], run: int):
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
            self._replies[i] = AheadReply(walk, buckets, g, codes, stored)
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
