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
        self._key = key

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
        msg = f"{purpose}\x1f{raw.strip().upper()}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]
