"""The engine's decision table on hand-built applications: one test per rule and path.

Test strategy (router.testing.strategy_dict): keep up to PD 5% in regions 31/11, branch up
to PD 12%, partners bank_a (PD ≤ 8%, APR 4–12%, priority 1), plat_b (PD ≤ 25%, APR
15–24%, priority 2) and gray_c (not whitelisted, priority 0). PD is chosen through the
bureau score: 700 → 2%, 650 → 8%, 600 → 20%, 550 → 40%.
"""

from datetime import timedelta

import pytest

from router.core.errors import IdempotencyConflict, InputError
from router.core.messages import Branch, Decline, Keep, Refer
from router.testing import make_application

PDS = {700: 0.02, 650: 0.08, 600: 0.20, 550: 0.40}
PRIME, NEAR, SUB, BAD = 700, 650, 600, 550


@pytest.fixture
def router(make_router):
    return make_router(PDS)


def app(i=1, **kw):
    kw.setdefault("national_id", f"11010119900101{i:04d}")
    return make_application(application_id=f"app-{i}", **kw)


def test_keep(router):
    d = router.decide(app(bureau_score=PRIME))
    assert isinstance(d, Keep)
    assert d.pd == 0.02 and d.coverage_margin > 0 and d.expected_profit > 0
    assert 0.0 < d.apr <= 0.18 and d.strategy_version == "test-1"


def test_branch_when_pd_above_keep_cutoff(router):
    d = router.decide(app(bureau_score=NEAR))
    assert isinstance(d, Branch)
    assert "KEEP_PD_ABOVE_CUTOFF" in d.reasons
    assert d.expected_profit == 56_925  # fixed 9% on 1,625,000 balance-years, see test_economics


def test_refer_when_funder_options_fail(router):
    d = router.decide(app(bureau_score=SUB))
    assert isinstance(d, Refer) and d.partner_id == "plat_b"
    assert {"KEEP_PD_ABOVE_CUTOFF", "BRANCH_PD_ABOVE_CUTOFF"} <= set(d.reasons)
    assert d.expected_value > 0 and d.apr == 0.18


def test_decline_when_nothing_fits(router):
    d = router.decide(app(bureau_score=BAD))
    assert isinstance(d, Decline) and "NO_ELIGIBLE_PARTNER" in d.reasons


def test_fraud_declines_everything(router):
    d = router.decide(app(bureau_score=PRIME, fraud_flag=True))
    assert isinstance(d, Decline) and d.reasons == ("FRAUD_FLAG",)


def test_age_out_of_range_declines(router):
    d = router.decide(app(bureau_score=PRIME, age=17))
    assert isinstance(d, Decline) and "AGE_OUT_OF_RANGE" in d.reasons


def test_no_consent_removes_referral_only(router):
    assert isinstance(router.decide(app(1, bureau_score=PRIME, consent="none")), Keep)
    d = router.decide(app(2, bureau_score=SUB, consent="none"))
    assert isinstance(d, Decline) and "NO_CONSENT" in d.reasons


def test_unlicensed_region_removes_keep_and_branch(router):
    d = router.decide(app(bureau_score=PRIME, region="440300"))
    assert isinstance(d, Refer) and d.partner_id == "bank_a"
    assert "REGION_UNLICENSED" in d.reasons


@pytest.mark.parametrize(
    "field,value,code",
    [
        ("worst_dpd_12m", 90, "SEVERE_DELINQUENCY"),
        ("inquiries_3m", 9, "MULTI_LENDING"),
        ("open_loans", 6, "MULTI_LENDING"),
        ("dti", 0.7, "HIGH_DEBT_BURDEN"),
    ],
)
def test_funder_rules_remove_keep_and_branch(router, field, value, code):
    d = router.decide(app(bureau_score=PRIME, **{field: value}))
    assert isinstance(d, Refer) and code in d.reasons


def test_partner_employee_excluded_from_that_partner(router):
    d = router.decide(app(bureau_score=PRIME, region="440300", employer="Bank A Group"))
    assert isinstance(d, Refer) and d.partner_id == "plat_b"
    assert "PARTNER_EMPLOYEE" in d.reasons


def test_not_whitelisted_never_referred(router):
    d = router.decide(app(bureau_score=SUB, consent=["gray_c"]))
    assert isinstance(d, Decline) and "NO_ELIGIBLE_PARTNER" in d.reasons


def test_consent_list_limits_partners(router):
    d = router.decide(app(bureau_score=PRIME, region="440300", consent=["plat_b"]))
    assert isinstance(d, Refer) and d.partner_id == "plat_b"


def test_unknown_partner_in_consent_is_an_input_error(router):
    with pytest.raises(InputError, match="consent.*'nobody'"):
        router.decide(app(consent=["nobody"]))


