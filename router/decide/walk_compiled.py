"""The allocation walk of a batch, compiled (numba): for each application in arrival
order, keep, branch, then the eligible partners in routing order, each attempt a
reservation against the array store's state (:func:`router.store.kernel.reserve`).

The same semantics as the Python walks of :class:`router.decide.allocate.Allocator`
(refused-amount floors, refusal counts, the first refusal of each cap window, the three
routing methods): ``tests/decide/test_array_store.py`` checks it decision for decision and
``tests/decide/test_reference.py`` against the reference decider. Driven by
:mod:`router.decide.allocate_compiled`. No wall clock and no I/O: event time comes in with
the rows.

Arguments travel in small tuples (numba unpacks them at no cost), named where they are
built in :mod:`router.decide.allocate_compiled`: the batch's rows, the window-key
columns, the routing inputs, the reason bits, the outputs, the allocator's memory
(floors, refusal counts, first refusals) and the store's state.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from router.core.routing import BEST_VALUE, WEIGHTED
from router.decide.outcomes import BRANCH, KEEP, REFER
from router.store.base import CAP_HIT, DEDUPED, GRANTED, LATE, LATE_MS
from router.store.kernel import (
    END_SLOT,
    FIRST_SLOT,
    HORIZON,
    NEXT_SWEEP,
    NONE,
    reserve,
    sweep,
)

# (WATERFALL, BEST_VALUE, WEIGHTED: the routing methods' codes, router.core.routing; KEEP,
# BRANCH, REFER: router.decide.outcomes — numba reads them as compile-time constants.)


@njit(cache=True)
def _attempt(b, i, t, amount, applicant, keys, memo, state):
    """The allocator's attempt at bucket ``b`` for row ``i``: a known refusal from the
    refused-amount floors, else the store (advancing event time first), learning floors
    from what it refuses."""
    keycols, endcols, slot_col, scratch = keys
    floor_key, floor_amt, refusals, capev, ncapev = memo
    clock, bk = state[0], state[2]
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
            sweep(t, state)
    n = end - first
    wkeys, expires = scratch[0, :n], scratch[1, :n]  # no allocation per attempt
    for k in range(n):
        wkeys[k] = keycols[slot_col[first + k], i]
        expires[k] = endcols[slot_col[first + k], i]
    r = reserve(b, wkeys, expires, amount, applicant, t, state)
    if r >= CAP_HIT:
        k = (r - CAP_HIT) >> 1
        s = first + k
        new = 0 if (r - CAP_HIT) & 1 else amount
        is_first = floor_key[s] == NONE or floor_key[s] != wkeys[k]
        if is_first or new < floor_amt[s]:
            floor_key[s] = wkeys[k]
            floor_amt[s] = new
        refusals[s] += 1
        if is_first:
            m = ncapev[0]
            capev[m, 0] = s
            capev[m, 1] = wkeys[k]
            capev[m, 2] = t
            ncapev[0] = m + 1
    return r


@njit(cache=True)
def _routing_order(i, m, routing, eligible, order):
    """Row ``i``'s eligible partners (bit mask ``m``) into ``order``, in the routing
    method's order (insertion sort by its key, ties by priority rank, as the Python
    sorts); weighted routing raises every eligible partner's score first. Returns how
    many there are."""
    method, rank, ev, weights, current = routing
    P = len(rank)
    ne = 0
    for j in range(P):
        if (m >> j) & 1:
            eligible[ne] = j
            ne += 1
    if method == WEIGHTED:  # every call raises the eligible partners, a sole one too
        for q in range(ne):
            current[eligible[q]] += weights[eligible[q]]
    for q in range(ne):
        j = eligible[q]
        p = q
        while p > 0:
            o = order[p - 1]
            if method == BEST_VALUE:
                before = ev[i, j] > ev[i, o] or (ev[i, j] == ev[i, o] and rank[j] < rank[o])
            elif method == WEIGHTED:
                before = current[j] > current[o] or (current[j] == current[o] and rank[j] < rank[o])
            else:
                before = rank[j] < rank[o]
            if not before:
                break
            order[p] = o
            p -= 1
        order[p] = j
    return ne


@njit(cache=True)
def _short_of_room(state, memo, per_row_aq, per_row_ev):
    """Whether one more row might not fit: its archived windows (``per_row_aq``), first
    refusals (``per_row_ev``) and dedupe entry, with the hash tables kept at most half
    full."""
    capev, ncapev = memo[3], memo[4]
    arch, aq, aq_ptr, dd, dq, dq_ptr = state[3], state[4], state[5], state[6], state[7], state[8]
    return (
        aq_ptr[1] + per_row_aq > aq.shape[0]
        or ncapev[0] + per_row_ev > capev.shape[0]
        or dq_ptr[0] + 1 > dq.shape[0]
        or 2 * (arch[1][0] + per_row_aq) > arch[0].shape[0]
        or 2 * (dd[1][0] + 1) > dd[0].shape[0]
    )


@njit(cache=True)
def allocate(rows, batch, keys, routing, reason_bits, out, memo, state):
    """Decide ``rows`` (indices into the batch, in arrival order): keep, branch, then the
    eligible partners in routing order, stopping at the first grant.

    ``batch``: (keep_ok, branch_ok, masks — row i's eligible partners as bits —, amounts,
    event_ms, applicant hash high and low words); ``keys``: (window-key columns, their
    expiry columns, each slot's column, the store bucket of keep, branch and each partner);
    ``routing``: (method code, priority rank, (rows × partners) value for best_value, the
    weighted rotation's weights and scores — updated); ``reason_bits``: (keep full, branch
    full, dedupe, quota, late); ``out``: (bits, kind, chosen), filled; ``memo``: floors,
    refusal counts and the first refusal of each cap window (``capev``: slot, key, event
    time), recorded as the allocator does. Returns how many rows were decided: fewer than
    all when a queue or ``capev`` ran short of room (between rows, so the caller grows
    them and goes on).
    """
    keep_ok, branch_ok, masks, amounts, event_ms, hi, lo = batch
    keycols, endcols, slot_col, bucket_of = keys
    weights, current = routing[3], routing[4]
    keep_full, branch_full, dedupe_bit, quota_bit, late_bit = reason_bits
    bits, kind, chosen = out
    sl = state[1]
    P = len(routing[1])
    order = np.empty(P, dtype=np.int64)
    eligible = np.empty(P, dtype=np.int64)
    wkeys = (keycols, endcols, slot_col, np.empty((2, max(1, sl.shape[0])), dtype=np.int64))
    # Room one row may need at most: an archived window per slot, a first refusal per
    # attempt, one dedupe entry (the tables are kept at most half full).
    per_row_aq, per_row_ev = sl.shape[0], 2 + P
    for done in range(len(rows)):
        if _short_of_room(state, memo, per_row_aq, per_row_ev):
            return done  # the caller makes room and calls again with the rest
        i = rows[done]
        t, amount = event_ms[i], amounts[i]
        # Keep (bucket 0), then branch (bucket 1): the funder's own budgets first.
        funded = False
        for own in (KEEP, BRANCH):
            if not (keep_ok[i] if own == KEEP else branch_ok[i]):
                continue
            r = _attempt(bucket_of[own], i, t, amount, (False, 0, 0), wkeys, memo, state)
            if r == GRANTED:
                kind[i] = own
                funded = True
                break
            bits[i] |= late_bit if r == LATE else keep_full if own == KEEP else branch_full
        if funded or masks[i] == 0:
            continue
        ne = _routing_order(i, masks[i], routing, eligible, order)
        extra = np.uint64(0)
        for q in range(ne):
            j = order[q]
            r = _attempt(bucket_of[2 + j], i, t, amount, (True, hi[i], lo[i]), wkeys, memo, state)
            if r == GRANTED:
                if routing[0] == WEIGHTED:
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
