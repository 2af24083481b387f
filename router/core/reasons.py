"""Reason codes: why an option was removed or not taken. Held as bits while deciding."""

from __future__ import annotations

from functools import lru_cache

CODES: tuple[str, ...] = (
    "FRAUD_FLAG",  # global: declined outright
    "AGE_OUT_OF_RANGE",  # global: outside the legal / policy age range
    "REGION_UNLICENSED",  # funder rule: no keep / branch
    "SEVERE_DELINQUENCY",  # funder rule
    "MULTI_LENDING",  # funder rule: too many inquiries or open loans
    "HIGH_DEBT_BURDEN",  # funder rule
    "KEEP_FILTER",  # primary policy's eligibility filters
    "KEEP_PD_ABOVE_CUTOFF",
    "KEEP_NOT_COVERED",  # achievable APR cannot pay costs + loss + margin
    "KEEP_LOW_PROFIT",
    "KEEP_BUDGET_EXHAUSTED",
    "BRANCH_FILTER",
    "BRANCH_PD_ABOVE_CUTOFF",
    "BRANCH_NOT_COVERED",
    "BRANCH_LOW_PROFIT",
    "BRANCH_BUDGET_EXHAUSTED",
    "NO_CONSENT",
    "CHANNEL_NO_REFERRAL",
    "PARTNER_EMPLOYEE",  # excluded from the partner that employs the applicant
    "NO_ELIGIBLE_PARTNER",
    "LOW_REFERRAL_VALUE",
    "PARTNER_DEDUPE",  # the eligible partners saw this applicant recently
    "PARTNER_QUOTA_EXHAUSTED",
    "STORE_UNAVAILABLE",  # degraded: the quota store failed or missed its deadline
    "LATE_EVENT",  # older than the store's newest event by more than LATE_MS
)
BIT: dict[str, int] = {c: 1 << i for i, c in enumerate(CODES)}


@lru_cache(maxsize=4096)
def names(bits: int) -> tuple[str, ...]:
    """The reason codes set in ``bits``, in declaration order."""
    return tuple(c for i, c in enumerate(CODES) if bits >> i & 1)
