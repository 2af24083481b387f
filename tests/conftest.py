from __future__ import annotations

from pathlib import Path

import pytest
from billing_helpers import billing, billing_url, redis_url  # noqa: F401  (fixtures)
from servers import redis_cluster, redis_server  # noqa: F401  (fixtures)

from router.core.config import strategy_from_dict
from router.decide.engine import Router
from router.testing import ScoreLookupScorer, strategy_dict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _close_open_routers():
    """Close the routers a test registered in ``tests_helpers.OPEN_ROUTERS``."""
    from tests_helpers import OPEN_ROUTERS

    yield
    while OPEN_ROUTERS:
        try:
            OPEN_ROUTERS.pop().close()
        except Exception:  # the server is gone: nothing left to flush to
            pass


@pytest.fixture
def make_router():
    """Build a Router over the small test strategy with PDs chosen by bureau score."""

    def build(pd_by_score=None, store=None, **overrides):
        s = strategy_from_dict(strategy_dict(**overrides))
        scorer = ScoreLookupScorer(pd_by_score or {700: 0.02}, default=0.5)
        return Router(s, store, scorers={"main": scorer})

    return build


#: How the suite reaches a server for each shared backend: kind -> (fixture, URL maker).
_SERVERS = {
    "redis": ("redis_server", lambda proc: f"redis://{proc.host}:{proc.port}/0"),
    "cluster": (
        "redis_cluster",
        lambda nodes: "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in nodes),
    ),
}


@pytest.fixture
def store_factory(request):
    """Make quota stores of a registered kind (:func:`router.store.store_kinds`): the
    in-process ones as they are, shared ones on the suite's own throwaway servers, each
    with a key prefix of its own (tests never see each other's keys)."""
    import uuid

    from router.store import store_kinds

    kinds = {k.name: k for k in store_kinds()}
    made = []

    def make(kind: str, **options):
        k = kinds[kind]
        if not k.shared:
            store = k.make(k.example, **options)
        else:
            fixture, url_of = _SERVERS[kind]
            url = url_of(request.getfixturevalue(fixture))
            options = {"prefix": f"t{uuid.uuid4().hex[:8]}:", "timeout_ms": 5000, **options}
            store = k.make(url, **options)
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()


#: Store kinds that need a real server (the ``redis`` marker).
_SERVER_KINDS = set(_SERVERS)
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
