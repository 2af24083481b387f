"""How the Redis store encodes what it keeps: fingerprints, ledger entries, pending specs."""

from __future__ import annotations

import msgspec

from router.core.messages import ReferralEntry
from router.store.base import check_fingerprints

FP_BYTES = 8
entry_enc = msgspec.json.Encoder()
entry_dec = msgspec.json.Decoder(ReferralEntry)
spec_enc = msgspec.msgpack.Encoder()


def fp(fingerprint: int) -> bytes:
    """A content fingerprint as its 8 stored bytes (an unsigned 64-bit integer)."""
    try:
        return fingerprint.to_bytes(FP_BYTES, "big")
    except (OverflowError, AttributeError, TypeError):
        check_fingerprints([fingerprint])
        raise
