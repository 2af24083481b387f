"""Differential: the same stream decided on memory, array, a real redis-server and a real
3-master cluster gives the same decisions, the same *ordered* ledger and the same rotation
(issue 9: ledger order, retries, every routing method).

Event times move back and forth inside a 24-hour span — out of order, so many events are
late (more than ``LATE_MS`` behind the newest one) and others land in windows long past —
applications are resent (retries), and the stream is cut into random batches (a batch of
one takes the scalar live path)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_helpers import tight_caps

from router.core.config import strategy_from_dict
from router.core.routing import routing_methods
from router.decide.engine import Router
from router.testing import ScoreLookupScorer, make_application, strategy_dict

T0 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai: days roll over

row = st.tuples(
    st.integers(-12 * 3600, 12 * 3600),  # seconds around T0, any order
    st.integers(100_00, 60_000_00),  # amount in fen
    st.sampled_from([600, 650, 700]),  # PD band via bureau score
    st.sampled_from(["310000", "440300"]),  # licensed (kept / branched) or referred
    st.integers(0, 12),  # applicant (repeats exercise dedupe)
    st.sampled_from(["any", ["bank_a"], ["plat_b"]]),
    st.integers(0, 3),  # 0: resend an earlier application instead
)
streams = st.tuples(
    st.lists(row, min_size=1, max_size=40), st.lists(st.integers(1, 7), min_size=1, max_size=40)
)


def _strategy(method: str):
    d = tight_caps(strategy_dict(routing={"method": method}))
    d["primary"]["caps"] = [{"window": "hour", "count": 2}]
    d["branch"]["caps"] = [{"window": "day", "count": 3, "amount": 9_000_000}]
    return strategy_from_dict(d)


def _apps(rows):
    apps = []
    for k, (sec, amount, score, region, who, consent, fresh) in enumerate(rows):
        if fresh == 0 and apps:
            apps.append(apps[(sec + k) % len(apps)])  # a retry: the very same application
            continue
        apps.append(
            make_application(
                application_id=f"d-{k}",
                national_id=f"1101011990{who:08d}",
                received_at=T0 + timedelta(seconds=sec),
                requested_amount=amount,
                bureau_score=score,
                region=region,
                consent=consent,
            )
        )
    return apps


def _run(store, method, apps, cuts):
    router = Router(
        _strategy(method),
        store,
        scorers={"main": ScoreLookupScorer({700: 0.02, 650: 0.08, 600: 0.2})},
    )
    out, i, c = [], 0, 0
    while i < len(apps):
        size = cuts[c % len(cuts)]
        chunk = apps[i : i + size]
        out += [router.decide(chunk[0])] if len(chunk) == 1 else router.decide_batch(chunk)
        i, c = i + size, c + 1
    return (
        out,
        list(store.ledger(branch=True)),  # referrals and branch loans, in one order
        list(router._allocator.rotation.current),
        router.cap_refusals(),
    )


@pytest.mark.parametrize("method", routing_methods())
@pytest.mark.parametrize("kind,examples", [("array", 60), ("redis", 60), ("cluster", 15)])
def test_every_store_decides_alike(store_factory, method, kind, examples):
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(streams)
    def check(stream):
        rows, cuts = stream
        apps = _apps(rows)
        expected = _run(store_factory("memory"), method, apps, cuts)
        got = _run(store_factory(kind), method, apps, cuts)
        assert got[0] == expected[0]  # decisions
        assert got[1] == expected[1]  # the ledger, in order
        assert got[2] == expected[2]  # the rotation
        assert got[3] == expected[3]  # refusal counts

    check()
