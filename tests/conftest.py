from __future__ import annotations

from pathlib import Path

import pytest
from servers import redis_cluster, redis_server  # noqa: F401  (fixtures)

from router.config import strategy_from_dict
from router.engine import Router
from router.testing import ScoreLookupScorer, strategy_dict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_router():
    """Build a Router over the small test strategy with PDs chosen by bureau score."""

    def build(pd_by_score=None, store=None, **overrides):
        s = strategy_from_dict(strategy_dict(**overrides))
        scorer = ScoreLookupScorer(pd_by_score or {700: 0.02}, default=0.5)
        return Router(s, store, scorers={"main": scorer})

    return build


@pytest.fixture
def store_factory(request):
    """Make quota stores of a kind: "memory", "array" (the in-memory store in arrays),
    "redis" (real server) or "cluster" (3 masters).

    Each Redis store gets its own key prefix, so tests never see each other's keys.
    """
    import uuid

    from router.store import MemoryQuotaStore, quota_store_from_url

    made = []

    def make(kind: str, **options):
        if kind == "memory":
            store = MemoryQuotaStore(**options)
        elif kind == "array":
            from router.store.array import ArrayQuotaStore

            store = ArrayQuotaStore(**options)
        elif kind == "redis":
            proc = request.getfixturevalue("redis_server")
            store = quota_store_from_url(
                f"redis://{proc.host}:{proc.port}/0",
                prefix=f"t{uuid.uuid4().hex[:8]}:",
                timeout_ms=5000,
                **options,
            )
        else:
            nodes = request.getfixturevalue("redis_cluster")
            hosts = ",".join(f"{h}:{p}" for h, p in nodes)
            store = quota_store_from_url(
                f"redis+cluster://{hosts}",
                prefix=f"t{uuid.uuid4().hex[:8]}:",
                timeout_ms=5000,
                **options,
            )
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()


#: Store kinds that need a real server (the ``redis`` marker).
_SERVER_KINDS = {"redis", "cluster"}
_SERVER_FIXTURES = {"redis_server", "redis_cluster"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs a real Redis server ``redis``: it uses a server fixture,
    is parametrised with a server store kind, or sits in a module marked so (tests that
    start and kill their own servers). ``pytest -m "not redis"`` then runs without any."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or any(
            isinstance(v, str) and v in _SERVER_KINDS for v in params.values()
        ):
            item.add_marker(pytest.mark.redis)
