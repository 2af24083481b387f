"""Quota stores: the :class:`QuotaStore` interface and its backends."""

from __future__ import annotations

from router.errors import ConfigError
from router.store.base import (
    CAP_HIT,
    DEDUPED,
    GRANTED,
    LATE,
    Bucket,
    CapLimit,
    QuotaStore,
    cap_full,
    cap_index,
)
from router.store.memory import MemoryQuotaStore

__all__ = [
    "Bucket",
    "CapLimit",
    "QuotaStore",
    "MemoryQuotaStore",
    "GRANTED",
    "DEDUPED",
    "LATE",
    "CAP_HIT",
    "cap_full",
    "cap_index",
    "quota_store_from_url",
]


def quota_store_from_url(url: str, **options) -> QuotaStore:
    """Build a store from a URL: ``memory://``, ``array://`` (the in-memory store in
    arrays, whose batches are walked by compiled code), ``redis://host:port/db`` (``rediss://`` for
    TLS, password in the URL) or ``redis+cluster://host:port,host:port``; Redis URLs take
    ``?prefix=…&timeout_ms=…&ttl_hours=…``."""
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        return MemoryQuotaStore(**options)
    if scheme == "array":
        from router.store.array import ArrayQuotaStore

        return ArrayQuotaStore(**options)
    if scheme in ("redis", "rediss", "redis+cluster"):
        from router.store.redis import RedisQuotaStore

        return RedisQuotaStore.from_url(url, **options)
    raise ConfigError(
        f"unsupported quota store URL {url.split('@')[-1]!r} "
        "(memory://, array://, redis://, rediss://, redis+cluster://)",
        path="store",
    )
