"""The allocation step for a batch on an :class:`~router.store.array.ArrayQuotaStore`.

The same steps as :meth:`router.decide.allocate.Allocator.allocate` — idempotency settled for the
whole batch first, then every row walked in arrival order — with the walk itself one
compiled call (:func:`router.decide.walk_compiled.allocate`) instead of a store call per
attempt. It reads the array store only through its accessors (``lock``, ``first_slot``,
``state()``…).
The allocator's own state (refused-amount floors, refusal counts, the weighted rotation)
goes in as arrays and comes back, so batches may alternate with single decisions on the
Python path. ``tests/decide/test_array_store.py`` checks that both paths decide alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from router.core.columns import AppColumns
from router.core.fingerprint import find_repeats
from router.core.reasons import BIT
from router.core.routing import routing_method
from router.core.windows import window_end_ms
from router.decide import walk_compiled
from router.decide.assess import Assessment
from router.decide.entries import make_branch_entry, make_entry
from router.decide.outcomes import BRANCH, DECLINE, REFER, Outcomes, fill_outcomes
from router.decide.partners import partner_bits
from router.store.array import ArrayQuotaStore, applicant_words
from router.store.base import COUNTER_GRACE_MS, Bucket
from router.store.kernel import NONE

#: The compiled walk (numba's dispatcher type does not carry the kernel's signature).
_ALLOCATE: Any = walk_compiled.allocate

if TYPE_CHECKING:
    from router.decide.allocate import Allocator


#: Rows of first-refusal events to start a batch with (grown as needed).
CAPEV_ROWS = 256
_BITS = tuple(
    np.uint64(BIT[c])
    for c in (
        "KEEP_BUDGET_EXHAUSTED",
        "BRANCH_BUDGET_EXHAUSTED",
        "PARTNER_DEDUPE",
        "PARTNER_QUOTA_EXHAUSTED",
        "LATE_EVENT",
    )
)


def expiries(keys: np.ndarray, window: str, tz: str) -> np.ndarray:
    """Per row, when the counter of its window expires (window end + grace), computed once
    per run of equal keys (rows are in time order, so runs are long)."""
    n = len(keys)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    if len(starts) > 4096:  # keys out of order: once per distinct key instead
        uniq, inv = np.unique(keys, return_inverse=True)
        ends = np.array([window_end_ms(window, int(k), tz) for k in uniq.tolist()], np.int64)
        return ends[inv] + COUNTER_GRACE_MS
    ends = np.array(
        [window_end_ms(window, int(k), tz) for k in keys[starts].tolist()], dtype=np.int64
    )
    return np.repeat(ends + COUNTER_GRACE_MS, np.diff(np.r_[starts, n]))


@dataclass
class _Slots:
    """The store's cap slots as the walk sees them: each bucket's store index, each slot's
    key column and its refused-amount floor (from the allocator's memory)."""

    buckets: list[Bucket]
    bucket_of: np.ndarray
    slot_col: np.ndarray
    floor_key: np.ndarray
    floor_amt: np.ndarray
    col_of: dict[tuple[str, str], int]


def allocate_compiled(al: Allocator, cols: AppColumns, a: Assessment) -> Outcomes:
    """Decide a batch (more than one row) on ``al.store``, an ArrayQuotaStore; the caller
    holds ``al.lock``."""
    s, store = al.strategy, al.store
    assert isinstance(store, ArrayQuotaStore)
    n = len(cols)
    ids, fps = cols.application_id, cols.fingerprint
    recalled = store.recall_many(ids, fps)
    dups = cols.memo.get("repeats")  # (a cached batch, replayed again: found once)
    if dups is None:
        dups = cols.memo["repeats"] = find_repeats(ids, fps)
    masks = partner_bits(a.eligible)  # (zeros without partners)
    todo = a.keep_ok | a.branch_ok | (masks != 0)
    if recalled or dups:
        todo[list(recalled) + list(dups)] = False
    with store.lock:
        slots = _slots(al, store)
        kind = np.full(n, DECLINE, dtype=np.int8)
        chosen = np.full(n, -1, dtype=np.int64)
        bits = a.bits.copy()
        refusals, capev = _walk(al, store, cols, a, masks, np.flatnonzero(todo), slots,
                                (bits, kind, chosen))  # fmt: skip
        _hand_back(al, store, slots, refusals, capev)
        if store.needs_entries:
            _append_entries(al, store, cols, a, kind, chosen)
    out = fill_outcomes(a, kind, chosen, bits, [p.id for p in s.partners], np.zeros(n, dtype=bool))
    _records(store, cols, out, recalled, dups)
    return out


def _slots(al: Allocator, store: ArrayQuotaStore) -> _Slots:
    """Keep, branch and the partners' buckets as the store holds them, one key column per
    (time zone, window) they use, and the floors the allocator remembers."""
    buckets = [al.keep_bucket, al.branch_bucket, *al.partner_buckets]
    bucket_of = np.array([store.bucket_index(b) for b in buckets], dtype=np.int64)
    S = store.n_slots
    col_of: dict[tuple[str, str], int] = {}
    slot_col = np.full(S, -1, dtype=np.int64)
    floor_key = np.full(S, NONE, dtype=np.int64)
    floor_amt = np.zeros(S, dtype=np.int64)
    for b, bucket in zip(bucket_of.tolist(), buckets):
        first_slot = store.first_slot(b)
        fl = al.floors.get(bucket.id)
        for k, cap in enumerate(bucket.caps):
            slot_col[first_slot + k] = col_of.setdefault((bucket.timezone, cap.window), len(col_of))
            floor = fl[k] if fl is not None else None
            if floor is not None:
                floor_key[first_slot + k], floor_amt[first_slot + k] = floor
    return _Slots(buckets, bucket_of, slot_col, floor_key, floor_amt, col_of)


def _walk(al, store, cols, a, masks, rows, slots: _Slots, out: tuple) -> tuple:
    """The compiled walk over ``rows``, called again after making room whenever it stops
    short; (refusal counts per slot, first-refusal events)."""
    n, P, S = len(cols), len(al.strategy.partners), store.n_slots
    keycols = np.empty((max(len(slots.col_of), 1), n), dtype=np.int64)
    endcols = np.empty_like(keycols)
    for (tz, window), c in slots.col_of.items():
        keycols[c] = a.keys[tz][window]
        endcols[c] = expiries(keycols[c], window, tz)
    if P and store.dedupes(slots.bucket_of[2:]):
        hi, lo = applicant_words(cols.applicant)
    else:
        hi, lo = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    refusals = np.zeros(S, dtype=np.int64)
    capev = np.zeros((CAPEV_ROWS, 3), dtype=np.int64)
    ncapev = np.zeros(1, dtype=np.int64)
    current = np.array(al.rotation.current, dtype=np.int64)
    routing = (
        routing_method(al.strategy.routing.method).code,
        np.array(al.rank, dtype=np.int64),
        np.ascontiguousarray(a.ev, dtype=np.float64),
        np.array(al.rotation.weights, dtype=np.int64),
        current,
    )
    batch = (a.keep_ok, a.branch_ok, masks, cols.requested_amount, cols.event_ms, hi, lo)
    keys = (keycols, endcols, slots.slot_col, slots.bucket_of)
    before, pos = store.next_sweep, 0
    while True:
        store.make_room(len(rows) - pos, S)
        memo = (slots.floor_key, slots.floor_amt, refusals, capev, ncapev)
        pos += int(_ALLOCATE(rows[pos:], batch, keys, routing, _BITS, out, memo, store.state()))
        if pos >= len(rows):
            break
        if ncapev[0] + 2 + P > len(capev):
            capev = np.vstack([capev, np.zeros_like(capev)])
    store.swept_in_call(before)
    al.rotation.current = current.tolist()
    return refusals, capev[: ncapev[0]]


def _hand_back(al: Allocator, store, slots: _Slots, refusals, capev) -> None:
    """The allocator's memory back from the walk: floors, refusal counts, and each cap's
    first refusal to ``on_cap``."""
    owner = {}
    for b, bucket in zip(slots.bucket_of.tolist(), slots.buckets):
        first_slot = store.first_slot(b)
        for k, cap in enumerate(bucket.caps):
            sl = first_slot + k
            owner[sl] = (bucket.id, cap.window)
            if slots.floor_key[sl] != NONE:
                fl = al.floors.setdefault(bucket.id, [None] * len(bucket.caps))
                fl[k] = (int(slots.floor_key[sl]), int(slots.floor_amt[sl]))
            if refusals[sl]:
                w = (bucket.id, cap.window)
                al.refusals[w] = al.refusals.get(w, 0) + int(refusals[sl])
    if al.on_cap is not None:
        for slot, key, t in capev.tolist():
            al.on_cap(*owner[slot], key, t)


def _append_entries(al: Allocator, store, cols: AppColumns, a: Assessment, kind, chosen) -> None:
    """The ledger entries of the walk's grants (referrals and branch loans), in arrival
    order, as the walk made them."""
    s, ids = al.strategy, cols.application_id
    for i in np.flatnonzero((kind == REFER) | (kind == BRANCH)).tolist():
        t, amount = int(cols.event_ms[i]), int(cols.requested_amount[i])
        term, applicant = int(cols.term_months[i]), cols.applicant[i]
        if kind[i] == BRANCH:
            entry = make_branch_entry(
                s, ids[i], t, amount, term, applicant, float(a.branch_profit[i])
            )
        else:
            j = int(chosen[i])
            entry = make_entry(s, ids[i], j, t, amount, term, applicant, float(a.ev[i, j]))
        store.append_entry(entry)


def _records(store, cols: AppColumns, out: Outcomes, recalled: dict, dups: dict) -> None:
    """Hand back recalled decisions and repeats as they were; store every new record the
    store keeps (all of them, but for a replay that knows which ids come again)."""
    ids, fps, event_ms = cols.application_id, cols.fingerprint, cols.event_ms
    for i, rec in recalled.items():
        out.set_record(i, rec)
    if dups:
        records = out.record_array()
        for i, j in dups.items():
            out.set_record(i, records[j].tobytes())
    new = np.ones(len(cols), dtype=bool)
    if recalled or dups:
        new[list(recalled) + list(dups)] = False
    rows = np.flatnonzero(new)
    if not len(rows):
        return
    new_ids = [ids[i] for i in rows.tolist()] if len(rows) < len(cols) else list(ids)
    kept = np.asarray(store.recallable(new_ids), dtype=np.int64)
    store.remember_block(
        [new_ids[k] for k in kept.tolist()],
        np.asarray(fps, dtype=np.uint64)[rows[kept]],
        out.record_array(rows[kept]),
        int(event_ms[rows].max()),
    )
