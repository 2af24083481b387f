"""The assessment of a single application, on Python scalars.

numpy's per-call overhead dominates a batch of one, so a live decision would spend most of
its time there. :class:`OneAssessor` computes exactly what :func:`router.decide.assess.assess`
computes for one row — the same rules in the same order and the same economics functions,
called on floats instead of arrays (IEEE arithmetic gives the same bits) — into a
:class:`OneAssessment`. ``tests/decide/test_assess_one.py`` checks every field for bit equality
with the batch path over thousands of applications and several strategies. Scores still
come from the scorer's batch method on a one-row matrix, so PDs are the batch path's own.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from router.core import economics as eco
from router.core.columns import AppColumns, Row, row_of
from router.core.config import Filters, Strategy
from router.core.reasons import BIT
from router.core.rules import FILTER_BOUNDS, FUNDER_RULES, GLOBAL_RULES
from router.core.windows import QUARTER_MS, WINDOWS, quarter_keys
from router.decide.assess import Assessment, BatchAssessment, consent_row
from router.decide.features import FEATURES, FeatureSet, features_row

_OPS = {np.greater_equal: operator.ge, np.less_equal: operator.le}
_OPS_PY = {">": operator.gt, "<": operator.lt}
_FRAUD = BIT["FRAUD_FLAG"]
_NO_CONSENT, _CHANNEL_NO_REF = BIT["NO_CONSENT"], BIT["CHANNEL_NO_REFERRAL"]
_EMPLOYEE, _NO_ELIGIBLE = BIT["PARTNER_EMPLOYEE"], BIT["NO_ELIGIBLE_PARTNER"]
_LOW_VALUE = BIT["LOW_REFERRAL_VALUE"]
_REGION = BIT["REGION_UNLICENSED"]
_KEEP_CHECKS = tuple(
    BIT[c] for c in ("KEEP_FILTER", "KEEP_PD_ABOVE_CUTOFF", "KEEP_NOT_COVERED", "KEEP_LOW_PROFIT")
)
_BRANCH_CHECKS = tuple(
    BIT[c]
    for c in ("BRANCH_FILTER", "BRANCH_PD_ABOVE_CUTOFF", "BRANCH_NOT_COVERED", "BRANCH_LOW_PROFIT")
)


#: One application's assessment: :class:`~router.decide.assess.Assessment` with Python
#: scalars, a list per partner, and (hour, day, month) window keys per time zone.
OneAssessment = Assessment[Any, list, dict[str, tuple[int, int, int]]]


class _Filter:
    """A :class:`Filters` compiled to the bounds it sets, for one row of scalars."""

    def __init__(self, f: Filters):
        self.bounds = [
            (column, _OPS[passes], getattr(f, attr))
            for attr, column, passes in FILTER_BOUNDS
            if getattr(f, attr) is not None
        ]
        self.regions = _regions(f.regions)
        self.channels = frozenset(f.channels)

    def passes(self, r: Row, region_code: int, pd: float) -> bool:
        for column, op, bound in self.bounds:
            if not op(pd if column == "pd" else getattr(r, column), bound):
                return False
        if self.regions is not None and not _in_regions(region_code, self.regions):
            return False
        return not self.channels or r.channel in self.channels


def _feature_set(scorer: Any) -> FeatureSet | None:
    """The scorer's feature set, or None when it reads the default vector."""
    names = tuple(getattr(scorer, "feature_names_", FEATURES))
    return None if names == FEATURES else FeatureSet(names)


def _regions(prefixes: list[str]) -> list[tuple[int, int]] | None:
    """Region prefixes as (divisor, value): a six-digit code matches when code // d == v."""
    return [(10 ** (6 - len(p)), int(p)) for p in prefixes] if prefixes else None


def _in_regions(code: int, regions: list[tuple[int, int]] | None) -> bool:
    if regions is None:
        return True
    for d, v in regions:
        if code // d == v:
            return True
    return False