def test_not_covered_prime_is_referred_to_cheap_bank(make_router):
    router = make_router(PDS, branch=None)
    d = router.decide(app(bureau_score=PRIME, max_apr=0.05))
    assert isinstance(d, Refer) and d.partner_id == "bank_a"
    assert "KEEP_NOT_COVERED" in d.reasons and d.coverage_margin < 0


def test_keep_budget_exhausted_falls_to_branch(make_router):
    router = make_router(
        PDS, primary={"scorer": "main", "max_pd": 0.05, "caps": [{"window": "day", "count": 1}]}
    )
    assert isinstance(router.decide(app(1, bureau_score=PRIME)), Keep)
    d = router.decide(app(2, bureau_score=PRIME))
    assert isinstance(d, Branch) and "KEEP_BUDGET_EXHAUSTED" in d.reasons


def test_partner_quota_exhausted_moves_to_next(make_router):
    from router.testing import strategy_dict

    d = strategy_dict()
    d["partners"][0]["caps"] = [{"window": "day", "count": 1}]
    router = make_router(PDS, partners=d["partners"])
    first = router.decide(app(1, bureau_score=PRIME, region="440300"))
    second = router.decide(app(2, bureau_score=PRIME, region="440300"))
    assert first.partner_id == "bank_a" and second.partner_id == "plat_b"
    assert "PARTNER_QUOTA_EXHAUSTED" in second.reasons


def test_dedupe_same_applicant_not_referred_twice(router):
    a1 = app(1, bureau_score=SUB, national_id="110101199001019999")
    a2 = app(
        2,
        bureau_score=SUB,
        national_id="110101199001019999",
        received_at=a1.received_at + timedelta(days=1),
    )
    assert router.decide(a1).partner_id == "plat_b"
    d2 = router.decide(a2)
    assert isinstance(d2, Decline) and "PARTNER_DEDUPE" in d2.reasons


def test_best_value_picks_highest_expected_value(make_router):
    router = make_router(PDS, routing={"method": "best_value"})
    d = router.decide(app(bureau_score=PRIME, region="440300"))
    # EV bank_a 28,932 vs plat_b 43,497.5 (fees + rev-share at each partner's APR)
    assert d.partner_id == "plat_b" and d.expected_value == 43_498


def test_waterfall_takes_priority_order(router):
    assert router.decide(app(bureau_score=PRIME, region="440300")).partner_id == "bank_a"


def test_weighted_rotation_follows_weights(make_router):
    router = make_router(PDS, routing={"method": "weighted"})
    picks = [
        router.decide(app(i, bureau_score=PRIME, region="440300")).partner_id for i in range(8)
    ]
    assert picks.count("plat_b") == 6 and picks.count("bank_a") == 2
    assert picks[:4] == ["plat_b", "bank_a", "plat_b", "plat_b"]  # smooth, not bursty


def test_low_referral_value_declines(make_router):
    router = make_router(PDS, routing={"method": "waterfall", "min_expected_value": 10**9})
    d = router.decide(app(bureau_score=SUB))
    assert isinstance(d, Decline) and "LOW_REFERRAL_VALUE" in d.reasons


def test_same_id_same_decision_counted_once(router):
    a = app(bureau_score=SUB)
    first, again = router.decide(a), router.decide(a)
    assert first == again
    assert len(list(router.store.ledger())) == 1


def test_same_id_different_content_is_an_error(router):
    router.decide(app(bureau_score=SUB))
    with pytest.raises(IdempotencyConflict):
        router.decide(app(bureau_score=SUB, requested_amount=4_000_000))


def test_batch_equals_one_by_one(make_router):
    apps = [
        app(i, bureau_score=s, region=r)
        for i, (s, r) in enumerate(
            [
                (PRIME, "310000"),
                (NEAR, "310000"),
                (SUB, "440300"),
                (BAD, "110000"),
                (PRIME, "440300"),
                (SUB, "310000"),
            ]
            * 3
        )
    ]
    one = make_router(PDS)
    many = make_router(PDS)
    assert [one.decide(a) for a in apps] == many.decide_batch(apps)


def test_ledger_entry_has_no_raw_identifier(router):
    a = app(bureau_score=SUB, national_id="110101199001017777", employer="Secret Employer")
    router.decide(a)
    (entry,) = router.store.ledger()
    from router.core.messages import encode

    raw = encode(entry)
    assert b"110101199001017777" not in raw and b"Secret" not in raw
    assert len(entry.applicant_hash) == 32


def test_clock_overrides_event_time_for_windows(make_router):
    from router.testing import strategy_dict

    d = strategy_dict()
    d["partners"][1]["caps"] = [{"window": "hour", "count": 1}]
    times = iter([0, 3_600_000 * 2])
    router = make_router(PDS, partners=d["partners"])
    router.clock = lambda: next(times)
    a1 = app(1, bureau_score=SUB)
    a2 = app(2, bureau_score=SUB)  # same received_at, but the clock says two hours later
    assert router.decide(a1).partner_id == "plat_b"
    assert router.decide(a2).partner_id == "plat_b"
