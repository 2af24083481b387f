"""One late-event rule on every store (issue 9, finding 4).

Each store keeps its horizon: the newest event time it has seen. A reservation more than
``LATE_MS`` (6 h) older than the horizon is refused ``LATE`` — the decision says
``LATE_EVENT`` — on memory, array, a real redis-server and a real cluster alike; within
that horizon every store still answers from the same counters, dedupe marks and grants
(event time, never a Redis TTL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from router.core.config import strategy_from_dict
from router.core.messages import Decline, Refer
from router.core.windows import key_of
from router.decide.engine import Router
from router.store import LATE, Bucket, CapLimit
from router.store.base import LATE_MS
from router.testing import ScoreLookupScorer, make_application, strategy_dict

KINDS = ["memory", "array", "redis", "cluster"]
TZ = "Asia/Shanghai"
D = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


@pytest.mark.parametrize("kind", KINDS)
def test_a_late_reservation_is_refused_alike(store_factory, kind):
    """The finding: a day cap of 1 granted twice on memory/array, refused on Redis."""
    store = store_factory(kind)
    b = Bucket("p1", (CapLimit("day", 1, None),), TZ)
    t0, t1 = _ms(D), _ms(D + timedelta(hours=9))
    late = _ms(D + timedelta(minutes=30))  # same local day as t0, 8.5 h behind the horizon
    assert store.try_reserve(b, (key_of(t0, "day", TZ),), 1, None, t0) == 0
    assert store.try_reserve(b, (key_of(t1, "day", TZ),), 1, None, t1) == 0
    assert store.try_reserve(b, (key_of(late, "day", TZ),), 1, None, late) == LATE
    # Just inside the horizon: decided from the counters (the day is full).
    inside = t1 - LATE_MS + 1
    assert store.try_reserve(b, (key_of(inside, "day", TZ),), 1, None, inside) >= 2


@pytest.mark.parametrize("kind", KINDS)
def test_late_applications_are_declined_with_their_reason(store_factory, kind):
    s = strategy_from_dict(strategy_dict())
    router = Router(s, store_factory(kind), scorers={"main": ScoreLookupScorer({700: 0.02})})

    def app(i, when, region="440300"):
        return make_application(
            application_id=f"late-{i}",
            national_id=f"1101011990{i:08d}",
            region=region,
            received_at=when,
        )

    assert isinstance(router.decide(app(1, D)), Refer)
    assert isinstance(router.decide(app(2, D + timedelta(hours=12))), Refer)
    late = router.decide(app(3, D + timedelta(hours=1)))
    assert isinstance(late, Decline) and "LATE_EVENT" in late.reasons and not late.degraded
    batch = router.decide_batch([app(4, D + timedelta(hours=2)), app(5, D + timedelta(hours=11))])
    assert "LATE_EVENT" in batch[0].reasons and isinstance(batch[1], Refer)
