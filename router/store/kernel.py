"""The in-process quota state in arrays, and the allocation walk over it, compiled (numba).

Replay spends most of its time walking a batch in arrival order: for each application,
keep, branch, then partners in routing order, each a reservation against the store. With
the store's state in arrays and the walk compiled, that loop runs at machine speed. These
functions implement exactly the semantics of :class:`router.store.memory.MemoryQuotaStore`
(counters per window with an archive for late events, applicant dedupe, event-time
sweeps) and of :class:`router.decide.allocate.Allocator` (refused-amount floors, refusal counts,
the three routing methods): ``tests/test_array_store.py`` checks decision for decision,
and state for state, that both give the same result.

No wall clock and no I/O here: event time comes in with the rows.

State layout (all int64; see :class:`router.store.array.ArrayQuotaStore`):

* ``sl[s]`` per cap *slot* (a bucket's cap): limits, the current window's key, count and
  amount, and when the current window's counter expires once archived;
* ``bk[b]`` per bucket: its slot range, dedupe window and dedupe-queue head and tail;
* ``arch``: (slot, key) -> (count, amount) of windows no longer current (late events);
  ``aq``/``aq_ptr``: the archive's expiry queue (FIFO, as the memory store's deque);
* ``dd``: (bucket, applicant hi, applicant lo) -> last grant time; ``dq``/``dq_ptr``: the
  dedupe expiry entries, one linked FIFO per bucket inside one array;
* ``clock``: the event-time horizon and the time of the next sweep.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.typed import Dict

from router.core.routing import BEST_VALUE, WEIGHTED
from router.decide.outcomes import BRANCH, KEEP, REFER
from router.store.base import CAP_HIT, DEDUPED, GRANTED, LATE, LATE_MS, SWEEP_EVERY_MS

# sl columns
CAP_COUNT, CAP_AMOUNT, CUR_KEY, CUR_CNT, CUR_AMT, CUR_EXPIRES, SLOT_BUCKET = range(7)
SL_COLS = 7
# bk columns
FIRST_SLOT, END_SLOT, DEDUPE_MS, DQ_HEAD, DQ_TAIL = range(5)
BK_COLS = 5
# dq columns: expires at, bucket, applicant hi, applicant lo, set at, next in bucket
DQ_AT, DQ_BUCKET, DQ_HI, DQ_LO, DQ_SET, DQ_NEXT = range(6)
DQ_COLS = 6
# aq columns: expires at, slot, key
AQ_COLS = 3
# clock
HORIZON, NEXT_SWEEP = 0, 1

# (SWEEP_EVERY_MS, GRANTED, DEDUPED, CAP_HIT, LATE, LATE_MS: router.store.base; KEEP,
# BRANCH, REFER, DECLINE: router.decide.outcomes — numba reads them as compile-time constants.)
# (WATERFALL, BEST_VALUE, WEIGHTED: the routing methods' codes, defined in router.core.routing.)
NONE = -1  # "no limit", "no key", "no entry"

_PAIR = types.UniTuple(types.int64, 2)
_TRIPLE = types.UniTuple(types.int64, 3)


def new_archive() -> Dict:
    """An empty archive: (slot, key) -> (count, amount)."""
    return Dict.empty(key_type=_PAIR, value_type=_PAIR)


def new_dedupe() -> Dict:
    """An empty dedupe map: (bucket, applicant hi, applicant lo) -> last grant time."""
    return Dict.empty(key_type=_TRIPLE, value_type=types.int64)


@njit(cache=True)
def sweep(t, clock, sl, bk, arch, aq, aq_ptr, dd, dq):
    """Drop archived counters and dedupe entries that expired by event time ``t``."""
    clock[NEXT_SWEEP] = t + SWEEP_EVERY_MS
    h = aq_ptr[0]
    while h < aq_ptr[1] and aq[h, 0] < t:
        k = (aq[h, 1], aq[h, 2])
        if k in arch:
            del arch[k]
        h += 1
    aq_ptr[0] = h
    for b in range(bk.shape[0]):
        idx = bk[b, DQ_HEAD]
        while idx != NONE and dq[idx, DQ_AT] <= t:
            k3 = (b, dq[idx, DQ_HI], dq[idx, DQ_LO])
            if dd.get(k3, NONE) == dq[idx, DQ_SET]:  # not overwritten by a later grant
                del dd[k3]
            idx = dq[idx, DQ_NEXT]
        bk[b, DQ_HEAD] = idx
        if idx == NONE:
            bk[b, DQ_TAIL] = NONE


@njit(cache=True)
def _cell(s, key, expires, sl, arch, aq, aq_ptr):
    """Make ``key`` the slot's window (rolling the current one into the archive) or, for
    an older key, make sure the archive holds a counter for it. True when current."""
    cur = sl[s, CUR_KEY]
    if cur == key:
        return True
    if key > cur:
        if cur >= 0:
            arch[(s, cur)] = (sl[s, CUR_CNT], sl[s, CUR_AMT])
            t = aq_ptr[1]
            aq[t, 0] = sl[s, CUR_EXPIRES]
            aq[t, 1] = s
            aq[t, 2] = cur
            aq_ptr[1] = t + 1
        k = (s, key)
        cnt, amt = 0, 0
        if k in arch:
            cnt, amt = arch[k]
            del arch[k]
        sl[s, CUR_KEY] = key
        sl[s, CUR_CNT] = cnt
        sl[s, CUR_AMT] = amt
        sl[s, CUR_EXPIRES] = expires
        return True
    k = (s, key)
    if k not in arch:
        arch[k] = (0, 0)
    return False


@njit(cache=True)
def reserve(
    b,
    keys,
    expires,
    amount,
    has_applicant,
    hi,
    lo,
    t,
    clock,
    sl,
    bk,
    arch,
    aq,
    aq_ptr,
    dd,
    dq,
    dq_ptr,
):
    """One reservation against bucket ``b`` (``keys[k]``/``expires[k]``: the window key of
    its k-th cap and when that window's counter expires). The memory store's
    ``try_reserve`` without the per-application grant memory, which the caller keeps.
    Returns GRANTED, DEDUPED or ``CAP_HIT + 2·k + full``."""
    first, end = bk[b, FIRST_SLOT], bk[b, END_SLOT]
    n = end - first
    for k in range(n):
        _cell(first + k, keys[k], expires[k], sl, arch, aq, aq_ptr)
    # Caps before dedupe, in order (as the memory store). After _cell a key is either the
    # slot's current window or an older one kept in the archive.
    for k in range(n):
        s = first + k
        if sl[s, CUR_KEY] == keys[k]:
            cnt, amt = sl[s, CUR_CNT], sl[s, CUR_AMT]
        else:
            cnt, amt = arch[(s, keys[k])]
        if sl[s, CAP_COUNT] != NONE and cnt >= sl[s, CAP_COUNT]:
            return CAP_HIT + 2 * k + 1
        if sl[s, CAP_AMOUNT] != NONE and amt + amount > sl[s, CAP_AMOUNT]:
            return CAP_HIT + 2 * k
    dedupe = has_applicant and bk[b, DEDUPE_MS] > 0
    if dedupe:
        last = dd.get((b, hi, lo), NONE)
        if last != NONE and t - last < bk[b, DEDUPE_MS]:
            return DEDUPED
    for k in range(n):
        s = first + k
        if sl[s, CUR_KEY] == keys[k]:
            sl[s, CUR_CNT] += 1
            sl[s, CUR_AMT] += amount
        else:
            cnt, amt = arch[(s, keys[k])]
            arch[(s, keys[k])] = (cnt + 1, amt + amount)
    if dedupe:
        dd[(b, hi, lo)] = t
        i = dq_ptr[0]
        dq[i, DQ_AT] = t + bk[b, DEDUPE_MS] + LATE_MS  # events inside the horizon see it
        dq[i, DQ_BUCKET] = b
        dq[i, DQ_HI] = hi
        dq[i, DQ_LO] = lo
        dq[i, DQ_SET] = t
        dq[i, DQ_NEXT] = NONE
        dq_ptr[0] = i + 1
        if bk[b, DQ_TAIL] == NONE:
            bk[b, DQ_HEAD] = i
        else:
            dq[bk[b, DQ_TAIL], DQ_NEXT] = i
        bk[b, DQ_TAIL] = i
    return GRANTED


@njit(cache=True)
def _attempt(
    b,
    i,
    amount,
    has_applicant,
    hi,
    lo,
    t,
    keycols,
    endcols,
    slot_col,
    scratch,
    floor_key,
    floor_amt,
    refusals,
    capev,
    ncapev,
    clock,
    sl,
    bk,
    arch,
    aq,
    aq_ptr,
    dd,
    dq,
    dq_ptr,
):
    """The allocator's attempt at bucket ``b`` for row ``i``: a known refusal from the
    refused-amount floors, else the store (advancing event time first), learning floors
    from what it refuses."""
    first, end = bk[b, FIRST_SLOT], bk[b, END_SLOT]
    for k in range(end - first):
        s = first + k
        key = keycols[slot_col[s], i]
        if floor_key[s] != NONE and floor_key[s] == key and amount >= floor_amt[s]:
            refusals[s] += 1
            return CAP_HIT + 2 * k + (1 if floor_amt[s] == 0 else 0)
    if t < clock[HORIZON] - LATE_MS:
        return LATE
    if t > clock[HORIZON]:
        clock[HORIZON] = t
        if t >= clock[NEXT_SWEEP]:
            sweep(t, clock, sl, bk, arch, aq, aq_ptr, dd, dq)
    n = end - first
    keys, expires = scratch[0, :n], scratch[1, :n]  # no allocation per attempt
    for k in range(n):
        keys[k] = keycols[slot_col[first + k], i]
        expires[k] = endcols[slot_col[first + k], i]
    r = reserve(
        b,
        keys,
        expires,
        amount,
        has_applicant,
        hi,
        lo,
        t,
        clock,
        sl,
        bk,
        arch,
        aq,
        aq_ptr,
        dd,
        dq,
        dq_ptr,
    )
    if r >= CAP_HIT:
        k = (r - CAP_HIT) >> 1
        s = first + k
        new = 0 if (r - CAP_HIT) & 1 else amount
        is_first = floor_key[s] == NONE or floor_key[s] != keys[k]
        if is_first or new < floor_amt[s]:
            floor_key[s] = keys[k]
            floor_amt[s] = new
        refusals[s] += 1
        if is_first:
            m = ncapev[0]
            capev[m, 0] = s
            capev[m, 1] = keys[k]
            capev[m, 2] = t
            ncapev[0] = m + 1
    return r


@njit(cache=True)
def allocate(
    rows,
    keep_ok,
    branch_ok,
    masks,
    amounts,
    event_ms,
    hi,
    lo,
    keycols,
    endcols,
    slot_col,
    bucket_of,
    method,
    rank,
    ev,
    weights,
    current,
    keep_full,
    branch_full,
    dedupe_bit,
    quota_bit,
    late_bit,
    bits,
    kind,
    chosen,
    floor_key,
    floor_amt,
    refusals,
    capev,
    ncapev,
    clock,
    sl,
    bk,
    arch,
    aq,
    aq_ptr,
    dd,
    dq,
    dq_ptr,
):
    """Decide ``rows`` (indices into the batch, in arrival order): keep, branch, then the
    eligible partners in routing order, stopping at the first grant.

    ``bucket_of``: the store bucket of keep, branch and each partner (-1: none);
    ``masks[i]``: row i's eligible partners as bits; ``ev``: (rows × partners) value for
    best_value routing; ``current``: the weighted rotation's scores (updated).
    Fills ``kind``, ``chosen`` and ``bits``; floors, refusal counts and the first refusal
    of each cap window (``capev``: slot, key, event time) are recorded as the allocator
    does. Returns how many rows were decided: fewer than all when a queue or ``capev``
    ran short of room (between rows, so the caller grows them and goes on).
    """
    P = len(rank)
    order = np.empty(P, dtype=np.int64)
    eligible = np.empty(P, dtype=np.int64)
    scratch = np.empty((2, max(1, sl.shape[0])), dtype=np.int64)
    # Room one row may need at most: an archived window per slot, a first refusal per
    # attempt, one dedupe entry.
    per_row_aq, per_row_ev = sl.shape[0], 2 + P
    for done in range(len(rows)):
        if (
            aq_ptr[1] + per_row_aq > aq.shape[0]
            or ncapev[0] + per_row_ev > capev.shape[0]
            or dq_ptr[0] + 1 > dq.shape[0]
        ):
            return done  # the caller makes room and calls again with the rest
        i = rows[done]
        t, amount = event_ms[i], amounts[i]
        # Keep (bucket 0), then branch (bucket 1): the funder's own budgets first.
        funded = False
        for own in (KEEP, BRANCH):
            if not (keep_ok[i] if own == KEEP else branch_ok[i]):
                continue
            r = _attempt(
                bucket_of[own],
                i,
                amount,
                False,
                0,
                0,
                t,
                keycols,
                endcols,
                slot_col,
                scratch,
                floor_key,
                floor_amt,
                refusals,
                capev,
                ncapev,
                clock,
                sl,
                bk,
                arch,
                aq,
                aq_ptr,
                dd,
                dq,
                dq_ptr,
            )
            if r == GRANTED:
                kind[i] = own
                funded = True
                break
            bits[i] |= late_bit if r == LATE else keep_full if own == KEEP else branch_full
        if funded:
            continue
        m = masks[i]
        if m == 0:
            continue
        ne = 0
        for j in range(P):
            if (m >> j) & 1:
                eligible[ne] = j
                ne += 1
        if method == WEIGHTED:  # every call raises the eligible partners, a sole one too
            for q in range(ne):
                current[eligible[q]] += weights[eligible[q]]
        # Routing order: insertion sort of the eligible partners by the method's key,
        # ties by priority rank (as the Python sorts).
        for q in range(ne):
            j = eligible[q]
            p = q
            while p > 0:
                o = order[p - 1]
                if method == BEST_VALUE:
                    before = ev[i, j] > ev[i, o] or (ev[i, j] == ev[i, o] and rank[j] < rank[o])
                elif method == WEIGHTED:
                    before = current[j] > current[o] or (
                        current[j] == current[o] and rank[j] < rank[o]
                    )
                else:
                    before = rank[j] < rank[o]
                if not before:
                    break
                order[p] = o
                p -= 1
            order[p] = j
        extra = np.uint64(0)
        for q in range(ne):
            j = order[q]
            r = _attempt(
                bucket_of[2 + j],
                i,
                amount,
                True,
                hi[i],
                lo[i],
                t,
                keycols,
                endcols,
                slot_col,
                scratch,
                floor_key,
                floor_amt,
                refusals,
                capev,
                ncapev,
                clock,
                sl,
                bk,
                arch,
                aq,
                aq_ptr,
                dd,
                dq,
                dq_ptr,
            )
            if r == GRANTED:
                if method == WEIGHTED:
                    total = 0
                    for q2 in range(ne):
                        total += weights[eligible[q2]]
                    current[j] -= total
                kind[i] = REFER
                chosen[i] = j
                break
            extra |= dedupe_bit if r == DEDUPED else late_bit if r == LATE else quota_bit
        bits[i] |= extra
    return len(rows)