class OneAssessor:
    """Assesses one application at a time for a strategy (what can be, precomputed once)."""

    def __init__(
        self, strategy: Strategy, scorers: dict[str, Any], employer_tokens: list[frozenset[str]]
    ):
        s = strategy
        self.strategy, self.scorers, self.employer_tokens = s, scorers, employer_tokens
        self.licensed = _regions(s.rules.licensed_regions)
        # The rule tables (router.core.rules) with their bounds read from the strategy once.
        self.global_rules, self.funder_rules = (
            [(BIT[x.code], x.field, _OPS_PY[x.op], getattr(s.rules, x.bound)) for x in table]
            for table in (GLOBAL_RULES, FUNDER_RULES)
        )
        self.keep_filter = _Filter(s.primary.filters)
        self.branch_filter = _Filter(s.branch.filters) if s.branch else None
        self._partners_compiled = [
            (p, _Filter(p.filters), employer_tokens[j]) for j, p in enumerate(s.partners)
        ]
        self.zones = sorted({s.timezone, *(p.timezone for p in s.partners)})
        # Each scorer's own features (None: the default vector, as computed).
        self._fsets = {name: _feature_set(sc) for name, sc in scorers.items()}
        self._consent: dict[tuple[str, str], tuple[bool, ...]] = {}

    def consent(self, consent: str, channel: str) -> tuple[bool, ...]:
        """Which partners the applicant's consent and the channel allow."""
        key = (consent, channel)
        row = self._consent.get(key)
        if row is None:
            row = tuple(consent_row(consent, channel, self.strategy, 0).tolist())
            if len(self._consent) < 10_000:
                self._consent[key] = row
        return row

    def _pd(self, name: str, r: Row, x: list[float]) -> float:
        """Scorer ``name``'s PD of row ``r`` (``x``: its default feature vector)."""
        fs = self._fsets.get(name)
        if fs is not None:
            x = fs.row(r, x)
        scorer = self.scorers[name]
        if getattr(scorer, "exact_one", False):
            return scorer.pd_one(x)
        return float(scorer.pd_batch(np.array([x]))[0])

    def __call__(self, r: Row, full: bool = True) -> OneAssessment:
        """Assess one row (see :func:`router.decide.assess.assess` for the rules).

        ``full=False`` (a live decision) skips the expected value and APR of partners the
        application is not eligible for: no decision reads them.
        """
        s = self.strategy
        x = features_row(r)
        pd = self._pd(s.primary.scorer, r, x)
        region_code = int(r.region)
        bits, dead, funder_ok = self._rules(r, region_code)
        keep_bits, keep_ok, keep_apr, keep_margin, keep_profit = self._keep(
            r, region_code, pd, funder_ok
        )
        branch_bits, branch_ok, bpd, bapr, bmargin, bprofit = self._branch(
            r, region_code, pd, x, funder_ok, full
        )
        # Branch reasons explain a row the primary policy refused.
        bits |= keep_bits if keep_ok else keep_bits | branch_bits
        more, valuable, ev, papr = self._partners(r, region_code, pd, dead, full)
        q = r.event_ms // QUARTER_MS
        return Assessment(
            bits | more,
            dead,
            pd,
            keep_ok,
            keep_apr,
            keep_margin,
            keep_profit,
            branch_ok,
            bpd,
            bapr,
            bmargin,
            bprofit,
            valuable,
            ev,
            papr,
            {z: quarter_keys(q, z) for z in self.zones},
        )

    def _rules(self, r: Row, region_code: int) -> tuple[int, bool, bool]:
        """(reason bits, declined outright, the funder may lend): the global rules, then
        the funder's licence and rules. Rule bits are set on live rows only, so a dead row
        skips the funder's (and the policies', whose bits need a funder-eligible row)."""
        bits = 0
        dead = bool(r.fraud_flag and self.strategy.rules.decline_fraud)
        bits |= _FRAUD if dead else 0
        for bit, field, broken, bound in self.global_rules:
            if broken(getattr(r, field), bound):
                bits |= bit
                dead = True
        funder_ok = not dead
        if funder_ok:
            if not _in_regions(region_code, self.licensed):
                bits |= _REGION
                funder_ok = False
            for bit, field, broken, bound in self.funder_rules:
                if broken(getattr(r, field), bound):
                    bits |= bit
                    funder_ok = False
        return bits, dead, funder_ok

    def _keep(
        self, r: Row, region_code: int, pd: float, funder_ok: bool
    ) -> tuple[int, bool, float, float, float]:
        """The primary policy: (its reason bits, keep_ok, APR, margin, profit)."""
        p, e = self.strategy.primary, self.strategy.economics
        term = float(r.term_months)
        req = eco.required_apr(pd, term, e)
        ach = eco.achievable_apr(r.max_apr, e)
        apr = eco.offered_apr(req, ach, e)
        margin = ach - req
        profit = eco.keep_profit(float(r.requested_amount), term, pd, apr, e)
        bits = 0
        if funder_ok:
            if not self.keep_filter.passes(r, region_code, pd):
                bits |= _KEEP_CHECKS[0]
            if not pd <= p.max_pd:
                bits |= _KEEP_CHECKS[1]
            if not margin >= 0:
                bits |= _KEEP_CHECKS[2]
            if not profit >= p.min_expected_profit:
                bits |= _KEEP_CHECKS[3]
        return bits, funder_ok and not bits, apr, margin, profit

    def _branch(
        self, r: Row, region_code: int, pd: float, x: list[float], funder_ok: bool, full: bool
    ) -> tuple[int, bool, float, float, float, float]:
        """The second policy branch: (its reason bits, branch_ok, PD, APR, margin, profit);
        a live decision reads its figures only when the branch can take the row."""
        b, e = self.strategy.branch, self.strategy.economics
        if b is None or self.branch_filter is None or not (funder_ok or full):
            return 0, False, 0.0, 0.0, 0.0, 0.0
        amount, term = float(r.requested_amount), float(r.term_months)
        bpd = pd if b.scorer == self.strategy.primary.scorer else self._pd(b.scorer, r, x)
        bapr = eco.branch_apr(r.max_apr, b, e)
        bprofit = eco.branch_profit(amount, term, bpd, bapr, b, e)
        bmargin = eco.branch_margin(amount, term, bprofit, b)
        bits = 0
        if funder_ok:
            if not self.branch_filter.passes(r, region_code, bpd):
                bits |= _BRANCH_CHECKS[0]
            if not bpd <= b.max_pd:
                bits |= _BRANCH_CHECKS[1]
            if not bmargin >= 0:
                bits |= _BRANCH_CHECKS[2]
            if not bprofit >= b.min_expected_profit:
                bits |= _BRANCH_CHECKS[3]
        return bits, funder_ok and not bits, bpd, bapr, bmargin, bprofit

    def _partners(
        self, r: Row, region_code: int, pd: float, dead: bool, full: bool
    ) -> tuple[int, list[bool], list[float], list[float]]:
        """Referral eligibility: (reason bits, eligible and valuable enough per partner,
        expected value per partner, partner APR per partner)."""
        s = self.strategy
        P = len(s.partners)
        amount, term, max_apr = float(r.requested_amount), float(r.term_months), r.max_apr
        consent = self.consent(r.consent, r.channel) if P else ()
        any_consent = any(consent)
        no_consent = r.consent == "none"
        live = not dead
        bits = 0
        if live and no_consent:
            bits |= _NO_CONSENT
        if live and not no_consent and not any_consent:
            bits |= _CHANNEL_NO_REF
        employer = r.employer
        eligible = [False] * P
        ev = [0.0] * P
        papr = [0.0] * P
        employee_any = False
        for j, (partner, filt, tokens) in enumerate(self._partners_compiled):
            ok = (
                live
                and consent[j]
                and partner.whitelisted
                and filt.passes(r, region_code, pd)
                and max_apr >= partner.apr_min
            )
            if ok and tokens and employer in tokens:
                employee_any = True
                ok = False
            eligible[j] = ok
            if ok or full:
                ev[j] = eco.referral_value(amount, term, pd, max_apr, partner)
                papr[j] = eco.partner_apr(max_apr, partner)
        if employee_any:
            bits |= _EMPLOYEE
        any_eligible = any(eligible)
        if live and any_consent and not any_eligible:
            bits |= _NO_ELIGIBLE
        valuable = eligible
        if any_eligible:
            floor = s.routing.min_expected_value
            valuable = [el and v >= floor for el, v in zip(eligible, ev)]
            if not any(valuable):
                bits |= _LOW_VALUE
        return bits, valuable, ev, papr


