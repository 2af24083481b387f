"""Every decision path × every store × every routing method against the reference decider
(:mod:`router.reference`: plain Python, no shared decision logic), on Hypothesis-made
streams whose caps, budgets and dedupe windows bite, with repeated applications.

Paths: ``Router.decide`` one by one (the scalar live path) and ``Router.decide_batch``
(numpy assessment, the Python walk; on ``array://`` the compiled walk), on every registered
store. (Pipelined batches are arrival-order exact only when nothing competes — see
tests/decide/test_pipelined.py — so they are not compared here.) Event times stay within a few
hours, in time order or not: late events are the subject of tests/store/test_late_events.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests_helpers import tight_budgets, tight_caps

from router.core.config import strategy_from_dict
from router.core.identity import Hasher
from router.core.messages import Branch
from router.core.routing import routing_methods
from router.decide.engine import Router
from router.reference import ReferenceDecider
from router.store import store_kinds
from router.testing import ScoreLookupScorer, make_application, strategy_dict

T0 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai: days roll over
PDS = {760: 0.01, 700: 0.03, 650: 0.07, 600: 0.15, 550: 0.3}

# Mostly clean applications (so budgets, caps and dedupe bite), with every rule broken
# now and then.
row = st.fixed_dictionaries(
    {
        "sec": st.integers(0, 3 * 3600),
        "amount": st.integers(1_000_00, 200_000_00),
        "term": st.sampled_from([3, 6, 12, 24]),
        "score": st.sampled_from([760, 760, 700, 700, 650, 650, 600, 550]),
        "age": st.sampled_from([25, 40, 40, 40, 59, 17, 61]),
        "region": st.sampled_from(["310101"] * 4 + ["110105", "440300"]),
        "dpd": st.sampled_from([0] * 6 + [30, 90]),
        "inquiries": st.sampled_from([0] * 4 + [2, 9]),
        "dti": st.sampled_from([0.2] * 4 + [0.5, 0.7]),
        "max_apr": st.sampled_from([0.05, 0.12, 0.18, 0.24, 0.36]),
        "who": st.integers(0, 5),  # repeats exercise dedupe
        "consent": st.sampled_from(["any"] * 4 + ["none", ["bank_a"], ["plat_b"]]),
        "channel": st.sampled_from(["app"] * 4 + ["web", "broker"]),
        "employer": st.sampled_from([None, None, None, "Bank A Group", "Other Co"]),
        "fraud": st.sampled_from([False] * 9 + [True]),
        "repeat": st.sampled_from([False] * 6 + [True]),
    }
)


def _strategy(method: str, tight: bool = True):
    d = strategy_dict(routing={"method": method})
    if tight:  # (loose caps let long runs of referrals build up routing state)
        d = tight_budgets(tight_caps(d))
    d["channels"] = {
        "broker": {"referral_allowed": False},
        "web": {"consent_partners": ["plat_b"]},
    }
    d["routing"]["min_expected_value"] = 2_000
    return strategy_from_dict(d)


def _apps(rows: list[dict], in_time_order: bool = True) -> list:
    if in_time_order:  # (otherwise events go back and forth across windows, as they may)
        rows = sorted(rows, key=lambda r: r["sec"])
    apps = []
    for i, r in enumerate(rows):
        if r["repeat"] and apps:
            apps.append(apps[-1])  # the same application again (a caller's retry)
            continue
        apps.append(
            make_application(
                application_id=f"r{i}",
                received_at=T0 + timedelta(seconds=r["sec"]),
                requested_amount=r["amount"],
                term_months=r["term"],
                bureau_score=r["score"],
                age=r["age"],
                region=r["region"],
                worst_dpd_12m=r["dpd"],
                inquiries_3m=r["inquiries"],
                dti=r["dti"],
                max_apr=r["max_apr"],
                national_id=f"1101011990030{r['who']:05d}",
                consent=r["consent"],
                channel=r["channel"],
                employer=r["employer"],
                fraud_flag=r["fraud"],
            )
        )
    return apps


def _compare(
    method: str,
    kind: str,
    path: str,
    rows: list[dict],
    store_factory,
    tight: bool = True,
    in_time_order: bool = True,
) -> None:
    s = _strategy(method, tight)
    scorer = ScoreLookupScorer(PDS, default=0.5)
    apps = _apps(rows, in_time_order)
    reference = ReferenceDecider(s, {"main": scorer}, Hasher.from_config(s.identity))
    expected = [reference.decide(a) for a in apps]
    router = Router(s, store_factory(kind), scorers={"main": scorer})
    got = [router.decide(a) for a in apps] if path == "one" else router.decide_batch(apps)
    for a, want, have in zip(apps, expected, got):
        assert have == want, f"{a.application_id}: {have!r} != reference {want!r}"
    ledger = [(e.application_id, e.partner_id) for e in router.store.ledger()]
    assert sorted(ledger) == sorted(reference.referrals)
    # The branch's loans are on the ledger too, billed to the branch partner.
    branch = [
        (e.application_id, e.partner_id)
        for e in router.store.ledger(branch=True)
        if e.outcome == "branch"
    ]
    assert s.branch is not None
    want = [
        (a.application_id, s.branch.partner_id)
        for a, d in zip(apps, expected)
        if isinstance(d, Branch)
    ]
    assert sorted(branch) == sorted(set(want))  # (a retry answers again, is booked once)


KINDS = [k.name for k in store_kinds()]

# Every application sent twice in a row while the budgets and caps run out one by one: the
# retry of a decision granted after a refusal the store made (not one the router knew)
# must come back with that refusal's reason too — so what the store keeps with a grant is
# checked, not only what the first answer said.
_CLEAN = {
    "term": 12, "score": 700, "age": 40, "region": "310101", "dpd": 0, "inquiries": 0,
    "dti": 0.2, "max_apr": 0.24, "consent": "any", "channel": "app", "employer": None,
    "fraud": False,
}  # fmt: skip
RETRIED_AS_CAPS_BITE = [
    {**_CLEAN, "sec": 60 * (i // 2), "amount": 1_500_000, "who": i // 2 % 6, "repeat": i % 2 == 1}
    for i in range(40)
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", ["one", "batch"])
@pytest.mark.parametrize("method", routing_methods())
def test_every_path_and_store_decides_as_the_reference(method, path, kind, store_factory):
    examples = 60 if kind in ("memory", "array", "redis") else 8

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(row, min_size=5, max_size=60), st.booleans(), st.booleans())
    @example(RETRIED_AS_CAPS_BITE, True, True)
    def run(rows, tight, in_time_order):
        _compare(method, kind, path, rows, store_factory, tight, in_time_order)

    run()
