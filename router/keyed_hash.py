"""Keyed BLAKE2b-128 over a whole Arrow string column, compiled (numba).

Replay hashes the raw identifier of every application in a history file; in Python that
is a hash object, a copy and a hex string per row. This computes the same digests
(:meth:`router.identity.Hasher.token`: keyed BLAKE2b, 16-byte digest, the purpose as
personalisation, over ``value.strip().upper()`` in UTF-8) straight from the column's
buffers: RFC 7693's compression function, with the state after the key block computed
once. Values are at most 64 bytes, so each one is a single block.

Only ASCII values are normalised here; a value with other characters (whose Unicode
whitespace and case rules are Python's to apply), or empty once stripped, is flagged so
the caller hashes it with :mod:`hashlib` instead. ``tests/test_identity.py`` checks the
digests against :mod:`hashlib`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

_IV = np.array([0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B,
                0xA54FF53A5F1D36F1, 0x510E527FADE682D1, 0x9B05688C2B3E6C1F,
                0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179], dtype=np.uint64)
_SIGMA = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
], dtype=np.int64)
#: Python's str.isspace() among ASCII characters (what str.strip() removes).
_SPACE = np.zeros(128, dtype=np.bool_)
_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
MAX_BYTES = 128


@njit(cache=True, inline="always")
def _rotr(x, n):
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


#: The columns, then the diagonals, of BLAKE2b's 4×4 state: (a, b, c, d) of each G.
_G = np.array([[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15],
               [0, 5, 10, 15], [1, 6, 11, 12], [2, 7, 8, 13], [3, 4, 9, 14]], dtype=np.int64)


@njit(cache=True)
def _compress(h, m, t, last, v):
    """BLAKE2b's compression of block ``m`` (16 words) into state ``h``; ``t`` bytes so
    far; ``v`` is scratch space (16 words)."""
    v[:8] = h
    v[8:] = _IV
    v[12] ^= np.uint64(t)
    if last:
        v[14] = ~v[14]
    for r in range(12):
        for g in range(8):
            a, b, c, d = _G[g, 0], _G[g, 1], _G[g, 2], _G[g, 3]
            va = v[a] + v[b] + m[_SIGMA[r, 2 * g]]
            vd = _rotr(v[d] ^ va, 32)
            vc = v[c] + vd
            vb = _rotr(v[b] ^ vc, 24)
            va = va + vb + m[_SIGMA[r, 2 * g + 1]]
            vd = _rotr(vd ^ va, 16)
            vc = vc + vd
            v[a], v[b], v[c], v[d] = va, _rotr(vb ^ vc, 63), vc, vd
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


@njit(cache=True)
def _block_words(block):
    """128 bytes as 16 little-endian words."""
    m = np.zeros(16, dtype=np.uint64)
    for k in range(128):
        m[k >> 3] |= np.uint64(block[k]) << np.uint64(8 * (k & 7))
    return m


@njit(cache=True)
def _bswap(x):
    out = np.uint64(0)
    for _ in range(8):
        out = (out << np.uint64(8)) | (x & np.uint64(0xFF))
        x >>= np.uint64(8)
    return out


@njit(cache=True)
def _hash_column(data, offsets, keyed, space, hi, lo, fallback):
    m = np.zeros(16, dtype=np.uint64)
    v = np.empty(16, dtype=np.uint64)
    h = np.empty(8, dtype=np.uint64)
    for i in range(len(offsets) - 1):
        a, b = offsets[i], offsets[i + 1]
        ascii_only = True
        for k in range(a, b):
            if data[k] >= 128:
                ascii_only = False
                break
        while a < b and data[a] < 128 and space[data[a]]:
            a += 1
        while b > a and data[b - 1] < 128 and space[data[b - 1]]:
            b -= 1
        n = b - a
        if not ascii_only or n == 0 or n > 128:
            fallback[i] = True
            continue
        m[:] = 0
        for k in range(n):
            c = data[a + k]
            if 97 <= c <= 122:  # ASCII upper case
                c -= 32
            m[k >> 3] |= np.uint64(c) << np.uint64(8 * (k & 7))
        h[:] = keyed
        _compress(h, m, 128 + n, True, v)
        # The digest is h[0], h[1] little-endian; the words are its bytes read big-endian
        # (as the hex token reads), so each is the byte-swapped state word.
        hi[i] = np.int64(_bswap(h[0]))
        lo[i] = np.int64(_bswap(h[1]))


def keyed_state(key: bytes, person: bytes, digest_size: int = 16) -> np.ndarray:
    """BLAKE2b's state after the key block, for ``key`` and personalisation ``person``."""
    if not 1 <= len(key) <= 64 or len(person) > 16:
        raise ValueError("BLAKE2b keys are 1-64 bytes and personalisation at most 16")
    h = _IV.copy()
    h[0] ^= np.uint64(0x01010000 | (len(key) << 8) | digest_size)
    p = person.ljust(16, b"\0")
    h[6] ^= np.uint64(int.from_bytes(p[:8], "little"))
    h[7] ^= np.uint64(int.from_bytes(p[8:], "little"))
    block = np.frombuffer(key.ljust(128, b"\0"), dtype=np.uint8)
    _compress(h, _block_words(block), 128, False, np.empty(16, dtype=np.uint64))
    return h


def hash_column(col: pa.Array, keyed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digest words (hi, lo as int64: the token's first and last 16 hex digits) of every
    value of a string column, and a mask of values to hash in Python instead."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    col = col.cast(pa.large_string()) if col.type != pa.large_string() else col
    n = len(col)
    _, off_buf, data_buf = col.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64, count=n + 1, offset=8 * col.offset)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None \
        else np.zeros(0, dtype=np.uint8)
    hi, lo = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    fallback = np.zeros(n, dtype=np.bool_)
    _hash_column(data, offsets, keyed, _SPACE, hi, lo, fallback)
    return hi, lo, fallback
