"""Economics against numbers computed by hand (see the formulas in router/core/economics.py).

Loan: A = 1,000,000 fen (10,000 yuan), T = 12 months -> balance-years = A·13/24 = 541,666.67.
"""

import numpy as np
import pytest

from router.core import economics as eco
from router.core.config import strategy_from_dict
from router.testing import strategy_dict

S = strategy_from_dict(strategy_dict())  # funding 4%, LGD 0.6, opex 2%, margin 2%, caps 24%/20%
E = S.economics
A, T = 1_000_000.0, 12.0


def test_balance_years():
    assert eco.balance_years(A, T) == pytest.approx(541_666.6667, abs=1e-3)
    assert eco.balance_years(1200.0, 1.0) == pytest.approx(100.0)  # one month, full balance


def test_required_apr_by_hand():
    # ((0.04 + 0.02 + 0.02)·13/24 + 0.05·0.6) / (13/24 · 0.95) = 0.0733333 / 0.5145833
    assert eco.required_apr(0.05, T, E) == pytest.approx(0.0733333333 / 0.5145833333, rel=1e-9)
    assert eco.required_apr(0.05, T, E) == pytest.approx(0.14251012, abs=1e-8)


def test_achievable_and_offered():
    assert eco.achievable_apr(0.18, E) == 0.18  # applicant's maximum binds
    assert eco.achievable_apr(0.30, E) == 0.20  # funder's own cap binds
    assert eco.offered_apr(0.1425, 0.18, E) == 0.1425
    assert eco.offered_apr(0.25, 0.18, E) == 0.18


def test_prime_applicant_not_covered_at_5_percent():
    # PD 1%: required ≈ (0.0433333 + 0.006)/(0.5416667·0.99) = 0.0920 > 5% the applicant accepts
    req = eco.required_apr(0.01, T, E)
    assert req == pytest.approx(0.0493333333 / 0.53625, rel=1e-9)
    assert eco.achievable_apr(0.05, E) - req < 0


def test_keep_profit_by_hand():
    # interest 0.18·541,666.67·0.95 = 92,625; cost 0.06·541,666.67 = 32,500; loss 30,000
    assert eco.keep_profit(A, T, 0.05, 0.18, E) == pytest.approx(30_125.0, abs=1e-6)


def test_branch_fixed_return_by_hand():
    b = S.branch  # fixed 9%, reserve 3%, funder loss share 30%, opex 0.5%, margin 0.5%
    # income 0.09·by = 48,750; funding+opex 0.045·by = 24,375;
    # loss 0.1·0.6·A = 60,000, over the 30,000 reserve: 30,000 · 0.3 = 9,000
    p = eco.branch_profit(A, T, 0.10, 0.2, b, E)
    assert p == pytest.approx(15_375.0, abs=1e-6)
    assert eco.branch_margin(A, T, p, b) == pytest.approx(15_375 / 541_666.6667 - 0.005, rel=1e-9)


def test_branch_profit_share_by_hand():
    d = strategy_dict()
    d["branch"].update(return_model="share", profit_share=0.4, fixed_return=0.0)
    s = strategy_from_dict(d)
    # income 0.4 · 0.2 · by · 0.9 = 39,000; minus 24,375 and 9,000
    assert eco.branch_profit(A, T, 0.10, 0.2, s.branch, E) == pytest.approx(5_625.0, abs=1e-6)


def test_reserve_absorbs_small_losses():
    # PD 2%: loss 12,000 < reserve 30,000 -> the funder loses nothing
    p = eco.branch_profit(A, T, 0.02, 0.2, S.branch, E)
    assert p == pytest.approx(48_750 - 24_375, abs=1e-6)


def test_referral_value_by_hand():
    bank = S.partners[0]  # APR ≤ 12%, acceptance 60%, funded 100%, 100 yuan per funded, 20%
    # partner APR 0.12; interest 0.12·by·0.95 = 61,750
    # fees 0.6·1.0·10,000 = 6,000; rev-share 0.6·1.0·0.2·61,750 = 7,410
    fees, share = eco.referral_value_parts(A, T, 0.05, 0.18, bank)
    assert fees == pytest.approx(6_000.0) and share == pytest.approx(7_410.0)
    assert eco.referral_value(A, T, 0.05, 0.18, bank) == pytest.approx(13_410.0)


def test_acceptance_slope_clips():
    d = strategy_dict()
    d["partners"][0].update(acceptance=0.6, acceptance_pd_slope=5.0)
    bank = strategy_from_dict(d).partners[0]
    assert eco.acceptance(0.1, bank) == pytest.approx(0.1)
    assert eco.acceptance(0.5, bank) == 0.0


