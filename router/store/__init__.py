"""Quota stores: the :class:`QuotaStore` interface and its backends."""

from __future__ import annotations

from router.store.base import (CAP_HIT, DEDUPED, GRANTED, Bucket, CapLimit, QuotaStore,
                               cap_full, cap_index)
from router.store.memory import MemoryQuotaStore

__all__ = ["Bucket", "CapLimit", "QuotaStore", "MemoryQuotaStore", "GRANTED", "DEDUPED",
           "CAP_HIT", "cap_full", "cap_index", "quota_store_from_url"]


def quota_store_from_url(url: str, **options) -> QuotaStore:
    """Build a store from a URL. ``memory://`` today; Redis URLs arrive with the Redis store."""
    if url.startswith("memory://"):
        return MemoryQuotaStore(**options)
    raise ValueError(f"unsupported quota store URL {url!r} (supported: memory://)")
