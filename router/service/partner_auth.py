"""How partners sign their requests to the service (postbacks, reading their referrals).

Each partner has a secret of its own, in a TOML file the service reads::

    [[partners]]
    id = "platform_yunfan"
    secret = "…"          # at least 32 characters; keep the file readable by the service only

A postback request carries ``X-Partner-Id``, ``X-Timestamp`` (Unix seconds) and
``X-Signature``: the hex HMAC-SHA256, under the partner's secret, of the timestamp, a dot
and the exact body bytes. A request older or newer than :data:`WINDOW_S` is refused (a
captured request cannot be replayed later; within the window a replay is a duplicate
event id, which changes nothing). Every event in the body must be the signing partner's.

A partner reading a referral (``GET /v1/partner/referrals/ID``) signs the same way, with
the request line — ``GET``, a space and the path — in place of the body.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Annotated

import msgspec

from router.core.errors import ConfigError
from router.core.messages import PartnerId
from router.service.keys import read_toml

#: How far a request's timestamp may be from the service's clock, in seconds.
WINDOW_S = 300


class PartnerSecret(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    id: PartnerId
    secret: Annotated[str, msgspec.Meta(min_length=32, max_length=256)]


class _SecretFile(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    partners: list[PartnerSecret] = []


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature of a request (what a partner computes)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


class PartnerSecrets:
    """The partners' secrets, by partner id."""

    def __init__(self, secrets: list[PartnerSecret]):
        self._by_id = {s.id: s.secret for s in secrets}
        if len(self._by_id) != len(secrets):
            raise ConfigError("partner secrets: a partner is given twice")

    @classmethod
    def from_file(cls, path: str | Path) -> PartnerSecrets:
        """Read the secrets file (module docstring)."""
        return cls(read_toml(path, _SecretFile, "partner secrets").partners)

    def check(self, partner: str, timestamp: str, signature: str, body: bytes, now: float) -> str:
        """Why the request is not the partner's, or "" when it is."""
        secret = self._by_id.get(partner)
        if secret is None:
            return "unknown partner"
        try:
            ts = int(timestamp)
        except ValueError:
            return "X-Timestamp is not Unix seconds"
        if abs(now - ts) > WINDOW_S:
            return f"X-Timestamp is more than {WINDOW_S} s from now"
        if not hmac.compare_digest(sign(secret, ts, body), signature.lower()):
            return "bad signature"
        return ""
