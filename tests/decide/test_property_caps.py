"""Property: no sequence of applications ever makes a partner or budget exceed any cap."""

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_helpers import tight_budgets, tight_caps

from router.core.config import strategy_from_dict
from router.core.messages import Branch, Keep, Refer
from router.core.windows import key_of
from router.decide.engine import Router
from router.testing import ScoreLookupScorer, make_application, strategy_dict

T0 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai: days roll over

app_strategy = st.tuples(
    st.integers(0, 4 * 3600),  # seconds after T0
    st.integers(100_00, 60_000_00),  # amount in fen
    st.sampled_from([600, 650, 700]),  # PD band via bureau score
    st.sampled_from(["310000", "440300"]),  # licensed / not
    st.integers(0, 12),  # applicant (repeats exercise dedupe)
    st.sampled_from(["any", ["bank_a"], ["plat_b"]]),
)


def _strategy():
    return strategy_from_dict(
        tight_budgets(tight_caps(strategy_dict(routing={"method": "best_value"})))
    )


def _check_budget(apps, decisions, kind, policy, timezone) -> None:
    """No window of a budget cap holds more decisions of ``kind`` than the cap allows."""
    for cap in policy.caps:
        used: dict[int, list[int]] = {}
        for a, d in zip(apps, decisions):
            if isinstance(d, kind):
                k = key_of(int(a.received_at.timestamp() * 1000), cap.window, timezone)
                c = used.setdefault(k, [0, 0])
                c[0] += 1
                c[1] += a.requested_amount
        for count, amount in used.values():
            assert cap.count is None or count <= cap.count
            assert cap.amount is None or amount <= cap.amount


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(app_strategy, min_size=1, max_size=60))
def test_caps_never_exceeded(rows):
    s = _strategy()
    router = Router(s, scorers={"main": ScoreLookupScorer({700: 0.02, 650: 0.08, 600: 0.2})})
    rows = sorted(rows, key=lambda r: r[0])
    apps = [
        make_application(
            application_id=f"p{i}",
            received_at=T0 + timedelta(seconds=sec),
            requested_amount=amt,
            bureau_score=score,
            region=region,
            national_id=f"1101011990010{who:05d}",
            consent=consent,
        )
        for i, (sec, amt, score, region, who, consent) in enumerate(rows)
    ]
    decisions = router.decide_batch(apps)
    _check_budget(apps, decisions, Keep, s.primary, s.timezone)
    _check_budget(apps, decisions, Branch, s.branch, s.timezone)
    ledger = list(router.store.ledger())
    assert len(ledger) == sum(isinstance(d, Refer) for d in decisions)
    assert len({e.application_id for e in ledger}) == len(ledger)
    for p in s.partners:
        entries = [e for e in ledger if e.partner_id == p.id]
        for cap in p.caps:
            used: dict[int, list[int]] = {}
            for e in entries:
                k = key_of(e.event_time_ms, cap.window, p.timezone)
                c = used.setdefault(k, [0, 0])
                c[0] += 1
                c[1] += e.amount
            for count, amount in used.values():
                assert cap.count is None or count <= cap.count
                assert cap.amount is None or amount <= cap.amount
        if p.dedupe_days:
            seen: dict[str, int] = {}
            for e in entries:
                last = seen.get(e.applicant_hash)
                assert last is None or e.event_time_ms - last >= p.dedupe_days * 86_400_000
                seen[e.applicant_hash] = e.event_time_ms


def test_the_budget_caps_of_the_property_bind():
    """The property's budgets really refuse: prime applicants in one hour, more than the
    keep budget's two, spill to the branch (one an hour) and then to partners."""
    s = _strategy()
    router = Router(s, scorers={"main": ScoreLookupScorer({700: 0.02, 650: 0.08, 600: 0.2})})
    apps = [
        make_application(
            application_id=f"b{i}",
            received_at=T0 + timedelta(seconds=i),
            requested_amount=100_000,
            bureau_score=700,
            national_id=f"1101011990020{i:05d}",
        )
        for i in range(5)
    ]
    decisions = router.decide_batch(apps)
    assert [type(d).__name__ for d in decisions[:3]] == ["Keep", "Keep", "Branch"]
    assert "KEEP_BUDGET_EXHAUSTED" in decisions[2].reasons
    assert "BRANCH_BUDGET_EXHAUSTED" in decisions[3].reasons
    assert not any(isinstance(d, (Keep, Branch)) for d in decisions[3:])
