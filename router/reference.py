"""The reference decider: slow, plain Python, written to be read — what a decision *is*.

Every fast path of the router (the scalar live path, numpy batches, pipelined batches, the
compiled walk) over every store must give exactly the decisions this module gives for the
same applications in the same arrival order (``tests/decide/test_reference.py``). It shares no
decision logic with them: rules, filters, consent, eligibility, routing order, caps,
dedupe, idempotency and reason codes are written out here again, one application at a
time, over plain dictionaries. It reuses only the primitives that are tested on their own:
the economics formulas (checked by hand in ``tests/core/test_economics.py``), the feature vector,
the scorers, calendar window keys and keyed hashing.

Out of its scope: faults and degraded answers, claims across processes, and late events
(it keeps no event-time horizon: feed it events within ``LATE_MS`` of each other).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np

from router.core import economics as eco
from router.core.config import Filters, Strategy
from router.core.errors import IdempotencyConflict, InputError
from router.core.identity import Hasher
from router.core.messages import Application, Branch, Decision, Decline, Keep, Refer
from router.core.reasons import CODES
from router.core.windows import key_of
from router.decide.outcomes import decision_id


class ReferenceDecider:
    """Decides applications one at a time, in the order given, over its own state."""

    def __init__(self, strategy: Strategy, scorers: dict[str, Any], hasher: Hasher):
        self.s, self.scorers, self.hasher = strategy, scorers, hasher
        # (bucket, cap number, window key) -> [count, amount]
        self.used: dict[tuple[str, int, int], list[int]] = {}
        # (bucket, applicant) -> event time of the last grant there
        self.last_grant: dict[tuple[str, str], int] = {}
        # application id -> (its content, its decision)
        self.decided: dict[str, tuple[bytes, Decision]] = {}
        #: (application id, partner id) of every referral, in order
        self.referrals: list[tuple[str, str]] = []
        partners = strategy.partners
        # Priority rank: lower priority first, ties in book order.
        by_priority = sorted(range(len(partners)), key=lambda j: (partners[j].priority, j))
        self.rank = {j: r for r, j in enumerate(by_priority)}
        # Smooth weighted round robin state (nginx): one score per partner.
        self.score = [0] * len(partners)
        self.employer_tokens = [
            {hasher.token(name, "employer") for name in p.employer_names} for p in partners
        ]

    # ---- one decision ------------------------------------------------------------------

    def decide(self, app: Application) -> Decision:
        """The decision for ``app``; a repeat of an id answers the first decision."""
        content = msgspec.json.encode(app)
        if app.application_id in self.decided:
            first, decision = self.decided[app.application_id]
            if first != content:
                raise IdempotencyConflict(app.application_id)
            return decision
        decision = self._decide(app)
        self.decided[app.application_id] = (content, decision)
        return decision

    def _decide(self, app: Application) -> Decision:
        s = self.s
        reasons: set[str] = set()
        t = int(app.received_at.timestamp() * 1000)
        pd = self._pd(s.primary.scorer, app)
        applicant = app.applicant_token or self.hasher.token(app.national_id or "")
        dead, funder_ok = self._rules(app, reasons)
        keep_ok, keep_apr, keep_margin, keep_profit = self._keep(app, pd, funder_ok, reasons)
        branch_ok, bpd, bapr, bmargin, bprofit = self._branch(app, pd, funder_ok, keep_ok, reasons)
        worth, value = self._partners(app, pd, dead, reasons)

        def record(kind: type, **fields: Any) -> Decision:
            common = dict(
                decision_id=decision_id(s.version, app.application_id),
                application_id=app.application_id,
                strategy_version=s.version,
                pd=fields.pop("pd", pd),
                apr=fields.pop("apr", None),
                coverage_margin=fields.pop("margin", keep_margin),
                reasons=tuple(c for c in CODES if c in reasons),
                degraded=False,
            )
            return kind(**common, **fields)

        # The walk: keep's budget, the branch's budget, then partners in routing order.
        amount, b, partners = app.requested_amount, s.branch, s.partners
        if keep_ok:
            if self._reserve("__keep__", s.primary.caps, s.timezone, 0, t, amount, None) is None:
                return record(Keep, apr=keep_apr, expected_profit=_money(keep_profit))
            reasons.add("KEEP_BUDGET_EXHAUSTED")
        if branch_ok and b is not None:
            if self._reserve("__branch__", b.caps, s.timezone, 0, t, amount, None) is None:
                return record(
                    Branch, pd=bpd, apr=bapr, margin=bmargin, expected_profit=_money(bprofit)
                )
            reasons.add("BRANCH_BUDGET_EXHAUSTED")
        for j in self._order(worth, value):
            p = partners[j]
            answer = self._reserve(
                p.id, p.caps, p.timezone, p.dedupe_days * 86_400_000, t, amount, applicant
            )
            if answer is None:
                if s.routing.method == "weighted":
                    self.score[j] -= sum(partners[k].weight for k in worth)
                self.referrals.append((app.application_id, p.id))
                return record(
                    Refer,
                    apr=eco.partner_apr(app.max_apr, p),
                    partner_id=p.id,
                    expected_value=_money(value[j]),
                )
            reasons.add(answer)
        return record(Decline, apr=None)

    def _rules(self, app: Application, reasons: set[str]) -> tuple[bool, bool]:
        """(declined outright, the funder may lend): global rules end the decision; funder
        rules remove keep and branch."""
        r = self.s.rules
        dead = False
        if app.fraud_flag and r.decline_fraud:
            reasons.add("FRAUD_FLAG")
            dead = True
        if not r.min_age <= app.age <= r.max_age:
            reasons.add("AGE_OUT_OF_RANGE")
            dead = True
        funder_ok = not dead
        if not dead:
            for code, broken in (
                ("REGION_UNLICENSED", not _in_regions(app.region, r.licensed_regions)),
                ("SEVERE_DELINQUENCY", app.worst_dpd_12m > r.max_worst_dpd),
                (
                    "MULTI_LENDING",
                    app.inquiries_3m > r.max_inquiries_3m or app.open_loans > r.max_open_loans,
                ),
                ("HIGH_DEBT_BURDEN", app.dti > r.max_dti),
            ):
                if broken:
                    reasons.add(code)
                    funder_ok = False
        return dead, funder_ok

    def _keep(
        self, app: Application, pd: float, funder_ok: bool, reasons: set[str]
    ) -> tuple[bool, float, float, float]:
        """The primary policy: (keep allowed, offered APR, coverage margin, profit)."""
        s, e = self.s, self.s.economics
        amount, term = float(app.requested_amount), float(app.term_months)
        required = eco.required_apr(pd, term, e)
        achievable = eco.achievable_apr(app.max_apr, e)
        keep_apr = eco.offered_apr(required, achievable, e)
        keep_margin = achievable - required
        keep_profit = eco.keep_profit(amount, term, pd, keep_apr, e)
        if not funder_ok:
            return False, keep_apr, keep_margin, keep_profit
        why = set()
        if not _passes(s.primary.filters, app, pd):
            why.add("KEEP_FILTER")
        if not pd <= s.primary.max_pd:
            why.add("KEEP_PD_ABOVE_CUTOFF")
        if not keep_margin >= 0:
            why.add("KEEP_NOT_COVERED")
        if not keep_profit >= s.primary.min_expected_profit:
            why.add("KEEP_LOW_PROFIT")
        reasons |= why
        return not why, keep_apr, keep_margin, keep_profit

    def _branch(
        self, app: Application, pd: float, funder_ok: bool, keep_ok: bool,
        reasons: set[str],
    ) -> tuple[bool, float, float, float, float]:  # fmt: skip
        """The second policy (its reasons explain only a row keep refused): (allowed, PD,
        APR, margin, profit)."""
        s, e, b = self.s, self.s.economics, self.s.branch
        if b is None:
            return False, 0.0, 0.0, 0.0, 0.0
        amount, term = float(app.requested_amount), float(app.term_months)
        bpd = pd if b.scorer == s.primary.scorer else self._pd(b.scorer, app)
        bapr = eco.branch_apr(app.max_apr, b, e)
        bprofit = eco.branch_profit(amount, term, bpd, bapr, b, e)
        bmargin = eco.branch_margin(amount, term, bprofit, b)
        if not funder_ok:
            return False, bpd, bapr, bmargin, bprofit
        why = set()
        if not _passes(b.filters, app, bpd):
            why.add("BRANCH_FILTER")
        if not bpd <= b.max_pd:
            why.add("BRANCH_PD_ABOVE_CUTOFF")
        if not bmargin >= 0:
            why.add("BRANCH_NOT_COVERED")
        if not bprofit >= b.min_expected_profit:
            why.add("BRANCH_LOW_PROFIT")
        if not keep_ok:
            reasons |= why
        return not why, bpd, bapr, bmargin, bprofit

    def _partners(
        self, app: Application, pd: float, dead: bool, reasons: set[str]
    ) -> tuple[list[int], dict[int, float]]:
        """Partners: consent, the channel, whitelist, filters, APR floor, employer; then
        value. (The partners worth referring to, every eligible partner's value.)"""
        s, partners = self.s, self.s.partners
        allowed = self._consent(app)
        no_consent = app.consent == "none" or app.consent == []
        if not dead and no_consent:
            reasons.add("NO_CONSENT")
        if not dead and not no_consent and not any(allowed):
            reasons.add("CHANNEL_NO_REFERRAL")
        employer = self.hasher.token(app.employer, "employer") if app.employer else None
        eligible: list[int] = []
        for j, p in enumerate(partners):
            if not (
                not dead
                and allowed[j]
                and p.whitelisted
                and _passes(p.filters, app, pd)
                and app.max_apr >= p.apr_min
            ):
                continue
            if employer is not None and employer in self.employer_tokens[j]:
                reasons.add("PARTNER_EMPLOYEE")
                continue
            eligible.append(j)
        if not dead and any(allowed) and not eligible:
            reasons.add("NO_ELIGIBLE_PARTNER")
        amount, term = float(app.requested_amount), float(app.term_months)
        value = {
            j: eco.referral_value(amount, term, pd, app.max_apr, partners[j]) for j in eligible
        }
        worth = [j for j in eligible if value[j] >= s.routing.min_expected_value]
        if eligible and not worth:
            reasons.add("LOW_REFERRAL_VALUE")
        return worth, value

    # ---- pieces ------------------------------------------------------------------------

    def _pd(self, scorer: str, app: Application) -> float:
        x = features_of(app, self.scorers[scorer].feature_names_)
        return float(self.scorers[scorer].pd_batch(np.array([x], dtype=np.float64))[0])

    def _consent(self, app: Application) -> list[bool]:
        """Which partners the applicant's consent and the channel allow."""
        ids = [p.id for p in self.s.partners]
        policy = self.s.channels.get(app.channel)
        if policy is not None and not policy.referral_allowed:
            return [False] * len(ids)
        consent = app.consent
        if consent == "none" or consent == []:
            return [False] * len(ids)
        named: list[str]
        if consent == "any":
            named = ids
            if policy is not None and policy.consent_partners is not None:
                named = policy.consent_partners
        else:
            named = list(consent)
        return [pid in named for pid in ids]

    def _order(self, worth: list[int], value: dict[int, float]) -> list[int]:
        """The partners to try, in the strategy's routing order (ties by priority)."""
        method = self.s.routing.method
        if method == "waterfall":
            return sorted(worth, key=lambda j: self.rank[j])
        if method == "best_value":
            return sorted(worth, key=lambda j: (-value[j], self.rank[j]))
        if method == "weighted":
            # Smooth weighted round robin among the eligible: each call raises their scores
            # by their weights and tries the highest first; the winner pays the total.
            for j in worth:
                self.score[j] += self.s.partners[j].weight
            return sorted(worth, key=lambda j: (-self.score[j], self.rank[j]))
        raise ValueError(f"the reference decider has no routing method {method!r}")

    def _reserve(
        self,
        bucket: str,
        caps: list,
        tz: str,
        dedupe_ms: int,
        t: int,
        amount: int,
        applicant: str | None,
    ) -> str | None:
        """Grant (None) when every cap has room and the applicant was not granted here
        within ``dedupe_ms``; else the reason refused (caps are checked first)."""
        cells = []
        for i, cap in enumerate(caps):
            cell = self.used.setdefault((bucket, i, key_of(t, cap.window, tz)), [0, 0])
            if cap.count is not None and cell[0] + 1 > cap.count:
                return "PARTNER_QUOTA_EXHAUSTED"
            if cap.amount is not None and cell[1] + amount > cap.amount:
                return "PARTNER_QUOTA_EXHAUSTED"
            cells.append(cell)
        if applicant is not None and dedupe_ms > 0:
            last = self.last_grant.get((bucket, applicant))
            if last is not None and t - last < dedupe_ms:
                return "PARTNER_DEDUPE"
            self.last_grant[(bucket, applicant)] = t
        for cell in cells:
            cell[0] += 1
            cell[1] += amount
        return None


def _passes(f: Filters, app: Application, pd: float) -> bool:
    """Whether the application passes a set of eligibility filters."""
    bounds = [
        (f.min_age, app.age, ">="),
        (f.max_age, app.age, "<="),
        (f.max_pd, pd, "<="),
        (f.min_score, app.bureau_score, ">="),
        (f.max_score, app.bureau_score, "<="),
        (f.min_amount, app.requested_amount, ">="),
        (f.max_amount, app.requested_amount, "<="),
        (f.min_term, app.term_months, ">="),
        (f.max_term, app.term_months, "<="),
        (f.max_inquiries_3m, app.inquiries_3m, "<="),
        (f.max_open_loans, app.open_loans, "<="),
        (f.max_dti, app.dti, "<="),
        (f.max_worst_dpd, app.worst_dpd_12m, "<="),
    ]
    for bound, v, op in bounds:
        if bound is not None and not (v >= bound if op == ">=" else v <= bound):
            return False
    if f.regions and not _in_regions(app.region, f.regions):
        return False
    return not f.channels or app.channel in f.channels


def _in_regions(region: str, prefixes: list[str]) -> bool:
    return not prefixes or any(region.startswith(p) for p in prefixes)


def _money(x: float) -> int:
    """Minor units, rounded half to even (as every decision stores money)."""
    return int(round(x)) if math.isfinite(x) else 0


_CHANNELS = ("platform", "api_aggregator", "h5_aggregator")


def _dpd_months(dpd: int) -> float:
    return min(dpd, 180) / 30.0


def features_of(app: Application, names) -> list[float]:
    """The features a model names, in its order: the default vector's, the extra ones
    (``max_apr``) and the application's own (``features``) straight from the message."""
    base = dict(zip(_DEFAULT_NAMES, features_one(app)))
    base["max_apr"] = float(app.max_apr)
    return [base[n] if n in base else _app_feature(app, n) for n in names]


def _app_feature(app: Application, name: str) -> float:
    """An application feature: ``name=value`` is 1.0 where the application's ``name``
    is that text (else 0.0); a plain name is the number it carries (else an error)."""
    field, one_hot, value = name.partition("=")
    got = app.features.get(field)
    if one_hot:
        return 1.0 if got == value else 0.0
    if isinstance(got, (str, bool)) or got is None or not math.isfinite(got):
        raise InputError(
            f"field `features.{field}`: the model reads it (value: {got!r})",
            field=f"features.{field}",
        )
    return float(got)


_DEFAULT_NAMES = (
    "age", "log_income", "bureau_score", "inquiries_3m", "open_loans", "dti", "dpd_months",
    "log_amount", "term_years", "amount_to_income", "ch_platform", "ch_api", "ch_h5",
)  # fmt: skip


def features_one(app: Application) -> list[float]:
    """The feature vector of one application in ``FEATURES`` order, written out again on
    its own (``math`` on the message fields; the fast paths use numpy)."""
    income = app.monthly_income / 100.0
    amount = app.requested_amount / 100.0
    ch = app.channel
    return [
        float(app.age),
        math.log1p(income),
        app.bureau_score / 100.0,
        float(app.inquiries_3m),
        float(app.open_loans),
        float(app.dti),
        _dpd_months(app.worst_dpd_12m),
        math.log1p(amount),
        app.term_months / 12.0,
        amount / (income + 100.0),
        1.0 if ch == _CHANNELS[0] else 0.0,
        1.0 if ch == _CHANNELS[1] else 0.0,
        1.0 if ch == _CHANNELS[2] else 0.0,
    ]
