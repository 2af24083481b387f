"""Weighted rotation and retries (issue 9, finding 6): a retry is answered from the stored
decision and never moves the rotation, one by one as in a batch, on every store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from router.core.config import strategy_from_dict
from router.decide.engine import Router
from router.testing import ScoreLookupScorer, make_application, strategy_dict

T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def _app(name: str):
    i = ord(name) - ord("A")
    # Unlicensed region: not kept; PD 0.02: eligible at both whitelisted partners.
    return make_application(
        application_id=f"rot-{name}",
        national_id=f"1101011990{i:08d}",
        region="440300",
        received_at=T0 + timedelta(seconds=i),
    )


def _router(store):
    s = strategy_from_dict(strategy_dict(routing={"method": "weighted"}))
    return Router(s, store, scorers={"main": ScoreLookupScorer({700: 0.02})})


STREAMS = ["AABCDE", "ABACADAE", "ABCABCDEF", "AAAABBBC"]


@pytest.mark.parametrize("kind", ["memory", "array", "redis", "cluster"])
@pytest.mark.parametrize("stream", STREAMS)
def test_retries_do_not_move_the_rotation(store_factory, kind, stream):
    apps = [_app(c) for c in stream]
    r1 = _router(store_factory(kind))
    one_by_one = [r1.decide(a).partner_id for a in apps]
    batch = [d.partner_id for d in _router(store_factory(kind)).decide_batch(apps)]
    r3 = _router(store_factory(kind))
    cuts = [d.partner_id for k in range(0, len(apps), 3) for d in r3.decide_batch(apps[k : k + 3])]
    assert one_by_one == batch == cuts
    # and the rotation itself is where a stream without the retries leaves it
    distinct = list(dict.fromkeys(apps))
    r4 = _router(store_factory(kind))
    first = {a.application_id: r4.decide(a).partner_id for a in distinct}
    assert one_by_one == [first[a.application_id] for a in apps]
    assert r1._allocator.rotation.current == r4._allocator.rotation.current


@pytest.mark.parametrize("kind", ["array", "redis", "cluster"])
def test_ledger_is_in_append_order_across_partners(store_factory, kind):
    """The finding (5): appends to two partners within one millisecond came back out of
    order from Redis. Weighted routing alternates partners decision by decision, one by
    one and in batches: the ledger lists them in the order they were handed back."""
    apps = [
        make_application(
            application_id=f"ord-{i}",
            national_id=f"1101011992{i:08d}",
            region="440300",
            received_at=T0 + timedelta(milliseconds=i),
        )
        for i in range(120)
    ]
    expected = _router(store_factory("memory"))
    want = [d.application_id for d in expected.decide_batch(apps[:60])]
    want += [expected.decide(a).application_id for a in apps[60:]]
    router = _router(store_factory(kind))
    router.decide_batch(apps[:60])
    for a in apps[60:]:
        router.decide(a)
    got = [(e.application_id, e.partner_id) for e in router.store.ledger()]
    assert [a for a, _ in got] == want
    assert len({p for _, p in got}) == 2
    assert got == [(e.application_id, e.partner_id) for e in expected.store.ledger()]


@pytest.mark.parametrize("kind", ["memory", "array", "redis"])
def test_a_retry_with_one_eligible_partner_does_not_move_the_rotation(store_factory, kind):
    """Weighted routing ranks (raises the score of) even a sole eligible partner; a retry
    of such an application, answered from its stored decision, must put that back. (Found
    when the one-call walk and the step-by-step walk disagreed: the latter kept the
    rotation only when more than one partner was eligible.)"""
    app = make_application(
        application_id="rot-solo",
        national_id="110101199000000042",
        region="440300",
        consent=["plat_b"],  # one eligible partner
        received_at=T0,
    )
    router = _router(store_factory(kind))
    first = router.decide(app)
    after_first = list(router._allocator.rotation.current)
    again = router.decide(app)
    assert again == first
    assert router._allocator.rotation.current == after_first
