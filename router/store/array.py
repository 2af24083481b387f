"""In-memory quota store with its state in arrays: replay's store, walked by compiled code.

The same semantics as :class:`router.store.memory.MemoryQuotaStore` — the store contract
tests run against both — but counters, the archive of past windows and the applicant
dedupe live in numpy arrays and array hash tables (:mod:`router.store.kernel`,
:mod:`router.store.int_table`). Besides
the :class:`QuotaStore` methods it offers :meth:`ArrayQuotaStore.allocate`, which decides
a whole batch in one compiled call (the allocator hands batches to it; see
:mod:`router.decide.allocate_compiled`).

Application grants (the per-bucket memory that makes a retried reservation a no-op) are
kept for :meth:`try_reserve` calls only. A batch decided by :meth:`allocate` stores every
decided application's record instead, which answers any retry first and lives at least
as long as a grant would (both leave in the same event-time sweep).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from router.core.errors import InputError
from router.core.identity import Tokens, token_words
from router.core.messages import ReferralEntry
from router.core.windows import window_end_ms
from router.store import int_table
from router.store import kernel as K
from router.store.base import (
    COUNTER_GRACE_MS,
    GRANTED,
    LATE,
    LATE_MS,
    SWEEP_EVERY_MS,
    Bucket,
    QuotaStore,
    validate_reservation,
)
from router.store.records import InProcessRecords

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i


def applicant_words(applicants: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Two int64 words per applicant hash, for the compiled dedupe.

    A keyed token (32 lowercase hex digits: the 128 bits themselves) is decoded, so equal
    words mean equal tokens; any other text (callers of the store API may pass their own
    ids) is hashed to 128 bits with BLAKE2b first.
    """
    if isinstance(applicants, Tokens):
        return applicants.hi, applicants.lo
    n = len(applicants)
    joined = "".join(applicants).encode()
    if len(joined) == 32 * n:
        nib = _HEX[np.frombuffer(joined, dtype=np.uint8)].reshape(n, 32)
        if n == 0 or nib.max() < 16:
            raw = ((nib[:, 0::2] << 4) | nib[:, 1::2]).astype(np.uint8)
            words = np.ascontiguousarray(raw).view(">i8").astype(np.int64)
            return words[:, 0].copy(), words[:, 1].copy()
    hi, lo = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i, a in enumerate(applicants):
        hi[i], lo[i] = _words_of(a)
    return hi, lo


def _words_of(applicant: str) -> tuple[int, int]:
    if len(applicant) == 32 and all(c in "0123456789abcdef" for c in applicant):
        return token_words(applicant)
    raw = hashlib.blake2b(applicant.encode(), digest_size=16).digest()
    return (
        int.from_bytes(raw[:8], "big", signed=True),
        int.from_bytes(raw[8:], "big", signed=True),
    )


