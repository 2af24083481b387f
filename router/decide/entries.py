"""The ledger entries a grant carries: a referral to a partner (with the partner's
commercial terms snapshotted) or a loan of the second branch (billed to the branch
partner). Built by every allocation path — the Python walks and the compiled walk's
driver — so each is written once."""

from __future__ import annotations

from router.core.columns import AppColumns
from router.core.config import Strategy
from router.core.messages import CommercialTerms, ReferralEntry
from router.decide.outcomes import decision_id


def row_referral_entry(
    s: Strategy, cols: AppColumns, i: int, j: int, t: int, amount: int, ev: float
) -> ReferralEntry:
    """The ledger entry for referring row ``i`` to partner ``j``."""
    return make_entry(
        s, cols.application_id[i], j, t, amount, int(cols.term_months[i]), cols.applicant[i], ev
    )


def make_branch_entry(
    s: Strategy, app_id: str, t: int, amount: int, term_months: int, applicant: str, profit: float
) -> ReferralEntry:
    """The ledger entry of a loan the second branch takes (billed to the branch partner's
    reserve and return accounts; no per-lead fees)."""
    assert s.branch is not None
    did = decision_id(s.version, app_id)
    return ReferralEntry(
        referral_id="r_" + did[2:],
        decision_id=did,
        application_id=app_id,
        partner_id=s.branch.partner_id,
        event_time_ms=t,
        amount=amount,
        term_months=term_months,
        applicant_hash=applicant,
        terms=_NO_FEES,
        expected_value=int(round(profit)),
        strategy_version=s.version,
        outcome="branch",
    )


_NO_FEES = CommercialTerms()


def row_branch_entry(
    s: Strategy, cols: AppColumns, i: int, t: int, amount: int, profit: float
) -> ReferralEntry:
    """The ledger entry for row ``i``'s loan in the second branch."""
    return make_branch_entry(
        s, cols.application_id[i], t, amount, int(cols.term_months[i]), cols.applicant[i], profit
    )


def make_entry(
    s: Strategy,
    app_id: str,
    j: int,
    t: int,
    amount: int,
    term_months: int,
    applicant: str,
    ev: float,
) -> ReferralEntry:
    """The ledger entry for referring application ``app_id`` to partner ``j``."""
    p = s.partners[j]
    did = decision_id(s.version, app_id)
    return ReferralEntry(
        referral_id="r_" + did[2:],
        decision_id=did,
        application_id=app_id,
        partner_id=p.id,
        event_time_ms=t,
        amount=amount,
        term_months=term_months,
        applicant_hash=applicant,
        terms=p.terms,
        expected_value=int(round(ev)),
        strategy_version=s.version,
    )
