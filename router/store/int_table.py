"""A hash table of int64 triples to int64 pairs in numpy arrays, for compiled code.

The array store's archive ((slot, window key) -> (count, amount)) and applicant dedupe
((bucket, hash high word, low word) -> last grant) live in these. They replace numba's
typed ``Dict``: building a typed dictionary from Python compiles its methods in every new
process (0.6 s for the two, measured at every CLI start), while these functions are plain
``njit(cache=True)`` code over arrays and load from numba's cache.

Layout (a tuple, so compiled functions take it as one argument): ``keys`` (capacity × 3),
``vals`` (capacity × 2), ``used`` (capacity; 1 where a slot holds an entry) and ``live``
(one cell: how many entries). Open addressing with linear probing; deletion shifts later
entries of the probe run back (no tombstones), so a table never degrades with churn. The
capacity is a power of two and the caller keeps the load at most a half with
:func:`grown` before inserting (:meth:`router.store.array.ArrayQuotaStore.make_room`):
the compiled functions never allocate.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MIN_CAPACITY = 1024


def new_table(capacity: int = MIN_CAPACITY) -> tuple:
    """An empty table with room for ``capacity // 2`` entries (``capacity``: a power of 2)."""
    assert capacity >= 2 and capacity & (capacity - 1) == 0, capacity
    return (
        np.zeros((capacity, 3), dtype=np.int64),
        np.zeros((capacity, 2), dtype=np.int64),
        np.zeros(capacity, dtype=np.uint8),
        np.zeros(1, dtype=np.int64),
    )


def room(table: tuple) -> int:
    """How many more entries the table takes before it must grow."""
    return len(table[2]) // 2 - int(table[3][0])


def grown(table: tuple, more: int) -> tuple:
    """``table`` itself if it takes ``more`` entries, else a larger copy of it."""
    if room(table) >= more:
        return table
    need = int(table[3][0]) + more
    capacity = len(table[2])
    while capacity // 2 < need:
        capacity *= 2
    bigger = new_table(capacity)
    _copy_into(table, bigger)
    return bigger


def items(table: tuple) -> dict[tuple[int, int, int], tuple[int, int]]:
    """The table's entries as a Python dict (for tests and inspection)."""
    keys, vals, used = table[0], table[1], table[2].astype(bool)
    return {
        tuple(k): tuple(v) for k, v in zip(keys[used].tolist(), vals[used].tolist(), strict=True)
    }


@njit(cache=True)
def _home(keys_len, k0, k1, k2):
    # A multiply-xorshift mix (the keys are small integers or already random words);
    # int64 arithmetic wraps in compiled code, and the mask keeps the index in range.
    h = k0 * -7046029254386353131 + k1
    h = (h ^ (h >> 31)) * -4658895280553007687 + k2
    h = (h ^ (h >> 29)) * -7723592293110705685
    h ^= h >> 32
    return h & (keys_len - 1)


@njit(cache=True)
def find(table, k0, k1, k2):
    """The index holding key (k0, k1, k2), or -1."""
    keys, used = table[0], table[2]
    cap = len(used)
    i = _home(cap, k0, k1, k2)
    while used[i]:
        if keys[i, 0] == k0 and keys[i, 1] == k1 and keys[i, 2] == k2:
            return i
        i = (i + 1) & (cap - 1)
    return -1


@njit(cache=True)
def put(table, k0, k1, k2, v0, v1):
    """Set key (k0, k1, k2) to (v0, v1) (the caller made room for a new key)."""
    keys, vals, used, live = table
    cap = len(used)
    i = _home(cap, k0, k1, k2)
    while used[i]:
        if keys[i, 0] == k0 and keys[i, 1] == k1 and keys[i, 2] == k2:
            vals[i, 0] = v0
            vals[i, 1] = v1
            return
        i = (i + 1) & (cap - 1)
    used[i] = 1
    keys[i, 0] = k0
    keys[i, 1] = k1
    keys[i, 2] = k2
    vals[i, 0] = v0
    vals[i, 1] = v1
    live[0] += 1


@njit(cache=True)
def remove_at(table, i):
    """Delete the entry at index ``i`` (from :func:`find`), shifting back the entries of
    its probe run that would no longer be found."""
    keys, vals, used, live = table
    cap = len(used)
    live[0] -= 1
    hole = i
    j = (i + 1) & (cap - 1)
    while used[j]:
        home = _home(cap, keys[j, 0], keys[j, 1], keys[j, 2])
        # Entry j may fill the hole when its home is not inside (hole, j] (cyclically).
        if (j - home) & (cap - 1) >= (j - hole) & (cap - 1):
            keys[hole] = keys[j]
            vals[hole] = vals[j]
            hole = j
        j = (j + 1) & (cap - 1)
    used[hole] = 0


@njit(cache=True)
def _copy_into(src, dst):
    keys, vals, used = src[0], src[1], src[2]
    for i in range(len(used)):
        if used[i]:
            put(dst, keys[i, 0], keys[i, 1], keys[i, 2], vals[i, 0], vals[i, 1])
