"""The tree walk's compiled kernels (numba), imported only when a tree model scores.

They live at module level, not as closures made on first use: numba's on-disk cache
cannot match a closure over other compiled functions, so each process compiled the batch
kernel again (~0.25 s a CLI run) and wrote one more cache file every time.
"""

from __future__ import annotations

import math

from numba import njit


@njit(cache=True, nogil=True)
def leaf(x, i, nodes, values):
    """From node ``i`` down to its leaf: ``x <= threshold`` goes left, a missing value
    (NaN) where the tree sends it."""
    while nodes[i, 0] >= 0:
        v = x[nodes[i, 0]]
        go_left = nodes[i, 3] == 1 if v != v else v <= values[i]
        i = nodes[i, 1] if go_left else nodes[i, 2]
    return i


@njit(cache=True, nogil=True)
def sigmoid(z):
    """The logistic function, without overflow for large ``|z|``."""
    e = math.exp(-abs(z))
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)


@njit(cache=True, nogil=True)
def one(x, nodes, values, roots, base):
    """One row's PD: the baseline plus each tree's leaf, in tree order."""
    s = base
    for t in range(roots.shape[0]):
        s += values[leaf(x, roots[t], nodes, values)]
    return sigmoid(s)


@njit(cache=True, nogil=True)
def batch(X, nodes, values, roots, base, out):
    """Every row's PD into ``out``, tree by tree over all rows (one tree stays in cache);
    each row's margin is still the baseline plus the trees in order, as for one row."""
    n = X.shape[0]
    for r in range(n):
        out[r] = base
    for t in range(roots.shape[0]):
        for r in range(n):
            out[r] += values[leaf(X[r], roots[t], nodes, values)]
    for r in range(n):
        out[r] = sigmoid(out[r])
