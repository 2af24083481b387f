"""The in-process quota state in arrays, and reservation against it, compiled (numba).

State and reservation only: the allocation walk that calls :func:`reserve` for each
attempt is decision logic and lives in :mod:`router.decide.walk_compiled`. These functions
implement exactly the semantics of :class:`router.store.memory.MemoryQuotaStore` (counters
per window with an archive for late events, applicant dedupe, event-time sweeps):
``tests/decide/test_array_store.py`` checks decision for decision, and state for state, that the
compiled path and the Python one give the same result.

No wall clock and no I/O here: event time comes in with the rows.

State layout (all int64; see :class:`router.store.array.ArrayQuotaStore`):

* ``sl[s]`` per cap *slot* (a bucket's cap): limits, the current window's key, count and
  amount, and when the current window's counter expires once archived;
* ``bk[b]`` per bucket: its slot range, dedupe window and dedupe-queue head and tail;
* ``arch``: (slot, key, 0) -> (count, amount) of windows no longer current (late events),
  a :mod:`router.store.int_table`; ``aq``/``aq_ptr``: the archive's expiry queue (FIFO, as
  the memory store's deque);
* ``dd``: (bucket, applicant hi, applicant lo) -> (last grant time, 0), a table too;
  ``dq``/``dq_ptr``: the dedupe expiry entries, one linked FIFO per bucket inside one array;
* ``clock``: the event-time horizon and the time of the next sweep.
"""

from __future__ import annotations

from numba import njit

from router.store.base import CAP_HIT, DEDUPED, GRANTED, LATE_MS, SWEEP_EVERY_MS
from router.store.int_table import V0, V1, find, new_table, put, remove_at

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

# (SWEEP_EVERY_MS, GRANTED, DEDUPED, CAP_HIT: router.store.base — numba reads them as
# compile-time constants.)
NONE = -1  # "no limit", "no key", "no entry"


def new_archive() -> tuple:
    """An empty archive: (slot, key, 0) -> (count, amount)."""
    return new_table()


def new_dedupe() -> tuple:
    """An empty dedupe map: (bucket, applicant hi, applicant lo) -> (last grant time, 0)."""
    return new_table()


@njit(cache=True)
def sweep(t, state):
    """Drop archived counters and dedupe entries that expired by event time ``t``
    (``state``: the store's arrays, :meth:`ArrayQuotaStore.state`)."""
    clock, sl, bk, arch, aq, aq_ptr, dd, dq, dq_ptr = state
    clock[NEXT_SWEEP] = t + SWEEP_EVERY_MS
    h = aq_ptr[0]
    while h < aq_ptr[1] and aq[h, 0] < t:
        i = find(arch, aq[h, 1], aq[h, 2], 0)
        if i >= 0:
            remove_at(arch, i)
        h += 1
    aq_ptr[0] = h
    for b in range(bk.shape[0]):
        idx = bk[b, DQ_HEAD]
        while idx != NONE and dq[idx, DQ_AT] <= t:
            i = find(dd, b, dq[idx, DQ_HI], dq[idx, DQ_LO])
            if i >= 0 and dd[0][i, V0] == dq[idx, DQ_SET]:  # not overwritten by a later grant
                remove_at(dd, i)
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
            put(arch, s, cur, 0, sl[s, CUR_CNT], sl[s, CUR_AMT])
            t = aq_ptr[1]
            aq[t, 0] = sl[s, CUR_EXPIRES]
            aq[t, 1] = s
            aq[t, 2] = cur
            aq_ptr[1] = t + 1
        cnt, amt = 0, 0
        i = find(arch, s, key, 0)
        if i >= 0:
            cnt, amt = arch[0][i, V0], arch[0][i, V1]
            remove_at(arch, i)
        sl[s, CUR_KEY] = key
        sl[s, CUR_CNT] = cnt
        sl[s, CUR_AMT] = amt
        sl[s, CUR_EXPIRES] = expires
        return True
    if find(arch, s, key, 0) < 0:
        put(arch, s, key, 0, 0, 0)
    return False


@njit(cache=True)
def reserve(b, keys, expires, amount, applicant, t, state):
    """One reservation against bucket ``b`` (``keys[k]``/``expires[k]``: the window key of
    its k-th cap and when that window's counter expires; ``applicant``: (has one, hash
    high word, low word); ``state``: the store's arrays). The memory store's
    ``try_reserve`` without the per-application grant memory, which the caller keeps.
    Returns GRANTED, DEDUPED or ``CAP_HIT + 2·k + full``."""
    has_applicant, hi, lo = applicant
    clock, sl, bk, arch, aq, aq_ptr, dd, dq, dq_ptr = state
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
            a = find(arch, s, keys[k], 0)
            cnt, amt = arch[0][a, V0], arch[0][a, V1]
        if sl[s, CAP_COUNT] != NONE and cnt >= sl[s, CAP_COUNT]:
            return CAP_HIT + 2 * k + 1
        if sl[s, CAP_AMOUNT] != NONE and amt + amount > sl[s, CAP_AMOUNT]:
            return CAP_HIT + 2 * k
    dedupe = has_applicant and bk[b, DEDUPE_MS] > 0
    if dedupe:
        d = find(dd, b, hi, lo)
        last = dd[0][d, V0] if d >= 0 else NONE
        if last != NONE and t - last < bk[b, DEDUPE_MS]:
            return DEDUPED
    for k in range(n):
        s = first + k
        if sl[s, CUR_KEY] == keys[k]:
            sl[s, CUR_CNT] += 1
            sl[s, CUR_AMT] += amount
        else:
            a = find(arch, s, keys[k], 0)
            arch[0][a, V0] += 1
            arch[0][a, V1] += amount
    if dedupe:
        put(dd, b, hi, lo, t, 0)
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
