"""A hash table of int64 triples to int64 pairs in numpy arrays, for compiled code.

The array store's archive ((slot, window key) -> (count, amount)) and applicant dedupe
((bucket, hash high word, low word) -> last grant) live in these. They replace numba's
typed ``Dict``: building a typed dictionary from Python compiles its methods in every new
process (0.6 s for the two, measured at every CLI start), while these functions are plain
``njit(cache=True)`` code over arrays and load from numba's cache.

Layout (a tuple, so compiled functions take it as one argument): ``cells`` (capacity × 6:
in use, the key's three words, the value's two — one entry in one cache line, since a
large table is probed at random) and ``live`` (one cell: how many entries). Open
addressing with linear probing; deletion shifts later entries of the probe run back (no
tombstones), so a table never degrades with churn. The capacity is a power of two and the
caller keeps the load at most a half with :func:`grown` before inserting
(:meth:`router.store.array.ArrayQuotaStore.make_room`): the compiled functions never
allocate.
"""

from __future__ import annotations

import numpy as np
from numba import config, njit

MIN_CAPACITY = 1024
# cells columns
USED, K0, K1, K2, V0, V1 = range(6)


def new_table(capacity: int = MIN_CAPACITY) -> tuple:
    """An empty table with room for ``capacity // 2`` entries (``capacity``: a power of 2)."""
    assert capacity >= 2 and capacity & (capacity - 1) == 0, capacity
    return np.zeros((capacity, 6), dtype=np.int64), np.zeros(1, dtype=np.int64)


def capacity(table: tuple) -> int:
    """How many cells the table has."""
    return len(table[0])


def room(table: tuple) -> int:
    """How many more entries the table takes before it must grow."""
    return capacity(table) // 2 - int(table[1][0])


def grown(table: tuple, more: int) -> tuple:
    """``table`` itself if it takes ``more`` entries, else a larger copy of it."""
    if room(table) >= more:
        return table
    need = int(table[1][0]) + more
    size = capacity(table)
    while size // 2 < need:
        size *= 2
    bigger = new_table(size)
    _copy_into(table, bigger)
    return bigger


def items(table: tuple) -> dict[tuple[int, int, int], tuple[int, int]]:
    """The table's entries as a Python dict (for tests and inspection)."""
    cells = table[0]
    live = cells[cells[:, USED] != 0].tolist()
    return {(c[K0], c[K1], c[K2]): (c[V0], c[V1]) for c in live}


if config.DISABLE_JIT:  # type: ignore[attr-defined]  # (set from the environment at import)
    # (Coverage runs with numba off: the same mix on Python ints, wrapped to 64 bits as
    # compiled code wraps — numpy scalars and Python ints would each overflow their way.)
    def _wrap(x: int) -> int:
        x &= (1 << 64) - 1
        return x - (1 << 64) if x >> 63 else x

    def _home(size, k0, k1, k2):
        h = _wrap(int(k0) * -7046029254386353131 + int(k1))
        h = _wrap((h ^ (h >> 31)) * -4658895280553007687 + int(k2))
        h = _wrap((h ^ (h >> 29)) * -7723592293110705685)
        h ^= h >> 32
        return h & (int(size) - 1)

else:

    @njit(cache=True)
    def _home(size, k0, k1, k2):
        # A multiply-xorshift mix (the keys are small integers or already random words);
        # int64 arithmetic wraps in compiled code, and the mask keeps the index in range.
        h = k0 * -7046029254386353131 + k1
        h = (h ^ (h >> 31)) * -4658895280553007687 + k2
        h = (h ^ (h >> 29)) * -7723592293110705685
        h ^= h >> 32
        return h & (size - 1)


@njit(cache=True)
def find(table, k0, k1, k2):
    """The index holding key (k0, k1, k2), or -1."""
    cells = table[0]
    size = cells.shape[0]
    i = _home(size, k0, k1, k2)
    while cells[i, USED]:
        if cells[i, K0] == k0 and cells[i, K1] == k1 and cells[i, K2] == k2:
            return i
        i = (i + 1) & (size - 1)
    return -1


@njit(cache=True)
def put(table, k0, k1, k2, v0, v1):
    """Set key (k0, k1, k2) to (v0, v1) (the caller made room for a new key)."""
    cells, live = table
    size = cells.shape[0]
    i = _home(size, k0, k1, k2)
    while cells[i, USED]:
        if cells[i, K0] == k0 and cells[i, K1] == k1 and cells[i, K2] == k2:
            cells[i, V0] = v0
            cells[i, V1] = v1
            return
        i = (i + 1) & (size - 1)
    cells[i, USED] = 1
    cells[i, K0] = k0
    cells[i, K1] = k1
    cells[i, K2] = k2
    cells[i, V0] = v0
    cells[i, V1] = v1
    live[0] += 1


@njit(cache=True)
def remove_at(table, i):
    """Delete the entry at index ``i`` (from :func:`find`), shifting back the entries of
    its probe run that would no longer be found."""
    cells, live = table
    size = cells.shape[0]
    live[0] -= 1
    hole = i
    j = (i + 1) & (size - 1)
    while cells[j, USED]:
        home = _home(size, cells[j, K0], cells[j, K1], cells[j, K2])
        # Entry j may fill the hole when its home is not inside (hole, j] (cyclically).
        if (j - home) & (size - 1) >= (j - hole) & (size - 1):
            for c in range(6):
                cells[hole, c] = cells[j, c]
            hole = j
        j = (j + 1) & (size - 1)
    cells[hole, USED] = 0


@njit(cache=True)
def _copy_into(src, dst):
    cells = src[0]
    for i in range(cells.shape[0]):
        if cells[i, USED]:
            put(dst, cells[i, K0], cells[i, K1], cells[i, K2], cells[i, V0], cells[i, V1])
