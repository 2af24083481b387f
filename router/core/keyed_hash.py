"""Keyed BLAKE2b-128 over a whole Arrow string column, compiled (numba).

Replay hashes the raw identifier of every application in a history file; in Python that
is a hash object, a copy and a hex string per row. This computes the same digests
(:meth:`router.core.identity.Hasher.token`: keyed BLAKE2b, 16-byte digest, the purpose as
personalisation, over ``value.strip().upper()`` in UTF-8) straight from the column's
buffers: RFC 7693's compression function, with the state after the key block computed
once. Values are at most 64 bytes, so each one is a single block.

Only ASCII values are normalised here; a value with other characters (whose Unicode
whitespace and case rules are Python's to apply), or empty once stripped, is flagged so
the caller hashes it with :mod:`hashlib` instead. ``tests/core/test_identity.py`` checks the
digests against :mod:`hashlib`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

_IV = np.array(
    [
        0x6A09E667F3BCC908,
        0xBB67AE8584CAA73B,
        0x3C6EF372FE94F82B,
        0xA54FF53A5F1D36F1,
        0x510E527FADE682D1,
        0x9B05688C2B3E6C1F,
        0x1F83D9ABFB41BD6B,
        0x5BE0CD19137E2179,
    ],
    dtype=np.uint64,
)
_SIGMA = np.array(
    [
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
    ],
    dtype=np.int64,
)
#: Python's str.isspace() among ASCII characters (what str.strip() removes).
_SPACE = np.zeros(128, dtype=np.bool_)
_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
MAX_BYTES = 128


@njit(cache=True, inline="always")
def _rotr(x, n):
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@njit(cache=True, inline="always")
def _g(a, b, c, d, x, y):
    """BLAKE2b's mixing function G on four state words."""
    a = a + b + x
    d = _rotr(d ^ a, 32)
    c = c + d
    b = _rotr(b ^ c, 24)
    a = a + b + y
    d = _rotr(d ^ a, 16)
    c = c + d
    b = _rotr(b ^ c, 63)
    return a, b, c, d


@njit(cache=True)
def _compress(h, m, t, last):
    """BLAKE2b's compression of block ``m`` (16 words) into state ``h``; ``t`` bytes so
    far. The working state lives in sixteen locals (registers), not an array."""
    v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    v8, v9, v10, v11 = _IV[0], _IV[1], _IV[2], _IV[3]
    v12, v13, v14, v15 = _IV[4] ^ np.uint64(t), _IV[5], _IV[6], _IV[7]
    if last:
        v14 = ~v14
    for r in range(12):
        s = _SIGMA[r]
        v0, v4, v8, v12 = _g(v0, v4, v8, v12, m[s[0]], m[s[1]])
        v1, v5, v9, v13 = _g(v1, v5, v9, v13, m[s[2]], m[s[3]])
        v2, v6, v10, v14 = _g(v2, v6, v10, v14, m[s[4]], m[s[5]])
        v3, v7, v11, v15 = _g(v3, v7, v11, v15, m[s[6]], m[s[7]])
        v0, v5, v10, v15 = _g(v0, v5, v10, v15, m[s[8]], m[s[9]])
        v1, v6, v11, v12 = _g(v1, v6, v11, v12, m[s[10]], m[s[11]])
        v2, v7, v8, v13 = _g(v2, v7, v8, v13, m[s[12]], m[s[13]])
        v3, v4, v9, v14 = _g(v3, v4, v9, v14, m[s[14]], m[s[15]])
    h[0] ^= v0 ^ v8
    h[1] ^= v1 ^ v9
    h[2] ^= v2 ^ v10
    h[3] ^= v3 ^ v11
    h[4] ^= v4 ^ v12
    h[5] ^= v5 ^ v13
    h[6] ^= v6 ^ v14
    h[7] ^= v7 ^ v15


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
        _compress(h, m, 128 + n, True)
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
    _compress(h, _block_words(block), 128, False)
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
    data = (
        np.frombuffer(data_buf, dtype=np.uint8)
        if data_buf is not None
        else np.zeros(0, dtype=np.uint8)
    )
    hi, lo = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    fallback = np.zeros(n, dtype=np.bool_)
    _hash_column(data, offsets, keyed, _SPACE, hi, lo, fallback)
    return hi, lo, fallback
