"""Pricing, coverage and expected value: pure functions, scalar and vectorised.

Every function takes floats or numpy arrays (numpy ufuncs serve both) and returns the
same shape. Rates are annual fractions. Amounts are minor units; the results are floats
and are rounded once, where a decision or ledger entry stores them (:func:`to_minor`).

Loan model (stated so hand computation is possible): an equal-principal instalment loan
of amount ``A`` over ``T`` months has an average balance of ``A·(T+1)/(2T)`` for ``T/12``
years, i.e. ``A·(T+1)/24`` balance-years (:func:`balance_years`). Interest is earned on
that balance if the loan performs (probability ``1 − PD``). A default loses
``LGD × EAD`` with ``EAD = ead_factor · A``. Funding and operating costs accrue on the
balance.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import numpy as np

from router.core.config import BranchPolicy, Economics

F = TypeVar("F", float, np.ndarray)


class Terms(Protocol):
    """A partner's commercial terms as the value functions read them (floats, or arrays
    over partners)."""

    @property
    def fee_per_referral(self) -> Any: ...
    @property
    def fee_per_accepted(self) -> Any: ...
    @property
    def fee_per_funded(self) -> Any: ...
    @property
    def rev_share(self) -> Any: ...


class Partner(Protocol):
    """What the value functions read from a partner: a configured
    :class:`router.core.config.Partner`, or :class:`router.decide.partners.PartnerArrays` (every
    attribute an array over partners, so the functions broadcast)."""

    @property
    def apr_max(self) -> Any: ...
    @property
    def acceptance(self) -> Any: ...
    @property
    def acceptance_pd_slope(self) -> Any: ...
    @property
    def funded_rate(self) -> Any: ...
    @property
    def terms(self) -> Terms: ...


# Scalars take Python's min/max (numpy's ufuncs cost about a microsecond a call on a
# scalar); the values are the same, which tests/decide/test_assess_one.py checks bit for bit.
def _min(a, b):
    if type(a) is float and type(b) is float:
        return b if b < a else a
    return np.minimum(a, b)


def _max(a, b):
    if type(a) is float and type(b) is float:
        return b if b > a else a
    return np.maximum(a, b)


def _clip01(x):
    if type(x) is float:
        return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
    return np.clip(x, 0.0, 1.0)


def balance_years(amount: F, term_months: F) -> F:
    """Money-years of balance outstanding over the loan's life (A·(T+1)/24)."""
    return amount * (term_months + 1) / 24.0


def required_apr(pd: F, term_months: F, econ: Economics) -> F:
    """The APR at which the loan pays funding + expected loss + operating cost + margin."""
    b = (term_months + 1) / 24.0  # balance-years per unit of amount
    hurdle = (econ.funding_cost + econ.operating_cost + econ.target_margin) * b
    loss = pd * econ.lgd * econ.ead_factor
    return (hurdle + loss) / (b * (1.0 - _min(pd, 0.999999)))


def achievable_apr(max_apr: F, econ: Economics) -> F:
    """The highest APR allowed: min(legal cap, the funder's own cap, what the applicant takes)."""
    return _min(_min(econ.legal_apr_cap, econ.own_apr_cap), max_apr)


def offered_apr(required: F, achievable: F, econ: Economics) -> F:
    """Risk-based price: the required APR, floored at ``min_apr``, never above achievable."""
    return _min(achievable, _max(required, econ.min_apr))


def keep_profit(amount: F, term_months: F, pd: F, apr: F, econ: Economics) -> F:
    """Expected profit (minor units, before the target margin) of booking the loan at ``apr``."""
    by = balance_years(amount, term_months)
    interest = apr * by * (1.0 - pd)
    cost = (econ.funding_cost + econ.operating_cost) * by
    loss = pd * econ.lgd * econ.ead_factor * amount
    return interest - cost - loss


def branch_apr(max_apr: F, branch: BranchPolicy, econ: Economics) -> F:
    """The co-operation product's price: its cap, the legal cap and the applicant's maximum."""
    return _min(_min(branch.apr_cap, econ.legal_apr_cap), max_apr)


def branch_profit(
    amount: F, term_months: F, pd: F, apr: F, branch: BranchPolicy, econ: Economics
) -> F:
    """The funder's expected profit (minor units) under the branch's risk share.

    The partner's reserve (``reserve_rate · A``) absorbs first losses; the funder bears
    ``funder_loss_share`` of the rest, earns a fixed return or a share of the interest,
    and pays its funding and operating costs on the balance.
    """
    by = balance_years(amount, term_months)
    loss = pd * econ.lgd * econ.ead_factor * amount
    funder_loss = branch.funder_loss_share * _max(loss - branch.reserve_rate * amount, 0.0)
    if branch.return_model == "fixed":
        income = branch.fixed_return * by
    else:
        income = branch.profit_share * apr * by * (1.0 - pd)
    funding = econ.funding_cost if branch.funding_cost is None else branch.funding_cost
    return income - (funding + branch.operating_cost) * by - funder_loss


def branch_margin(amount: F, term_months: F, profit: F, branch: BranchPolicy) -> F:
    """Branch coverage margin as an annual rate: profit per balance-year minus target margin."""
    return profit / balance_years(amount, term_months) - branch.target_margin


def partner_apr(max_apr: F, partner: Partner) -> F:
    """The APR the partner is expected to charge: its maximum, or less if the applicant caps it."""
    return _min(partner.apr_max, max_apr)


def acceptance(pd: F, partner: Partner) -> F:
    """P(partner approves) = acceptance − slope·PD, clipped to [0, 1]."""
    return _clip01(partner.acceptance - partner.acceptance_pd_slope * pd)


def referral_value_parts(
    amount: F, term_months: F, pd: F, max_apr: F, partner: Partner
) -> tuple[F, F]:
    """Expected referral income (minor units) from ``partner``, split into (fees, rev-share).

    fees = fee per referral + P(accept) · (fee per accepted + P(funded) · fee per funded);
    rev-share = P(accept) · P(funded) · rev_share · expected interest at the partner's price.
    """
    t = partner.terms
    interest = partner_apr(max_apr, partner) * balance_years(amount, term_months) * (1.0 - pd)
    acc = acceptance(pd, partner)
    fees = t.fee_per_referral + acc * (t.fee_per_accepted + partner.funded_rate * t.fee_per_funded)
    share = acc * partner.funded_rate * t.rev_share * interest
    return fees, share


def referral_value(amount: F, term_months: F, pd: F, max_apr: F, partner: Partner) -> F:
    """Expected referral income (minor units): fees plus revenue share (see the parts)."""
    fees, share = referral_value_parts(amount, term_months, pd, max_apr, partner)
    return fees + share


def to_minor(x: float | np.ndarray) -> int | np.ndarray:
    """Round money to integer minor units (half to even), once."""
    if isinstance(x, float):
        return int(round(x))  # Python's round is half-to-even too, and much faster on scalars
    r = np.rint(x)
    return int(r) if np.ndim(r) == 0 else r.astype(np.int64)
