"""API keys of the decision service: who may call it, and for what.

Keys are stored as SHA-256 digests, never in the clear (a key is 32 random bytes, so a
fast hash is enough: there is nothing to guess). The key file is TOML::

    [[keys]]
    id = "lender-web"            # who it is (logged, never the key)
    sha256 = "9f86d0…"           # hashlib.sha256(key.encode()).hexdigest()
    scopes = ["decide", "read"]  # decide: POST decisions; read: GET a stored decision;
                                 # admin: reload the strategy

``referral-router api-key --id NAME --scopes decide,read`` makes a key and prints it once
with its entry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from router.core.errors import ConfigError

T = TypeVar("T")
Scope = Literal["decide", "read", "admin"]
SCOPES: tuple[str, ...] = ("decide", "read", "admin")


class ApiKey(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One caller's key, as its digest, with what it may do."""

    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    scopes: list[Scope]


class KeyFile(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    keys: list[ApiKey] = []


def read_toml(path: str | Path, type_: type[T], what: str) -> T:
    """A service's TOML file as ``type_``; :class:`ConfigError` naming the file and the
    field (msgspec's messages name the field and the expected type, never the value: no
    secret is echoed)."""
    try:
        return msgspec.toml.decode(Path(path).read_bytes(), type=type_)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file (value: {str(path)!r})") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{what} {path}: not TOML: {exc}") from None


def digest(key: str) -> str:
    """The SHA-256 hex digest a key is stored as."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(key_id: str, scopes: list[str]) -> tuple[str, ApiKey]:
    """A fresh random key and its entry for the key file."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ConfigError(f"scopes must be some of {', '.join(SCOPES)} (value: {scopes!r})")
    key = "rr_" + secrets.token_urlsafe(32)
    entry = msgspec.convert({"id": key_id, "sha256": digest(key), "scopes": scopes}, ApiKey)
    return key, entry


class KeyRing:
    """The keys the service accepts, by digest."""

    def __init__(self, keys: list[ApiKey]):
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"api keys: an id is given twice (value: {sorted(ids)!r})")
        self._by_digest = {k.sha256: k for k in keys}

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """Read a key file (module docstring); :class:`ConfigError` naming what is wrong."""
        return cls(read_toml(path, KeyFile, "api keys").keys)

    def check(self, presented: str | None) -> ApiKey | None:
        """The key entry for a presented key, or None (unknown or absent)."""
        if not presented:
            return None
        d = digest(presented)
        found = self._by_digest.get(d)
        # (a constant-time compare of the digests, belt and braces)
        if found is None or not hmac.compare_digest(found.sha256, d):
            return None
        return found

    def __len__(self) -> int:
        return len(self._by_digest)
