"""Keyed hashes for applicant and employer identifiers (keyed BLAKE2b, 128-bit).

Raw identifiers are hashed on arrival and dropped; only these hashes reach the store,
the ledger, logs and partner payloads. Without the key a hash cannot be reversed by
enumerating the (small) space of national ids.

BLAKE2b's keyed mode (RFC 7693) is a PRF/MAC in its own right, and a third of the cost of
HMAC-SHA256 in Python (one hash state copied per value instead of two): replay hashes
every raw identifier of a history file. The purpose ("applicant", "employer") is BLAKE2's
personalisation, so the same value hashes differently per purpose.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from router.core.config import Identity
from router.core.errors import ConfigError

_M64 = (1 << 64) - 1


def token_words(token: str) -> tuple[int, int]:
    """A 32-hex-digit token's 128 bits as two signed 64-bit words (first and last 16
    digits)."""
    raw = bytes.fromhex(token)
    return (
        int.from_bytes(raw[:8], "big", signed=True),
        int.from_bytes(raw[8:], "big", signed=True),
    )


class Tokens(Sequence[str]):
    """A column of tokens held as their two 64-bit words; the hex text of a row is made
    only when asked for (replay rarely needs it: dedupe and fingerprints use the words)."""

    __slots__ = ("hi", "lo")

    def __init__(self, hi: np.ndarray, lo: np.ndarray):
        self.hi, self.lo = hi, lo

    def __len__(self) -> int:
        return len(self.hi)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Tokens(self.hi[i], self.lo[i])
        return f"{int(self.hi[i]) & _M64:016x}{int(self.lo[i]) & _M64:016x}"

    def __iter__(self) -> Iterator[str]:
        for h, w in zip(self.hi.tolist(), self.lo.tolist()):
            yield f"{h & _M64:016x}{w & _M64:016x}"

    def take(self, idx: np.ndarray) -> Tokens:
        """Rows ``idx``, in that order."""
        return Tokens(self.hi[idx], self.lo[idx])


class Hasher:
    """Turns raw identifiers into stable keyed tokens."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ConfigError("the identity key must be at least 16 bytes")
        # BLAKE2b keys are at most 64 bytes; a longer key is hashed down first.
        self._key = key if len(key) <= 64 else hashlib.blake2b(key).digest()
        self._states: dict[str, hashlib.blake2b] = {}
        self._cache: dict[tuple[str, str], str] = {}
        self._keyed: dict[str, np.ndarray] = {}

    def _state(self, purpose: str) -> hashlib.blake2b:
        st = self._states.get(purpose)
        if st is None:
            person = purpose.encode()
            if len(person) > 16:
                raise ValueError(f"purpose longer than 16 bytes: {purpose!r}")
            st = self._states[purpose] = hashlib.blake2b(
                key=self._key, digest_size=16, person=person
            )
        return st

    @classmethod
    def from_config(cls, ident: Identity) -> Hasher:
        """Key from the environment variable the config names, else the config's dev key."""
        key = os.environ.get(ident.key_env)
        if key is None:
            if ident.dev_key is None:
                raise ConfigError(
                    f"environment variable {ident.key_env} is not set and no identity.dev_key"
                    " is configured",
                    path="identity.key_env",
                )
            key = ident.dev_key
        return cls(key.encode())

    def token(self, raw: str, purpose: str = "applicant") -> str:
        """A 32-hex-digit keyed hash of ``raw``; ``purpose`` separates hash domains."""
        h = self._state(purpose).copy()
        h.update(raw.strip().upper().encode())
        return h.hexdigest()

    def tokens(self, raws: list[str], purpose: str = "applicant") -> list[str]:
        """:meth:`token` for many values (the same hashes, less per-call overhead)."""
        copy = self._state(purpose).copy
        out: list[str] = []
        append = out.append
        for raw in raws:
            h = copy()
            h.update(raw.strip().upper().encode())
            append(h.hexdigest())
        return out

    def column_tokens(self, raws: pa.Array, purpose: str = "applicant") -> Tokens:
        """:meth:`tokens` for a whole Arrow string column without nulls, hashed by compiled
        code (:mod:`router.core.keyed_hash`; the same digests)."""
        from router.core.keyed_hash import hash_column, keyed_state

        keyed = self._keyed.get(purpose)
        if keyed is None:
            keyed = self._keyed[purpose] = keyed_state(self._key, purpose.encode())
        hi, lo, fallback = hash_column(raws, keyed)
        for i in np.flatnonzero(fallback).tolist():  # non-ASCII or blank: hashlib's way
            hi[i], lo[i] = token_words(self.token(raws[i].as_py(), purpose))
        return Tokens(hi, lo)

    def cached_token(self, raw: str, purpose: str) -> str:
        """:meth:`token` memoised, for low-cardinality values such as employer names."""
        k = (raw, purpose)
        t = self._cache.get(k)
        if t is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            t = self._cache[k] = self.token(raw, purpose)
        return t
