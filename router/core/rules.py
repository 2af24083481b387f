"""The decision's rules as data: one row per rule, read by both evaluators.

The batch path (:mod:`router.decide.assess`, numpy over columns) and the one-application path
(:mod:`router.decide.assess_one`, Python scalars) evaluate the same tables, so a rule is written
once. A new bound rule is one row here (and its reason code in :mod:`router.core.reasons`);
the reference decider (:mod:`router.reference`) states every rule again independently, and
``tests/decide/test_reference.py`` holds all three to the same answers.

Two rules are not simple bounds and stay code in both evaluators: fraud (a flag the
strategy may ignore) and licensed regions (code prefixes).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BoundRule:
    """An application field compared with a bound from the strategy's ``[rules]``: the rule
    is *broken* when ``field <op> bound`` holds (``op`` is ``">"`` or ``"<"``)."""

    code: str  # the reason code it sets (router.core.reasons)
    field: str  # an application field (a column of a batch, an attribute of a row)
    op: str
    bound: str  # the name of the bound in the strategy's rules

    def broken(self, values: Any, rules: Any) -> Any:
        """Where the rule is broken: ``values`` is an array (a batch) or a scalar (one row)."""
        return _OPS[self.op](values, getattr(rules, self.bound))


_OPS: dict[str, Callable[[Any, Any], Any]] = {">": operator.gt, "<": operator.lt}

#: Global rules: breaking one declines the application outright (with fraud, see above).
GLOBAL_RULES: tuple[BoundRule, ...] = (
    BoundRule("AGE_OUT_OF_RANGE", "age", "<", "min_age"),
    BoundRule("AGE_OUT_OF_RANGE", "age", ">", "max_age"),
)

#: Funder rules: breaking one removes keep and branch (with licensed regions, see above);
#: partners may still take the application. Rules may share a reason code.
FUNDER_RULES: tuple[BoundRule, ...] = (
    BoundRule("SEVERE_DELINQUENCY", "worst_dpd_12m", ">", "max_worst_dpd"),
    BoundRule("MULTI_LENDING", "inquiries_3m", ">", "max_inquiries_3m"),
    BoundRule("MULTI_LENDING", "open_loans", ">", "max_open_loans"),
    BoundRule("HIGH_DEBT_BURDEN", "dti", ">", "max_dti"),
)

#: Eligibility filters (a policy's or a partner's ``filters``): (filter attribute, the
#: field it bounds, how a passing value compares with it). ``pd`` is the applicant's PD.
FILTER_BOUNDS: tuple[tuple[str, str, Any], ...] = (
    ("min_age", "age", np.greater_equal),
    ("max_age", "age", np.less_equal),
    ("max_pd", "pd", np.less_equal),
    ("min_score", "bureau_score", np.greater_equal),
    ("max_score", "bureau_score", np.less_equal),
    ("min_amount", "requested_amount", np.greater_equal),
    ("max_amount", "requested_amount", np.less_equal),
    ("min_term", "term_months", np.greater_equal),
    ("max_term", "term_months", np.less_equal),
    ("max_inquiries_3m", "inquiries_3m", np.less_equal),
    ("max_open_loans", "open_loans", np.less_equal),
    ("max_dti", "dti", np.less_equal),
    ("max_worst_dpd", "worst_dpd_12m", np.less_equal),
)