def assess_one(
    cols: AppColumns,
    strategy: Strategy,
    scorers: dict[str, Any],
    employer_tokens: list[frozenset[str]],
    table: Any = None,
    assessor: OneAssessor | None = None,
) -> BatchAssessment:
    """:func:`router.decide.assess.assess` for a batch of exactly one application."""
    a = (assessor or OneAssessor(strategy, scorers, employer_tokens))(row_of(cols))
    P = len(strategy.partners)

    def f1(x: float) -> np.ndarray:
        return np.array([x], dtype=np.float64)

    def b1(x: bool) -> np.ndarray:
        return np.array([x], dtype=bool)

    keys = {
        z: {w: np.array([k[i]], dtype=np.int64) for i, w in enumerate(WINDOWS)}
        for z, k in a.keys.items()
    }
    return Assessment(
        bits=np.array([a.bits], dtype=np.uint64),
        dead=b1(a.dead),
        pd=f1(a.pd),
        keep_ok=b1(a.keep_ok),
        keep_apr=f1(a.keep_apr),
        keep_margin=f1(a.keep_margin),
        keep_profit=f1(a.keep_profit),
        branch_ok=b1(a.branch_ok),
        branch_pd=f1(a.branch_pd),
        branch_apr=f1(a.branch_apr),
        branch_margin=f1(a.branch_margin),
        branch_profit=f1(a.branch_profit),
        eligible=np.array([a.eligible], dtype=bool).reshape(1, P),
        ev=np.array([a.ev], dtype=np.float64).reshape(1, P),
        partner_apr=np.array([a.partner_apr], dtype=np.float64).reshape(1, P),
        keys=keys,
    )
