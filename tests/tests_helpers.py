"""Shared test data: a lender's own traffic layout and a small strategy to replay it."""

from __future__ import annotations

from router.config import strategy_from_dict
from router.testing import ScoreLookupScorer, strategy_dict

#: Application field -> the lender's column name.
MAPPING = {"application_id": "app_no", "received_at": "applied_at", "bureau_score": "score",
           "requested_amount": "loan_amount", "national_id": "id_number",
           "defaulted": "bad_flag"}


def lender_rows(n: int) -> list[dict]:
    """``n`` valid rows in the lender's layout (row r: application L00r, minute r)."""
    rows = []
    for r in range(1, n + 1):
        rows.append({
            "app_no": f"L{r:03d}", "applied_at": f"2026-11-02T10:{r:02d}:00+08:00",
            "channel": "own_app", "id_number": f"1101011990010{r:05d}", "age": 30 + r % 20,
            "monthly_income": 1_200_000, "score": [720, 650, 600][r % 3], "inquiries_3m": 1,
            "open_loans": 1, "dti": 0.3, "worst_dpd_12m": 0, "region": "310000",
            "loan_amount": 1_000_000 + 10_000 * r, "term_months": 12, "max_apr": 0.18,
            "consent": "any", "bad_flag": r % 4 == 0,
        })
    return rows


def strategy_and_scorer():
    """The small test strategy and a scorer keyed on the bureau score."""
    return (strategy_from_dict(strategy_dict()),
            ScoreLookupScorer({720: 0.02, 650: 0.08, 600: 0.2}))
