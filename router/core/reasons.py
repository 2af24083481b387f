"""Reason codes: why an option was removed or not taken. Held as bits while deciding."""

from __future__ import annotations

from functools import lru_cache

#: Every reason code, in bit order, with one sentence a strategist reads in the report.
MEANING: dict[str, str] = {
    "FRAUD_FLAG": "flagged for fraud: declined outright",
    "AGE_OUT_OF_RANGE": "outside the legal or policy age range",
    "REGION_UNLICENSED": "region where the funder holds no licence: no keep or branch",
    "SEVERE_DELINQUENCY": "severe delinquency on record (funder rule)",
    "MULTI_LENDING": "too many recent inquiries or open loans (funder rule)",
    "HIGH_DEBT_BURDEN": "debt burden too high (funder rule)",
    "KEEP_FILTER": "fails the primary policy's eligibility filters",
    "KEEP_PD_ABOVE_CUTOFF": "PD above the primary policy's cutoff",
    "KEEP_NOT_COVERED": "the achievable APR cannot pay funding cost, loss and margin (keep)",
    "KEEP_LOW_PROFIT": "expected profit below the primary policy's minimum",
    "KEEP_BUDGET_EXHAUSTED": "the funder's keep budget had run out",
    "BRANCH_FILTER": "fails the branch policy's eligibility filters",
    "BRANCH_PD_ABOVE_CUTOFF": "PD above the branch policy's cutoff",
    "BRANCH_NOT_COVERED": "the achievable APR cannot pay funding cost, loss and margin (branch)",
    "BRANCH_LOW_PROFIT": "expected profit below the branch policy's minimum",
    "BRANCH_BUDGET_EXHAUSTED": "the funder's branch budget had run out",
    "NO_CONSENT": "no consent to share the application with a partner",
    "CHANNEL_NO_REFERRAL": "consent given, but the channel's consent covers no partner",
    "PARTNER_EMPLOYEE": "excluded from the partner that employs the applicant",
    "NO_ELIGIBLE_PARTNER": "no partner's criteria admit the application",
    "LOW_REFERRAL_VALUE": "the best referral is worth less than the strategy's minimum",
    "PARTNER_DEDUPE": "the eligible partners saw this applicant recently",
    "PARTNER_QUOTA_EXHAUSTED": "every eligible partner's quota had run out",
    "STORE_UNAVAILABLE": "degraded: the quota store failed or missed its deadline",
    "LATE_EVENT": "older than the store's newest event by more than the late limit",
}
CODES: tuple[str, ...] = tuple(MEANING)
BIT: dict[str, int] = {c: 1 << i for i, c in enumerate(CODES)}


@lru_cache(maxsize=4096)
def names(bits: int) -> tuple[str, ...]:
    """The reason codes set in ``bits``, in declaration order."""
    return tuple(c for i, c in enumerate(CODES) if bits >> i & 1)
