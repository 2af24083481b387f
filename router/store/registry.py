"""Quota-store backends by URL scheme (as ``limits`` registers its storages).

Each backend is a :class:`StoreKind`: the URL schemes it answers, how to build it, and
whether it needs a server. :func:`quota_store_from_url` reads the registry; so do the CLI's
help, the test suite's list of stores and :func:`router.testing.check_quota_store`. A new
backend registers itself with :func:`register_store` — nothing else in the router changes:

    register_store(StoreKind("mystore", ("mystore",), MyStore.from_url,
                             example="mystore://host:1234", shared=True))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from router.core.errors import ConfigError

if TYPE_CHECKING:
    from router.store.base import QuotaStore


@dataclass(frozen=True)
class StoreKind:
    """One quota-store backend."""

    #: Short name ("memory", "redis", …): the test suite's parameter id.
    name: str
    #: URL schemes it answers (``scheme://…``).
    schemes: tuple[str, ...]
    #: ``build(url, **options)``, or ``"module:attribute"`` imported on first use (so a
    #: backend's client library loads only when the backend is used).
    build: Callable[..., QuotaStore] | str
    #: A URL that shows the form (for help texts and errors).
    example: str
    #: Shared between processes over a network: it needs a server, takes a key ``prefix``
    #: option (checks and tests isolate themselves by prefix), and may be unreachable.
    shared: bool = False
    description: str = ""

    def make(self, url: str, **options: Any) -> QuotaStore:
        """Build a store of this kind from ``url``."""
        build = self.build
        if isinstance(build, str):
            module, _, attr = build.partition(":")
            target: Any = import_module(module)
            for part in attr.split("."):
                target = getattr(target, part)
            build = target
        assert callable(build)
        return build(url, **options)


_KINDS: dict[str, StoreKind] = {}


def register_store(kind: StoreKind) -> None:
    """Add a backend (or replace the one of the same name)."""
    for other in list(_KINDS.values()):
        if other.name != kind.name and set(other.schemes) & set(kind.schemes):
            raise ConfigError(
                f"store schemes {sorted(set(other.schemes) & set(kind.schemes))} are "
                f"already registered by {other.name!r}",
                path="store",
            )
    _KINDS[kind.name] = kind


def store_kinds() -> list[StoreKind]:
    """Every registered backend, in registration order."""
    return list(_KINDS.values())


def store_kind(url: str) -> StoreKind:
    """The backend of a URL (a :class:`ConfigError` naming the known schemes if none)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    for kind in _KINDS.values():
        if scheme in kind.schemes:
            return kind
    known = ", ".join(f"{s}://" for k in _KINDS.values() for s in k.schemes)
    # (Only what follows an '@' is shown: a password must not reach an error message.)
    raise ConfigError(f"unsupported quota store URL {url.split('@')[-1]!r} ({known})", path="store")


def quota_store_from_url(url: str, **options: Any) -> QuotaStore:
    """Build a store from a URL: ``memory://``, ``array://`` (the in-memory store in
    arrays, whose batches are walked by compiled code), ``redis://host:port/db``
    (``rediss://`` for TLS, password in the URL) or ``redis+cluster://host:port,host:port``
    (Redis URLs take ``?prefix=…&timeout_ms=…&ttl_hours=…``), or any registered backend."""
    return store_kind(url).make(url, **options)


def _memory(url: str, **options: Any) -> QuotaStore:
    from router.store.memory import MemoryQuotaStore

    return MemoryQuotaStore(**options)


def _array(url: str, **options: Any) -> QuotaStore:
    from router.store.array import ArrayQuotaStore

    return ArrayQuotaStore(**options)


register_store(
    StoreKind(
        "memory",
        ("memory",),
        _memory,
        "memory://",
        description="in-process dictionaries (replay, tests, one process)",
    )
)
register_store(
    StoreKind(
        "array",
        ("array",),
        _array,
        "array://",
        description="in-process arrays; batches walked by compiled code",
    )
)
register_store(
    StoreKind(
        "redis",
        ("redis", "rediss"),
        "router.store.redis:RedisQuotaStore.from_url",
        "redis://127.0.0.1:6379/0",
        shared=True,
        description="one Redis server, shared by every router process",
    )
)
register_store(
    StoreKind(
        "cluster",
        ("redis+cluster",),
        "router.store.redis:RedisQuotaStore.from_url",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        shared=True,
        description="a Redis Cluster",
    )
)
