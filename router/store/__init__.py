"""Quota stores: the :class:`QuotaStore` interface and its backends."""

from __future__ import annotations

from router.store.base import (
    CAP_HIT,
    DEDUPED,
    GRANTED,
    LATE,
    Bucket,
    CapLimit,
    QuotaStore,
    Reservation,
    cap_full,
    cap_index,
)
from router.store.memory import MemoryQuotaStore
from router.store.registry import (
    StoreKind,
    quota_store_from_url,
    register_store,
    store_kind,
    store_kinds,
)

__all__ = [
    "Bucket",
    "CapLimit",
    "QuotaStore",
    "Reservation",
    "MemoryQuotaStore",
    "GRANTED",
    "DEDUPED",
    "LATE",
    "CAP_HIT",
    "cap_full",
    "cap_index",
    "quota_store_from_url",
    "StoreKind",
    "register_store",
    "store_kind",
    "store_kinds",
]
