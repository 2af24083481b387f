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

from router.config import Identity
from router.errors import ConfigError


class Hasher:
    """Turns raw identifiers into stable keyed tokens."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ConfigError("the identity key must be at least 16 bytes")
        # BLAKE2b keys are at most 64 bytes; a longer key is hashed down first.
        self._key = key if len(key) <= 64 else hashlib.blake2b(key).digest()
        self._states: dict[str, "hashlib._Hash"] = {}
        self._cache: dict[tuple[str, str], str] = {}

    def _state(self, purpose: str) -> "hashlib._Hash":
        st = self._states.get(purpose)
        if st is None:
            person = purpose.encode()
            if len(person) > 16:
                raise ValueError(f"purpose longer than 16 bytes: {purpose!r}")
            st = self._states[purpose] = hashlib.blake2b(key=self._key, digest_size=16,
                                                         person=person)
        return st

    @classmethod
    def from_config(cls, ident: Identity) -> "Hasher":
        """Key from the environment variable the config names, else the config's dev key."""
        key = os.environ.get(ident.key_env)
        if key is None:
            if ident.dev_key is None:
                raise ConfigError(
                    f"environment variable {ident.key_env} is not set and no identity.dev_key"
                    " is configured", path="identity.key_env")
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
        out = []
        append = out.append
        for raw in raws:
            h = copy()
            h.update(raw.strip().upper().encode())
            append(h.hexdigest())
        return out

    def cached_token(self, raw: str, purpose: str) -> str:
        """:meth:`token` memoised, for low-cardinality values such as employer names."""
        k = (raw, purpose)
        t = self._cache.get(k)
        if t is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            t = self._cache[k] = self.token(raw, purpose)
        return t
