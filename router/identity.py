"""Keyed hashes for applicant and employer identifiers (HMAC-SHA256).

Raw identifiers are hashed on arrival and dropped; only these hashes reach the store,
the ledger, logs and partner payloads. Without the key a hash cannot be reversed by
enumerating the (small) space of national ids.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from router.config import Identity
from router.errors import ConfigError


class Hasher:
    """Turns raw identifiers into stable keyed tokens."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ConfigError("the HMAC key must be at least 16 bytes")
        # HMAC's keyed inner/outer state is computed once; each token copies it.
        self._base = hmac.new(key, digestmod=hashlib.sha256)
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
        h = self._base.copy()
        h.update(f"{purpose}\x1f{raw.strip().upper()}".encode())
        return h.hexdigest()[:32]

    def cached_token(self, raw: str, purpose: str) -> str:
        """:meth:`token` memoised, for low-cardinality values such as employer names."""
        k = (raw, purpose)
        t = self._cache.get(k)
        if t is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            t = self._cache[k] = self.token(raw, purpose)
        return t