class ArrayQuotaStore(InProcessRecords, QuotaStore):
    """Arrays behind a (re-entrant) lock; options as :class:`MemoryQuotaStore`, and
    ``recall_only``: the only application ids that may ever come again (replay of traffic
    read in full passes the ids it holds more than once), so only their decision records
    are kept — the same decisions, without a record per application."""

    #: The allocator may hand whole batches to :meth:`allocate`.
    compiled = True

    def __init__(
        self,
        *,
        idempotency_ttl_ms: int = 48 * 3600_000,
        retain_ledger: bool = True,
        on_append: Callable[[ReferralEntry], None] | None = None,
        validate: bool = True,
        recall_only: frozenset[str] | None = None,
    ):
        self._setup(idempotency_ttl_ms, retain_ledger, on_append, validate)
        self._decisions.recall_only = recall_only
        # bucket id -> (index, the Bucket last seen); slot -> (window, time zone)
        self._buckets: dict[str, tuple[int, Bucket]] = {}
        self.slot_windows: list[tuple[str, str]] = []
        self.sl = np.zeros((0, K.SL_COLS), dtype=np.int64)
        self.bk = np.zeros((0, K.BK_COLS), dtype=np.int64)
        self.arch = K.new_archive()
        self.aq = np.zeros((1024, K.AQ_COLS), dtype=np.int64)
        self.aq_ptr = np.zeros(2, dtype=np.int64)
        self.dd = K.new_dedupe()
        self.dq = np.zeros((1024, K.DQ_COLS), dtype=np.int64)
        self.dq_ptr = np.zeros(1, dtype=np.int64)
        self.clock = np.array([-(2**62), -(2**62)], dtype=np.int64)

    # ---- state management ----------------------------------------------------------

    def state(self) -> tuple:
        """The compiled functions' state argument: the store's arrays, in the order the
        kernel unpacks them."""
        return (
            self.clock,
            self.sl,
            self.bk,
            self.arch,
            self.aq,
            self.aq_ptr,
            self.dd,
            self.dq,
            self.dq_ptr,
        )

    # The accessors the compiled walk's driver uses (router.decide.allocate_compiled): it
    # reads the layout through these, never the arrays' columns.

    @property
    def lock(self):
        """The store's lock: hold it for a whole compiled walk."""
        return self._lock

    @property
    def n_slots(self) -> int:
        """How many cap slots the registered buckets use."""
        return len(self.sl)

    def first_slot(self, bucket_index: int) -> int:
        """The slot of the bucket's first cap (its caps are consecutive)."""
        return int(self.bk[bucket_index, K.FIRST_SLOT])

    def dedupes(self, bucket_indexes: np.ndarray) -> bool:
        """Whether any of these buckets has a dedupe window."""
        return bool((self.bk[bucket_indexes, K.DEDUPE_MS] > 0).any())

    @property
    def next_sweep(self) -> int:
        """The event time of the next sweep."""
        return int(self.clock[K.NEXT_SWEEP])

    def bucket_index(self, bucket: Bucket) -> int:
        """The bucket's index in the arrays, registering it (or its new limits) first."""
        got = self._buckets.get(bucket.id)
        if got is not None and got[1] is bucket:
            return got[0]
        if got is not None:
            b, known = got
            if len(known.caps) != len(bucket.caps):
                raise InputError(
                    f"bucket {bucket.id!r} has {len(known.caps)} caps in this "
                    f"store (value: {len(bucket.caps)})",
                    field="bucket",
                )
        else:
            b = len(self.bk)
            first = len(self.sl)
            self.sl = np.vstack([self.sl, np.zeros((len(bucket.caps), K.SL_COLS), np.int64)])
            self.sl[first:, K.CUR_KEY] = K.NONE
            self.sl[first:, K.SLOT_BUCKET] = b
            self.slot_windows += [("", "")] * len(bucket.caps)
            row = np.array([[first, first + len(bucket.caps), 0, K.NONE, K.NONE]], np.int64)
            self.bk = np.vstack([self.bk, row])
        first = int(self.bk[b, K.FIRST_SLOT])
        for k, cap in enumerate(bucket.caps):
            self.sl[first + k, K.CAP_COUNT] = K.NONE if cap.count is None else cap.count
            self.sl[first + k, K.CAP_AMOUNT] = K.NONE if cap.amount is None else cap.amount
            self.slot_windows[first + k] = (cap.window, bucket.timezone)
        self.bk[b, K.DEDUPE_MS] = bucket.dedupe_ms
        self._buckets[bucket.id] = (b, bucket)
        return b

    def make_room(self, dedupe_rows: int, archive_rows: int) -> None:
        """Make sure the expiry queues and tables can take this many more entries (the
        tables grow by at most 64k entries a call: the compiled walk checks their room
        before each row and comes back for more)."""
        self.arch = int_table.grown(self.arch, archive_rows)
        self.dd = int_table.grown(self.dd, min(dedupe_rows, 1 << 16))
        if self.dq_ptr[0] + dedupe_rows > len(self.dq):
            heads = self.bk[:, K.DQ_HEAD]
            live = heads[heads != K.NONE]
            lo = int(live.min()) if len(live) else int(self.dq_ptr[0])
            used = int(self.dq_ptr[0]) - lo
            size = max(len(self.dq), 2 * (used + dedupe_rows))
            dq = np.zeros((size, K.DQ_COLS), dtype=np.int64)
            dq[:used] = self.dq[lo : lo + used]
            nxt = dq[:used, K.DQ_NEXT]
            nxt[nxt != K.NONE] -= lo
            for col in (K.DQ_HEAD, K.DQ_TAIL):
                c = self.bk[:, col]
                c[c != K.NONE] -= lo
            self.dq, self.dq_ptr[0] = dq, used
        if self.aq_ptr[1] + archive_rows > len(self.aq):
            lo, hi = int(self.aq_ptr[0]), int(self.aq_ptr[1])
            size = max(len(self.aq), 2 * (hi - lo + archive_rows))
            aq = np.zeros((size, K.AQ_COLS), dtype=np.int64)
            aq[: hi - lo] = self.aq[lo:hi]
            self.aq, self.aq_ptr[0], self.aq_ptr[1] = aq, 0, hi - lo

    def archive_items(self) -> dict[tuple[int, int], tuple[int, int]]:
        """The archive as a dict (slot, key) -> (count, amount); for tests."""
        return {(s, key): v for (s, key, _), v in int_table.items(self.arch).items()}

    def dedupe_items(self) -> dict[tuple[int, int, int], int]:
        """The dedupe map as a dict (bucket, hash high, low word) -> last grant; for tests."""
        return {k: v[0] for k, v in int_table.items(self.dd).items()}

    def expiry_of(self, slot: int, key: int) -> int:
        """When the counter of ``slot``'s window ``key`` expires (window end + grace)."""
        window, tz = self.slot_windows[slot]
        return window_end_ms(window, key, tz) + COUNTER_GRACE_MS

    def _advance(self, event_ms: int) -> None:
        """Move the event-time horizon; sweep about once an hour of it."""
        if event_ms > self.clock[K.HORIZON]:
            self.clock[K.HORIZON] = event_ms
            if event_ms >= self.clock[K.NEXT_SWEEP]:
                self._sweep(event_ms)

    def swept_in_call(self, before: int) -> None:
        """After a compiled call that may have swept (``before``: the next-sweep time
        before it): sweep the records and grants kept in Python to the same time."""
        after = int(self.clock[K.NEXT_SWEEP])
        if after != before:
            self._sweep_python(after - SWEEP_EVERY_MS)

    def _sweep(self, event_ms: int) -> None:
        K.sweep(event_ms, self.state())
        self._sweep_python(event_ms)

    def _sweep_python(self, event_ms: int) -> None:
        self._decisions.sweep(event_ms)
        for bid, queue in self._grant_expiry.items():
            d = self._grants.get(bid)
            while queue and queue[0][0] <= event_ms:
                _, key, t = queue.popleft()
                if d is not None and d.get(key) == t:
                    del d[key]

    # ---- QuotaStore ------------------------------------------------------------------

    def try_reserve(
        self,
        bucket: Bucket,
        keys: tuple[int, ...],
        amount: int,
        applicant: str | None,
        event_ms: int,
        entry: ReferralEntry | None = None,
        *,
        application_id: str | None = None,
    ) -> int:
        if self._validate:
            validate_reservation(bucket, keys, amount, applicant, event_ms, application_id)
        with self._lock:
            b = self.bucket_index(bucket)
            if event_ms < self.clock[K.HORIZON] - LATE_MS:
                return LATE
            self._advance(event_ms)
            granted = None
            if application_id is not None:
                granted = self._grants.setdefault(bucket.id, {})
                if application_id in granted:
                    return GRANTED  # a retry of a grant already made: nothing applied twice
            self.make_room(1, len(keys))
            first = int(self.bk[b, K.FIRST_SLOT])
            karr = np.array(keys, dtype=np.int64)
            expires = np.array(
                [self.expiry_of(first + k, key) for k, key in enumerate(keys)], dtype=np.int64
            )
            hi, lo = _words_of(applicant) if applicant is not None else (0, 0)
            who = (applicant is not None, hi, lo)
            r = int(K.reserve(b, karr, expires, amount, who, event_ms, self.state()))
            if r != GRANTED:
                return r
            if granted is not None and application_id is not None:  # (granted implies an id)
                granted[application_id] = event_ms
                q = self._grant_expiry.setdefault(bucket.id, deque())
                q.append((event_ms + self._ttl, application_id, event_ms))
            if entry is not None:
                self.append_entry(entry)
            return GRANTED

    def remember_block(
        self, application_ids: list[str], fingerprints: np.ndarray, records: np.ndarray, newest: int
    ) -> None:
        """Store a batch's records at once (distinct ids, none recorded yet, each one
        :meth:`recallable`) and move the event-time horizon to ``newest``."""
        with self._lock:
            self._decisions.remember_block(application_ids, fingerprints, records, newest)
            self._advance(newest)

    def recallable(self, application_ids: Sequence[str]) -> list[int]:
        """Positions of the ids whose records this store keeps (all, without
        ``recall_only``)."""
        return self._decisions.recallable(application_ids)

    def usage(self, bucket: Bucket, keys: tuple[int, ...]) -> list[tuple[int, int]]:
        with self._lock:
            got = self._buckets.get(bucket.id)
            if got is None:
                return [(0, 0)] * len(keys)
            first = int(self.bk[got[0], K.FIRST_SLOT])
            out = []
            for k, key in enumerate(keys):
                s = first + k
                if self.sl[s, K.CUR_KEY] == key:
                    out.append((int(self.sl[s, K.CUR_CNT]), int(self.sl[s, K.CUR_AMT])))
                else:
                    i = int_table.find(self.arch, s, key, 0)
                    c = self.arch[0][i] if i >= 0 else None
                    out.append(
                        (0, 0) if c is None else (int(c[int_table.V0]), int(c[int_table.V1]))
                    )
            return out