def test_vectorised_equals_scalar():
    rng = np.random.default_rng(1)
    amount = rng.integers(100_000, 20_000_000, 500).astype(float)
    term = rng.choice([3, 6, 12, 24, 36], 500).astype(float)
    pd = rng.uniform(0, 0.4, 500)
    mx = rng.uniform(0.04, 0.3, 500)
    bank, b = S.partners[0], S.branch
    vec = {
        "req": eco.required_apr(pd, term, E),
        "keep": eco.keep_profit(amount, term, pd, mx, E),
        "branch": eco.branch_profit(amount, term, pd, mx, b, E),
        "ref": eco.referral_value(amount, term, pd, mx, bank),
    }
    for i in range(500):
        assert vec["req"][i] == pytest.approx(eco.required_apr(pd[i], term[i], E), rel=1e-12)
        assert vec["keep"][i] == pytest.approx(
            eco.keep_profit(amount[i], term[i], pd[i], mx[i], E), rel=1e-12, abs=1e-9
        )
        assert vec["branch"][i] == pytest.approx(
            eco.branch_profit(amount[i], term[i], pd[i], mx[i], b, E), rel=1e-12, abs=1e-9
        )
        assert vec["ref"][i] == pytest.approx(
            eco.referral_value(amount[i], term[i], pd[i], mx[i], bank), rel=1e-12
        )


def test_to_minor_rounds_once_half_even():
    assert eco.to_minor(2.5) == 2 and eco.to_minor(3.5) == 4
    assert eco.to_minor(np.array([1.4, 1.6])).tolist() == [1, 2]


def test_referral_value_every_term_counts_by_hand():
    """Every term of the referral-value formula, each with its own distinct value, so that
    dropping or scaling any one changes the result (fees per referral, per accepted and per
    funded; the revenue share; acceptance slope; funded rate; the partner's APR)."""
    d = strategy_dict()
    p = d["partners"][0]
    p.update(apr_max=0.15, acceptance=0.7, acceptance_pd_slope=2.0, funded_rate=0.8)
    p["terms"] = {
        "fee_per_referral": 300,
        "fee_per_accepted": 1_100,
        "fee_per_funded": 7_000,
        "rev_share": 0.25,
    }
    partner = strategy_from_dict(d).partners[0]
    # PD 5%: P(accept) = 0.7 − 2·0.05 = 0.6; partner APR min(0.15, 0.18) = 0.15
    # fees = 300 + 0.6·(1,100 + 0.8·7,000) = 300 + 0.6·6,700 = 4,320
    # interest = 0.15 · 541,666.67 · 0.95 = 77,187.5; share = 0.6·0.8·0.25·77,187.5 = 9,262.5
    fees, share = eco.referral_value_parts(A, T, 0.05, 0.18, partner)
    assert fees == pytest.approx(4_320.0, abs=1e-9)
    assert share == pytest.approx(9_262.5, abs=1e-6)
    assert eco.referral_value(A, T, 0.05, 0.18, partner) == pytest.approx(13_582.5, abs=1e-6)
    # The applicant's maximum APR binds below the partner's: 0.10 · by · 0.95 = 51,458.33
    _, capped = eco.referral_value_parts(A, T, 0.05, 0.10, partner)
    assert capped == pytest.approx(0.6 * 0.8 * 0.25 * 51_458.3333, rel=1e-9)


def _with(**economics):
    d = strategy_dict()
    d["economics"].update(economics)
    return strategy_from_dict(d)


def test_exposure_at_default_below_the_amount_by_hand():
    """ead_factor 0.8: the loss on default is 0.8 of the amount (everywhere it appears)."""
    s = _with(ead_factor=0.8)
    e = s.economics
    # required: (0.08·13/24 + 0.05·0.6·0.8) / (13/24·0.95) = 0.0673333 / 0.5145833
    assert eco.required_apr(0.05, T, e) == pytest.approx(0.0673333333 / 0.5145833333, rel=1e-9)
    # keep: interest 92,625 − cost 32,500 − loss 0.05·0.6·0.8·A = 24,000
    assert eco.keep_profit(A, T, 0.05, 0.18, e) == pytest.approx(36_125.0, abs=1e-6)
    # branch: loss 0.1·0.6·0.8·A = 48,000, over the 30,000 reserve: 18,000 · 0.3 = 5,400
    assert eco.branch_profit(A, T, 0.10, 0.2, s.branch, e) == pytest.approx(18_975.0, abs=1e-6)


def test_a_branch_with_its_own_funding_cost_by_hand():
    d = strategy_dict()
    d["branch"]["funding_cost"] = 0.06
    s = strategy_from_dict(d)
    # funding + opex (0.06 + 0.005)·by = 35,208.33; loss over the reserve 9,000 · 0.3
    expected = 48_750 - 0.065 * 541_666.6667 - 9_000
    assert eco.branch_profit(A, T, 0.10, 0.2, s.branch, E) == pytest.approx(expected, abs=1e-3)


def test_required_apr_at_certain_default_is_finite():
    # PD is capped just below 1: (0.0433333 + 0.6) / (13/24 · 1e-6)
    r = eco.required_apr(1.0, T, E)
    assert r == pytest.approx(0.6433333333 / (0.5416666667 * 1e-6), rel=1e-6)


def test_to_minor_gives_python_ints_for_scalars_and_int64_for_arrays():
    assert eco.to_minor(2.5) == 2 and type(eco.to_minor(2.5)) is int  # half to even
    assert eco.to_minor(np.float64(3.5)) == 4 and type(eco.to_minor(np.float64(3.5))) is int
    zero_d = eco.to_minor(np.array(5.5))  # a 0-d array (a numpy reduction's result)
    assert zero_d == 6 and type(zero_d) is int
    arr = eco.to_minor(np.array([0.5, 1.5, -2.5]))
    assert arr.dtype == np.int64 and arr.tolist() == [0, 2, -2]
