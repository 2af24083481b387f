"""Pipelined (coalesced) batches: same guarantees as one by one, fewer round trips."""

from datetime import timedelta

import msgspec
import pytest
from race_worker import T0, race_strategy

from router.core.config import strategy_from_dict
from router.core.errors import IdempotencyConflict
from router.core.messages import Refer
from router.decide.engine import Router
from router.testing import ScoreLookupScorer, make_application, strategy_dict


def _apps(n):
    return [
        make_application(
            application_id=f"pp-{i}",
            national_id=f"1101011990{i:08d}",
            requested_amount=100_000 + 37_000 * (i % 9),
            received_at=T0 + timedelta(seconds=i),
        )
        for i in range(n)
    ]


def _race_router(store) -> Router:
    """The race strategy (a count cap of 100) with every applicant at PD 0.2."""
    return Router(
        strategy_from_dict(race_strategy()),
        store,
        scorers={"main": ScoreLookupScorer({}, default=0.2)},
    )


@pytest.mark.parametrize("kind", ["memory", "array", "redis", "cluster"])
def test_pipelined_batches_keep_caps_and_exactly_once(store_factory, kind):
    store = store_factory(kind)
    router = _race_router(store)
    apps = _apps(300)
    decisions = []
    for k in range(0, 300, 64):
        decisions += router.decide_batch(apps[k : k + 64], pipelined=True)
    granted = [d for d in decisions if isinstance(d, Refer)]
    ledger = list(store.ledger())
    assert len(granted) == len(ledger) == 100  # the count cap, exactly
    assert len({e.application_id for e in ledger}) == 100
    # Resent (a client retry): the same answers, nothing new
    again = []
    for k in range(0, 300, 64):
        again += router.decide_batch(apps[k : k + 64], pipelined=True)
    assert again == decisions and len(list(store.ledger())) == 100


@pytest.mark.redis
def test_pipelined_equals_ordered_when_nothing_competes(store_factory):
    """With room for everyone the order inside a batch cannot matter: same decisions."""
    d = strategy_dict()
    s = strategy_from_dict(d)
    scorers = {"main": ScoreLookupScorer({700: 0.02, 650: 0.08, 600: 0.2}, default=0.5)}
    apps = [
        make_application(
            application_id=f"q-{i}",
            national_id=f"1101011991{i:08d}",
            bureau_score=[700, 650, 600, 550][i % 4],
            region=["310000", "440300"][i % 2],
            received_at=T0 + timedelta(seconds=i),
        )
        for i in range(40)
    ]
    a = Router(s, store_factory("redis"), scorers=scorers).decide_batch(apps, pipelined=True)
    b = Router(s, store_factory("memory"), scorers=scorers).decide_batch(apps)
    assert a == b


@pytest.mark.parametrize("kind", ["memory", "redis", "cluster"])
def test_pipelined_retry_with_other_content_conflicts_and_changes_nothing(store_factory, kind):
    """A resent batch in which one application changed: IdempotencyConflict for the batch,
    and neither the posted ledger nor any later answer moves (what the batch reserved
    before the conflict came back is voided)."""
    store = store_factory(kind)
    router = _race_router(store)
    apps = _apps(40)
    first = router.decide_batch(apps[:20], pipelined=True)
    before = [e.application_id for e in store.ledger()]
    changed = apps[20:40] + [msgspec.structs.replace(apps[5], requested_amount=999)]
    with pytest.raises(IdempotencyConflict):
        router.decide_batch(changed, pipelined=True)
    store.flush()
    assert [e.application_id for e in store.ledger()] == before
    assert router.decide_batch(apps[:20], pipelined=True) == first
    # The rows beside the conflict were not decided: they decide afresh, once.
    rest = router.decide_batch(apps[20:40], pipelined=True)
    assert router.decide_batch(apps[20:40], pipelined=True) == rest
