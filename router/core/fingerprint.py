"""Content fingerprints of applications, vectorised (idempotency: same id, same content?).

A 64-bit hash per row over every decision-relevant field, computed with numpy over whole
columns so a replay batch pays well under a microsecond a row, and computed by the same
code for a batch of one, so live and replay fingerprints are identical and stable across
processes (no per-process hash seed). Not cryptographic: it only has to notice that a
retried application id now carries different content.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from operator import mul

import numpy as np

from router.core.errors import IdempotencyConflict

_P = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime
_SEED = np.uint64(0xCBF29CE484222325)  # FNV offset basis


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the output."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hash_strings(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """FNV-1a-style hash over 8-byte words of each string (independent of the array's width).

    Strings are encoded as UTF-8 bytes, NUL-padded to whole words; all-NUL words are
    skipped so the hash does not depend on the widest string of the batch.
    """
    n = len(values)
    h = np.full(n, _SEED, dtype=np.uint64)
    if n == 0:
        return h
    try:
        arr = np.asarray(values, dtype=bytes)  # ASCII (all schema-checked ids are)
    except UnicodeEncodeError:
        arr = np.char.encode(np.asarray(values, dtype=str), "utf-8")
    width = max(8, -(-arr.dtype.itemsize // 8) * 8)
    words = np.ascontiguousarray(arr, dtype=f"S{width}").view("<u8").reshape(n, -1)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            w = words[:, j]
            h = np.where(w == 0, h, (h ^ w) * _P)
    return h


def _weights(k: int) -> list[int]:
    """k odd 64-bit multipliers (splitmix64 of the golden-ratio sequence, low bit set)."""
    out, x = [], 0
    for _ in range(k):
        x = (x + 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
        out.append((z ^ (z >> 31)) | 1)
    return out


_W = _weights(32)
_W_NP = np.array(_W, dtype=np.uint64)


def combine(columns: Sequence[np.ndarray], n: int) -> np.ndarray:
    """One uint64 per row from per-column uint64 hashes or raw 64-bit values.

    A weighted sum mod 2^64 with a distinct odd weight per column, then one mix: each
    column's term is a bijection of its value (the weight is odd), so changing any one
    field always changes the result, and the sum costs one multiply-add per field.
    """
    if len(columns) > len(_W):
        raise ValueError(f"at most {len(_W)} columns")
    h = np.full(n, _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col, w in zip(columns, _W_NP):
            h = h + col * w
        return _mix(h)


def as_u64(values: np.ndarray) -> np.ndarray:
    """Raw 64-bit pattern of a numeric column (floats by their IEEE bits)."""
    if values.dtype.kind == "f":
        return np.ascontiguousarray(values, dtype="<f8").view("<u8")
    return values.astype(np.int64).view(np.uint64)


# ---- the same hash in plain Python, for batches of a few rows ---------------------
# numpy's per-call overhead dominates tiny batches; Python integers masked to 64 bits
# give bit-identical results (tests/core/test_fingerprint.py checks both paths agree).

_MASK = (1 << 64) - 1
_P_INT, _SEED_INT = int(_P), int(_SEED)
_F64 = struct.Struct("<d")


def mix_py(h: int) -> int:
    """:func:`_mix` for one Python int."""
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK
    return h ^ (h >> 31)


_WORDS: dict[int, struct.Struct] = {}


def hash_string_py(value: str) -> int:
    """:func:`hash_strings` for one string."""
    data = value.encode("utf-8")
    data += b"\0" * (-len(data) % 8)
    words = _WORDS.get(len(data))
    if words is None:
        words = _WORDS[len(data)] = struct.Struct(f"<{len(data) // 8}Q")
    h = _SEED_INT
    for w in words.unpack(data):
        if w:
            h = ((h ^ w) * _P_INT) & _MASK
    return h


def combine_py(values: list[int]) -> int:
    """:func:`combine` for one row of 64-bit values (one mask at the end: Python ints
    do not overflow, and the sum mod 2^64 is the same)."""
    return mix_py((_SEED_INT + sum(map(mul, values, _W))) & _MASK)


def float_bits(x: float) -> int:
    """IEEE-754 bits of a float, as :func:`as_u64` gives them."""
    return int.from_bytes(_F64.pack(x), "little")


def find_repeats(ids: Sequence[str], fps: Sequence[int]) -> dict[int, int]:
    """Rows whose application id appeared earlier in the batch -> that earlier row;
    raises :class:`IdempotencyConflict` when a repeat's content differs."""
    dups: dict[int, int] = {}
    if len(set(ids)) == len(ids):  # the usual case, at C speed
        return dups
    first: dict[str, int] = {}
    for i, app_id in enumerate(ids):
        j = first.setdefault(app_id, i)
        if j != i:
            if fps[i] != fps[j]:
                raise IdempotencyConflict(app_id)
            dups[i] = j
    return dups
