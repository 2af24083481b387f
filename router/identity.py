"""Keyed hashes for applicant and employer identifiers (HMAC-SHA256).

Raw identifiers are hashed on arrival and dropped; only these hashes reach the store,
the ledger, logs and partner payloads. Without the key a hash cannot be reversed by
enumerating the (small) space of national ids.
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
            raise ConfigError("the HMAC key must be at least 16 bytes")
        # HMAC-SHA256 (RFC 2104) with the keyed inner/outer hash states computed once:
        # each token copies two C-level hash objects (hmac.HMAC.copy is several times slower).
        block = key if len(key) <= 64 else hashlib.sha256(key).digest()
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._cache: dict[tuple[str, str], str] = {}

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
        inner = self._inner.copy()
        inner.update(f"{purpose}\x1f{raw.strip().upper()}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:32]

    def tokens(self, raws: list[str], purpose: str = "applicant") -> list[str]:
        """:meth:`token` for many values (the same hashes, less per-call overhead)."""
        inner_copy, outer_copy = self._inner.copy, self._outer.copy
        prefix = f"{purpose}\x1f"
        out = []
        append = out.append
        for raw in raws:
            inner = inner_copy()
            inner.update((prefix + raw.strip().upper()).encode())
            outer = outer_copy()
            outer.update(inner.digest())
            append(outer.hexdigest()[:32])
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
