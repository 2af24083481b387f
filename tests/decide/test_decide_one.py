"""`Router.decide` (the scalar live path) gives the decisions a batch of one gives.

Two routers over fresh stores of the same kind see the same application stream, one
through ``decide`` and one through ``decide_batch([app])`` (the columnar path replay
uses). Caps are tight so quotas, floors and dedupe all bite; applications repeat so
idempotency answers are compared too; the ledgers must match entry for entry.
"""

from __future__ import annotations

import zlib

import pytest
from tests_helpers import tight_strategy, tight_stream

from router.core.config import load_strategy, strategy_from_dict
from router.core.errors import IdempotencyConflict
from router.core.messages import Keep, Refer, decode_application
from router.core.routing import routing_methods
from router.decide.engine import Router
from router.testing import ScoreLookupScorer, make_application, strategy_dict
from router.traffic import write_traffic


def _pair(strategy, make_store):
    scorer = ScoreLookupScorer({720: 0.01, 700: 0.02, 650: 0.08, 600: 0.2, 550: 0.35}, default=0.5)
    one = Router(strategy, make_store(), scorers={"main": scorer})
    batch = Router(strategy, make_store(), scorers={"main": scorer})
    assert one._single_trip
    return one, batch


def _same(one, batch, apps):
    for a in apps:
        d1, d2 = one.decide(a), batch.decide_batch([a])[0]
        assert d1 == d2, (a.application_id, d1, d2)

    # A Redis ledger is one stream per partner: compare in a fixed order.
    def key(e):
        return (e.partner_id, e.event_time_ms, e.application_id)

    assert sorted(one.store.ledger(), key=key) == sorted(batch.store.ledger(), key=key)
    assert one.cap_refusals() == batch.cap_refusals()


@pytest.mark.parametrize("method", routing_methods())
def test_scalar_path_equals_batch_of_one_on_memory(method, store_factory):
    one, batch = _pair(tight_strategy(method), lambda: store_factory("memory"))
    # A seed of its own per method, the same in every run (str hashes change per process).
    _same(one, batch, tight_stream(1500, seed=zlib.crc32(method.encode()) % 1000))


@pytest.mark.redis
def test_scalar_path_equals_batch_of_one_on_redis(store_factory):
    one, batch = _pair(tight_strategy("best_value"), lambda: store_factory("redis"))
    _same(one, batch, tight_stream(600, seed=5))


def test_scalar_path_on_the_example_strategy(tmp_path):
    """The shipped strategy and model on generated traffic."""
    strategy = load_strategy("configs/strategy.toml")
    one, batch = Router(strategy), Router(strategy)
    path = write_traffic(tmp_path / "t.jsonl", 3000, seed=17)
    _same(one, batch, [decode_application(line) for line in path.read_bytes().splitlines()])


def test_scalar_path_conflict(store_factory):
    one, _ = _pair(tight_strategy("waterfall"), lambda: store_factory("memory"))
    a = make_application(application_id="x1")
    one.decide(a)
    with pytest.raises(IdempotencyConflict):
        one.decide(make_application(application_id="x1", requested_amount=123_45))


def test_scalar_path_degraded_when_store_is_down():
    from router.store import quota_store_from_url

    scorer = ScoreLookupScorer({700: 0.02}, default=0.5)
    down = quota_store_from_url("redis://127.0.0.1:1/0", timeout_ms=5)
    for policy in ("decline", "keep"):
        s = strategy_from_dict(
            {**strategy_dict(routing={"method": "waterfall"}), "degraded": {"policy": policy}}
        )
        one = Router(s, down, scorers={"main": scorer})
        ref = Router(s, down, scorers={"main": scorer})
        for i, score in enumerate([700, 600, 550]):
            a = make_application(application_id=f"d{policy}{i}", bureau_score=score)
            d1, d2 = one.decide(a), ref.decide_batch([a])[0]
            assert d1 == d2
            # Only a decision that needed the store (score 700 could be kept) is degraded;
            # an outright decline needs no quota and is not.
            assert d1.degraded == ("STORE_UNAVAILABLE" in d1.reasons) == (score == 700)
            assert not isinstance(d1, Refer)
            # The good applicant (score 700) is kept under policy "keep", declined otherwise.
            assert isinstance(d1, Keep) == (policy == "keep" and score == 700)
